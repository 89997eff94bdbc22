"""The operator at scale: a 1,000-point ScalingSweep against the kmock Kubernetes API emulator.

    .venv/bin/python bench/operator.py                  # 4 models x 250 data fractions
    .venv/bin/python bench/operator.py --fractions 25   # 100 points, a quick look

Starts kmock and `sphinxx operator run` (as processes, as in the tests), applies one sweep with no
`maxParallelRuns` limit, and prints JSON lines:

- seconds until every TrainingRun exists, until every RayJob is rendered and created, and until
  the sweep's roll-up counts every point;
- API requests per point until then, by verb, read from the API server's `/metrics`
  (`apiserver_request_total`), less the bench's own polling;
- requests per second at steady state: a quiet window after the roll-up, nothing changing, the
  bench not polling (the operator's timers keep running at their default intervals);
- the operator process's peak resident memory (VmHWM);
- one roll-up pass in-process (list the points + the pure roll-up), median of a few repeats.

Checkpoints go to a local directory and no MLflow is configured, so the numbers are the operator's own
(API traffic, validation, rendering), not storage or tracking latency. The operator runs with its
default intervals: the timings show the event-driven path.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for tests.services; last, so our operator/ never shadows the stdlib module

from tests.services.kube import start_kube  # noqa: E402
from tests.services.operator import start_operator  # noqa: E402

MODELS = ["debug", "debug-moe", "tinyllama-1.1b", "internlm2-7b"]


def emit(metric: str, value: float, unit: str, **extra) -> None:
    print(
        json.dumps({"bench": "operator", "metric": metric, "value": round(value, 3), "unit": unit, **extra}),
        flush=True,
    )


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def api_requests(url: str) -> dict[str, int]:
    """`apiserver_request_total` summed by verb, from the API server's Prometheus text."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    totals: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r'apiserver_request_total\{verb="(\w+)".*\} (\d+)$', line)
        if match:
            totals[match.group(1)] = totals.get(match.group(1), 0) + int(match.group(2))
    return totals


def wait_until(check, timeout: float, poll: float = 1.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(poll)
    raise TimeoutError(f"not done after {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=int, default=250, help="data fractions per model (x 4 models)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--repeats", type=int, default=5, help="in-process roll-up passes")
    parser.add_argument(
        "--quiet-window", type=float, default=30, help="seconds of steady state to count requests"
    )
    args = parser.parse_args()

    from kubernetes import client

    from sphinxx.operator import decide
    from sphinxx.sweep.points import admit_sweep

    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    kube = start_kube(workdir / "kube")
    # The defaults (settings.py), not the tests' 1 s intervals.
    op = start_operator(
        workdir / "operator", kube, env={"SPHINXX_RUN_INTERVAL": "15", "SPHINXX_SWEEP_INTERVAL": "15"}
    )
    try:
        api = client.CustomObjectsApi(kube.api_client())
        fractions = [round((i + 1) / args.fractions, 6) for i in range(args.fractions)]
        total = len(MODELS) * len(fractions)
        sweep = {
            "apiVersion": "sphinxx.dev/v1alpha1",
            "kind": "ScalingSweep",
            "metadata": {"name": "bench", "namespace": "bench"},
            "spec": {
                "base": {
                    "preset": "debug",
                    "storage": {"uri": f"file://{workdir}/checkpoints"},
                    # never read: no job runs here (admission only needs them named)
                    "data": {
                        "tokenizer": "s3://bench/tok",
                        "sources": [{"name": "a", "uri": "s3://bench/a"}],
                    },
                },
                "axes": {"models": MODELS, "dataFractions": fractions},
            },
        }

        polls = {"LIST": 0, "GET": 0}  # the bench's own requests, taken off the operator's count

        def count(plural: str, group: str = "sphinxx.dev", version: str = "v1alpha1") -> int:
            polls["LIST"] += 1
            return len(api.list_namespaced_custom_object(group, version, "bench", plural)["items"])

        before = api_requests(kube.url)
        start = time.monotonic()
        api.create_namespaced_custom_object("sphinxx.dev", "v1alpha1", "bench", "scalingsweeps", sweep)
        runs_s = wait_until(lambda: count("trainingruns") >= total, args.timeout)
        emit("trainingruns_created", runs_s, "s", points=total)
        jobs_s = wait_until(lambda: count("rayjobs", "ray.io", "v1") >= total, args.timeout - runs_s) + runs_s
        emit("rayjobs_created", jobs_s, "s", points=total, per_point_ms=round(1000 * jobs_s / total, 2))

        def rolled_up() -> bool:
            polls["GET"] += 1
            st = api.get_namespaced_custom_object(
                "sphinxx.dev", "v1alpha1", "bench", "scalingsweeps", "bench"
            )
            counts = (st.get("status") or {}).get("counts") or {}
            return counts.get("total") == total and counts.get("pending", 0) == total

        emit("sweep_rollup_complete", wait_until(rolled_up, args.timeout) + jobs_s, "s", points=total)
        elapsed = time.monotonic() - start
        after = api_requests(kube.url)
        by_verb = {
            verb: after.get(verb, 0) - before.get(verb, 0) - polls.get(verb, 0)
            for verb in sorted(set(after) | set(before))
        }
        by_verb = {verb: n for verb, n in by_verb.items() if n}
        emit("api_requests_per_point", sum(by_verb.values()) / total, "requests", points=total,
             by_verb={verb: round(n / total, 3) for verb, n in by_verb.items()})  # fmt: skip
        time.sleep(args.quiet_window)
        quiet = api_requests(kube.url)
        steady = {verb: quiet.get(verb, 0) - after.get(verb, 0) for verb in quiet}
        steady = {verb: n for verb, n in steady.items() if n and verb != "WATCH"}
        emit("steady_state_requests", sum(steady.values()) / args.quiet_window, "requests/s", points=total,
             window_s=args.quiet_window, by_verb=steady)  # fmt: skip
        emit("operator_peak_rss", peak_rss_mib(op.process.proc.pid), "MiB", points=total)

        obj = api.get_namespaced_custom_object("sphinxx.dev", "v1alpha1", "bench", "scalingsweeps", "bench")
        spec = admit_sweep("bench", obj["spec"]).spec
        passes = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            children = api.list_namespaced_custom_object(
                "sphinxx.dev", "v1alpha1", "bench", "trainingruns", label_selector="sphinxx.dev/sweep=bench"
            )["items"]
            decide.decide_sweep(obj, spec, children, None, "2027-01-01T00:00:00Z")
            passes.append(time.perf_counter() - t)
        emit("rollup_pass", statistics.median(passes), "s", points=total, repeats=args.repeats)
        emit("wall", elapsed, "s", points=total)
    finally:
        op.process.stop()
        kube.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
