"""`sphinxx doctor`'s decisions: one check result (PASS / WARN / FAIL, what was seen, the fix) from
observed facts. Pure: `doctor_io.py` gathers the facts (the Kubernetes API through `kube.py`, the
storage probes, an HTTP request to MLflow) and prints the lines.

A check FAILs when a sweep on this cluster would get stuck or fail because of what it saw, and
WARNs when the doctor could not tell from here (a Secret it may not read, a name that resolves
only inside the cluster) or when something works but differs from what this sphinxx expects.
"""

from __future__ import annotations

import datetime
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sphinxx.sweep.inputs import Needed

from .names import GROUP

KUBERAY_GROUP = "ray.io"
KUBERAY_VERSION = "v1"  # what render.py creates; KubeRay >= 1.7 serves it
KUBERAY_CRDS = ("rayjobs.ray.io", "rayclusters.ray.io")
GPU_RESOURCE = "nvidia.com/gpu"
OPERATOR_LABELS = "app.kubernetes.io/part-of=sphinxx,app.kubernetes.io/component=operator"
APPLY_CRDS = (
    "apply the CRDs of the operator's release: "
    "kubectl apply --server-side --force-conflicts -f helm/sphinxx/crds/"
)
INSTALL_KUBERAY = (
    "helm repo add kuberay https://ray-project.github.io/kuberay-helm/ && "
    "helm upgrade --install kuberay-operator kuberay/kuberay-operator --version 1.7.0"
)


class Level(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    level: Level
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.level != Level.PASS else ""
        return f"{self.level.value}  {self.name}: {self.detail}{fix}"


def exit_code(checks: Sequence[Check]) -> int:
    """1 when any check FAILs, else 0 (warnings alone pass)."""
    return int(any(c.level == Level.FAIL for c in checks))


# ------------------------------------------------------------------------------------ CRDs


def _paths(schema: Any, prefix: str = "") -> set[str]:
    """Every property path of an OpenAPI schema (`spec.axes.models`), items included (`[]`)."""
    if not isinstance(schema, dict):
        return set()
    out: set[str] = set()
    for key, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out |= {path} | _paths(sub, path)
    if isinstance(schema.get("items"), dict):
        out |= _paths(schema["items"], f"{prefix}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out |= _paths(schema["additionalProperties"], f"{prefix}.*")
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _version_drift(want: dict[str, Any], have: dict[str, Any]) -> str | None:
    """How one served version of an installed CRD differs from the generated one; None: the same."""
    want_schema = (want.get("schema") or {}).get("openAPIV3Schema")
    have_schema = (have.get("schema") or {}).get("openAPIV3Schema")
    missing = sorted(_paths(want_schema) - _paths(have_schema))
    extra = sorted(_paths(have_schema) - _paths(want_schema))
    parts = []
    if missing:
        parts.append(f"lacks {len(missing)} field(s) this sphinxx has ({', '.join(missing[:3])})")
    if extra:
        parts.append(f"has {len(extra)} field(s) this sphinxx lacks ({', '.join(extra[:3])})")
    if not parts and _canonical(want_schema) != _canonical(have_schema):
        parts.append("its schema's constraints differ (enums, bounds or rules)")
    if _canonical(want.get("additionalPrinterColumns")) != _canonical(have.get("additionalPrinterColumns")):
        parts.append("its printer columns differ")
    return "; ".join(parts) or None


def check_crd(expected: dict[str, Any], installed: dict[str, Any] | None, version: str) -> Check:
    """One of our CRDs, installed and the same as the one this sphinxx generates (`operator/crds.py`)."""
    name = expected["metadata"]["name"]
    kind = expected["spec"]["names"]["kind"]
    check = f"crd {kind}"
    if installed is None:
        return Check(check, Level.FAIL, f"{name} is not installed", APPLY_CRDS)
    have = {v["name"]: v for v in (installed.get("spec") or {}).get("versions") or [] if v.get("served")}
    for want in expected["spec"]["versions"]:
        if want["name"] not in have:
            served = ", ".join(sorted(have)) or "nothing"
            detail = f"{name} serves {served}, not {GROUP}/{want['name']} (sphinxx {version})"
            return Check(check, Level.FAIL, detail, APPLY_CRDS)
        drift = _version_drift(want, have[want["name"]])
        if drift:
            detail = f"{name} is not the one sphinxx {version} generates: {drift}"
            return Check(check, Level.FAIL, detail, APPLY_CRDS)
    versions = ", ".join(v["name"] for v in expected["spec"]["versions"])
    return Check(check, Level.PASS, f"{name} {versions}, as sphinxx {version} generates it")


def check_kuberay(crds: Mapping[str, dict[str, Any] | None]) -> Check:
    """KubeRay's RayJob and RayCluster CRDs, serving the version the operator creates (ray.io/v1)."""
    missing = [name for name in KUBERAY_CRDS if crds.get(name) is None]
    if missing:
        return Check(
            "kuberay", Level.FAIL, f"no {', '.join(missing)}: KubeRay is not installed", INSTALL_KUBERAY
        )
    old = []
    for name in KUBERAY_CRDS:
        served = [
            v["name"] for v in (crds[name] or {}).get("spec", {}).get("versions") or [] if v.get("served")
        ]
        if KUBERAY_VERSION not in served:
            old.append(f"{name} serves {', '.join(served) or 'nothing'}")
    if old:
        detail = f"{'; '.join(old)}; the operator creates {KUBERAY_GROUP}/{KUBERAY_VERSION} (KubeRay >= 1.7)"
        return Check("kuberay", Level.FAIL, detail, INSTALL_KUBERAY)
    return Check("kuberay", Level.PASS, f"RayJob and RayCluster served at {KUBERAY_GROUP}/{KUBERAY_VERSION}")


# -------------------------------------------------------------------------------- operator


@dataclass(frozen=True)
class OperatorConfig:
    """What the operator's Deployment (the Helm chart's) says about how it runs."""

    namespace: str
    name: str
    image: str
    replicas: int
    ready: int
    args: tuple[str, ...] = ()
    pod_selector: str = ""  # the Deployment's matchLabels as a label selector
    env: Mapping[str, str] = field(default_factory=dict)  # plain `value`s only
    env_from_secrets: tuple[str, ...] = ()

    def flag(self, name: str) -> str | None:
        """The value of `--name=VALUE` in the container's args."""
        prefix = f"--{name}="
        return next((a[len(prefix) :] for a in self.args if a.startswith(prefix)), None)

    @property
    def watch_namespaces(self) -> tuple[str, ...]:
        return tuple(a.removeprefix("--namespace=") for a in self.args if a.startswith("--namespace="))

    @property
    def tracking_uri(self) -> str | None:
        return self.flag("tracking-uri") or self.env.get("MLFLOW_TRACKING_URI") or None


def operator_config(deployment: dict[str, Any]) -> OperatorConfig:
    """The OperatorConfig of a Deployment (as the API serves it) made by the chart."""
    meta, spec = deployment["metadata"], deployment.get("spec") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    container = next((c for c in containers if c.get("name") == "operator"), containers[0])
    status = deployment.get("status") or {}
    return OperatorConfig(
        namespace=meta["namespace"],
        name=meta["name"],
        image=container.get("image", ""),
        replicas=int(spec.get("replicas", 1)),
        ready=int(status.get("readyReplicas") or 0),
        args=tuple(container.get("args") or ()),
        pod_selector=",".join(
            f"{k}={v}" for k, v in sorted(((spec.get("selector") or {}).get("matchLabels") or {}).items())
        ),
        env={e["name"]: e["value"] for e in container.get("env") or [] if "value" in e},
        env_from_secrets=tuple(
            ref["secretRef"]["name"] for ref in container.get("envFrom") or [] if ref.get("secretRef")
        ),
    )


def _pod_trouble(pod: dict[str, Any]) -> str | None:
    """Why a pod is not ready (`CrashLoopBackOff`, `Pending`), None when it is."""
    status = pod.get("status") or {}
    states = [c.get("state") or {} for c in status.get("containerStatuses") or []]
    reasons = [s[k].get("reason") for s in states for k in ("waiting", "terminated") if s.get(k)]
    if status.get("phase") == "Running" and all(
        c.get("ready") for c in status.get("containerStatuses") or []
    ):
        return None
    return next((r for r in reasons if r), None) or status.get("phase") or "not ready"


def check_operator(
    found: Sequence[OperatorConfig], pods: Sequence[dict[str, Any]], version: str, where: str
) -> Check:
    """The operator Deployment exists, has a ready replica, and runs the version of this sphinxx."""
    fix_install = "helm install sphinxx helm/sphinxx -n sphinxx-system (docs/first-day.md)"
    if not found:
        return Check("operator", Level.FAIL, f"no sphinxx operator Deployment {where}", fix_install)
    if len(found) > 1:
        names = ", ".join(f"{o.namespace}/{o.name}" for o in found)
        fix = "uninstall all but one release, or pass --operator-namespace"
        return Check("operator", Level.FAIL, f"{len(found)} operator Deployments ({names})", fix)
    op = found[0]
    if op.ready < 1:
        troubles = sorted({t for p in pods if (t := _pod_trouble(p))})
        seen = f"; pods: {', '.join(troubles)}" if troubles else "; no pods"
        ns, deploy = op.namespace, f"deploy/{op.name}"
        fix = f"kubectl -n {ns} describe {deploy}; kubectl -n {ns} logs {deploy}"
        return Check("operator", Level.FAIL, f"{op.namespace}/{op.name} has 0/{op.replicas} ready{seen}", fix)
    detail = f"{op.namespace}/{op.name} {op.ready}/{op.replicas} ready, image {op.image}"
    name = op.image.split("@", 1)[0].rsplit("/", 1)[-1]  # a digest (`@sha256:...`) names no version
    tag = name.rsplit(":", 1)[-1] if ":" in name and "@" not in op.image else ""
    if tag and tag.removesuffix("-gpu") != version:
        detail += f"; this doctor is sphinxx {version} and compares the CRDs with its own"
        return Check("operator", Level.WARN, detail, f"run the doctor of sphinxx {tag.removesuffix('-gpu')}")
    return Check("operator", Level.PASS, detail)


def _fresh_peers(peering: dict[str, Any] | None, now: datetime.datetime) -> list[tuple[str, int]]:
    """(identity, priority) of the peers whose record has not expired (kopf's `Peer.is_dead`)."""
    out = []
    for identity, peer in ((peering or {}).get("status") or {}).items():
        if not isinstance(peer, dict) or not peer.get("lastseen"):
            continue
        seen = datetime.datetime.fromisoformat(str(peer["lastseen"]).replace("Z", "+00:00"))
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        if seen + datetime.timedelta(seconds=int(peer.get("lifetime", 60))) > now:
            out.append((identity, int(peer.get("priority", 0))))
    return out


def check_peering(
    op: OperatorConfig, objects: Mapping[str, dict[str, Any] | None], now: datetime.datetime
) -> Check:
    """kopf peering when the chart runs several replicas: the peering object(s) exist and a replica
    announced itself there within its lifetime. `objects`: "<namespace>/<name>" (or the name of a
    ClusterKopfPeering) -> the object, None when absent."""
    name = op.flag("peering")
    if name is None:
        return Check("peering", Level.PASS, f"standalone ({op.replicas} replica, no peering)")
    fix = f"helm upgrade the release (the chart creates the peering object {name}); see the operator's logs"
    missing = sorted(key for key, obj in objects.items() if obj is None)
    if missing:
        return Check("peering", Level.FAIL, f"peering object(s) missing: {', '.join(missing)}", fix)
    for key, obj in sorted(objects.items()):
        peers = _fresh_peers(obj, now)
        if not peers:
            return Check(
                "peering", Level.FAIL, f"{key}: no replica announced itself within its lifetime", fix
            )
    active = max(peers, key=lambda p: p[1])[0]
    return Check(
        "peering", Level.PASS, f"{len(peers)} replica(s) in {', '.join(sorted(objects))}; active: {active}"
    )


# ------------------------------------------------------------------------------- GPU nodes


def _gpus(node: dict[str, Any]) -> int:
    value = str(((node.get("status") or {}).get("allocatable") or {}).get(GPU_RESOURCE, "0"))
    return int(value) if value.isdigit() else 0


def check_gpus(nodes: Sequence[dict[str, Any]], selector: Mapping[str, str]) -> Check:
    """Schedulable nodes with allocatable GPUs, among those the chart's GPU node selector picks."""
    fix = (
        "install the NVIDIA GPU Operator (or device plugin) so nodes advertise nvidia.com/gpu, "
        "or fix runtime.gpuNodeSelector"
    )
    usable = [n for n in nodes if _gpus(n) > 0 and not (n.get("spec") or {}).get("unschedulable")]
    chosen = [
        n for n in usable if all((n["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
    ]
    if not chosen:
        why = f"none match runtime.gpuNodeSelector {dict(selector)} ({len(usable)} GPU node(s) do not)"
        detail = f"no schedulable node has allocatable {GPU_RESOURCE}" if not usable else why
        return Check("gpus", Level.FAIL, f"{detail}; {len(nodes)} node(s) in all", fix)
    counts = ", ".join(f"{n['metadata']['name']}={_gpus(n)}" for n in chosen[:5])
    more = f", +{len(chosen) - 5} more" if len(chosen) > 5 else ""
    total = sum(_gpus(n) for n in chosen)
    return Check(
        "gpus", Level.PASS, f"{len(chosen)} node(s), {total} allocatable {GPU_RESOURCE} ({counts}{more})"
    )


# ------------------------------------------------------------------ Secrets, service account


def check_secret(namespace: str, name: str, keys: Sequence[str] | None, forbidden: bool, role: str) -> Check:
    """A Secret the operator or the Ray pods get by `envFrom` (`keys`: None when it is absent)."""
    check = f"secret {namespace}/{name}"
    create = (
        f"kubectl -n {namespace} create secret generic {name} "
        "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=..."
    )
    if forbidden:
        return Check(
            check,
            Level.WARN,
            f"may not be read with this kubeconfig ({role})",
            "run as a user who may get it",
        )
    if keys is None:
        return Check(check, Level.FAIL, f"missing ({role}: pods that need it never start)", create)
    return Check(check, Level.PASS, f"present ({role}), keys {', '.join(sorted(keys)) or 'none'}")


def check_service_account(namespace: str, name: str, found: bool | None) -> Check:
    """The Ray pods' service account (`runtime.serviceAccountName`, for IRSA); found None: forbidden."""
    check = f"serviceaccount {namespace}/{name}"
    if found is None:
        return Check(
            check, Level.WARN, "may not be read with this kubeconfig", "run as a user who may get it"
        )
    if not found:
        return Check(
            check,
            Level.FAIL,
            "missing (runtime.serviceAccountName of the Ray pods)",
            f"kubectl -n {namespace} create serviceaccount {name}",
        )
    return Check(check, Level.PASS, "present (the Ray pods' service account)")


def check_credentials(secrets: Sequence[str], service_account: str | None) -> Check | None:
    """A WARN when the chart names no S3 Secret and no service account: pods get the node's role."""
    if secrets or service_account:
        return None
    detail = "no s3.credentialsSecret and no runtime.serviceAccountName: pods use the node's own role"
    return Check("credentials", Level.WARN, detail, "helm upgrade ... --set s3.credentialsSecret=sphinxx-s3")


# ------------------------------------------------------------------------- S3 and MLflow


def check_bucket(
    prefix: str | None, endpoint: str | None, resolves: bool, why: str | None, creds: str
) -> Check:
    """The chart's checkpoint prefix is writable with the operator's credentials (`creds` says whose)."""
    if not prefix:
        detail = "no default checkpoint prefix (s3.bucket is unset): every sweep must name storage.uri"
        return Check("s3", Level.WARN, detail, "helm upgrade ... --set s3.bucket=BUCKET")
    at = f" at {endpoint}" if endpoint else ""
    if not resolves:
        detail = f"{prefix}{at}: the endpoint's host does not resolve here (a name inside the cluster?)"
        return Check("s3", Level.WARN, detail, "run the doctor where the operator's endpoint resolves")
    if why is not None:
        fix = "create the bucket, or fix s3.bucket / s3.endpointUrl / the Secret's keys"
        return Check("s3", Level.FAIL, f"{prefix}{at} {why} ({creds})", fix)
    return Check("s3", Level.PASS, f"{prefix}{at} is writable ({creds})")


@dataclass(frozen=True)
class HttpProbe:
    """What two GETs against a tracking server saw: `/health` and an authenticated API call."""

    resolves: bool = True
    health: int | None = None  # HTTP status; None: no answer
    api: int | None = None
    error: str | None = None  # why there was no answer


def check_mlflow(uri: str | None, seen: HttpProbe | None) -> Check:
    """The tracking server the operator and the jobs use answers, and takes the given credentials."""
    if not uri:
        detail = "no tracking URI (mlflow.trackingUri): runs train untracked, no scaling-law fit in MLflow"
        return Check(
            "mlflow", Level.WARN, detail, "helm upgrade ... --set mlflow.trackingUri=http://HOST:5000"
        )
    if seen is None:
        return Check("mlflow", Level.WARN, f"{uri} is not an http(s) server; not checked")
    fix = "start the server, or fix mlflow.trackingUri"
    if not seen.resolves:
        detail = f"{uri}: the host does not resolve here (a name inside the cluster?)"
        return Check("mlflow", Level.WARN, detail, "run the doctor where that name resolves")
    if seen.health != 200:
        got = f"answered {seen.health}" if seen.health is not None else f"is unreachable: {seen.error}"
        return Check("mlflow", Level.FAIL, f"{uri} {got}", fix)
    if seen.api in (401, 403):
        fix = "fix mlflow.credentialsSecret (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN)"
        return Check("mlflow", Level.FAIL, f"{uri} refused the credentials ({seen.api})", fix)
    if seen.api not in (200, 404):
        return Check("mlflow", Level.FAIL, f"{uri} is up but its API answered {seen.api}", fix)
    return Check("mlflow", Level.PASS, f"{uri} answers (health and API)")


# ------------------------------------------------------------------------ a sweep's pre-flight


def check_sweep_file(path: str, error: str | None, points: int) -> Check:
    """The sweep file admitted as the operator would admit it (with the chart's defaults)."""
    if error is not None:
        return Check("sweep", Level.FAIL, f"{path}: {error}", f"sphinxx validate {path}")
    return Check("sweep", Level.PASS, f"{path}: {points} point(s) admitted with the operator's defaults")


def check_sweep_input(item: Needed, why: str | None) -> Check:
    """One input of the sweep (`sphinxx.sweep.inputs.needed`), probed with the operator's credentials."""
    if why is None:
        return Check("sweep input", Level.PASS, item.describe(None))
    fix = "copy it there, or fix the URI" if item.input.access == "read" else "fix storage.uri or its bucket"
    return Check("sweep input", Level.FAIL, item.describe(why), fix)
