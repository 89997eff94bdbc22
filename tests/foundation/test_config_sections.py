"""Each part reads its own config section (docs/architecture.md, "Each part reads its own section").

Builders and helpers take the typed section they use (`ModelConfig`, `DataConfig`, `TrainConfig`,
`ParallelConfig`, `StorageConfig`, `TrackingConfig`) or plain values; a whole `RunConfig` reaches
only the entry points and the run-level reports listed below, each with the reason it needs the
whole run. A new function that takes a `RunConfig` (or an unannotated `cfg`) fails this test until
it is given sections, or listed here with its reason. The model takes no run config at all, and
a resolved config is immutable.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("jobs", "model", "storage", "operator", "sphinxx/sweep")

RUN_LEVEL: dict[str, str] = {
    # The job's entry points.
    "jobs/loop.py:train": "the worker's entry point (Ray Train's train_loop_per_worker calls it)",
    "jobs/loop.py:build_parts": "the worker's entry point, first step: hands each part its section",
    "jobs/driver.py:prepare_run": "the driver: stores the resolved config, settles the MLflow run",
    "jobs/driver.py:run_summary": "the driver: the summary line of the whole run",
    "jobs/local.py:_run_point": "the local runner: writes each point's whole config for its job",
    "jobs/sweep_cli.py:_point_cost": "`sphinxx sweep plan --cost`: one point's report",
    # Run-level reports: their subject is the whole run.
    "jobs/cost.py:run_cost": "what a run costs: steps, tokens, FLOPs and memory read every section",
    "jobs/cost.py:run_units": "FLOPs per unit of the model a run builds, at its seq_len and canvas",
    "jobs/cost.py:run_estimate": "the job's start-of-run estimate (run_cost at its world size)",
    "jobs/run_memory.py:setup_from_run": "which TrainingSetup a run trains under (every section)",
    "jobs/run_memory.py:run_memory": "the memory estimate of a run's model under its setup",
    "sphinxx/sweep/inputs.py:run_inputs": "the pre-flight: every URI a run reads or writes",
    # The operator: admission, the attempt's config and its RayJob are about a whole run.
    "operator/preflight.py:check_run": "the operator's pre-flight of a run (sweep.inputs.run_inputs)",
    "sphinxx/sweep/inputs.py:needed": "a sweep's pre-flight (sweep check, doctor): every URI its runs use",
    "operator/reconcile.py:_child_run": "reconcile step: the point's MLflow child run (experiment and axes)",
    "operator/reconcile.py:_preflight": "reconcile step: the pre-flight of the run it admits",
    "operator/reconcile.py:attempt_config": "the config of an attempt (a new RunConfig per attempt)",
    "operator/render.py:render_rayjob": "the RayJob of an attempt",
}


def _takes_run_config(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    for arg in args:
        annotation = ast.unparse(arg.annotation) if arg.annotation else ""
        if "RunConfig" in annotation or (arg.arg in ("cfg", "run_config") and not annotation):
            return True
    return False


def run_level_functions(root: Path = ROOT) -> set[str]:
    found = set()
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _takes_run_config(node):
                    found.add(f"{path.relative_to(root).as_posix()}:{node.name}")
    return found


def test_only_entry_points_and_run_level_reports_take_a_whole_run_config() -> None:
    extra = sorted(run_level_functions() - set(RUN_LEVEL))
    assert not extra, (
        "these take a whole RunConfig; give them the sections they use (or list them in RUN_LEVEL "
        "with the reason they need the whole run):\n" + "\n".join(extra)
    )


def test_the_list_names_real_functions() -> None:
    stale = sorted(set(RUN_LEVEL) - run_level_functions())
    assert not stale, f"listed but no longer taking a RunConfig: {stale}"


def test_the_model_takes_no_run_config() -> None:
    assert not [name for name in run_level_functions() if name.startswith("model/")]


def test_the_check_bites(tmp_path: Path) -> None:
    for folder in FOLDERS:
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "jobs" / "helper.py").write_text(
        "def helper(cfg: RunConfig) -> int:\n    return cfg.train.steps\n\ndef loose(cfg):\n    return cfg\n"
    )
    (tmp_path / "model" / "ok.py").write_text("def build(model: ModelConfig, seed: int) -> None: ...\n")
    assert run_level_functions(tmp_path) == {"jobs/helper.py:helper", "jobs/helper.py:loose"}


def test_a_resolved_config_is_immutable() -> None:
    from sphinxx.schema.run import RunConfig, load_config

    cfg = load_config(preset="debug", overrides=["storage.uri=file:///tmp/x"])
    for section in [
        cfg,
        *(getattr(cfg, f.name) for f in dataclasses.fields(RunConfig) if f.name != "run_id"),
    ]:
        assert type(section).__dataclass_params__.frozen, type(section).__name__
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.storage = cfg.storage  # type: ignore[misc]
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1e-4))
    assert changed.train.lr == 1e-4 and cfg.train.lr != 1e-4
