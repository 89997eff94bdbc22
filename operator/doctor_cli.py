"""`sphinxx doctor` (and `kubectl sphinxx doctor`): is this cluster ready for sweeps?

    sphinxx doctor --kubeconfig ~/.kube/config --namespace team-a        # the cluster, the operator
    sphinxx doctor --namespace team-a examples/sweeps/sphinx-x-family.yaml   # + that sweep's pre-flight
    kubectl sphinxx doctor -n team-a                                     # the same, as a kubectl plugin

One line per check, PASS / WARN / FAIL with the fix; exit 1 when any check FAILs. The checks
(`doctor.py`) and how their facts are gathered (`doctor_io.py`) are described in docs/operator.md,
"Doctor". Registration is cheap: the handler imports the Kubernetes client, the CRD generator and
the storage probes.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

HELP = "check the cluster: CRDs, KubeRay, the operator, GPUs, Secrets, S3, MLflow (PASS/WARN/FAIL)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """What both `sphinxx doctor` and `kubectl sphinxx doctor` take (the plugin adds -n itself)."""
    parser.add_argument(
        "sweep_file",
        nargs="?",
        metavar="SWEEP_FILE",
        help="also run this sweep's pre-flight as the operator would",
    )
    parser.add_argument(
        "--operator-namespace",
        metavar="NS",
        help="where the chart installed the operator (default: found in any namespace)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("doctor", help=HELP)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "-n", "--namespace", help="namespace the sweeps run in (default: the context's namespace)"
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .kube import from_kubeconfig  # the Kubernetes client (~1 s): only when the command runs

    try:
        kube, namespace = from_kubeconfig(args.kubeconfig, args.context)
    except Exception as err:  # noqa: BLE001 - no kubeconfig, a missing context: the answer is the message
        print(f"error: cannot use the kubeconfig: {err}", file=sys.stderr)
        return 2
    return doctor(kube, args.namespace or namespace, args)


def doctor(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    """The checks against `kube`, for sweeps in `namespace`; the exit status."""
    # The CRD generator (yaml, the schema), the storage probes (s3fs, boto3): when the doctor runs.
    from .doctor_io import run_doctor

    print(f"sphinxx doctor: sweeps in namespace {namespace}", flush=True)
    return run_doctor(kube, namespace, args.operator_namespace, args.sweep_file, sys.stdout)
