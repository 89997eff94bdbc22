"""Run a function in N gloo processes (what Ray Train sets up, without Ray) and collect results."""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

from tests.ranks import adopt, context, here


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dumps(value: Any) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    import io

    import torch

    return torch.load(io.BytesIO(data), weights_only=False)


def _entry(rank: int, world: int, port: int, fn, args: tuple, queue, state) -> None:
    import torch.distributed as dist

    adopt(state)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        # Serialised to bytes: tensors sent as-is travel as shared-memory handles that die with us.
        queue.put((rank, "ok", _dumps(fn(rank, world, *args))))
    except BaseException:  # noqa: BLE001 - reported to the parent test
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world: int, *args: Any, timeout: float = 600) -> list[Any]:
    """fn(rank, world, *args) in `world` processes (tests/ranks.py); results by rank, raises on error."""
    ctx = context()
    queue = ctx.Queue()
    port, state = _free_port(), here()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, queue, state)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
            results[rank] = _loads(value) if status == "ok" else value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]
