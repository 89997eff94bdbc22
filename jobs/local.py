"""The local sweep runner: the same sweep as on a cluster, on one machine.

    sphinxx sweep run examples/sweeps/tiny.yaml --local [--workdir .demo] [--resume]

Everything that makes a sweep *this* sweep is the sweep core's (`sphinxx.sweep`), shared
with the operator: admission of every point, the points' names, order and configs, the MLflow
parent and child runs (experiment, names, tags, states), the fit inputs (read from each point's
final checkpoint) and the scaling-law fit. What differs is only where things run: every point's
`python -m sphinxx.jobs.train` against one local Ray head, one point at a time (smallest
first), checkpoints in a local directory unless the sweep (or --storage-uri) names an S3 prefix,
MLflow in a local SQLite store unless --tracking-uri (or MLFLOW_TRACKING_URI) names a server.

State lives in `<workdir>/<sweep>/state.json` (with the sweep's uid, which tags its MLflow runs as
the Kubernetes uid does on a cluster); `--resume` skips finished points and re-runs the others,
which continue from their last committed checkpoint. At the end it prints a results table and the
fitted scaling law, and logs the fit and its plot on the parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sphinxx.jobs.live import LiveLine, Repeats, checkpoint_step, clean, parse_step, shown
from sphinxx.jobs.preflight import needed, preflight
from sphinxx.jobs.stores import run_store
from sphinxx.schema.fields import SchemaError, deep_merge
from sphinxx.schema.run import RunConfig, StorageConfig, to_yaml
from sphinxx.schema.status import (
    BenchmarkTrend,
    PointRow,
    RunPhase,
    ScalingLawStatus,
    TrackingState,
    dump_status,
    parse_status,
)
from sphinxx.schema.uris import STORAGE
from sphinxx.schema.uris import problem as uri_problem
from sphinxx.sweep import mlflow_runs
from sphinxx.sweep.abilities import ability_report, committed_benchmarks, plot_abilities, plot_name
from sphinxx.sweep.points import Point, admit_sweep, read_sweep
from sphinxx.sweep.points import plan as plan_points
from sphinxx.sweep.results import fit_sweep, plot_fit, row_metrics

SUMMARY_KEY = "sphinxx_summary"  # the job's final JSON line carries this key
NAMESPACE = "local"  # what stands in for the Kubernetes namespace in MLflow tags


@dataclass
class LocalPoint:
    """One point's progress on this machine: its row (as a cluster's sweep status shows it) and more."""

    row: PointRow
    attempts: int = 0
    seconds: float = 0.0
    mlflow_run_id: str | None = None
    error: str | None = None


@dataclass
class SweepState:
    sweep: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    parent_run_id: str | None = None
    points: dict[str, LocalPoint] = field(default_factory=dict)
    scaling_law: dict[str, Any] | None = None

    def save(self, path: Path) -> None:
        data = asdict(self)
        for name, point in self.points.items():
            data["points"][name]["row"] = dump_status(point.row)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> SweepState:
        raw = json.loads(path.read_text())
        state = cls(raw["sweep"], raw["uid"], raw.get("parent_run_id"), scaling_law=raw.get("scaling_law"))
        for name, point in raw["points"].items():
            row = parse_status(PointRow, point.pop("row"))
            state.points[name] = LocalPoint(row=row, **point)
        return state


# ---------------------------------------------------------------------------- planning (pure)


def local_defaults(storage_uri: str, tracking_uri: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """What this machine fills into every point, as the operator's chart defaults do on a cluster."""

    def apply(spec: dict[str, Any]) -> dict[str, Any]:
        config = deep_merge(spec.get("config") or {}, {"tracking": {"uri": tracking_uri}})
        storage = config.setdefault("storage", {})
        if not str(storage.get("uri", "")).startswith("s3://"):
            storage["uri"] = storage_uri
        config["data"] = _absolute_local_paths(config.get("data") or {})
        if isinstance(config.get("eval"), dict):
            config["eval"] = _absolute_task_paths(config["eval"])
        return {**spec, "config": config}

    return apply


def plan(
    name: str, raw: dict[str, Any], storage_uri: str, tracking_uri: str
) -> list[tuple[Point, RunConfig]]:
    """Every point's run config as its job reads it, smallest first, on local storage and tracking."""
    return plan_points(name, raw, local_defaults(storage_uri, tracking_uri))


def _absolute(uri: Any) -> Any:
    """A relative path made absolute from here; a path the URI rule refuses (`../data`:
    `sphinxx.schema.uris`) is left as written, so admission names it as it would on a cluster
    instead of resolving it away."""
    if isinstance(uri, str) and uri and "://" not in uri and not uri.startswith("/"):
        return uri if uri_problem(uri, STORAGE) else str(Path(uri).resolve())
    return uri


def _absolute_local_paths(data: dict[str, Any]) -> dict[str, Any]:
    """Relative data paths in a sweep file mean "from where I ran the command".

    Ray Train workers run in their own working directory, so they are made absolute here.
    """
    out = dict(data)
    if "tokenizer" in out:
        out["tokenizer"] = _absolute(out["tokenizer"])
    if isinstance(out.get("sources"), list):
        out["sources"] = [
            {**s, "uri": _absolute(s.get("uri"))} if isinstance(s, dict) else s for s in out["sources"]
        ]
    return out


def _absolute_task_paths(section: dict[str, Any]) -> dict[str, Any]:
    """The `eval` section with relative benchmark task files made absolute, as the data paths."""
    bench = section.get("benchmarks")
    if not isinstance(bench, dict) or not isinstance(bench.get("tasks"), list):
        return section
    tasks = [{**t, "uri": _absolute(t.get("uri"))} if isinstance(t, dict) else t for t in bench["tasks"]]
    return {**section, "benchmarks": {**bench, "tasks": tasks}}


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


def point_uid(sweep_uid: str, point: str) -> str:
    """A point's own uid, stable for the sweep (the TrainingRun's uid on a cluster)."""
    return str(uuid.uuid5(uuid.UUID(sweep_uid), point))


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
        self.console = LiveLine()
        self.points = plan(self.name, self.raw, self.storage_uri, self.tracking_uri)
        admitted = admit_sweep(self.name, self.raw, local_defaults(self.storage_uri, self.tracking_uri))
        self.experiment = admitted.base.tracking.experiment

    def run(self, resume: bool) -> SweepState:
        state = (
            SweepState.load(self.state_path) if resume and self.state_path.exists() else SweepState(self.name)
        )
        sweep_ref = mlflow_runs.SweepRef(NAMESPACE, self.name, state.uid)
        state.parent_run_id = state.parent_run_id or mlflow_runs.ensure_parent_run(
            self.tracking_uri, self.experiment, sweep_ref
        )
        mlflow_runs.set_run_status(self.tracking_uri, state.parent_run_id, TrackingState.RUNNING)
        state.save(self.state_path)
        address = _start_ray()
        for index, (point, cfg) in enumerate(self.points, 1):
            label = f"[{index}/{len(self.points)}]"
            local = state.points.setdefault(
                point.name, LocalPoint(PointRow(point.name, point.model, point.fraction))
            )
            if local.row.phase == RunPhase.SUCCEEDED:
                self.console.note(
                    f"{label} {point.name} already succeeded at step {local.row.step}; skipping (--resume)"
                )
                continue
            ref = mlflow_runs.PointRef(
                NAMESPACE,
                point.name,
                point_uid(state.uid, point.name),
                point.model,
                point.fraction,
                self.name,
            )
            local.mlflow_run_id = local.mlflow_run_id or mlflow_runs.ensure_child_run(
                self.tracking_uri, self.experiment, ref, state.parent_run_id
            )
            mlflow_runs.set_run_status(self.tracking_uri, local.mlflow_run_id, TrackingState.RUNNING)
            succeeded = self._run_point(point, cfg, local, address, state.parent_run_id, label)
            state_end = TrackingState.FINISHED if succeeded else TrackingState.FAILED
            mlflow_runs.set_run_status(self.tracking_uri, local.mlflow_run_id, state_end)
            state.save(self.state_path)
        self._finish(state)
        state.save(self.state_path)
        return state

    def _run_point(
        self,
        point: Point,
        cfg: RunConfig,
        local: LocalPoint,
        ray_address: str,
        parent_run_id: str | None,
        label: str,
    ) -> bool:
        """One attempt of a point's job, followed live; its row updated. Whether it succeeded."""
        config_path = self.workdir / "configs" / f"{point.name}.yaml"
        config_path.parent.mkdir(exist_ok=True)
        tracking = dataclasses.replace(
            cfg.tracking, mlflow_run_id=local.mlflow_run_id, mlflow_parent_run_id=parent_run_id
        )
        config_path.write_text(to_yaml(dataclasses.replace(cfg, tracking=tracking)))
        env = {
            **os.environ,
            "RAY_ADDRESS": ray_address,
            "SPHINXX_ATTEMPT": str(local.attempts + 1),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "sphinxx.jobs.train", "--config", str(config_path), *self.overrides]
        log_path = self.workdir / "logs" / f"{point.name}.log"
        log_path.parent.mkdir(exist_ok=True)
        self.console.note(
            f"{label} {point.name}: {point.model} x data {point.fraction}, "
            f"attempt {local.attempts + 1}, log {log_path}"
        )
        local.row.phase, local.attempts, started = RunPhase.RUNNING, local.attempts + 1, time.monotonic()
        local.row.attempt = local.attempts
        lines: list[str] = []
        with (
            open(log_path, "a") as log,
            subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc,
        ):
            assert proc.stdout is not None
            self._follow(proc.stdout, log, lines, point.name, label)
            code = proc.wait()
        self.console.end()
        local.seconds += time.monotonic() - started
        summary = parse_summary(lines[-200:]) or {}
        self._read_checkpoint(cfg.run_id, cfg.storage, local.row)
        done = code == 0 and summary.get("status", "succeeded") == "succeeded"
        local.row.phase = RunPhase.SUCCEEDED if done else RunPhase.FAILED
        local.error = None if done else (summary.get("error") or f"exit code {code}; log: {log_path}")
        loss = f"{local.row.loss:.3f}" if local.row.loss is not None else "-"
        result = (
            f"{label} {point.name} {local.row.phase.lower()} in {local.seconds:.0f}s: "
            f"step {local.row.step}, loss {loss}"
        )
        self.console.note(result + (f" ({local.error})" if local.error else ""))
        return done

    def _follow(self, stdout: Iterable[str], log: TextIO, lines: list[str], point: str, label: str) -> None:
        """Log every line once (`Repeats`), and keep the live line current."""
        progress, checkpoint, repeats = None, None, Repeats()
        for raw in stdout:
            text = clean(raw)
            if repeats.seen(text):
                continue
            log.write(raw)
            lines.append(raw)
            if (step := parse_step(text)) is not None:
                progress = step
            elif (committed := checkpoint_step(text)) is not None:
                checkpoint = committed
            elif shown(text):
                self.console.note(f"{label} {point}: {text}")
                continue
            else:
                continue
            if progress is not None:
                self.console.update(LiveLine.render(label, point, progress, checkpoint))

    def _read_checkpoint(self, run_id: str, storage: StorageConfig, row: PointRow) -> None:
        """The point's newest committed checkpoint: its step and the fit's inputs
        (as the operator reads them)."""
        latest = run_store(run_id, storage).latest()
        if latest is None:
            return
        row.step, row.checkpoint = int(latest.step), str(latest.uri)
        metrics = {
            k: float(v) for k, v in dict(latest.manifest.metrics).items() if isinstance(v, (int, float))
        }
        for key, value in row_metrics(metrics).items():
            setattr(row, key, value)
        row.benchmarks = committed_benchmarks(latest.manifest.metrics) or None

    def _finish(self, state: SweepState) -> None:
        """Fit the law (sweep core), log it on the parent run, and end the parent run with the sweep."""
        rows = [p.row for p in state.points.values()]
        law, result, inputs = fit_sweep(rows)
        png = plot_fit(inputs, result, f"sweep {self.name}") if result is not None else None
        if png:
            (self.workdir / "scaling_law.png").write_bytes(png)
        benchmark_pngs = plot_abilities(rows, law.benchmarks, f"sweep {self.name}")
        for name, data in benchmark_pngs.items():  # beside the loss plot
            (self.workdir / plot_name(name)).write_bytes(data)
        state.scaling_law = dump_status(law)
        (self.workdir / "scaling_law.json").write_text(json.dumps(state.scaling_law, indent=2))
        assert state.parent_run_id is not None
        mlflow_runs.log_fit(self.tracking_uri, state.parent_run_id, law, png, rows, benchmark_pngs)
        done = all(r.phase == RunPhase.SUCCEEDED for r in rows)
        end = TrackingState.FINISHED if done else TrackingState.FAILED
        mlflow_runs.set_run_status(self.tracking_uri, state.parent_run_id, end)


def _quiet_third_parties() -> None:
    """Keep the runner's own console to the sweep: MLflow's store migrations and Ray's note that a
    local cluster enabled token authentication are expected, and say nothing a user must act on."""
    import mlflow  # noqa: F401  (mlflow sets its loggers to INFO when first imported: set ours after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def _start_ray() -> str:
    import ray  # when a sweep runs; `sphinxx sweep plan` imports this module and starts no Ray

    if ray.is_initialized():
        pass
    elif os.environ.get("RAY_ADDRESS"):  # a Ray the user already runs
        ray.init(address=os.environ["RAY_ADDRESS"], configure_logging=False, log_to_driver=False)
    else:
        ray.init(
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            _temp_dir=str(Path("/tmp") / f"ray-sphinxx-{os.getuid()}"),
        )
    return str(ray.get_runtime_context().gcs_address)


def results_table(state: SweepState) -> str:
    """One row per point: what it trained (N, D = tokens seen) and how well (training loss, and
    held-out bits per byte when the sweep evaluates). Pure."""
    header = (f"{'point':<34} {'model':<16} {'data':>5} {'status':<10} {'step':>6} {'N':>7} {'D':>7} "
              f"{'loss':>7} {'bpb':>7} {'time':>6}")  # fmt: skip
    rows = [header, "-" * len(header)]
    for p in state.points.values():
        r = p.row
        bpb = (r.heldout or {}).get("heldout_bpb")
        cells = (
            f"{r.name:<34} {r.model:<16} {r.data_fraction:>5.2f} {r.phase.lower():<10}",
            f"{r.step if r.step is not None else '-':>6} {_count(r.params):>7} {_count(r.tokens):>7}",
            f"{_decimal(r.loss):>7} {_decimal(bpb):>7} {p.seconds:>5.0f}s",
        )
        rows.append(" ".join(cells))
    if all(p.row.heldout is None for p in state.points.values()):
        rows.append("(bpb: held-out bits per byte; this sweep holds out no data: data.heldout_records)")
    return "\n".join(rows)


def _count(value: float | None) -> str:
    """402816 -> 403k, 9442176 -> 9.44M (three significant digits)."""
    if value is None:
        return "-"
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def _decimal(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def fit_summary(state: SweepState) -> str:
    law = parse_status(ScalingLawStatus, state.scaling_law or {})
    if law.summary:
        return (
            "scaling law: "
            + law.summary
            + (f"  ({law.note})" if law.note and law.note not in law.summary else "")
        )
    return f"scaling law: none ({law.error or 'no finished points to fit'})"


def _trends(state: SweepState) -> list[BenchmarkTrend]:
    return parse_status(ScalingLawStatus, state.scaling_law or {}).benchmarks


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
    # The operator's pre-flight, before Ray starts: a missing input is one line now, not a Ray
    # traceback a minute from now.
    failed = preflight(needed(sweep.points), sys.stderr, quiet=True)
    if failed:
        print(f"error: {failed} input(s) above cannot be used; nothing was started", file=sys.stderr)
        return 1
    _quiet_third_parties()
    try:
        state = sweep.run(resume)
    except mlflow_runs.TrackingUnavailable as err:
        print(f"error: MLflow at {sweep.tracking_uri} did not answer: {err}", file=sys.stderr)
        return 1
    print()
    print(results_table(state))
    print(fit_summary(state))
    if report := ability_report([p.row for p in state.points.values()], _trends(state)):
        print(report)
    example = next(iter(state.points), "POINT")
    print(f"\ncheckpoints: {sweep.storage_uri}/<point>   e.g. sphinxx ckpt ls {sweep.storage_uri}/{example}")
    if sweep.tracking_uri.startswith("sqlite"):
        print(
            f"MLflow:      mlflow ui --backend-store-uri {sweep.tracking_uri}   "
            f"(experiment {sweep.experiment})"
        )
    else:
        print(f"MLflow:      {sweep.tracking_uri}   (experiment {sweep.experiment})")
    plot = sweep.workdir / "scaling_law.png"
    if plot.exists():
        print(f"plot:        {plot}")
    for path in sorted(sweep.workdir.glob("benchmark_*.png")):
        print(f"plot:        {path}")
    return 0 if all(p.row.phase == RunPhase.SUCCEEDED for p in state.points.values()) else 1
