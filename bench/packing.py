"""Packed vs padded micro-batches on the synthetic mixture: padding and training tokens/s.

Run:  .venv/bin/python bench/packing.py [--size 140] [--steps 6] [--micro-batch 8] [--seq-len 2048]

One process reads the synthetic set's stream with the job's data pipeline (`jobs.data.build_data`,
the debug preset, 448 canvas, skip tokens on) and packs every micro-batch as `data.packing:
packed` does. The padded baseline is the same micro-batch collated one sample per row
(`rows = arange`, exactly what `data.packing: padded` and the code before packing build), so both
layouts hold the same samples. Prints JSON lines:

- {"kind": "padding", "mode": ...}: decoder positions computed (rows x longest row) and the share
  of them that is right padding, over every micro-batch read;
- {"kind": "throughput", "mode": ...}: forward + backward of the `debug` flavor (random weights,
  fp32, the job's model from `jobs.build`) on each micro-batch in both layouts, interleaved so
  machine load hits both alike (after one warm-up round); tokens/s counts real positions only
  (text, image and skip tokens), so it is the rate at which the mixture is consumed;
- {"kind": "ratio", "baseline": "padded", ...}: packed / padded tokens/s and seconds per
  micro-batch, and the padded shares side by side.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import shutil
import statistics
import tempfile
import time


def _config(synth, args):
    from sphinxx.schema.run import load_config

    return load_config(
        preset="debug",
        data={"data": synth.data_section()},
        overrides=[
            "storage.uri=file:///tmp/unused",
            f"data.seq_len={args.seq_len}",
            f"data.canvas={args.canvas}",
            "data.num_workers=0",
            "data.packing=packed",
            f"train.global_batch={args.micro_batch}",
            f"train.micro_batch={args.micro_batch}",
            "train.precision=fp32",
            "train.steps=100000",
        ],
    )


def _padding(mode: str, batches, layouts) -> dict:
    from sphinxx.jobs.data.packing import computed_positions

    real = computed = 0
    for mb in batches:
        lengths = mb.batch.sequence_lengths()
        real += sum(lengths)
        computed += computed_positions(lengths, layouts[mode](mb.batch).rows.tolist())
    return {
        "kind": "padding",
        "mode": mode,
        "micro_batches": len(batches),
        "samples": sum(mb.num_samples for mb in batches),
        "real_positions": real,
        "computed_positions": computed,
        "padded_fraction": round(1 - real / computed, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=140, help="records in the synthetic set")
    parser.add_argument("--steps", type=int, default=6, help="micro-batches read and timed per layout")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per micro-batch")
    parser.add_argument("--seq-len", type=int, default=2048, help="data.seq_len (the row capacity)")
    parser.add_argument("--canvas", type=int, default=448, help="data.canvas")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    import torch

    from sphinxx.jobs.build import build_model
    from sphinxx.jobs.context import Worker
    from sphinxx.jobs.data.loader import build_data
    from sphinxx.jobs.data.synth import write_synth
    from sphinxx.schema.run import run_decoder_args

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench-packing-")
    atexit.register(shutil.rmtree, work, True)
    synth = write_synth(work, size=args.size)
    cfg = _config(synth, args)
    data = build_data(cfg.data, cfg.train, use_skip_token=cfg.model.use_skip_token)
    batches = []
    for mb in data:
        batches.append(mb)
        if len(batches) == args.steps:
            break
    layouts = {
        "padded": lambda b: dataclasses.replace(b, rows=torch.arange(b.rows.numel())),
        "packed": lambda b: b,
    }
    for mode in layouts:
        print(json.dumps(_padding(mode, batches, layouts)), flush=True)

    model, _ = build_model(cfg.model, run_decoder_args(cfg), Worker(), seed=0, precision="fp32")
    model.train()
    times: dict[str, list[float]] = {mode: [] for mode in layouts}
    losses: dict[str, float] = {mode: 0.0 for mode in layouts}
    for rep, mb in enumerate([batches[0], *batches]):  # the first round warms up
        for mode, layout in layouts.items():
            batch = layout(mb.batch)
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            out = model(batch)
            (out.ce_sum / max(out.num_targets, 1)).backward()
            if rep:
                times[mode].append(time.perf_counter() - start)
                losses[mode] += float(out.ce_sum.detach())
    real = sum(sum(mb.batch.sequence_lengths()) for mb in batches)
    rates = {}
    for mode, secs in times.items():
        rates[mode] = real / sum(secs)
        line = {
            "kind": "throughput",
            "mode": mode,
            "micro_batches": len(secs),
            "threads": args.threads,
            "sec_per_micro_batch": round(statistics.median(secs), 4),
            "tokens_per_s": round(rates[mode], 1),
            "ce_sum": round(losses[mode], 3),
        }
        print(json.dumps(line), flush=True)
    pad, pack = _padding("padded", batches, layouts), _padding("packed", batches, layouts)
    ratio = {
        "kind": "ratio",
        "baseline": "padded",
        "tokens_per_s": round(rates["packed"] / rates["padded"], 3),
        "sec_per_micro_batch": round(sum(times["packed"]) / sum(times["padded"]), 3),
        "padded_fraction_padded": pad["padded_fraction"],
        "padded_fraction_packed": pack["padded_fraction"],
        "goal_padded_fraction_packed_at_most": 0.05,
        "settings": {k: getattr(args, k) for k in ("size", "steps", "micro_batch", "seq_len", "canvas")},
    }
    print(json.dumps(ratio), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
