"""`sphinxx operator ...`: run the operator, write the CRDs.

    sphinxx operator run --all-namespaces --standalone          # one replica (the chart's default)
    sphinxx operator run --namespace team-a --peering sphinxx   # several replicas, one active
                                                                # (each its own --priority)
    sphinxx operator crds --output helm/sphinxx/crds            # regenerate the chart's CRDs
    sphinxx operator crds --check helm/sphinxx/crds             # exit 1 when they drift

`run` wraps `kopf run` with our handlers (`-m sphinxx.operator.handlers`), a liveness endpoint,
JSON logs by default, and the settings in settings.py passed as environment variables.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
from pathlib import Path

DEFAULT_CRDS = "helm/sphinxx/crds"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the Kubernetes operator, write its CRDs")
    parser.set_defaults(group_parser=parser)
    sub = parser.add_subparsers(dest="operator_command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="namespace (glob) to serve; repeatable"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace (default)")
    peering = run.add_mutually_exclusive_group()
    peering.add_argument("--standalone", action="store_true", help="no peering: the only replica (default)")
    peering.add_argument(
        "--peering", metavar="NAME", help="KopfPeering name: replicas elect one active operator"
    )
    run.add_argument(
        "--priority",
        type=int,
        help="peering priority (the highest is active); default: derived from $POD_ID or the host name, "
        "so every replica has its own",
    )
    run.add_argument(
        "--peering-lifetime",
        type=float,
        help=(
            "seconds a replica's peering record counts after its last keep-alive "
            "(default 60; more than 10): "
            "how soon a paused replica takes over from one that died (SPHINXX_PEERING_LIFETIME)"
        ),
    )
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint; '' disables"
    )
    run.add_argument("--log-format", choices=["json", "full", "plain"], default="json")
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--image", help="image of the Ray pods (SPHINXX_IMAGE)")
    run.add_argument(
        "--tracking-uri", help="MLflow tracking URI when a config names none (MLFLOW_TRACKING_URI)"
    )
    run.add_argument(
        "--run-interval", type=float, help="seconds between checks of a run (SPHINXX_RUN_INTERVAL)"
    )
    run.add_argument(
        "--sweep-interval", type=float, help="seconds between sweep roll-ups (SPHINXX_SWEEP_INTERVAL)"
    )
    run.set_defaults(func=cmd_run)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions (YAML) generated from code")
    crds.add_argument("--output", default=DEFAULT_CRDS, help=f"directory to write (default {DEFAULT_CRDS})")
    crds.add_argument("--check", metavar="DIR", help="compare DIR with the generated CRDs; exit 1 on drift")
    crds.set_defaults(func=cmd_crds)


def kopf_argv(args: argparse.Namespace) -> list[str]:
    argv = ["run", "-m", "sphinxx.operator.handlers", f"--log-format={args.log_format}"]
    argv += [f"--namespace={ns}" for ns in args.namespace] or ["--all-namespaces"]
    if args.peering:
        priority = args.priority if args.priority is not None else peer_priority()
        argv += [f"--peering={args.peering}", f"--priority={priority}"]
    else:
        argv.append("--standalone")
    if args.liveness:
        argv.append(f"--liveness={args.liveness}")
    if args.verbose:
        argv.append("--verbose")
    return argv


def peer_priority(identity: str | None = None) -> int:
    """A priority of this replica's own, stable across its restarts: kopf pauses every peer below
    the highest priority *and all peers that share it*, so equal defaults would stop every replica.

    Derived from kopf's peer identity ($POD_ID, which the chart sets to the pod name; else the
    host name, which is the pod name in Kubernetes too). Which replica wins is arbitrary, and
    fine: all run the same code. Values lie in [1, 2**31), above the old default of 0.
    """
    identity = identity or os.environ.get("POD_ID") or socket.gethostname()
    digest = hashlib.sha256(identity.encode()).digest()
    return 1 + int.from_bytes(digest[:4], "big") % (2**31 - 1)


def cmd_run(args: argparse.Namespace) -> int:
    env = {
        "SPHINXX_IMAGE": args.image,
        "MLFLOW_TRACKING_URI": args.tracking_uri,
        "SPHINXX_RUN_INTERVAL": args.run_interval,
        "SPHINXX_SWEEP_INTERVAL": args.sweep_interval,
        "SPHINXX_PEERING_LIFETIME": args.peering_lifetime,
    }
    for key, value in env.items():
        if value is not None:
            os.environ[key] = str(value)
    from kopf.cli import main as kopf_main  # seconds to import: only `operator run` needs it

    try:
        kopf_main(args=kopf_argv(args), prog_name="sphinxx operator", standalone_mode=False)
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_crds(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `sphinxx --help` imports this module, and the CRDs need the
    # vocabulary's schema generator and yaml (~80 ms) that no other command's registration loads.
    from . import crds

    if args.check:
        directory = Path(args.check)
        drift = [
            name
            for name, text in crds.rendered().items()
            if not (directory / name).is_file() or (directory / name).read_text() != text
        ]
        if drift:
            print(f"CRDs drifted from code: {', '.join(drift)}; run `sphinxx operator crds`", file=sys.stderr)
            return 1
        print(f"CRDs in {directory} match the code")
        return 0
    for path in crds.write(Path(args.output)):
        print(path)
    return 0
