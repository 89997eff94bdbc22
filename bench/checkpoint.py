"""The training stall of a checkpoint save: asynchronous vs synchronous, same state, against moto S3.

    .venv/bin/python bench/checkpoint.py                        # a 2 GiB checkpoint, 3 saves of each
    .venv/bin/python bench/checkpoint.py --size-mib 64 --saves 1   # the smallest setting (the test's)
    .venv/bin/python bench/checkpoint.py --endpoint-url http://127.0.0.1:9000   # an existing S3 / MinIO

One process trains a stand-in model (fp32 weights whose AdamW m and v make the checkpoint
`--size-mib` in all) with `jobs.checkpoint.Checkpointer` on an S3 server (its own moto_server
unless `--endpoint-url`), saving alternately

- `sync`: `Checkpointer.save`, the baseline: training waits for the snapshot, the serialisation,
  the upload and the commit;
- `async`: `Checkpointer.save_async`: training waits for the snapshot only (and for a previous
  save still in flight, which the bench never leaves: it trains until the commit landed).

Between saves it trains steps of a fixed matmul load (`--step-ms`), and times them while a
background commit is in flight and while none is: their ratio is what the background work costs
the steps on this machine. Peak host memory is sampled (RSS, /proc/self/statm, every 10 ms) over
each save, from its start until its commit landed, above the RSS just before it.

Prints JSON lines: one per save, then a summary with the medians, `stall_ratio` = async stall /
sync stall (goal: <= 0.1, `goal_met`), the commit time of both, the step slowdown and the peak
host memory. moto is one Python process on the same cores: absolute speeds say little about S3;
the ratio of the two modes on the same server in the same run is the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sphinxx.jobs.checkpoint import Checkpointer, RunState  # noqa: E402
from sphinxx.storage import CheckpointStore, RetentionPolicy, StorageOptions  # noqa: E402
from storage import _start_moto  # noqa: E402 - the sibling bench's moto starter

MiB, GiB = 1 << 20, 1 << 30
TENSOR_MIB = 64  # the stand-in model's tensors: fp32, 16 Mi elements each at most


class RssPeak:
    """The largest resident set size seen since `start`, sampled in a thread."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.now()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def now(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def start(self) -> int:
        self.peak = base = self.now()
        return base

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.now())


def stand_in(size_mib: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """fp32 parameters of size_mib / 3 (weights, m and v make the checkpoint size_mib), one AdamW step."""
    numel = size_mib * MiB // 12
    sizes = [TENSOR_MIB * MiB // 4] * (numel // (TENSOR_MIB * MiB // 4))
    if numel % (TENSOR_MIB * MiB // 4):
        sizes.append(numel % (TENSOR_MIB * MiB // 4))
    model = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(n)) for n in sizes])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    return model, optimizer


def step(load: torch.Tensor, model: torch.nn.Module, iters: int) -> float:
    """One 'training step': a fixed matmul load, then a write to the weights (as an update does)."""
    began = time.perf_counter()
    for _ in range(iters):
        load = torch.tanh(load @ load)
    with torch.no_grad():
        model[0].add_(1e-6)
    return time.perf_counter() - began


def one_save(mode: str, index: int, ckpt: Checkpointer, model, load, iters: int, rss: RssPeak) -> dict:
    state = RunState(index, {"next_step": index}, {})
    base = rss.start()
    began = time.perf_counter()
    if mode == "sync":
        ckpt.save(state, {}, {"loss": 1.0})
    else:
        ckpt.save_async(state, {}, {"loss": 1.0})
    stall = time.perf_counter() - began
    busy_steps = []
    while ckpt.inflight.busy:
        busy_steps.append(step(load, model, iters))
    commit = time.perf_counter() - began
    ckpt.drain()
    idle_steps = [step(load, model, iters) for _ in range(3)]
    return {
        "mode": mode,
        "save": index,
        "stall_s": round(stall, 4),
        "commit_s": round(commit, 4),  # as many places as stall_s: commit >= stall holds rounded too
        "steps_during_commit": len(busy_steps),
        "step_s_during_commit": round(statistics.median(busy_steps), 4) if busy_steps else None,
        "step_s_idle": round(statistics.median(idle_steps), 4),
        "peak_extra_host_gib": round((rss.peak - base) / GiB, 3),
    }


def summary(rows: list[dict], size_mib: int, rss: RssPeak) -> dict:
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["mode"] == mode and r[key] is not None)

    sync_stall, async_stall = median("sync", "stall_s"), median("async", "stall_s")
    during = [r["step_s_during_commit"] / r["step_s_idle"] for r in rows if r["step_s_during_commit"]]
    return {
        "summary": True,
        "checkpoint_gib": round(size_mib / 1024, 3),
        "sync_stall_s": sync_stall,
        "async_stall_s": async_stall,
        "stall_ratio": round(async_stall / sync_stall, 4),
        "goal_met": async_stall / sync_stall <= 0.1,
        "sync_commit_s": median("sync", "commit_s"),
        "async_commit_s": median("async", "commit_s"),
        "step_slowdown_during_commit": round(statistics.median(during), 3) if during else None,
        "peak_extra_host_gib_sync": max(r["peak_extra_host_gib"] for r in rows if r["mode"] == "sync"),
        "peak_extra_host_gib_async": max(r["peak_extra_host_gib"] for r in rows if r["mode"] == "async"),
        "peak_rss_gib": round(rss.peak / GiB, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=2048, help="checkpoint bytes per save (default 2048)")
    parser.add_argument("--saves", type=int, default=3, help="saves of each mode, alternating (default 3)")
    parser.add_argument("--step-ms", type=float, default=100.0, help="stand-in step length (default 100)")
    parser.add_argument("--endpoint-url", help="use this S3 endpoint instead of starting moto_server")
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    torch.set_num_threads(1)
    server = None if args.endpoint_url else _start_moto()
    endpoint = args.endpoint_url or server[1]
    try:
        run(args, endpoint)
    finally:
        if server is not None:
            server[0].terminate()
            server[0].wait(10)


def run(args: argparse.Namespace, endpoint: str) -> None:
    import boto3  # the bench's own bucket

    bucket = f"bench-ckpt-{int(time.time())}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    options = StorageOptions(endpoint_url=endpoint)
    store = CheckpointStore(f"s3://{bucket}/runs", "bench", options=options)
    model, optimizer = stand_in(args.size_mib)
    # Keep two: moto holds every object in memory.
    ckpt = Checkpointer(store, model, optimizer, 0, 1, policy=RetentionPolicy(keep_last=2, keep_best=0))
    load = torch.randn(256, 256) / 16
    per_iter = step(load, model, 20) / 20
    iters = max(1, round(args.step_ms / 1000 / per_iter))
    rss, rows = RssPeak(), []
    for i in range(args.saves):
        for mode in ("sync", "async") if i % 2 == 0 else ("async", "sync"):
            row = one_save(mode, len(rows) + 1, ckpt, model, load, iters, rss)
            rows.append(row)
            print(json.dumps({"bench": "checkpoint", "checkpoint_mib": args.size_mib, **row}), flush=True)
    print(json.dumps({"bench": "checkpoint", **summary(rows, args.size_mib, rss)}), flush=True)


if __name__ == "__main__":
    main()
