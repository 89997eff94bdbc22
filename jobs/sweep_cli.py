"""`sphinxx sweep`: expand a ScalingSweep file, or run it locally without a cluster.

sphinxx sweep plan examples/sweeps/tiny.yaml           # the points (--configs: and their resolved configs)
sphinxx sweep plan examples/sweeps/tiny.yaml --cost    # + tokens, FLOPs, GPU-hours, memory per rank
sphinxx sweep check examples/sweeps/tiny.yaml          # can every weight, tokenizer, data and checkpoint
                                                       # URI be reached?
sphinxx sweep run examples/sweeps/tiny.yaml --local    # train every point on local Ray
sphinxx sweep run examples/sweeps/tiny.yaml --local --resume

Registration is cheap (`sphinxx --help` imports this module): the handlers import the sweep
planner (`jobs.local`: storage, boto3, omegaconf, ~0.35 s) and the cost model (torch) when they
run, each such import marked where it stands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sphinxx.jobs.checkpoint_size import describe
from sphinxx.schema.fields import SchemaError
from sphinxx.schema.run import RunConfig, to_dict, to_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="plan or run a scaling sweep locally")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(metavar="SUBCOMMAND")
    _register_plan(sub)
    _register_check(sub)
    _register_run(sub)


def _register_plan(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser("plan", help="print the points of a sweep file and their resolved configs")
    plan.add_argument(
        "file", metavar="FILE", help="a ScalingSweep manifest (the file you would kubectl apply)"
    )
    plan.add_argument("--configs", action="store_true", help="also print each point's resolved run config")
    plan.add_argument(
        "--cost",
        action="store_true",
        help="estimate tokens, training FLOPs, GPU-hours and per-rank memory of every point and in total",
    )
    plan.add_argument("--gpu", default="H100", help="GPU of the GPU-hours (datasheet table; default H100)")
    plan.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed (default 0.4)")
    plan.add_argument(
        "--upload-gb-per-s",
        type=float,
        default=1.0,
        help="each rank's bandwidth to the checkpoint store, for the upload time of a save (default 1.0)",
    )
    plan.add_argument(
        "--json", action="store_true", help="print one JSON object (points, and totals with --cost)"
    )
    plan.set_defaults(func=_plan)


def _register_check(sub: argparse._SubParsersAction) -> None:
    check = sub.add_parser(
        "check",
        help="pre-flight: can every point's weights, tokenizer, data and checkpoint prefix be reached?",
    )
    check.add_argument(
        "file", metavar="FILE", help="a ScalingSweep manifest (the file you would kubectl apply)"
    )
    check.add_argument(
        "--storage-uri",
        help="checkpoint prefix when the sweep names none (default: file://.sphinxx/<sweep>/checkpoints)",
    )
    check.set_defaults(func=_check)


def _register_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run every point of a sweep on this machine (local Ray)")
    run.add_argument(
        "file", metavar="FILE", help="a ScalingSweep manifest (the file you would kubectl apply)"
    )
    run.add_argument(
        "--local",
        action="store_true",
        required=True,
        help="run on this machine (the only mode here; on a cluster use kubectl apply)",
    )
    run.add_argument(
        "--workdir",
        default=".sphinxx",
        help="state, logs, local checkpoints and MLflow store (default .sphinxx)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip finished points; others continue from their last checkpoint",
    )
    run.add_argument(
        "--storage-uri", help="checkpoint prefix (default: file://<workdir>/<sweep>/checkpoints)"
    )
    run.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or a local SQLite store)"
    )
    run.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="run-config overrides applied to every point"
    )
    run.set_defaults(func=_run)


def _plan(args: argparse.Namespace) -> int:
    """The points of a sweep file; with --cost what each costs
    (docs/training.md, "Memory and cost estimates")."""
    from sphinxx.jobs.local import plan, read_sweep  # the planner: see the module docstring

    try:
        name, raw = read_sweep(args.file)
        points = plan(name, raw, storage_uri="file:///tmp/sphinxx", tracking_uri="sqlite:///mlflow.db")
    except SchemaError as err:
        print(f"error: invalid sweep {args.file}: {err}", file=sys.stderr)
        return 2
    costs = None
    if args.cost:
        try:
            costs = [_point_cost(cfg, args.gpu, args.mfu, args.upload_gb_per_s) for _, cfg in points]
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.json:
        rows = []
        for i, (point, cfg) in enumerate(points):
            row: dict = {"name": point.name, "model": point.model, "fraction": point.fraction}
            if args.configs:
                row["config"] = to_dict(cfg)
            if costs is not None:
                row["cost"] = costs[i]
            rows.append(row)
        out: dict = {"sweep": name, "points": rows}
        if costs is not None:
            out["total"] = _totals(costs)
        print(json.dumps(out, default=str))
        return 0
    for i, (point, cfg) in enumerate(points):
        print(
            f"{point.name}\t{point.model}\t{point.fraction}\t"
            f"workers {cfg.parallel.min_workers}-{cfg.parallel.max_workers}"
        )
        if costs is not None:
            print("  " + _cost_line(costs[i]))
        if args.configs:
            print(to_yaml(cfg))
    if costs is not None:
        print("total\t" + _cost_line(_totals(costs)))
        for line in costs[0]["assumptions"] if costs else []:
            print(f"  - {line}")
    return 0


def _check(args: argparse.Namespace) -> int:
    """The operator's pre-flight check (docs/operator.md, "Pre-flight checks"),
    from this machine's credentials."""
    # The planner and the storage probes (boto3, s3fs): see the module docstring.
    from sphinxx.jobs.local import plan, read_sweep
    from sphinxx.jobs.preflight import needed, preflight

    try:
        name, raw = read_sweep(args.file)
        storage = args.storage_uri or f"file://{os.path.abspath('.sphinxx')}/{name}/checkpoints"
        points = plan(name, raw, storage_uri=storage, tracking_uri="sqlite:///mlflow.db")
    except SchemaError as err:
        print(f"error: invalid sweep {args.file}: {err}", file=sys.stderr)
        return 2
    inputs = needed(points)
    print(f"pre-flight of sweep {name}: {len(inputs)} inputs of {len(points)} points", flush=True)
    failed = preflight(inputs, sys.stdout)
    if failed:
        print(
            f"error: {failed} of {len(inputs)} inputs cannot be used; fix them before `kubectl apply`",
            file=sys.stderr,
        )
        return 1
    print("every input is readable and the checkpoint prefix is writable")
    return 0


def _point_cost(cfg: RunConfig, gpu: str, mfu: float, upload_gb_per_s: float) -> dict[str, Any]:
    """`jobs.cost.run_cost` of one point; steps that derive from data read the sources' manifests
    through the data path the sweep names, and an unreachable one is reported, not fatal."""
    # torch (the model on the meta device): only with --cost.
    from sphinxx.jobs.build import stage_bytes
    from sphinxx.jobs.cost import mixture_samples, run_cost
    from sphinxx.jobs.stores import storage_options

    samples, note = None, None
    if not cfg.train.steps:
        try:
            samples = mixture_samples(cfg.data)
        except Exception as err:  # noqa: BLE001 - reported per point: an unreachable store, no credentials, ...
            note = f"steps derive from data and the manifests cannot be read: {err}"
    staged = None
    try:
        staged = stage_bytes(cfg.model, cfg.data.tokenizer, storage_options(cfg.storage))
    except Exception as err:  # noqa: BLE001 - reported per point, as above
        note = "; ".join(filter(None, [note, f"bytes to stage unknown: {err}"]))
    cost = run_cost(
        cfg, samples_per_epoch=samples, gpu=gpu, mfu=mfu, stage_bytes=staged, upload_gb_per_s=upload_gb_per_s
    )
    cost["note"] = note
    return cost


def _totals(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over points; a sum with an unknown part is unknown (None). Memory: the largest rank."""

    def total(key: str) -> float | None:
        values = [c[key] for c in costs]
        return None if any(v is None for v in values) else sum(values)

    return {
        "points": len(costs),
        "tokens": total("tokens"),
        "flops": total("flops"),
        "gpu_hours": total("gpu_hours"),
        "memory_per_rank_gib": max(c["memory_per_rank_gib"] for c in costs),
        "stage_bytes": total("stage_bytes"),
    }


def _cost_line(cost: dict[str, Any]) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "unknown" if value is None else format(value, fmt)

    line = (
        f"tokens {num(cost['tokens'], ',')}  FLOPs {num(cost['flops'], '.3e')}  "
        f"GPU-hours {num(cost['gpu_hours'], '.3g')}  memory/rank {cost['memory_per_rank_gib']:.2f} GiB"
        f"{' (max)' if 'points' in cost else ''}  stage {num(cost['stage_bytes'], ',')} bytes"
    )
    if cost.get("note"):
        line += f"  ({cost['note']})"
    if "checkpoint" in cost:
        line += "\n  " + describe(cost["checkpoint"])
    return line


def _run(args: argparse.Namespace) -> int:
    from sphinxx.jobs.local import run_local  # the runner (Ray, MLflow): when it runs

    return run_local(
        args.file, args.workdir, args.resume, args.storage_uri, args.tracking_uri, args.overrides
    )
