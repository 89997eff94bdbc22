"""Throughput of the full data pipeline, 1 vs 2 DataLoader workers, and its cost per stage.

Run from the repo root (prints JSON lines):

    .venv/bin/python bench/data.py                    # synthetic set on the moto S3 server
    .venv/bin/python bench/data.py --store local      # the same from a local folder
    .venv/bin/python bench/data.py --size 280 --micro-batches 40 --workers 1,2,4

The pipeline measured is what training runs: ranged S3 reads of JSONL records and image GETs,
PNG decode, any-resolution processing (448 canvas, 2x2 grid, skip tokens), conv_v1_2
tokenisation with answer masks, collation into a SphinxBatch. Samples/s is counted from the
first micro-batch on (worker start-up excluded). The per-stage split comes from timers inside
the workers (fetch runs on the read-ahead thread, overlapped with the other stages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # appended, not prepended: the repo's operator/ must not shadow the stdlib

STAGES = ("fetch", "decode", "process", "tokenize", "collate")


def emit(**fields) -> None:
    print(json.dumps({"bench": "data", **fields}), flush=True)


def run(cfg, tokenizer, workers: int, micro_batches: int) -> dict:
    from sphinxx.jobs.data.loader import build_data

    cfg = replace(cfg, data=replace(cfg.data, num_workers=workers))
    stream = build_data(
        cfg.data,
        cfg.train,
        use_skip_token=cfg.model.use_skip_token,
        tokenizer=tokenizer,
        num_steps=micro_batches + 1,
    )
    totals = dict.fromkeys(STAGES, 0.0)
    samples, start = 0, None
    cpu0 = _cpu_seconds()
    for i, mb in enumerate(stream):
        if i == 0:
            start = time.perf_counter()  # the first batch pays worker start-up: not counted
            continue
        samples += mb.num_samples
        for stage in STAGES:
            totals[stage] += mb.timings.get(stage, 0.0)
    elapsed = time.perf_counter() - start
    # Workers have exited (and been reaped) here, so their CPU time is in RUSAGE_CHILDREN. On a
    # shared machine CPU seconds per sample are the stable number; wall-clock rates are not.
    cpu = _cpu_seconds() - cpu0
    return {"samples": samples, "seconds": elapsed, "stages": totals, "cpu_s": cpu}


def _cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", choices=("s3", "local"), default="s3")
    parser.add_argument("--size", type=int, default=140, help="records in the synthetic set")
    parser.add_argument("--micro-batches", type=int, default=30, help="micro-batches timed per setting")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--workers", default="1,2", help="comma-separated DataLoader worker counts")
    args = parser.parse_args()

    from sphinxx.jobs.data.synth import write_synth
    from sphinxx.jobs.data.template import load_tokenizer
    from sphinxx.schema.run import load_config

    tmp = tempfile.mkdtemp(prefix="bench-data-")
    server = None
    if args.store == "s3":
        from tests.services.s3 import start_s3

        server = start_s3(Path(tmp))
        os.environ.update(server.env)
        root = f"s3://{server.new_bucket('bench')}/synth"
    else:
        root = os.path.join(tmp, "synth")
    try:
        t0 = time.perf_counter()
        result = write_synth(root, args.size, seed=0)
        emit(event="synth", store=args.store, records=args.size, seconds=round(time.perf_counter() - t0, 2))
        tokenizer = load_tokenizer(result.tokenizer_uri)
        sources = [
            {"name": name, "uri": f"{root}/{name}", "domain": m.domain}
            for name, m in result.manifests.items()
        ]
        cfg = load_config(
            preset="debug",
            data={"data": {"sources": sources, "seq_len": 2048}},
            overrides=[f"train.global_batch={args.micro_batch}", f"train.micro_batch={args.micro_batch}"],
        )
        rates = {}
        for workers in (int(w) for w in args.workers.split(",")):
            res = run(cfg, tokenizer, workers, args.micro_batches)
            rates[workers] = res["samples"] / res["seconds"]
            emit(
                store=args.store,
                workers=workers,
                samples=res["samples"],
                seconds=round(res["seconds"], 3),
                samples_per_s=round(rates[workers], 2),
                cpu_ms_per_sample=round(1000 * res["cpu_s"] / max(res["samples"], 1), 1),
                cpus=os.cpu_count(),
                load_avg_1m=round(os.getloadavg()[0], 2),
            )
            busy = sum(res["stages"].values())
            for stage in STAGES:
                emit(
                    store=args.store,
                    workers=workers,
                    stage=stage,
                    ms_per_sample=round(1000 * res["stages"][stage] / max(res["samples"], 1), 2),
                    share=round(res["stages"][stage] / busy, 3) if busy else 0.0,
                )
        if 1 in rates and 2 in rates:
            emit(store=args.store, metric="speedup_2_vs_1_workers", value=round(rates[2] / rates[1], 2))
    finally:
        if server is not None:
            server.process.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
