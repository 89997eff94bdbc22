"""`sphinxx ckpt`: inspect and maintain a run's checkpoints (used by the runbooks).

    sphinxx ckpt ls      s3://bucket/sweeps/sweep-a/run-1            # committed and partial steps
    sphinxx ckpt latest  s3://bucket/sweeps/sweep-a/run-1 --json     # what a resume would load
    sphinxx ckpt verify  s3://bucket/sweeps/sweep-a/run-1 --step 2000
    sphinxx ckpt gc      s3://bucket/sweeps/sweep-a/run-1 --dry-run --keep-last 3 --metric val_loss
    sphinxx ckpt rollback s3://bucket/sweeps/sweep-a/run-1 --to-step 1500  # newer steps stop counting

URI is the run root `<prefix>/<run-id>` (a pasted `.../checkpoints/step-N` works
too). The endpoint comes from --endpoint-url or AWS_ENDPOINT_URL(_S3);
credentials from the usual AWS environment or --profile. Exit codes: 0 ok,
1 storage problem (one line naming the URI: missing credentials, an endpoint
that does not answer, access denied, ...), 2 usage error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeAlias
from urllib.parse import urlsplit

# Eager, and still cheap for `sphinxx --help`: importing this module runs the package's
# __init__ first, which has already imported all of these (none pulls in an S3 client).
from .errors import StorageAccessError, StorageError
from .layout import locate
from .manifest import Manifest
from .options import StorageOptions
from .reader import StepFolder, read_pointer
from .retention import RetentionPolicy
from .store import CheckpointStore

# What `sphinxx ckpt` adds its subcommands to (quoted: argparse's class is generic only in its stub).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# Where a client-side failure comes from: the S3 client stack (a bug elsewhere keeps its traceback).
CLIENT_MODULES = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec", "aiohttp", "urllib3")


def register(subparsers: Subcommands) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "ckpt",
        help="checkpoints on S3 / file / memory: ls, latest, verify, gc, rollback",
        description=__doc__.split("\n\n")[0] + " URI is <prefix>/<run-id>, e.g. s3://bucket/sweeps/run-1.",
    )
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="ckpt_command", metavar="SUBCOMMAND")
    common = _common_flags()
    for add in (_add_ls, _add_latest, _add_verify, _add_gc, _add_rollback):  # the order --help shows
        add(sub, common)
    return parser


def _common_flags() -> argparse.ArgumentParser:
    """The URI and how to reach the store: a parent parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "uri", metavar="URI", help="run root <prefix>/<run-id> (s3://, file:// or a local path)"
    )
    common.add_argument(
        "--endpoint-url", help="S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)"
    )
    common.add_argument("--region", help="S3 region (default: $AWS_REGION / $AWS_DEFAULT_REGION)")
    common.add_argument("--profile", help="named AWS profile for credentials (default: the environment)")
    common.add_argument(
        "--max-attempts", type=int, default=10, metavar="N",
        help="tries per S3 request, the first included (default 10; 1 fails fast on a wrong endpoint)",
    )  # fmt: skip
    return common


def _add_ls(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    ls = sub.add_parser("ls", parents=[common], help="list committed and partial checkpoints")
    ls.add_argument("--json", action="store_true", help="one JSON object per step")
    ls.set_defaults(func=_ls)


def _add_latest(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    latest = sub.add_parser(
        "latest", parents=[common], help="the newest committed checkpoint that checks out"
    )
    latest.add_argument("--json", action="store_true", help="print its manifest summary as JSON")
    latest.set_defaults(func=_latest)


def _add_verify(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    verify = sub.add_parser("verify", parents=[common], help="check sizes and sha256 against the manifest")
    verify.add_argument("--step", type=int, help="step to verify (default: the latest committed)")
    verify.add_argument(
        "--sizes-only", action="store_true", help="skip sha256 (one LIST instead of reading every byte)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_verify)


def _add_gc(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    gc = sub.add_parser("gc", parents=[common], help="apply retention and remove stale partial checkpoints")
    gc.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    gc.add_argument(
        "--keep-last", type=int, default=3, metavar="K", help="keep the newest K committed (>= 2; default 3)"
    )
    gc.add_argument(
        "--keep-best", type=int, default=1, metavar="M", help="keep the best M by --metric (default 1)"
    )
    gc.add_argument("--metric", metavar="NAME", help="manifest metric to rank by, e.g. val_loss")
    gc.add_argument(
        "--mode", choices=("min", "max"), default="min", help="lower (min) or higher (max) metric is better"
    )
    gc.add_argument(
        "--milestone-every", type=int, default=0, metavar="N", help="keep every step divisible by N (0: none)"
    )
    gc.add_argument("--grace", type=float, default=3600.0, metavar="S",
                    help="delete partial folders only when untouched for S seconds "
                         "(default 3600)")  # fmt: skip
    gc.add_argument("--json", action="store_true", help="print the plan as JSON")
    gc.set_defaults(func=_gc)


def _add_rollback(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    rollback = sub.add_parser(
        "rollback", parents=[common],
        help="mark every checkpoint newer than --to-step as rolled back (kept, no longer resumed from)",
    )  # fmt: skip
    rollback.add_argument(
        "--to-step", type=int, required=True, metavar="N", help="the committed step to resume from"
    )
    rollback.add_argument("--reason", default="", help="why (recorded in the rollback log)")
    rollback.add_argument("--json", action="store_true", help="print the rollback record as JSON")
    rollback.set_defaults(func=_rollback)


def _command(
    func: Callable[[argparse.Namespace, CheckpointStore, int | None], int],
) -> Callable[[argparse.Namespace], int]:
    """Build the store from the common flags; turn storage errors into one clear line."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        def command() -> int:
            options = StorageOptions(
                endpoint_url=args.endpoint_url,
                region=args.region,
                profile=args.profile,
                max_attempts=args.max_attempts,
            )
            layout, step = locate(args.uri)
            prefix, run_id = layout.root.rsplit("/", 1)
            store = CheckpointStore(prefix, run_id, options=options)
            _check_run(store)
            return func(args, store, step)

        endpoint = StorageOptions(endpoint_url=args.endpoint_url).resolved_endpoint()
        return at_boundary(command, args.uri, endpoint)

    return run


def at_boundary(command: Callable[[], int], uri: str, endpoint: str | None, *, name_uri: bool = True) -> int:
    """A storage command's exit status, its failures said in one line on stderr: a StorageError or a
    failure of the S3 client stack (credentials, connection) exits 1, bad input (ValueError) exits 2
    (`error: URI: ...`, or `error: ...` with `name_uri=False` where the input is not the URI); any
    other exception is a bug and re-raises."""
    try:
        return command()
    except StorageError as err:
        print(storage_error_line(err, uri, endpoint), file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"error: {uri}: {err}" if name_uri else f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the CLI's boundary: client failures become one line, bugs re-raise
        message = client_failure(err, endpoint)
        if message is None:
            raise
        print(f"error: {uri}: {message}", file=sys.stderr)
        return 1


def storage_error_line(err: BaseException, uri: str, endpoint: str | None) -> str:
    """`error: ...` for a StorageError. The storage layer wraps the S3 client's own failures (no
    credentials, endpoint down); those are said as `client_failure` says them, about `uri`."""
    cause = err.__cause__
    if cause is not None and type(cause).__module__.split(".", 1)[0] in ("botocore", "aiobotocore"):
        message = client_failure(cause, endpoint)
        if message is not None:
            return f"error: {uri}: {message}"
    return f"error: {err}"


def client_failure(err: BaseException, endpoint: str | None) -> str | None:
    """One line for a failure of the S3 client stack (credentials, connection, TLS...), else None."""
    name = type(err).__name__
    module = type(err).__module__.split(".", 1)[0]
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (
            f"no usable S3 credentials ({err}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE or --profile, or use IRSA / an instance role"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError", "SSLError") or (
        isinstance(err, ConnectionError)
    ):
        url = getattr(err, "kwargs", {}).get("endpoint_url") or endpoint or ""
        parts = urlsplit(url)
        where = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the S3 endpoint"
        return (
            f"cannot connect to {where} ({name}); check --endpoint-url / AWS_ENDPOINT_URL_S3 / "
            "AWS_ENDPOINT_URL and the network"
        )
    if module in CLIENT_MODULES or isinstance(err, OSError):
        text = " ".join(str(err).split()) or "no message"
        return f"{name}: {text}"
    return None


@_command
def _ls(args: argparse.Namespace, store: CheckpointStore, _step: int | None) -> int:
    folders = store.scan()
    pointer = read_pointer(store.fs(), store.layout)
    rows = [_folder_row(f) for f in folders]
    if args.json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return 0
    if not rows:
        print(f"no checkpoints under {store.layout.checkpoints} (the run has not committed one yet)")
        return 0
    print(f"{'STEP':>10}  {'STATE':<11} {'FILES':>6} {'SIZE':>10}  {'TIME (UTC)':<20} METRICS")
    for row in rows:
        metrics = " ".join(
            f"{k}={v:g}" if isinstance(v, int | float) else f"{k}:{len(v)}"  # benchmarks: their count
            for k, v in sorted(row["metrics"].items())
        )
        state = row["state"] + ("*" if row["step"] == pointer else "")
        when = _iso(row["time"]) if row["time"] else "-"
        print(
            f"{row['step']:>10}  {state:<11} {row['files']:>6} {_size(row['bytes']):>10}  "
            f"{when:<20} {metrics}"
        )
    print(f"* latest.json -> step {pointer}" if pointer is not None else "latest.json: none")
    return 0


def _folder_row(folder: StepFolder) -> dict[str, Any]:
    m = folder.manifest
    if m is not None:
        state = "rolled-back" if folder.rolled_back else "committed"
        return {"step": folder.step, "state": state, "uri": folder.uri, "files": len(m.files),
                "bytes": m.total_bytes, "time": m.created_at, "metrics": dict(m.metrics),
                "attempt": m.attempt, "final": m.metadata.final}  # fmt: skip
    state = "corrupt" if folder.error else "partial"
    return {"step": folder.step, "state": state, "uri": folder.uri, "files": folder.num_files,
            "bytes": folder.total_bytes, "time": folder.newest_mtime, "metrics": {},
            "error": folder.error}  # fmt: skip


@_command
def _latest(args: argparse.Namespace, store: CheckpointStore, _step: int | None) -> int:
    info = store.latest()
    if info is None:
        if args.json:
            print("null")
        print(
            f"error: {store.layout.checkpoints}: no committed checkpoint (nothing to resume from)",
            file=sys.stderr,
        )
        return 1
    m = info.manifest
    if args.json:
        body = {"step": info.step, "uri": info.uri, "run_id": m.run_id, "attempt": m.attempt,
                "created_at": m.created_at, "num_writers": m.num_writers, "files": len(m.files),
                "bytes": m.total_bytes, **_metadata(m)}  # fmt: skip
        print(json.dumps(body, sort_keys=True))
    else:
        print(
            f"step {info.step}  {info.uri}  "
            f"({len(m.files)} files, {_size(m.total_bytes)}, {_iso(m.created_at)})"
        )
    return 0


def _metadata(manifest: Manifest) -> dict[str, Any]:
    return {k: v for k, v in asdict(manifest.metadata).items()}


@_command
def _verify(args: argparse.Namespace, store: CheckpointStore, uri_step: int | None) -> int:
    report = store.verify(args.step if args.step is not None else uri_step, checksums=not args.sizes_only)
    if args.json:
        print(json.dumps({"step": report.step, "uri": report.uri, "ok": report.ok,
                          "files": report.files_checked, "checksums": report.checksums,
                          "problems": list(report.problems)}, sort_keys=True))  # fmt: skip
    elif report.ok:
        what = "sizes and sha256" if report.checksums else "sizes"
        print(
            f"OK step {report.step}: {report.files_checked} files, {what} match the manifest ({report.uri})"
        )
    else:
        print(
            f"FAILED step {report.step} ({report.uri}): {len(report.problems)} bad file(s)", file=sys.stderr
        )
        for problem in report.problems:
            print(f"  {problem}", file=sys.stderr)
    return 0 if report.ok else 1


@_command
def _gc(args: argparse.Namespace, store: CheckpointStore, _step: int | None) -> int:
    if args.metric is None and args.keep_best != 1:
        raise ValueError("--keep-best needs --metric NAME to rank by")
    policy = RetentionPolicy(keep_last=args.keep_last, keep_best=args.keep_best, metric=args.metric,
                             mode=args.mode, milestone_every=args.milestone_every)  # fmt: skip
    plan = store.apply_retention(policy, dry_run=args.dry_run)
    partial = store.clean_partial(args.grace, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "keep": {str(k): list(v) for k, v in plan.keep.items()},
                          "delete": list(plan.delete), "delete_partial": list(partial)},
                         sort_keys=True))  # fmt: skip
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for step, reasons in sorted(plan.keep.items()):
        print(f"keep          step {step} ({', '.join(reasons)})")
    for step in plan.delete:
        print(f"{verb:<13} step {step}")
    for step in partial:
        print(f"{verb:<13} step {step} (partial, untouched for >= {args.grace:g}s)")
    if not plan.delete and not partial:
        print(f"nothing to delete under {store.layout.checkpoints}")
    return 0


@_command
def _rollback(args: argparse.Namespace, store: CheckpointStore, _step: int | None) -> int:
    record = store.rollback(args.to_step, args.reason)
    steps = list(record.step_numbers)
    if args.json:
        print(json.dumps({"id": record.id, "to_step": record.to_step, "rolled_back": steps,
                          "reason": record.reason, "created_at": record.created_at},
                         sort_keys=True))  # fmt: skip
    else:
        print(f"rolled back to step {record.to_step}: step(s) {', '.join(map(str, steps))} no longer count "
              f"(kept; see `sphinxx ckpt ls`)")  # fmt: skip
    return 0


def _check_run(store: CheckpointStore) -> None:
    """Every command first: the bucket exists, and something of the run is stored under its root.

    A wrong URI (a typo in the bucket, the prefix or the run id) is then one clear line and exit 1,
    not an empty listing that looks like a run without checkpoints.
    """
    fs = store.fs()
    if not fs.bucket_exists(store.root):
        raise StorageAccessError(
            f"{store.root}: the bucket does not exist (check the URI and --endpoint-url)", store.root
        )
    if not fs.list_dir(store.root):
        raise StorageAccessError(
            f"{store.root}: nothing is stored there: no run at this path (the URI is <prefix>/<run-id>)",
            store.root,
        )


def _size(nbytes: int | None) -> str:
    value = float(nbytes or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
