"""The training job: `python -m sphinxx.jobs.train --config URI [--preset NAME] [key=value ...]`.

What a RayJob runs (docs/operator.md, "The RayJob of an attempt"), identical on a laptop and a cluster:

    sphinxx data synth /tmp/synth --size 200                     # a tiny data set + tokenizer
    python -m sphinxx.jobs.train --preset debug --config /tmp/synth/data.yaml \
        storage.uri=file:///tmp/ckpt parallel.max_workers=2 parallel.min_workers=2

`--config` is a YAML file (path, file://, s3://); `--preset` names a preset it is layered on
(or the file says `preset: NAME`); dotlist overrides come last. It builds a Ray Train V2
`TorchTrainer` (elastic `num_workers=(min, max)`, storage under `<storage.uri>/<name>/ray`), runs
`ray_worker.train_loop_per_worker`, and ends with one JSON line (key `sphinxx_summary`):

    {"sphinxx_summary": true, "status": "succeeded", "step": 50, "final_loss": 3.1, ...}

The config is read and checked once, here (`read_config`); the workers get it as a typed
`context.JobContext` (`train_loop_config={"job": context}`) and use it as is. In the summary,
`num_params` is N of the scaling law (active, non-embedding parameters) and `num_params_total` every
trainable parameter, as in every committed checkpoint's `manifest.metrics` (with `tokens_seen`).

An attempt is one or more *segments* (`jobs/segments.py`): a planned stop (a preemption, a
resize; committed at its step) or a failure ends one, and the driver starts the next with the same
run name, resuming from the newest committed checkpoint, while `parallel.max_failures` (failures)
and `parallel.max_preemptions` (preemptions) allow. The summary counts them (`preemptions`,
`resizes`, `failures`).

Exit codes: 0 succeeded, 1 training failed (after the attempt's restarts), 2 bad config.
The run's identity (`run_id`, the MLflow run in `tracking`) is in the config; the operator
writes it there. Environment read: RAY_ADDRESS (else a local Ray is started), SPHINXX_ATTEMPT
(the attempt number), MLFLOW_TRACKING_URI (when the config names no tracking store),
AWS_ENDPOINT_URL(_S3) and the usual AWS credential chain; SPHINXX_WORKER_ENV (names to forward to workers) and
SPHINXX_SAMPLE_TRACE (a directory for the per-step sample audit trail, see audit.SampleTrace).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from typing import Any

from sphinxx.jobs.context import JobContext
from sphinxx.jobs.driver import committed_stops, prepare_run, run_summary
from sphinxx.jobs.segments import End, PreemptionsExhausted, Tally, next_segment, segment_end
from sphinxx.jobs.stores import storage_options
from sphinxx.jobs.tracking import tracking_uri
from sphinxx.schema.run import (
    ConfigError,
    RunConfig,
    StorageConfig,
    check,
    check_runnable,
    load_config,
    parse_yaml,
)
from sphinxx.storage import RunLayout, open_fs
from sphinxx.storage import uri as uri_mod

log = logging.getLogger("sphinxx.train")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sphinxx.jobs.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run config YAML: path, file:// or s3:// URI")
    parser.add_argument("--preset", help="preset the config is layered on (debug, debug-moe, ...)")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def read_config(args: argparse.Namespace) -> RunConfig:
    """defaults <- preset <- config file <- overrides, checked like admission checks it, plus the
    tracking store and S3 endpoint pinned down where the job starts."""
    data = _read_yaml(args.config) if args.config else None
    cfg = load_config(preset=args.preset, data=data, overrides=args.overrides)
    # Resolved here so that workers need no environment of their own (Ray's workers inherit the
    # raylet's environment, not the driver's).
    if cfg.tracking.enabled:
        cfg = replace(cfg, tracking=replace(cfg.tracking, uri=tracking_uri(cfg.tracking.uri)))
    if cfg.storage.uri.startswith("s3://") and not cfg.storage.endpoint_url:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        cfg = replace(cfg, storage=replace(cfg.storage, endpoint_url=endpoint))
    check_runnable(cfg)
    return check(cfg)


def _read_yaml(uri: str) -> dict[str, Any]:
    location = uri_mod.normalize(uri)
    try:
        text = open_fs(location).read_bytes(location).decode()
    except FileNotFoundError:
        raise ConfigError("", f"config file {uri} does not exist") from None
    return parse_yaml(text, uri)  # a YAML error names the file, line and column


def build_trainer(job: JobContext) -> Any:
    # Ray loads here and in `main`, not at import: `read_config`, the job's one config reader, is
    # also called by tests and benchmarks that start no Ray.
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = job.config
    par = cfg.parallel
    workers: int | tuple[int, int] = (
        par.max_workers if par.min_workers == par.max_workers else (par.min_workers, par.max_workers)
    )
    resources = {"CPU": par.cpus_per_worker, **({"GPU": par.gpus_per_worker} if par.gpus_per_worker else {})}
    storage_path, filesystem = ray_storage(cfg.run_id, cfg.storage)
    return TorchTrainer(
        _entry,  # type: ignore[arg-type]  # Ray annotates None; V2 hands the return value to Result.return_value
        train_loop_config={"job": job},  # pickled as is: the workers parse nothing
        scaling_config=ray.train.ScalingConfig(
            # (min, max): elastic in Ray Train V2 (2.60), which its annotation does not list yet.
            num_workers=workers,  # type: ignore[arg-type]
            use_gpu=par.gpus_per_worker > 0,
            resources_per_worker=resources,
            # Ray's own up-scale restarts a running group without a commit: the job grows itself
            # at a committed step instead (jobs/resize.py); a new segment starts at the size that fits.
            # V2's field; mypy reads ray.train's V1 ScalingConfig (V2 is chosen at import time).
            elastic_resize_monitor_interval_s=RAY_RESIZE_OFF_S,  # type: ignore[call-arg]
        ),
        torch_config=TorchConfig(backend="nccl" if par.gpus_per_worker else "gloo"),
        run_config=ray.train.RunConfig(
            name=cfg.run_id,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            # Every end of a worker group comes back to the driver, which counts failures and
            # preemptions apart (jobs/segments.py): Ray Train retries nothing itself.
            # V2's field (max_preemption_failures); mypy reads ray.train's V1 FailureConfig.
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=0),  # type: ignore[call-arg]
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


RAY_RESIZE_OFF_S = 10.0 * 365 * 24 * 3600  # Ray Train's elastic monitor interval: never within a run


def run_segments(job: JobContext) -> tuple[Any, Any, Tally]:
    """Segments until the run succeeds or a bound is reached: (error, rank 0's return value, tally)."""
    cfg, par = job.config, job.config.parallel
    preemptions, resizes = committed_stops(cfg.run_id, cfg.storage)
    tally, resized_from = Tally(preemptions=preemptions, resizes=resizes), 0
    while True:
        segment = replace(
            job, preemptions=tally.preemptions, resizes=tally.resizes, resized_from=resized_from
        )
        error, returned = fit_segment(segment)
        committed = committed_stops(cfg.run_id, cfg.storage)[0]
        end = segment_end(returned, error is not None, committed > tally.preemptions or ray_preempted(error))
        step = next_segment(end, tally, par.max_failures, par.max_preemptions)
        log.info("segment ended (%s): %s", end, step.message)
        tally = step.tally
        resized_from = int(returned.get("world_size", 0)) if end == End.RESIZED else 0
        if not step.again:
            if end == End.PREEMPTED:
                error = PreemptionsExhausted(tally.preemptions, par.max_preemptions)
            return error, returned, tally


def fit_segment(job: JobContext) -> tuple[Any, Any]:
    """One Ray Train run: (its error or None, rank 0's return value)."""
    try:
        result = build_trainer(job).fit()
        return result.error, result.return_value
    except Exception as err:  # noqa: BLE001 - any failure of a segment is counted by the driver
        log.exception("training segment failed")
        return err, None


def ray_preempted(error: Any) -> bool:
    """Whether Ray Train itself saw a preemption end the segment: its PreemptionError (a node drain
    it watched), or a worker whose actor died with a node reclaim (RayActorError.preempted)."""
    if error is None:
        return False
    if type(error).__name__ == "PreemptionError":
        return True
    failures = getattr(error, "worker_failures", None) or {}
    causes = [getattr(e, "health_check_failure", e) for e in failures.values()]
    return any(getattr(cause, "preempted", False) is True for cause in causes)


# Forwarded to the job's actors when set: Ray workers inherit the raylet's environment, not the driver's.
FORWARDED_ENV = ("SPHINXX_SAMPLE_TRACE", "SPHINXX_CODE_VERSION", "TOKENIZERS_PARALLELISM")


def worker_env() -> dict[str, str]:
    """FORWARDED_ENV plus the names listed in SPHINXX_WORKER_ENV (comma-separated), e.g. the AWS
    credentials of a laptop whose Ray was started before they were exported. On a cluster, pods
    get credentials from their own environment (Secrets, IRSA); do not forward secrets there:
    runtime environments are visible in the Ray dashboard."""
    names = [*FORWARDED_ENV, *filter(None, os.environ.get("SPHINXX_WORKER_ENV", "").split(","))]
    return {name: os.environ[name] for name in names if name in os.environ}


def _entry(config: dict[str, Any]) -> dict[str, Any] | None:
    # On the workers only: the driver process never loads torch, DeepSpeed or the model.
    from sphinxx.jobs.ray_worker import train_loop_per_worker

    return train_loop_per_worker(config)


def ray_storage(run_id: str, storage: StorageConfig) -> tuple[str, Any]:
    """Ray Train's storage: `<storage.uri>/<run_id>/ray`, through our s3fs on S3 (docs/training.md,
    "Ray Train V2 TorchTrainer"); (path, pyarrow filesystem or None for a local path)."""
    root = RunLayout.for_run(storage.uri, run_id).root + "/ray"
    scheme, rest = root.split("://", 1)
    if scheme == "file":
        return rest, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem  # only for object stores; pyarrow comes with Ray

    fs = open_fs(root, storage_options(storage)).fs
    # Ray pickles the filesystem to its controller and workers. The factory's instance carries an
    # aiobotocore session that does not unpickle (botocore's error factory recurses), so Ray gets
    # the same s3fs settings without it: each process then builds its own session (credentials
    # from its environment).
    options = {k: v for k, v in fs.storage_options.items() if k != "session"}
    return rest, PyFileSystem(FSSpecHandler(type(fs)(**options)))


def code_version() -> str:
    from importlib.metadata import version

    return os.environ.get("SPHINXX_CODE_VERSION") or f"sphinxx-{version('sphinxx')}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.time()
    summary: dict[str, Any] = {"sphinxx_summary": True, "status": "failed"}
    try:
        cfg = read_config(parse_args(argv))
    except (ConfigError, ValueError) as err:
        return _finish({**summary, "error": f"invalid config: {err}"}, EXIT_CONFIG)
    attempt = int(os.environ.get("SPHINXX_ATTEMPT", "1"))
    version = code_version()
    run = prepare_run(cfg, attempt, version)
    summary.update(run_id=cfg.run_id, attempt=attempt, mlflow_run_id=run.mlflow_run_id)
    import ray  # see build_trainer

    if not ray.is_initialized():
        # The job-level runtime env reaches the Train controller (it writes Ray's storage) and the
        # workers; only set when there is something to forward (a submitted job has its own).
        env = worker_env()
        ray.init(
            address=os.environ.get("RAY_ADDRESS") or "local",
            runtime_env={"env_vars": env} if env else None,
            log_to_driver=True,
        )
    job = JobContext(cfg, attempt=attempt, mlflow_run_id=run.mlflow_run_id, code_version=version)
    error, final, tally = run_segments(job)
    summary.update(run_summary(cfg, run, final, error, time.time() - started))
    summary.update(preemptions=tally.preemptions, resizes=tally.resizes, failures=tally.failures)
    return _finish(summary, EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED)


def _finish(summary: dict[str, Any], code: int) -> int:
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
