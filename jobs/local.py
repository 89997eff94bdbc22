"""The local sweep runner: the same sweep as on a cluster, on one machine.

    sphinxx sweep run examples/sweeps/tiny.yaml --local [--workdir .demo] [--resume]

It expands the ScalingSweep with the operator's own pure functions
(`sphinxx.operator.expand`), resolves each point's run config with the job's schema,
creates the MLflow parent run and one nested child run per point (as the operator
does), and runs every point's `python -m sphinxx.jobs.train` against one local Ray
head, one point at a time (smallest first). Checkpoints go to a local directory unless
the sweep (or --storage-uri) names an S3 prefix; MLflow goes to a local SQLite store
unless --tracking-uri (or MLFLOW_TRACKING_URI) names a server.

State lives in `<workdir>/<sweep>/state.json`; `--resume` skips finished points and
re-runs the others, which continue from their last committed checkpoint (the job finds
it under the same run name and storage prefix). At the end it prints a results table
and the fitted scaling law, and logs the fit and its plot on the parent run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sphinxx.jobs.schema.fields import SchemaError
from sphinxx.jobs.schema.flavors import FLAVORS
from sphinxx.jobs.schema.run import RunConfig, from_dict, to_dict, to_yaml
from sphinxx.jobs.sweep import points as expand
from sphinxx.jobs.sweep.scaling_law import Point as FitPoint
from sphinxx.jobs.sweep.scaling_law import ScalingFit, fit, plot_png

SUMMARY_KEY = "sphinxx_summary"  # the job's final JSON line carries this key


@dataclass
class PointResult:
    name: str
    model: str
    fraction: float
    status: str = "pending"  # pending | running | succeeded | failed
    attempts: int = 0
    step: int | None = None
    loss: float | None = None
    num_params: float | None = None
    tokens: float | None = None
    seconds: float = 0.0
    mlflow_run_id: str | None = None
    checkpoint: str | None = None
    error: str | None = None


@dataclass
class SweepState:
    sweep: str
    parent_run_id: str | None = None
    points: dict[str, PointResult] = field(default_factory=dict)
    fit: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        raw = json.loads(path.read_text())
        state = cls(sweep=raw["sweep"], parent_run_id=raw.get("parent_run_id"), fit=raw.get("fit"))
        state.points = {k: PointResult(**v) for k, v in raw["points"].items()}
        return state


# ---------------------------------------------------------------------------- planning (pure)


def read_sweep(path: str) -> tuple[str, dict[str, Any]]:
    """(sweep name, raw spec) from a ScalingSweep manifest file, validated like the operator does."""
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except (OSError, yaml.YAMLError) as err:
        raise SchemaError("", f"cannot read sweep file {path}: {err}") from None
    sweeps = [d for d in docs if d.get("kind") == "ScalingSweep"]
    if len(sweeps) != 1:
        raise SchemaError("kind", f"{path} must hold exactly one ScalingSweep; found {len(sweeps)}")
    name = (sweeps[0].get("metadata") or {}).get("name")
    if not name:
        raise SchemaError("metadata.name", "is required")
    raw = sweeps[0].get("spec") or {}
    expand.admit_sweep(name, raw)
    return name, raw


def plan(
    name: str, raw: dict[str, Any], storage_uri: str, tracking_uri: str
) -> list[tuple[expand.Point, RunConfig]]:
    """Every point's resolved run config, smallest first, pointed at local storage and tracking."""
    spec = expand.admit_sweep(name, raw)
    out = []
    for point in expand.points(name, spec):
        run = expand.point_spec(raw, point)
        config = dict(run["config"])
        config["run_id"] = point.name
        parallel = config.setdefault("parallel", {})
        for key, target in (("minWorkers", "min_workers"), ("maxWorkers", "max_workers")):
            if run.get(key) is not None:
                parallel[target] = run[key]
        storage = config.setdefault("storage", {})
        if not str(storage.get("uri", "")).startswith("s3://"):
            storage["uri"] = storage_uri
        config.setdefault("tracking", {})["uri"] = tracking_uri
        _absolute_local_paths(config.get("data") or {})
        out.append((point, from_dict(config)))
    return out


def _absolute_local_paths(data: dict[str, Any]) -> None:
    """Relative data paths in a sweep file mean "from where I ran the command".

    Ray Train workers run in their own working directory, so they are made absolute here.
    """

    def fix(uri: Any) -> Any:
        if isinstance(uri, str) and uri and "://" not in uri and not uri.startswith("/"):
            return str(Path(uri).resolve())
        return uri

    data["tokenizer"] = fix(data.get("tokenizer"))
    for source in data.get("sources") or []:
        source["uri"] = fix(source.get("uri"))


def fit_points(results: list[PointResult]) -> list[FitPoint]:
    """Scaling-law inputs: N from the job's parameter count, D from the tokens it saw."""
    return [
        FitPoint(
            params=r.num_params or float(FLAVORS[r.model].params),
            data=r.tokens or r.fraction,
            loss=r.loss,
        )
        for r in results
        if r.status == "succeeded" and r.loss is not None
    ]


def parse_summary(lines: list[str]) -> dict[str, Any] | None:
    """The job's final JSON summary line, if it printed one."""
    for line in reversed(lines):
        line = line.strip()
        start = line.find("{")
        if start < 0:
            continue
        try:
            data = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get(SUMMARY_KEY):
            return data
    return None


# ---------------------------------------------------------------------------- running (I/O)


class LocalSweep:
    def __init__(
        self, file: str, workdir: str, storage_uri: str | None, tracking_uri: str | None, overrides: list[str]
    ):
        self.name, self.raw = read_sweep(file)
        self.workdir = Path(workdir).resolve() / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_uri = storage_uri or (self.workdir / "checkpoints").as_uri()
        self.tracking_uri = (
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.workdir / 'mlflow.db'}"
        )
        self.overrides = overrides
        self.state_path = self.workdir / "state.json"
        self.points = plan(self.name, self.raw, self.storage_uri, self.tracking_uri)

    def run(self, resume: bool) -> SweepState:
        state = (
            SweepState.load(self.state_path) if resume and self.state_path.exists() else SweepState(self.name)
        )
        tracker = _SweepTracker(self.tracking_uri, self.name)
        state.parent_run_id = tracker.parent(state.parent_run_id)
        address = _start_ray(self.workdir)
        for point, cfg in self.points:
            result = state.points.setdefault(point.name, PointResult(point.name, point.model, point.fraction))
            if result.status == "succeeded":
                print(f"[{point.name}] already succeeded at step {result.step}; skipping (--resume)")
                continue
            result.mlflow_run_id = tracker.child(point, state.parent_run_id, result.mlflow_run_id)
            tracker.set_status(result.mlflow_run_id, "RUNNING")  # a resumed point's run opens again
            self._run_point(point, cfg, result, address, state.parent_run_id)
            tracker.set_status(result.mlflow_run_id, "FINISHED" if result.status == "succeeded" else "FAILED")
            state.save(self.state_path)
        tracker.finish_parent(state, self.workdir)
        state.save(self.state_path)
        return state

    def _run_point(
        self, point: expand.Point, cfg: RunConfig, result: PointResult, ray_address: str, parent_run_id: str | None
    ) -> None:
        config_path = self.workdir / "configs" / f"{point.name}.yaml"
        config_path.parent.mkdir(exist_ok=True)
        tracking = dataclasses.replace(
            cfg.tracking, mlflow_run_id=result.mlflow_run_id, mlflow_parent_run_id=parent_run_id
        )
        config_path.write_text(to_yaml(dataclasses.replace(cfg, tracking=tracking)))
        env = {
            **os.environ,
            "RAY_ADDRESS": ray_address,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "SPHINXX_ATTEMPT": str(result.attempts + 1),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "sphinxx.jobs.train", "--config", str(config_path), *self.overrides]
        print(
            f"[{point.name}] {point.model} x data {point.fraction}: starting (attempt {result.attempts + 1})",
            flush=True,
        )
        result.status, result.attempts, started = "running", result.attempts + 1, time.monotonic()
        log_path = self.workdir / "logs" / f"{point.name}.log"
        log_path.parent.mkdir(exist_ok=True)
        lines: list[str] = []
        with (
            open(log_path, "a") as log,
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc,
        ):
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if _is_progress(line):
                    print(f"[{point.name}] {line.strip()}", flush=True)
            code = proc.wait()
        result.seconds += time.monotonic() - started
        summary = parse_summary(lines[-200:]) or {}
        result.step = summary.get("step", result.step)
        result.loss = summary.get("final_loss", summary.get("loss", result.loss))
        result.num_params = summary.get("num_params", result.num_params)
        result.tokens = summary.get("tokens_seen", result.tokens)
        result.checkpoint = summary.get("checkpoint_uri", result.checkpoint)
        result.status = (
            "succeeded" if code == 0 and summary.get("status", "succeeded") == "succeeded" else "failed"
        )
        result.error = (
            None
            if result.status == "succeeded"
            else (summary.get("error") or f"exit code {code}; log: {log_path}")
        )
        print(
            f"[{point.name}] {result.status} in {result.seconds:.0f}s: step {result.step}, loss {result.loss}",
            flush=True,
        )


def _is_progress(line: str) -> bool:
    """Lines worth showing live (everything goes to the point's log file)."""
    text = line.strip()
    # Ray Train's placement-group cleaner, run in a worker without RAY_ADDRESS, complains when
    # several Ray instances run on one machine; harmless for the job, noise for the user.
    if "PlacementGroupCleaner" in text:
        return False
    return text.startswith(("step ", "[sphinxx]", "{")) or "error" in text.lower() or "Traceback" in text


def _start_ray(workdir: Path) -> str:
    import ray

    if not ray.is_initialized():
        ray.init(
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            _temp_dir=str(Path("/tmp") / f"ray-sphinxx-{os.getuid()}"),
        )
    return ray.get_runtime_context().gcs_address


class _SweepTracker:
    """Parent and child MLflow runs, found by tag first so a re-run never duplicates them."""

    def __init__(self, uri: str, sweep: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.sweep = sweep
        experiment = self.client.get_experiment_by_name(f"sweep-{sweep}")
        self.experiment_id = (
            experiment.experiment_id if experiment else self.client.create_experiment(f"sweep-{sweep}")
        )

    def _find(self, tags: dict[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent(self, known: str | None) -> str:
        tags = {"sphinxx.dev/sweep": self.sweep, "sphinxx.dev/role": "sweep"}
        return (
            known
            or self._find(tags)
            or self.client.create_run(self.experiment_id, tags=tags, run_name=self.sweep).info.run_id
        )

    def child(self, point: expand.Point, parent: str, known: str | None) -> str:
        tags = {"sphinxx.dev/sweep": self.sweep, "sphinxx.dev/point": point.name}
        if known or (known := self._find(tags)):
            return known
        run_tags = {
            **tags,
            "mlflow.parentRunId": parent,
            "sphinxx.dev/model": point.model,
            "sphinxx.dev/data-fraction": str(point.fraction),
        }
        return self.client.create_run(self.experiment_id, tags=run_tags, run_name=point.name).info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        """Open (RUNNING) or end (FINISHED, FAILED) a point's run: the job leaves that to its owner."""
        if status == "RUNNING":
            self.client.update_run(run_id, status=status)
        else:
            self.client.set_terminated(run_id, status)

    def finish_parent(self, state: SweepState, workdir: Path) -> None:
        results = list(state.points.values())
        points = fit_points(results)
        if points:
            result = fit(points)
            state.fit = result.to_dict()
            (workdir / "scaling_law.png").write_bytes(plot_png(points, result, f"sweep {self.sweep}"))
            (workdir / "scaling_law.json").write_text(json.dumps(result.to_dict(), indent=2))
            self.client.log_artifact(state.parent_run_id, str(workdir / "scaling_law.png"))
            self.client.log_artifact(state.parent_run_id, str(workdir / "scaling_law.json"))
            for key in ("E", "A", "alpha", "B", "beta"):
                if getattr(result, key) is not None:
                    self.client.log_metric(state.parent_run_id, f"fit_{key}", getattr(result, key))
        done = all(r.status == "succeeded" for r in results)
        self.client.set_terminated(state.parent_run_id, "FINISHED" if done else "FAILED")


def results_table(state: SweepState) -> str:
    header = f"{'point':<34} {'model':<16} {'data':>5} {'status':<10} {'step':>6} {'loss':>8} {'time':>6}"
    rows = [header, "-" * len(header)]
    for r in sorted(state.points.values(), key=lambda r: (FLAVORS[r.model].params, r.fraction)):
        loss = f"{r.loss:.4f}" if r.loss is not None else "-"
        rows.append(
            f"{r.name:<34} {r.model:<16} {r.fraction:>5.2f} {r.status:<10} {r.step if r.step is not None else '-':>6} {loss:>8} {r.seconds:>5.0f}s"
        )
    return "\n".join(rows)


def fit_summary(state: SweepState) -> str:
    if not state.fit:
        return "scaling law: no finished points to fit"
    fitted = ScalingFit(**{**state.fit, "per_axis": []})
    from sphinxx.jobs.sweep.scaling_law import PowerLaw

    fitted.per_axis = [PowerLaw(**p) for p in state.fit.get("per_axis", [])]
    return "scaling law: " + fitted.summary()


def run_local(
    file: str,
    workdir: str,
    resume: bool,
    storage_uri: str | None,
    tracking_uri: str | None,
    overrides: list[str],
) -> int:
    try:
        sweep = LocalSweep(file, workdir, storage_uri, tracking_uri, overrides)
    except SchemaError as err:
        print(f"error: invalid sweep {file}: {err}", file=sys.stderr)
        return 2
    print(f"sweep {sweep.name}: {len(sweep.points)} points -> {sweep.workdir}", flush=True)
    state = sweep.run(resume)
    print()
    print(results_table(state))
    print(fit_summary(state))
    example = next(iter(state.points), "POINT")
    print(f"\ncheckpoints: {sweep.storage_uri}/<point>   e.g. sphinxx ckpt ls {sweep.storage_uri}/{example}")
    if sweep.tracking_uri.startswith("sqlite"):
        print(
            f"MLflow:      mlflow ui --backend-store-uri {sweep.tracking_uri}   (experiment sweep-{sweep.name})"
        )
    else:
        print(f"MLflow:      {sweep.tracking_uri}   (experiment sweep-{sweep.name})")
    print(f"plot:        {sweep.workdir / 'scaling_law.png'}")
    return 0 if all(r.status == "succeeded" for r in state.points.values()) else 1


__all__ = ["run_local", "plan", "read_sweep", "parse_summary", "fit_points", "to_dict"]
