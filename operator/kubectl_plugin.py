"""`kubectl sphinxx`: resume or roll back runs, show a sweep's points, say where the logs are.

Installed as the console script `kubectl-sphinxx`, which kubectl finds on PATH:

    kubectl sphinxx resume trun NAME [-n NS]     # same as annotating sphinxx.dev/resume
    kubectl sphinxx resume sweep NAME [-n NS]    # every Failed point of the sweep
    kubectl sphinxx rollback trun NAME --to-step N [-n NS]   # newer checkpoints stop counting (kept);
                                                 # a Failed run resumes from N in the same MLflow run
    kubectl sphinxx status SWEEP [-n NS]         # one row per point: phase, attempt, preemptions and
                                                 # resizes, live step, loss,
                                                 # tok/s, ETA, checkpoint; the sweep's ETA on top
    kubectl sphinxx logs TRUN [-n NS]            # the commands that show an attempt's logs
    kubectl sphinxx doctor [SWEEP_FILE] [-n NS]  # is this cluster ready for sweeps? PASS/WARN/FAIL

It talks to the API through the same kubeconfig kubectl uses (KUBECONFIG / --kubeconfig). A
rollback is a request, like a resume: the plugin writes the annotation `sphinxx.dev/rollback`
("<step>@<time>") and the operator, which holds the storage credentials, carries it out (only
while no attempt is running) and answers in the run's status and events; the plugin waits for
that answer (`--wait`).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

from sphinxx.schema.status import PointRow, ScalingLawStatus, parse_status
from sphinxx.sweep.abilities import ability_report

from . import doctor_cli, names
from .kube import from_kubeconfig

KINDS = {
    "trun": "trainingruns",
    "trainingrun": "trainingruns",
    "sweep": "scalingsweeps",
    "scalingsweep": "scalingsweeps",
}


def cmd_resume(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    resource = KINDS[args.kind]
    token = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    patched = kube.patch(
        resource, namespace, args.name, {"metadata": {"annotations": {names.ANNOTATION_RESUME: token}}}
    )
    if patched is None:
        print(f"error: {args.kind} {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    phase = (patched.get("status") or {}).get("phase", "unknown")
    print(f"{args.kind}/{args.name} resume requested ({names.ANNOTATION_RESUME}={token}); phase was {phase}")
    return 0


def cmd_rollback(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    token = f"{args.to_step}@{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
    patched = kube.patch(
        "trainingruns",
        namespace,
        args.name,
        {"metadata": {"annotations": {names.ANNOTATION_ROLLBACK: token}}},
    )
    if patched is None:
        print(f"error: trun {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    print(f"trun/{args.name} rollback to step {args.to_step} requested ({names.ANNOTATION_ROLLBACK}={token})")
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        st = (kube.get("trainingruns", namespace, args.name) or {}).get("status") or {}
        if st.get("rollbackToken") == token:
            done = st.get("lastRollback") or {}
            if done.get("request") == token:
                steps = ", ".join(str(s) for s in done.get("rolledBackSteps") or [])
                print(f"rolled back: step(s) {steps} no longer count; {st.get('phase')}: {st.get('message')}")
                return 0
            refused = [m for _, reason, m in kube.events(namespace, args.name) if reason == "RollbackRefused"]
            print(
                f"error: rollback refused: {refused[-1] if refused else st.get('message')}", file=sys.stderr
            )
            return 1
        time.sleep(0.5)
    if args.wait:
        print(f"no answer from the operator within {args.wait:g}s; see `kubectl describe trun {args.name}`")
    return 0


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _sweep_line(name: str, st: dict[str, Any]) -> str:
    """`sweep NAME: PHASE, S/T succeeded, R running, ETA H:MM:SS` (what `kubectl get sweep` shows)."""
    counts, eta = st.get("counts") or {}, st.get("eta")
    line = f"sweep {name}: {st.get('phase', 'Pending')}, {st.get('progress', '0/0')} succeeded"
    line += f", {counts.get('running', 0)} running" if counts.get("running") else ""
    return line + (f", ETA {eta}" if eta and st.get("phase") not in ("Succeeded", "Failed") else "")


def _point_cells(point: dict[str, Any], live: dict[str, Any]) -> list[Any]:
    """One point's row: the TrainingRun's own status (fresher than the roll-up) where it has one."""
    checkpoint, progress = live.get("lastCheckpoint") or {}, live.get("progress") or {}
    return [
        point["name"],
        point["model"],
        point["dataFraction"],
        live.get("phase", point.get("phase")),
        live.get("attempt", point.get("attempt")),
        live.get("preemptions", 0),  # each resumed from the step it committed, no retry spent
        live.get("resizes", 0),  # each committed and restarted bigger
        progress.get("step", checkpoint.get("step", point.get("step"))),
        progress.get("loss", (live.get("metrics") or {}).get("loss", point.get("loss"))),
        progress.get("tokensPerSecond"),
        progress.get("eta"),
        checkpoint.get("uri", point.get("checkpoint")),
    ]


def cmd_status(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    sweep = kube.get("scalingsweeps", namespace, args.name)
    if sweep is None:
        print(f"error: sweep {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    st = sweep.get("status") or {}
    runs = {
        r["metadata"]["name"]: r
        for r in kube.list("trainingruns", namespace, f"{names.LABEL_SWEEP}={args.name}")
    }
    header = [
        "NAME", "MODEL", "DATA", "PHASE", "ATTEMPT", "PREEMPTED", "RESIZED", "STEP", "LOSS", "TOK/S", "ETA",
        "CHECKPOINT",
    ]  # fmt: skip
    rows = [
        _point_cells(point, (runs.get(point["name"]) or {}).get("status") or {})
        for point in st.get("points") or []  # none before the operator's first roll-up
    ]
    table = [header] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    print(_sweep_line(args.name, st))
    for row in table:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    points = [parse_status(PointRow, p) for p in st.get("points") or []]
    if report := ability_report(points, parse_status(ScalingLawStatus, st.get("scalingLaw")).benchmarks):
        print(report)
    return 0


def cmd_logs(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    run = kube.get("trainingruns", namespace, args.name)
    if run is None:
        print(f"error: trun {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    st = run.get("status") or {}
    attempts = sorted(
        kube.list("rayjobs", namespace, f"{names.LABEL_RUN}={args.name}"),
        key=lambda j: int((j["metadata"].get("labels") or {}).get(names.LABEL_ATTEMPT, 0)),
    )
    print(f"trun/{args.name}: {st.get('phase', 'Pending')}, attempt {st.get('attempt', 0)}")
    for job in attempts:
        name = job["metadata"]["name"]
        attempt = (job["metadata"].get("labels") or {}).get(names.LABEL_ATTEMPT)
        cluster = (job.get("status") or {}).get("rayClusterName")
        print(
            f"\nattempt {attempt}: RayJob {name} "
            f"({(job.get('status') or {}).get('jobDeploymentStatus') or 'New'})"
        )
        print(f"  driver (submitter) logs: kubectl logs -n {namespace} job/{name}")
        if cluster:
            print(
                f"  head node logs:          kubectl logs -n {namespace} "
                f"-l ray.io/cluster={cluster},ray.io/node-type=head"
            )
            print(
                f"  worker logs:             kubectl logs -n {namespace} "
                f"-l ray.io/cluster={cluster},ray.io/group=gpu"
            )
        print(f"  events:                  kubectl describe rayjob -n {namespace} {name}")
    if st.get("mlflowRunId"):
        print(f"\nMLflow run: {st['mlflowRunId']} (metrics and params of every attempt)")
    if st.get("configUri"):
        print(f"config:     {st['configUri']}")
    if (st.get("lastCheckpoint") or {}).get("uri"):
        print(f"checkpoint: {st['lastCheckpoint']['uri']} (step {st['lastCheckpoint'].get('step')})")
    return 0


def cmd_doctor(kube: Any, namespace: str, args: argparse.Namespace) -> int:
    return doctor_cli.doctor(kube, namespace, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl sphinxx", description="SPHINX-X scaling sweeps on Kubernetes"
    )
    parser.add_argument("-n", "--namespace")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--context")
    sub = parser.add_subparsers(dest="command", required=True)
    resume = sub.add_parser("resume", help="restart a Failed run (or every Failed point of a sweep) from S3")
    resume.add_argument("kind", choices=sorted(KINDS))
    resume.add_argument("name")
    resume.set_defaults(func=cmd_resume)
    rollback = sub.add_parser(
        "rollback", help="resume a run from an older checkpoint: newer ones stop counting (kept on S3)"
    )
    rollback.add_argument("kind", choices=["trainingrun", "trun"])
    rollback.add_argument("name")
    rollback.add_argument(
        "--to-step", type=int, required=True, metavar="N", help="a committed step of the run"
    )
    rollback.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="seconds to wait for the operator's answer (0: none)",
    )
    rollback.set_defaults(func=cmd_rollback)
    status = sub.add_parser("status", help="a sweep's points: phase, step, loss, tok/s, ETA, checkpoint")
    status.add_argument("name")
    status.set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="where to find the logs of a run's attempts")
    logs.add_argument("name")
    logs.set_defaults(func=cmd_logs)
    doctor = sub.add_parser("doctor", help=doctor_cli.HELP)
    doctor_cli.add_arguments(doctor)
    doctor.set_defaults(func=cmd_doctor)
    for child in (resume, rollback, status, logs, doctor):  # kubectl users put -n anywhere
        child.add_argument("-n", "--namespace", dest="sub_namespace")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kube, namespace = from_kubeconfig(args.kubeconfig, args.context)
    return int(args.func(kube, args.sub_namespace or args.namespace or namespace, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
