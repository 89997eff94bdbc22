"""The data index, mixture and sampler at the paper's scale: 15M records in 13 sources.

Run from the repo root (prints JSON lines):

    .venv/bin/python bench/data_scale.py                         # 15M records (a few minutes)
    .venv/bin/python bench/data_scale.py --records 20000 --steps 5   # the smallest setting (the test)

A synthetic set in our source format is written to a temp folder, streaming, one source per
group of the paper's fine-tuning mixture (SPHINX-X, Table 9: 13 groups, about 15.3M samples) in
the groups' proportions: JSONL shards of `--records-per-shard` text-only records (the shard size
`sphinxx data import` writes), their `.idx` line indexes and a manifest each. Then, each in a fresh
process so that one measurement's caches and heap do not leak into the next:

- `mixture`: `load_mixture` (13 manifests read, the data-fraction subsets counted): seconds.
- `memory`: what one worker process holds for the mixture and the sampler after dealing its
  micro-batches of `--steps` global batches, and of a resume far into the second epoch: the RSS
  delta over the process before the mixture was built, the peak and current bytes that
  tracemalloc saw allocated (numpy reports its buffers to it), and the bytes of the mixture's
  cached arrays (`Mixture.cache_bytes`). Goal: < 1 GiB.
- `sampling`: the cost of drawing one global batch's stream positions -> (source, record) on one
  process (`Mixture.locate` over the whole batch, what the ranks' keys compute between them): the
  first step (caches cold), the mean and maximum of the next `--steps`, and a cold draw far into
  the second epoch (a resume).

  Both for each within-source order: `materialised` (numpy's permutation per source epoch, held
  in memory: the baseline, the order of streams before the Feistel one) and `feistel` (the
  default), with the ratios feistel / materialised in the same run.
- `startup`: a job's start-up to its first micro-batch, model build excluded: the tokenizer,
  `build_data` (mixture included) for rank 0 of `--world-size` with `--workers` DataLoader
  workers, and the first micro-batch out of the loader (worker start, key, ranged reads of the
  records and their line indexes, tokenisation, collation). Goal: < 60 s.

Each `ratio` row names its baseline: the goal, or the materialised order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # appended, not prepended: the repo's operator/ must not shadow the stdlib

# The paper's 13 groups (SPHINX-X, Table 9), samples in thousands, with their domain.
GROUPS = (
    ("language-dialog", "language", 1800),
    ("language-math", "language", 600),
    ("language-coding", "language", 80),
    ("vision-detection", "vision", 4900),
    ("vision-pose", "vision", 300),
    ("vision-classification", "vision", 1000),
    ("vision-grounding", "vision", 1000),
    ("vl-vqa", "vision-language", 700),
    ("vl-caption", "vision-language", 500),
    ("vl-instruction", "vision-language", 400),
    ("ocr-papertext", "ocr", 3000),
    ("ocr-layout", "ocr", 1000),
    ("set-of-mark", "set-of-mark", 10),
)
ORDERS = ("materialised", "feistel")  # mixture.MATERIALISED (the baseline) and mixture.FEISTEL
GIB = 2**30
GOAL_MEMORY = 1 * GIB
GOAL_STARTUP_S = 60.0


def emit(**fields) -> None:
    print(json.dumps({"bench": "data_scale", **fields}), flush=True)


def group_sizes(records: int) -> list[int]:
    """Records per group: the paper's proportions of `records`, at least one each."""
    total = sum(k for _, _, k in GROUPS)
    sizes = [max(1, round(records * k / total)) for _, _, k in GROUPS]
    sizes[3] += records - sum(sizes)  # the largest group takes the rounding
    return sizes


# ------------------------------------------------------------------------------ the synthetic set


def write_source(root: Path, name: str, domain: str, count: int, per_shard: int) -> None:
    """One source of fixed-width text-only records, streamed shard by shard (format.py's layout)."""
    from sphinxx.jobs.data.format import Manifest, ShardInfo, encode_index, line_offsets

    # Fixed width: the record number (%09d) three times, filled in by bytes formatting below.
    human = f'{{"from": "human", "value": "Describe item %09d of {name} in one line."}}'
    answer = '{"from": "gpt", "value": "It is item %09d."}'
    line = f'{{"id": "{name}-%09d", "conversations": [{human}, {answer}]}}\n'
    template = line.encode()
    shards = []
    (root / "shards").mkdir(parents=True)
    for number, lo in enumerate(range(0, count, per_shard)):
        data = b"".join(template % (i, i, i) for i in range(lo, min(count, lo + per_shard)))
        path, index = f"shards/{number:05d}.jsonl", f"shards/{number:05d}.idx"
        (root / path).write_bytes(data)
        offsets = line_offsets(data)
        (root / index).write_bytes(encode_index(offsets))
        shards.append(ShardInfo(path, len(offsets) - 1, len(data), hashlib.sha256(data).hexdigest(), index))
    manifest = Manifest(name, domain, count, tuple(shards), description="bench/data_scale.py")
    (root / "manifest.json").write_text(manifest.to_json())


def write_set(root: Path, records: int, per_shard: int) -> list[dict]:
    from sphinxx.jobs.data.synth import train_tokenizer

    sources = []
    for (name, domain, _), count in zip(GROUPS, group_sizes(records), strict=True):
        write_source(root / name, name, domain, count, per_shard)
        sources.append({"name": name, "uri": str(root / name), "domain": domain})
    train_tokenizer(0, per_source=40).save_pretrained(str(root / "tokenizer"))
    return sources


# ------------------------------------------------------------------------------ measurements


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def data_config(args: dict):
    from sphinxx.schema.run import load_config

    return load_config(
        preset="debug",
        data={"data": {"sources": args["sources"], "tokenizer": args["tokenizer"], "seq_len": 256}},
        overrides=[
            f"train.global_batch={args['global_batch']}",
            f"train.micro_batch={args['micro_batch']}",
            f"data.fraction={args['fraction']}",
            f"data.heldout_records={args['heldout']}",
            f"data.num_workers={args['workers']}",
        ],
    )


def measure_mixture(args: dict) -> dict:
    from sphinxx.jobs.data.mixture import load_mixture

    cfg = data_config(args)
    t0 = time.perf_counter()
    mixture = load_mixture(cfg.data)
    return {"seconds": time.perf_counter() - t0, "samples_per_epoch": mixture.samples_per_epoch}


def measure_memory(args: dict) -> dict:
    """One worker's mixture + sampler after dealing its keys of `steps` batches and of a resume."""
    from sphinxx.jobs.data.mixture import load_mixture
    from sphinxx.jobs.data.sampler import ElasticSampler

    cfg = data_config(args)
    rss0 = rss_bytes()
    tracemalloc.start()
    mixture = load_mixture(cfg.data)
    mixture.set_order(args["order"])
    g, world = args["global_batch"], args["world_size"]
    sampler = ElasticSampler(mixture, g, args["micro_batch"], 0, world)
    far = resume_step(mixture.samples_per_epoch, g)
    for step in [*range(args["steps"]), *range(far, far + args["steps"])]:
        for micro in range(sampler.accum_steps):
            sampler.key(step, micro)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "rss_delta_bytes": rss_bytes() - rss0,
        "traced_bytes": current,
        "traced_peak_bytes": peak,
        "cache_bytes": mixture.cache_bytes(),
    }


def resume_step(samples_per_epoch: int, global_batch: int) -> int:
    """A step far into the second epoch (a resume there draws that epoch's schedule cold)."""
    return (samples_per_epoch + samples_per_epoch // 2) // global_batch


def measure_sampling(args: dict) -> dict:
    import numpy as np

    from sphinxx.jobs.data.mixture import load_mixture

    mixture = load_mixture(data_config(args).data)
    mixture.set_order(args["order"])
    g = args["global_batch"]

    def draw(step: int) -> float:
        t0 = time.perf_counter()
        mixture.locate(np.arange(step * g, (step + 1) * g, dtype=np.int64))
        return time.perf_counter() - t0

    first = draw(0)
    warm = [draw(step) for step in range(1, args["steps"] + 1)]
    far = draw(resume_step(mixture.samples_per_epoch, g))
    return {"first_s": first, "warm_mean_s": sum(warm) / len(warm), "warm_max_s": max(warm), "resume_s": far}


def measure_startup(args: dict) -> dict:
    from sphinxx.jobs.data.loader import build_data
    from sphinxx.jobs.data.template import load_tokenizer

    cfg = data_config(args)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    t1 = time.perf_counter()
    stream = build_data(
        cfg.data, cfg.train, tokenizer=tokenizer, rank=0, world_size=args["world_size"], num_steps=2
    )
    t2 = time.perf_counter()
    first = next(iter(stream))
    t3 = time.perf_counter()
    return {
        "seconds": t3 - t0,
        "tokenizer_s": t1 - t0,
        "build_data_s": t2 - t1,
        "first_batch_s": t3 - t2,
        "samples": first.num_samples,
        "bad": len(first.bad),
    }


MEASURES = {
    "mixture": measure_mixture,
    "memory": measure_memory,
    "sampling": measure_sampling,
    "startup": measure_startup,
}


def in_fresh_process(name: str, args: dict) -> dict:
    """`MEASURES[name](args)` in a new interpreter: its own heap, no caches from an earlier one."""
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", name],
        input=json.dumps(args), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"measuring {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=15_000_000, help="records over the 13 sources")
    parser.add_argument("--records-per-shard", type=int, default=4096)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--world-size", type=int, default=16, help="ranks the batch is dealt over")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers at start-up")
    parser.add_argument("--steps", type=int, default=50, help="global batches drawn per measurement")
    parser.add_argument("--fractions", default="1.0", help="comma-separated data.fraction settings")
    parser.add_argument("--heldout", type=int, default=0, help="data.heldout_records")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)  # a child's job
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(MEASURES[args.measure](json.loads(sys.stdin.read()))), flush=True)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-scale-"))
    try:
        t0 = time.perf_counter()
        sources = write_set(tmp / "set", args.records, args.records_per_shard)
        emit(
            event="write", records=args.records, sources=len(sources),
            records_per_shard=args.records_per_shard, seconds=round(time.perf_counter() - t0, 2),
        )  # fmt: skip
        shared = {
            "sources": sources,
            "tokenizer": str(tmp / "set" / "tokenizer"),
            **{k: getattr(args, k) for k in ("global_batch", "micro_batch", "world_size", "workers")},
            **{k: getattr(args, k) for k in ("steps", "heldout")},
        }
        for fraction in (float(f) for f in args.fractions.split(",")):
            measure_setting({**shared, "fraction": fraction}, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def measure_setting(shared: dict, args: argparse.Namespace) -> None:
    """Every measurement of one data fraction, each in a fresh process."""
    setting = {"records": args.records, "fraction": shared["fraction"], "heldout": args.heldout}
    mix = in_fresh_process("mixture", shared)
    emit(
        phase="mixture",
        **setting,
        seconds=round(mix["seconds"], 3),
        samples_per_epoch=mix["samples_per_epoch"],
    )
    mem, samp = {}, {}
    for order in ORDERS:  # the baseline first: numpy's permutations, held in memory
        mem[order] = in_fresh_process("memory", {**shared, "order": order})
        emit(
            phase="memory", **setting, order=order, world_size=args.world_size, steps=args.steps, **mem[order]
        )
        samp[order] = in_fresh_process("sampling", {**shared, "order": order})
        ms = {f"{k[:-2]}_ms": round(v * 1000, 3) for k, v in samp[order].items()}
        emit(phase="sampling", **setting, order=order, global_batch=args.global_batch, **ms)
    new, old = ORDERS[1], ORDERS[0]
    emit(kind="ratio", **setting, metric="memory_vs_goal", baseline="1 GiB",
         value=round(mem[new]["rss_delta_bytes"] / GOAL_MEMORY, 4))  # fmt: skip
    for metric, a, b in (
        ("memory", mem[new]["rss_delta_bytes"], mem[old]["rss_delta_bytes"]),
        ("cache_bytes", mem[new]["cache_bytes"], mem[old]["cache_bytes"]),
        ("first_step", samp[new]["first_s"], samp[old]["first_s"]),
        ("warm_step", samp[new]["warm_mean_s"], samp[old]["warm_mean_s"]),
        ("resume_step", samp[new]["resume_s"], samp[old]["resume_s"]),
    ):
        emit(
            kind="ratio",
            **setting,
            metric=f"{metric}_{new}_vs_{old}",
            baseline=old,
            value=round(a / max(b, 1e-9), 4),
        )
    start = in_fresh_process("startup", shared)
    emit(
        phase="startup",
        **setting,
        workers=args.workers,
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in start.items()},
    )
    emit(
        kind="ratio",
        **setting,
        metric="startup_vs_goal",
        baseline="60 s",
        value=round(start["seconds"] / GOAL_STARTUP_S, 4),
    )


if __name__ == "__main__":
    sys.exit(main())
