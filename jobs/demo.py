"""`make demo`: a tiny SPHINX-X scaling sweep, end to end, on this machine.

    python -m sphinxx.jobs.demo [--size 240] [--workdir .demo] [--sweep FILE] [--fresh]

(`make micro-family` is the same with `--sweep examples/sweeps/micro-family.yaml --size 630
--workdir .micro`: a 3 x 3 sweep scored on held-out data and synthetic benchmarks, about 17 minutes on
2 idle cores.)

1. writes the synthetic multimodal set and its tokenizer to `<workdir>/data`
   (`sphinxx data synth`; nothing is downloaded);
2. runs `examples/sweeps/tiny.yaml` (2 model sizes x 2 data fractions) with the local
   sweep runner: the operator's sweep expansion, one Ray Train + DeepSpeed job per point
   on a local Ray, checkpoints committed to `<workdir>/<sweep>/checkpoints`, MLflow in
   `<workdir>/<sweep>/mlflow.db` (a parent run and one nested run per point);
3. prints the results table, the fitted scaling law and where to look.

A second run continues where the first stopped (finished points are skipped); `--fresh`
starts over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from sphinxx.jobs.data.synth import write_synth
from sphinxx.jobs.local import run_local

SWEEP = "examples/sweeps/tiny.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sphinxx.jobs.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=240, help="records in the synthetic set (default 240)")
    parser.add_argument("--workdir", default=".demo", help="where data, checkpoints, MLflow and logs go")
    parser.add_argument("--sweep", default=SWEEP, help=f"sweep file (default {SWEEP})")
    parser.add_argument("--fresh", action="store_true", help="delete the previous demo's state first")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    data_dir = workdir / "data"
    started = time.monotonic()
    if not ((data_dir / "data.yaml").exists() and (data_dir / "bench").exists()):
        print(
            f"[demo] writing the synthetic multimodal set ({args.size} records) to {data_dir} ...", flush=True
        )
        result = write_synth(str(data_dir.resolve()), size=args.size)
        print(f"[demo] {len(result.manifests)} sources, tokenizer with {result.vocab_size} ids", flush=True)
    else:
        print(f"[demo] reusing the synthetic set in {data_dir}", flush=True)

    print(
        f"[demo] running {args.sweep} on local Ray (progress lines below; logs in {workdir}/<sweep>/logs)",
        flush=True,
    )
    code = run_local(args.sweep, str(workdir), resume=True, storage_uri=None, tracking_uri=None, overrides=[])
    minutes = (time.monotonic() - started) / 60
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--fresh"]
    again = " ".join(["python -m sphinxx.jobs.demo", *given, "--fresh"])
    print(
        f"\n[demo] {'done' if code == 0 else 'FAILED'} in {minutes:.1f} min. "
        f"Open the MLflow UI with the command above (then http://127.0.0.1:5000); "
        f"`sphinxx ckpt ls <checkpoints>/<point>` lists a point's checkpoints; "
        f"`{again}` starts over.\n"
        f"[demo] The commands are in .venv: `source .venv/bin/activate` (or run `.venv/bin/sphinxx ...`)."
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
