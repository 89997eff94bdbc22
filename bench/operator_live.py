"""`bench/operator.py --live`: what the live status costs with every point of a sweep running.

See bench/operator.py's docstring for what is printed. The bench stands in for KubeRay (it sets
each RayJob Running) and for each point's job (a thread pool overwrites each run's
`progress.json` on the moto S3 server with the record format the job writes); the operator, kmock
and moto are the processes the tests use. moto's request recorder counts the S3 requests.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.services.kube import start_kube
from tests.services.operator import start_operator
from tests.services.s3 import start_s3

NS = "bench"
SECONDS_PER_STEP = 2.0
TOTAL_STEPS = 100_000


def _record(run_id: str, step: int) -> bytes:
    from sphinxx.schema.progress import ProgressRecord, encode

    return encode(
        ProgressRecord(run_id=run_id, attempt=1, step=step, total_steps=TOTAL_STEPS, loss=3.0,
                       tokens_per_s=4096.0, mfu=0.4, seconds_per_step=SECONDS_PER_STEP,
                       eta_seconds=(TOTAL_STEPS - step) * SECONDS_PER_STEP, time=time.time())
    )  # fmt: skip


class Jobs:
    """Every point's job, as far as the operator can tell: a progress record overwritten on S3."""

    def __init__(self, s3: Any, bucket: str, run_ids: list[str], every: float):
        self.s3, self.bucket, self.run_ids, self.every = s3, bucket, run_ids, every
        self.stop = threading.Event()
        self.started = time.time()
        self.last_step = 0  # of the last round that reached every run
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def step(self) -> int:
        return int((time.time() - self.started) / SECONDS_PER_STEP) + 1

    def _put(self, run_id: str, step: int) -> None:
        key = f"sweeps/{run_id}/progress.json"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=_record(run_id, step))

    def _loop(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            while not self.stop.is_set():
                begun, step = time.monotonic(), self.step()
                list(pool.map(self._put, self.run_ids, [step] * len(self.run_ids)))
                self.last_step = step
                self.stop.wait(max(0.0, self.every - (time.monotonic() - begun)))


def _recorded(url: str, path: Path) -> Counter:
    """S3 requests moto recorded since the last reset, by kind; then reset."""
    kinds: Counter = Counter()
    for line in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(line)
        method, target = entry["method"], entry["url"].split("?", 1)[0]
        if target.endswith("/progress.json"):
            kinds["progress_put" if method == "PUT" else f"progress_{method.lower()}"] += 1
        else:
            kinds[f"other_{method.lower()}"] += 1
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/recorder/reset-recording", method="POST"))
    return kinds


def _patches(kube: Any, before: dict, after: dict) -> dict[str, int]:
    out = {}
    for (verb, resource, sub), n in after.items():
        if verb != "WATCH" and n - before.get((verb, resource, sub), 0):
            out[f"{verb} {resource}{'/' + sub if sub else ''}"] = n - before.get((verb, resource, sub), 0)
    return out


def _per_minute(counts: dict[str, int], seconds: float) -> dict[str, float]:
    return {k: round(v * 60 / seconds, 1) for k, v in sorted(counts.items())}


def _ages(api: Any) -> list[float]:
    """Seconds since each running point's status.progress was written by its job."""
    now, ages = time.time(), []
    for run in api.list_namespaced_custom_object("sphinxx.dev", "v1alpha1", NS, "trainingruns")["items"]:
        stamp = ((run.get("status") or {}).get("progress") or {}).get("updatedAt")
        ages.append(now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 1e9)
    return ages


def _steps(api: Any) -> set[int | None]:
    """The live steps the points' statuses show."""
    runs = api.list_namespaced_custom_object("sphinxx.dev", "v1alpha1", NS, "trainingruns")["items"]
    return {((r.get("status") or {}).get("progress") or {}).get("step") for r in runs}


class Refreshes:
    """When each point's `status.progress` changed, as a watch on the TrainingRuns sees it."""

    def __init__(self, api: Any):
        self.api, self.seen = api, {}
        self.changes: dict[str, list[float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        from kubernetes import watch

        group = ("sphinxx.dev", "v1alpha1", NS, "trainingruns")
        version = self.api.list_namespaced_custom_object(*group)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            stream = watch.Watch().stream(
                self.api.list_namespaced_custom_object, *group, resource_version=version, timeout_seconds=5
            )
            for event in stream:
                obj = event["object"]
                version = obj["metadata"]["resourceVersion"]
                stamp = ((obj.get("status") or {}).get("progress") or {}).get("updatedAt")
                name = obj["metadata"]["name"]
                if stamp and self.seen.get(name) != stamp:
                    self.seen[name] = stamp
                    self.changes.setdefault(name, []).append(time.monotonic())

    def gaps(self, since: float, until: float) -> list[float]:
        """Per point, the longest stretch of [since, until] without a change of its progress."""
        out = []
        for name in self.seen:
            times = [since, *(t for t in self.changes.get(name, []) if since < t < until), until]
            out.append(max(b - a for a, b in zip(times, times[1:], strict=False)))
        return out


def _start(workdir: Path, args: Any) -> tuple[Any, Any, Any, Path]:
    recording = workdir / "moto-recording.jsonl"
    moto_env = {"MOTO_ENABLE_RECORDING": "1", "MOTO_RECORDER_FILEPATH": str(recording)}
    s3 = start_s3(workdir / "s3", env=moto_env)
    kube = start_kube(workdir / "kube")
    intervals = {
        "SPHINXX_RUN_INTERVAL": str(args.run_interval),
        "SPHINXX_SWEEP_INTERVAL": str(args.run_interval),
        "SPHINXX_PROGRESS_INTERVAL": str(args.progress_interval),
        "SPHINXX_CHECKPOINT_READ_INTERVAL": str(args.checkpoint_read_interval),
        "SPHINXX_PROGRESS_STALE": str(args.progress_stale),
    }
    op = start_operator(workdir / "operator", kube, env={**s3.env, **intervals})
    return s3, kube, op, recording


def _sweep(fractions: list[float], models: list[str], bucket: str) -> dict[str, Any]:
    data = {"tokenizer": f"s3://{bucket}/tok", "sources": [{"name": "a", "uri": f"s3://{bucket}/a"}]}
    return {
        "apiVersion": "sphinxx.dev/v1alpha1",
        "kind": "ScalingSweep",
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {
            "base": {"preset": "debug", "storage": {"uri": f"s3://{bucket}/sweeps"}, "data": data},
            "axes": {"models": models, "dataFractions": fractions},
        },
    }


def _all_running(api: Any, total: int, wait_until: Any, timeout: float) -> list[str]:
    """Wait for every RayJob, set each Running as KubeRay would; the runs' ids."""
    group = ("ray.io", "v1", NS, "rayjobs")
    wait_until(lambda: len(api.list_namespaced_custom_object(*group)["items"]) >= total, timeout)
    status = {"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}}
    for job in api.list_namespaced_custom_object(*group)["items"]:
        api.patch_namespaced_custom_object_status(*group, job["metadata"]["name"], status)
    runs = api.list_namespaced_custom_object("sphinxx.dev", "v1alpha1", NS, "trainingruns")["items"]
    return [r["status"]["runId"] for r in runs]


def live(args: Any, emit: Any, wait_until: Any, models: list[str]) -> int:
    from kubernetes import client

    workdir = Path(tempfile.mkdtemp(prefix="bench-operator-live-"))
    s3, kube, op, recording = _start(workdir, args)
    jobs = None
    try:
        api = client.CustomObjectsApi(kube.api_client())
        s3_client = s3.client()
        bucket = s3.new_bucket("bench")
        fractions = [round((i + 1) / args.fractions, 6) for i in range(args.fractions)]
        total = len(models) * len(fractions)
        api.create_namespaced_custom_object("sphinxx.dev", "v1alpha1", NS, "scalingsweeps",
                                            _sweep(fractions, models, bucket))  # fmt: skip
        run_ids = _all_running(api, total, wait_until, args.timeout)
        jobs = Jobs(s3_client, bucket, run_ids, args.write_interval)
        jobs.thread.start()
        # Warm-up: every point shows a progress record (one read interval after the first writes).
        wait_until(lambda: max(_ages(api)) < 1e8, args.timeout)
        refreshes = Refreshes(api)
        refreshes.thread.start()
        time.sleep(args.progress_interval + args.run_interval)  # the watch has seen each point once
        _recorded(s3.endpoint_url, recording)
        before, since = kube.request_totals(), time.monotonic()
        time.sleep(args.live_window)
        api_live, until = _patches(kube, before, kube.request_totals()), time.monotonic()
        refreshes.stop.set()
        s3_live = _recorded(s3.endpoint_url, recording)
        ages = _ages(api)
        _emit_window(emit, "live", api_live, s3_live, args.live_window, total)
        reads = s3_live["progress_get"]
        checkpoint = sum(v for k, v in s3_live.items() if k.startswith("other_") and k != "other_put")
        emit("progress_vs_checkpoint_reads", reads / max(checkpoint, 1), "ratio", points=total,
             baseline="the operator's checkpoint reads (GET/HEAD/LIST) in the same window")  # fmt: skip
        emit("status_progress_age_max", max(ages), "s", points=total,
             median=round(statistics.median(ages), 1), write_interval=args.write_interval,
             progress_interval=args.progress_interval)  # fmt: skip
        gaps = refreshes.gaps(since, until)
        emit("status_refresh_gap_max", max(gaps), "s", points=total, median=round(statistics.median(gaps), 1),
             seen=len(gaps), window_s=args.live_window, goal_s=60)  # fmt: skip

        jobs.stop.set()
        jobs.thread.join()
        final = jobs.last_step  # every point's status shows its last record: from here nothing changes
        wait_until(lambda: _steps(api) == {final}, 4 * (args.progress_interval + args.run_interval) + 60)
        _recorded(s3.endpoint_url, recording)
        before = kube.request_totals()
        time.sleep(args.quiet_window)
        api_quiet = _patches(kube, before, kube.request_totals())
        _emit_window(
            emit, "quiet", api_quiet, _recorded(s3.endpoint_url, recording), args.quiet_window, total
        )
    finally:
        if jobs is not None:
            jobs.stop.set()
        op.process.stop()
        kube.process.stop()
        s3.process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _emit_window(
    emit: Any, window: str, api: dict[str, int], s3: Counter, seconds: float, total: int
) -> None:
    """One window's counts, per minute: API requests, status PATCHes, S3 requests by kind."""
    patches = {k: v for k, v in api.items() if k.startswith("PATCH") and k.endswith("/status")}
    emit(f"{window}_api_requests", sum(api.values()) * 60 / seconds, "requests/min", points=total,
         by_verb=_per_minute(api, seconds))  # fmt: skip
    emit(f"{window}_status_patches", sum(patches.values()) * 60 / seconds, "patches/min", points=total,
         per_point=round(sum(patches.values()) * 60 / seconds / total, 3))  # fmt: skip
    reads = {k: v for k, v in s3.items() if k != "progress_put" and k != "other_put"}
    emit(f"{window}_s3_reads", sum(reads.values()) * 60 / seconds, "requests/min", points=total,
         by_kind=_per_minute(dict(s3), seconds),
         progress_gets_per_point=round(s3["progress_get"] * 60 / seconds / total, 3),
         checkpoint_reads_per_point=round(s3["other_get"] * 60 / seconds / total, 3))  # fmt: skip
