"""The operator at scale: a 1,000-point ScalingSweep against the kmock Kubernetes API emulator.

    .venv/bin/python bench/operator.py                  # 4 models x 250 data fractions
    .venv/bin/python bench/operator.py --fractions 25   # 100 points, a quick look
    .venv/bin/python bench/operator.py --mlflow         # the same with MLflow on, vs. without
    .venv/bin/python bench/operator.py --live           # every point running: the live status's cost

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

`--mlflow` measures the sweep twice in one run, each with a fresh API server and operator: first
without MLflow (the baseline), then with `MLFLOW_TRACKING_URI` pointing at a real `mlflow server`
on PostgreSQL (started here as the tests start theirs, or `--tracking-uri` with `--mlflow-log`,
the server's log, for one already running). Each mode prints its lines with `"mode"`; the MLflow
mode adds the seconds until every point's status names its MLflow run, the MLflow requests by
endpoint (from the server's access log), the child runs found under the parent (one per point),
and ratios against the baseline (`"baseline": "no MLflow"`): time to all RayJobs, peak memory,
status PATCHes.

`--live` (bench/operator_live.py) measures what the live status costs (docs/operator.md, "Live
progress"): checkpoints and progress records on a moto S3 server with its request recorder on,
every RayJob set Running (the bench stands in for KubeRay), and every point's job standing in as
a thread that overwrites its `progress.json` every `--write-interval` seconds (the job's default
`train.progress_seconds`). It prints, per minute over a `--live-window` of steady training: the
API requests by verb, the status PATCHes of TrainingRuns and of the sweep, and the operator's S3
requests split into progress-record GETs and the checkpoint reads it made before this feature
(the baseline: `progress_vs_checkpoint_reads` is the ratio, measured in the same window); how old
each point's `status.progress` is at the end; how often each point's status took a new record
(`status_refresh_gap_max`: the longest time between two changes of a point's `status.progress`
that a watch saw, the goal being at most a minute); then the same counts over a
`--quiet-window` after the writers stop and every status shows the last record (nothing changes:
no PATCH; the operator's stale threshold is set beyond the bench, `--progress-stale`, since a
record that stops moving turns `Stale` once per point, a PATCH and an event each).
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # for tests.services; last, so our operator/ never shadows the stdlib module

from operator_live import live  # noqa: E402 - bench/operator_live.py, beside this script

from tests.services.kube import start_kube  # noqa: E402
from tests.services.mlflow_server import start_mlflow  # noqa: E402
from tests.services.operator import start_operator  # noqa: E402
from tests.services.postgres import start_postgres  # noqa: E402

MODELS = ["debug", "debug-moe", "tinyllama-1.1b", "internlm2-7b"]


MODE: dict[str, str] = {}  # {"mode": ...} while a --mlflow run measures one of its two modes


def emit(metric: str, value: float, unit: str, **extra) -> None:
    line = {"bench": "operator", "metric": metric, "value": round(value, 3), "unit": unit, **MODE, **extra}
    print(json.dumps(line), flush=True)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def status_patches(url: str) -> int:
    """PATCHes of our objects' status subresource so far (`apiserver_request_total`)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    resource = r'resource="(?:trainingruns|scalingsweeps)",subresource="status"'
    found = re.findall(r'apiserver_request_total\{verb="PATCH",' + resource + r"\} (\d+)", text)
    return sum(int(n) for n in found)


def mlflow_requests(log: Path, offset: int) -> dict[str, int]:
    """REST calls in an MLflow server's access log after byte `offset`, by method and endpoint."""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    calls: dict[str, int] = {}
    for method, path in re.findall(r'"(GET|POST|PATCH|DELETE) /(?:ajax-)?api/2\.0/mlflow/([\w/-]+)', text):
        calls[f"{method} {path}"] = calls.get(f"{method} {path}", 0) + 1
    return calls


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


def sweep_manifest(workdir: Path, fractions: list[float], experiment: str) -> dict:
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {
            "base": {
                "preset": "debug",
                "storage": {"uri": f"file://{workdir}/checkpoints"},
                "tracking": {"experiment": experiment},  # the store: the operator's MLFLOW_TRACKING_URI
                # never read: no job runs here (admission only needs them named)
                "data": {
                    "tokenizer": "s3://bench/tok",
                    "sources": [{"name": "a", "uri": "s3://bench/a"}],
                },
            },
            "axes": {"models": MODELS, "dataFractions": fractions},
        },
    }


def measure(args: argparse.Namespace, workdir: Path, tracking_uri: str | None) -> dict[str, float]:
    """One sweep against a fresh API server and operator; prints its lines, returns what ratios need."""
    from kubernetes import client

    kube = start_kube(workdir / "kube")
    # The defaults (settings.py), not the tests' 1 s intervals.
    env = {"SPHINXX_RUN_INTERVAL": "15", "SPHINXX_SWEEP_INTERVAL": "15"}
    env |= {"MLFLOW_TRACKING_URI": tracking_uri} if tracking_uri else {}
    op = start_operator(workdir / "operator", kube, env=env)
    try:
        api = client.CustomObjectsApi(kube.api_client())
        fractions = [round((i + 1) / args.fractions, 6) for i in range(args.fractions)]
        total = len(MODELS) * len(fractions)
        experiment = f"bench-operator-{uuid.uuid4().hex[:8]}"
        sweep = sweep_manifest(workdir, fractions, experiment)
        polls = {"LIST": 0, "GET": 0}  # the bench's own requests, taken off the operator's count

        def count(plural: str, group: str = "sphinxx.dev", version: str = "v1alpha1") -> int:
            polls["LIST"] += 1
            return len(api.list_namespaced_custom_object(group, version, "bench", plural)["items"])

        before, patches_before = api_requests(kube.url), status_patches(kube.url)
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
        out = {"rayjobs_created": jobs_s}
        if tracking_uri:

            def tracked() -> bool:
                polls["LIST"] += 1
                runs = api.list_namespaced_custom_object("sphinxx.dev", "v1alpha1", "bench", "trainingruns")
                return sum(bool((r.get("status") or {}).get("mlflowRunId")) for r in runs["items"]) >= total

            emit("mlflow_runs_in_status", wait_until(tracked, args.timeout), "s", points=total)
        elapsed = time.monotonic() - start
        after, patches = api_requests(kube.url), status_patches(kube.url) - patches_before
        by_verb = {
            verb: after.get(verb, 0) - before.get(verb, 0) - polls.get(verb, 0)
            for verb in sorted(set(after) | set(before))
        }
        by_verb = {verb: n for verb, n in by_verb.items() if n}
        emit("api_requests_per_point", sum(by_verb.values()) / total, "requests", points=total,
             by_verb={verb: round(n / total, 3) for verb, n in by_verb.items()})  # fmt: skip
        emit("status_patches", patches, "requests", points=total, per_point=round(patches / total, 3))
        out["status_patches"] = patches
        time.sleep(args.quiet_window)
        quiet = api_requests(kube.url)
        steady = {verb: quiet.get(verb, 0) - after.get(verb, 0) for verb in quiet}
        steady = {verb: n for verb, n in steady.items() if n and verb != "WATCH"}
        emit("steady_state_requests", sum(steady.values()) / args.quiet_window, "requests/s", points=total,
             window_s=args.quiet_window, by_verb=steady)  # fmt: skip
        draining = status_patches(kube.url) - patches_before - patches
        emit("status_patches_after", draining, "requests", points=total, window_s=args.quiet_window)
        out["operator_peak_rss"] = peak_rss_mib(op.process.proc.pid)
        emit("operator_peak_rss", out["operator_peak_rss"], "MiB", points=total)
        if tracking_uri:
            out["experiment_runs"] = child_runs_found(tracking_uri, experiment, total)
        rollup_pass(api, args.repeats, total)
        emit("wall", elapsed, "s", points=total)
        return out
    finally:
        op.process.stop()
        kube.process.stop()


def child_runs_found(tracking_uri: str, experiment: str, total: int) -> int:
    """One parent and exactly one child run per point (by the TrainingRun uid tag)."""
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment).experiment_id
    runs, token = [], None
    while True:
        page = mlflow.search_runs([exp], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    uids = [r.data.tags.get("sphinxx.dev/trainingrun-uid") for r in runs]
    children = [u for u in uids if u]
    emit("mlflow_runs", len(runs), "runs", points=total, children=len(children),
         distinct_points=len(set(children)), parents=len(uids) - len(children))  # fmt: skip
    return len(runs)


def rollup_pass(api, repeats: int, total: int) -> None:
    """One roll-up pass in-process (list the points + the pure roll-up), median of `repeats`."""
    from sphinxx.operator import decide
    from sphinxx.sweep.points import admit_sweep

    obj = api.get_namespaced_custom_object("sphinxx.dev", "v1alpha1", "bench", "scalingsweeps", "bench")
    spec = admit_sweep("bench", obj["spec"]).spec
    passes = []
    for _ in range(repeats):
        t = time.perf_counter()
        children = api.list_namespaced_custom_object(
            "sphinxx.dev", "v1alpha1", "bench", "trainingruns", label_selector="sphinxx.dev/sweep=bench"
        )["items"]
        decide.decide_sweep(obj, spec, children, None, "2027-01-01T00:00:00Z")
        passes.append(time.perf_counter() - t)
    emit("rollup_pass", statistics.median(passes), "s", points=total, repeats=repeats)


def compare(args: argparse.Namespace, workdir: Path) -> None:
    """--mlflow: the baseline without MLflow, then with a real MLflow server; ratios of the two."""
    pg = server = None
    try:
        if args.tracking_uri:
            uri, log = args.tracking_uri, args.mlflow_log
        else:
            pg = start_postgres(workdir / "postgres")
            server = start_mlflow(workdir / "mlflow", backend_store_uri=pg.create_database("mlflow"))
            uri, log = server.tracking_uri, server.process.log_path
        MODE["mode"] = "baseline"
        base = measure(args, workdir / "baseline", None)
        MODE["mode"] = "mlflow"
        offset = log.stat().st_size if log else 0
        tracked = measure(args, workdir / "mlflow-on", uri)
        points = len(MODELS) * args.fractions
        if log:
            calls = mlflow_requests(log, offset)
            emit("mlflow_requests", sum(calls.values()), "requests", points=points,
                 per_point=round(sum(calls.values()) / points, 3), by_endpoint=calls)  # fmt: skip
        MODE["mode"] = "ratio"
        for metric in ("rayjobs_created", "operator_peak_rss", "status_patches"):
            ratio = tracked[metric] / base[metric] if base[metric] else float("nan")
            emit(f"{metric}_ratio", ratio, "x", points=points, baseline="no MLflow",
                 mlflow=round(tracked[metric], 3), no_mlflow=round(base[metric], 3))  # fmt: skip
    finally:
        if server is not None:
            server.process.stop()
        if pg is not None:
            pg.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=int, default=250, help="data fractions per model (x 4 models)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--repeats", type=int, default=5, help="in-process roll-up passes")
    parser.add_argument(
        "--quiet-window", type=float, default=30, help="seconds of steady state to count requests"
    )
    parser.add_argument("--mlflow", action="store_true", help="measure with MLflow on, against the baseline")
    parser.add_argument("--tracking-uri", help="--mlflow: a running MLflow server (default: start one)")
    parser.add_argument("--mlflow-log", type=Path, help="--mlflow: that server's log (for its request count)")
    parser.add_argument("--live", action="store_true", help="running points with progress records")
    parser.add_argument("--write-interval", type=float, default=30, help="--live: seconds between records")
    parser.add_argument("--progress-interval", type=float, default=45, help="--live: the operator's")
    parser.add_argument("--run-interval", type=float, default=15, help="--live: the operator's timer")
    parser.add_argument("--live-window", type=float, default=120, help="--live: seconds measured")
    parser.add_argument(
        "--checkpoint-read-interval", type=float, default=60,
        help="--live: the operator's SPHINXX_CHECKPOINT_READ_INTERVAL (0: list checkpoints on every pass)",
    )  # fmt: skip
    parser.add_argument(
        "--progress-stale", type=float, default=3600,
        help="--live: the operator's SPHINXX_PROGRESS_STALE (default beyond the bench's windows)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.live:
        return live(args, emit, wait_until, MODELS)
    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    try:
        if args.mlflow:
            compare(args, workdir)
        else:
            measure(args, workdir, None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
