"""Processes for the tests that run ranks without Ray (gloo process groups, killed uploads).

Forked from one forkserver per pytest process that has imported torch, DeepSpeed and the training
code once, instead of a fresh interpreter per rank ("spawn") that imports them again: about 5 CPU
seconds a rank on the 2-core CI machine. The server forks from a single thread that has run no
torch op, so no thread pool or lock is copied mid-use; each rank still starts its own process
group, as under Ray Train. A forked rank starts with the server's environment and folder, not
the test's (a test may have set S3 credentials since): each rank `adopt`s what `here()` took
in the test.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

PRELOAD = [
    "torch",
    "torch.distributed",
    "deepspeed",
    "sphinxx.model.sphinx",
    "sphinxx.jobs.loop",
    "tests.jobs._tiny",
]


def context() -> BaseContext:
    """The forkserver context, its server preloading `PRELOAD` (set before the server starts)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def here() -> tuple[dict[str, str], str]:
    """What a rank adopts from the test that starts it: the environment and the working folder."""
    return dict(os.environ), os.getcwd()


def adopt(state: tuple[dict[str, str], str]) -> None:
    """In the rank: the test's environment and working folder (from `here()`), in place of the server's."""
    env, cwd = state
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


def _rank(index: int, state: tuple[dict[str, str], str], fn: Callable[..., Any], *args: Any) -> None:
    adopt(state)
    fn(index, *args)


def start(fn: Callable[..., Any], args: tuple, nprocs: int) -> None:
    """torch.multiprocessing's `start_processes(fn, args, nprocs)` on this forkserver; joins them."""
    import torch.multiprocessing as mp

    context()  # the preload is set before torch starts the server
    mp.start_processes(_rank, args=(here(), fn, *args), nprocs=nprocs, join=True, start_method="forkserver")
