"""What a benchmark sample cap costs: the synthetic benchmarks scored at several caps (README, "A
sweep that shows the science", "What evaluation costs").

Run:  .venv/bin/python bench/eval_cap.py CHECKPOINT [CHECKPOINT ...] --tasks DIR
                                         [--caps 12,20] [--max-new-tokens 28] [--repeats 2]

CHECKPOINT is a run root (as `sphinxx eval score` takes it); DIR holds the task files
`sphinxx data synth` writes (`OUT/bench`). For each checkpoint, the task files of DIR are scored
as the job scores them (`jobs/benchmarks.py`, greedy, the "###" stop) at each cap, with one task
per generate call (batch size = cap) as `examples/sweeps/micro-family.yaml` sets it, the caps
interleaved `--repeats` times, on one torch thread (the job's `parallel.cpus_per_worker` default).

Prints one JSON object per line: {"kind": "setting"}, {"kind": "timing"} per checkpoint and cap
(the mean seconds of the repeats, each repeat's seconds), and {"kind": "ratio"} per checkpoint
and smaller cap: `ratio` = its seconds / the baseline's (the largest cap), measured in this run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    parser.add_argument(
        "--tasks", required=True, help="folder of task files (sphinxx data synth's OUT/bench)"
    )
    parser.add_argument("--caps", default="12,20", help="records per task, comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from sphinxx.jobs.benchmarks import BenchmarkEvaluator, read_benchmark
    from sphinxx.jobs.generate import DEFAULT_STOP, load_generator
    from sphinxx.model.generate import GenerationConfig

    torch.set_num_threads(1)
    caps = sorted(int(c) for c in args.caps.split(","))
    files = sorted(str(p) for p in Path(args.tasks).glob("*.jsonl"))
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, stop_strings=(DEFAULT_STOP,))
    emit({"kind": "setting", "caps": caps, "tasks": [Path(f).stem for f in files],
          "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "threads": 1})  # fmt: skip
    for checkpoint in args.checkpoints:
        generator = load_generator(checkpoint)
        benchmarks = {cap: [read_benchmark(f, None, cap, None) for f in files] for cap in caps}
        seconds: dict[int, list[float]] = {cap: [] for cap in caps}
        for _ in range(args.repeats):
            for cap in reversed(caps):
                evaluator = BenchmarkEvaluator(
                    benchmarks[cap], generator.encoder, generator.image, config, cap
                )
                started = time.monotonic()
                evaluator.run(generator.model)
                seconds[cap].append(round(time.monotonic() - started, 3))
        mean = {cap: sum(s) / len(s) for cap, s in seconds.items()}
        name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
        for cap in caps:
            emit({"kind": "timing", "checkpoint": name, "cap": cap, "records": cap * len(files),
                  "seconds": round(mean[cap], 3), "repeats": seconds[cap]})  # fmt: skip
        for cap in caps[:-1]:
            emit({"kind": "ratio", "checkpoint": name, "cap": cap, "baseline": f"cap {caps[-1]}",
                  "ratio": round(mean[cap] / mean[caps[-1]], 3)})  # fmt: skip


if __name__ == "__main__":
    main()
