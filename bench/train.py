"""Training throughput of the `debug` flavor on CPU: ZeRO-0 vs ZeRO-2, skip tokens vs none.

Run:  .venv/bin/python bench/train.py [--world 2] [--steps 4] [--size 140] [--threads 1]

The real training step (`sphinxx.jobs.loop.train_step` on the model of `jobs.build` and the
DeepSpeed engine of `jobs.engine`, global-target loss normalisation, data from `jobs.data` on
the synthetic set, 448 canvas) runs in `--world` gloo processes for four variants built side by
side in the same processes: ZeRO 0 / 2 x skip tokens on / off. Timed steps are interleaved round-robin across
the variants (after one warm-up step each), so machine load hits all of them alike. Prints JSON lines:

- {"kind": "variant", ...}: per variant, median seconds per optimizer step, tokens/s (every LLM
  position: text, image and skip tokens), samples/s, MFU (the job's `metrics.FlopModel`: FLOPs of
  the real sequence lengths; peak an estimate, an fp32 matmul measured per worker thread), visual
  tokens per image sample;
- {"kind": "ratio", ...}: ZeRO-2 / ZeRO-0 and skip / no-skip (samples/s and step time: without
  skip tokens the same samples carry more positions, so tokens/s alone would hide the gain).

Each variant reads the same global batches (same seed); only the padded cells differ.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

VARIANTS = [(0, True), (0, False), (2, True), (2, False)]  # (ZeRO stage, skip tokens)


def _config(synth, zero_stage: int, skip: bool, world: int):
    from sphinxx.schema.run import load_config

    return load_config(
        preset="debug",
        data={"data": synth.data_section()},
        overrides=[
            "storage.uri=file:///tmp/unused",
            "data.seq_len=2048",
            "data.canvas=448",
            f"model.use_skip_token={skip}",
            f"parallel.zero_stage={zero_stage}",
            f"train.global_batch={2 * world}",
            "train.micro_batch=1",
            "train.steps=1000",
        ],
    )


def _worker(rank: int, world: int, synth, steps: int, threads: int) -> dict | None:
    import torch
    import torch.distributed as dist

    from sphinxx.jobs.build import build_model
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.data.loader import build_data
    from sphinxx.jobs.engine import build_engine
    from sphinxx.jobs.loop import train_step
    from sphinxx.jobs.metrics import flop_model
    from sphinxx.schema.run import run_decoder_args

    torch.set_num_threads(threads)
    worker = Worker(rank=rank, world_size=world)
    runs = []
    for zero_stage, skip in VARIANTS:
        cfg = _config(synth, zero_stage, skip, world)
        data = build_data(
            cfg.data, cfg.train, use_skip_token=cfg.model.use_skip_token, rank=rank, world_size=world
        )
        model, _ = build_model(
            cfg.model, run_decoder_args(cfg), worker, seed=cfg.train.seed, precision=cfg.train.precision
        )
        engine, _ = build_engine(model, cfg.train, cfg.parallel, worker, data.accum_steps)
        runs.append((model, engine, data.iter_steps(), flop_model(model, worker.device), []))
    # One peak for all variants (best of the measurements), so MFU ratios are throughput ratios.
    peak = max((run[3].peak for run in runs), key=lambda p: p.flops)
    for run in runs:
        run[3].peak = peak
    for rep in range(steps + 1):
        for model, engine, batches, _, out in runs:
            group = next(batches)
            dist.barrier()
            start = time.perf_counter()
            stats = train_step(engine, model, group, worker)
            dist.barrier()
            if rep:  # rep 0 warms up caches and lazy state
                out.append((time.perf_counter() - start, stats))
    if rank:
        return None
    results = []
    for (zero_stage, skip), (_, _, _, flops, out) in zip(VARIANTS, runs, strict=True):
        secs = statistics.median(t for t, _ in out)
        tokens = sum(s.tokens for _, s in out) / len(out)
        samples = sum(s.samples for _, s in out) / len(out)
        image_samples = sum(s.views > 0 for _, s in out)
        results.append(
            {
                "kind": "variant",
                "zero_stage": zero_stage,
                "skip_tokens": skip,
                "world_size": world,
                "threads_per_worker": threads,
                "steps": len(out),
                "sec_per_step": round(secs, 3),
                "tokens_per_s": round(tokens / secs, 1),
                "samples_per_s": round(samples / secs, 3),
                "mfu": round(statistics.median(flops.mfu(s, t, world) for t, s in out), 4),
                "positions_per_step": tokens,
                "visual_tokens_per_step": sum(s.image_tokens for _, s in out) / len(out),
                "skipped_views": sum(s.skipped_views for _, s in out),
                "steps_with_images": image_samples,
                "loss_last": round(out[-1][1].loss, 4),
            }
        )
    return {"results": results}


def _spawn_entry(rank, world, port, synth, steps, threads, queue):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = _worker(rank, world, synth, steps, threads)
        if result is not None:
            queue.put(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="gloo worker processes")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--size", type=int, default=140, help="records in the synthetic set")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    from sphinxx.jobs.data.synth import write_synth

    work = tempfile.mkdtemp(prefix="bench-train-")
    atexit.register(shutil.rmtree, work, True)  # the synthetic set goes with the process
    synth = write_synth(work, size=args.size)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_spawn_entry, args=(r, args.world, port, synth, args.steps, args.threads, queue))
        for r in range(args.world)
    ]
    for p in procs:
        p.start()
    results = json.loads(queue.get(timeout=3600))["results"]
    for p in procs:
        p.join()
    by = {(r["zero_stage"], r["skip_tokens"]): r for r in results}
    for r in results:
        print(json.dumps(r), flush=True)
    for skip in (True, False):
        print(
            json.dumps(
                {
                    "kind": "ratio",
                    "what": "zero2/zero0",
                    "skip_tokens": skip,
                    "tokens_per_s": round(by[2, skip]["tokens_per_s"] / by[0, skip]["tokens_per_s"], 3),
                    "sec_per_step": round(by[2, skip]["sec_per_step"] / by[0, skip]["sec_per_step"], 3),
                }
            )
        )
    for zero in (0, 2):
        print(
            json.dumps(
                {
                    "kind": "ratio",
                    "what": "skip/no_skip",
                    "zero_stage": zero,
                    "samples_per_s": round(
                        by[zero, True]["samples_per_s"] / by[zero, False]["samples_per_s"], 3
                    ),
                    "sec_per_step": round(
                        by[zero, True]["sec_per_step"] / by[zero, False]["sec_per_step"], 3
                    ),
                    "positions_per_step": round(
                        by[zero, True]["positions_per_step"] / by[zero, False]["positions_per_step"], 3
                    ),
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
