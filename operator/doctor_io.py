"""`sphinxx doctor`'s I/O: gather the facts each check needs, hand them to `doctor.py`, print a line each.

The facts come from the Kubernetes API (through `kube.py`, with the user's kubeconfig), from the
storage probes the pre-flight uses (`sphinxx.storage.probe`) and from two GETs against the
MLflow server. What the operator runs with (its checkpoint prefix, S3 endpoint, tracking URI,
Secrets, GPU node selector) is read from its Deployment, so the doctor checks the settings the
operator really has, with the credentials it really has: the values of the Secrets it gets by
`envFrom` (in its own namespace) are set in this process's environment while the S3 and MLflow
probes run, and never printed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from sphinxx import __version__
from sphinxx.schema.fields import SchemaError
from sphinxx.storage import StorageOptions
from sphinxx.storage.probe import probe, probe_write
from sphinxx.sweep.inputs import Needed, needed
from sphinxx.sweep.points import plan, read_sweep

from . import crds, doctor
from .doctor import Check, Level, OperatorConfig
from .kube import Kube
from .settings import Settings

HTTP_TIMEOUT_S = 5.0
CREDENTIAL_PREFIXES = ("AWS_", "MLFLOW_TRACKING_")


def run_doctor(
    kube: Kube, namespace: str, operator_namespace: str | None, sweep_file: str | None, out: TextIO
) -> int:
    """Every check in order, one line each as it is decided; 1 when any FAILs."""
    checks: list[Check] = []

    def emit(check: Check | None) -> None:
        if check is not None:
            checks.append(check)
            print(check.line(), file=out, flush=True)

    for check in crd_checks(kube):
        emit(check)
    emit(doctor.check_kuberay({name: kube.crd(name) for name in doctor.KUBERAY_CRDS}))
    config = operator_checks(kube, operator_namespace, emit)
    settings = _settings(config, emit)
    emit(gpu_check(kube, dict(settings.defaults.node_selector)))
    if config is None:
        emit(
            Check("settings", Level.WARN, "no single operator Deployment: Secrets, S3 and MLflow not checked")
        )
    else:
        creds = secret_checks(kube, namespace, config, settings, emit)
        # Without Secret values (IRSA, a Secret it may not read) the probes use this machine's own keys.
        with environment({**_plain_env(config), **creds.values}, keep_own=not creds.values):
            emit(bucket_check(settings, creds.source))
            emit(doctor.check_mlflow(config.tracking_uri, mlflow_probe(config.tracking_uri)))
            if sweep_file:
                for check in sweep_checks(sweep_file, settings):
                    emit(check)
    counts = {level: sum(c.level == level for c in checks) for level in Level}
    print(", ".join(f"{n} {level.value}" for level, n in counts.items()), file=out)
    return doctor.exit_code(checks)


def crd_checks(kube: Kube) -> list[Check]:
    return [doctor.check_crd(crd, kube.crd(crd["metadata"]["name"]), __version__) for crd in crds.crds()]


def operator_checks(
    kube: Kube, operator_namespace: str | None, emit: Callable[[Check | None], None]
) -> OperatorConfig | None:
    """The operator and its peering; its config when exactly one Deployment was found."""
    where = f"in namespace {operator_namespace}" if operator_namespace else "in any namespace"
    try:
        found = [
            doctor.operator_config(d) for d in kube.deployments(operator_namespace, doctor.OPERATOR_LABELS)
        ]
    except Exception as err:
        if Kube.status_code(err) != 403:
            raise
        detail = f"may not list Deployments {where} with this kubeconfig"
        emit(Check("operator", Level.WARN, detail, "pass --operator-namespace NS (the release's namespace)"))
        return None
    pods = kube.pods(found[0].namespace, found[0].pod_selector) if len(found) == 1 else []
    emit(doctor.check_operator(found, pods, __version__, where))
    if len(found) != 1:
        return None
    config = found[0]
    emit(doctor.check_peering(config, peering_objects(kube, config), datetime.datetime.now(datetime.UTC)))
    return config


def peering_objects(kube: Kube, config: OperatorConfig) -> dict[str, dict[str, Any] | None]:
    """The peering object(s) a peered operator uses: one ClusterKopfPeering, or one KopfPeering per
    watched namespace; {} when it runs standalone."""
    name = config.flag("peering")
    if name is None:
        return {}
    if not config.watch_namespaces:
        return {name: kube.peering(None, name)}
    return {f"{ns}/{name}": kube.peering(ns, name) for ns in config.watch_namespaces}


def _settings(config: OperatorConfig | None, emit: Callable[[Check | None], None]) -> Settings:
    """The operator's settings from its Deployment's environment, as it reads them at start."""
    if config is None:
        return Settings()
    try:
        return Settings.from_env(config.env)
    except ValueError as err:
        emit(
            Check(
                "settings",
                Level.FAIL,
                f"the operator's environment is invalid: {err}",
                "fix the chart values",
            )
        )
        return Settings()


def gpu_check(kube: Kube, selector: dict[str, str]) -> Check:
    try:
        nodes = kube.nodes()
    except Exception as err:
        if Kube.status_code(err) != 403:
            raise
        return Check("gpus", Level.WARN, "may not list nodes with this kubeconfig", "ask for `list nodes`")
    return doctor.check_gpus(nodes, selector)


class Credentials:
    """The operator's credentials: the values of its envFrom Secrets, and what to call them."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.unread: list[str] = []

    @property
    def source(self) -> str:
        if self.unread:
            return f"with this machine's credentials: {', '.join(self.unread)} could not be read"
        if self.values:
            return "with the operator's credentials"
        return "with this machine's credentials: the operator has no credentials Secret (IRSA / node role)"


def secret_checks(
    kube: Kube,
    namespace: str,
    config: OperatorConfig,
    settings: Settings,
    emit: Callable[[Check | None], None],
) -> Credentials:
    """The Secrets the operator and the Ray pods get by envFrom, the pods' service account; returns
    the values of the operator's Secrets (its credentials for the S3 and MLflow checks)."""
    creds = Credentials()
    places = [(config.namespace, "the operator's credentials")]
    if namespace != config.namespace:
        places.append((namespace, "envFrom of the Ray pods"))
    for ns, role in places:
        for name in config.env_from_secrets:
            secret, forbidden = _read(kube.secret, ns, name)
            data = (secret or {}).get("data") or {}
            emit(doctor.check_secret(ns, name, None if secret is None else list(data), forbidden, role))
            if ns == config.namespace:
                creds.unread += [name] if forbidden else []
                creds.values.update(_decoded(data))
    account = settings.defaults.service_account
    if account:
        found, forbidden = _read(kube.service_account, namespace, account)
        emit(doctor.check_service_account(namespace, account, None if forbidden else found is not None))
    emit(doctor.check_credentials(config.env_from_secrets, account))
    return creds


def _read(
    call: Callable[[str, str], dict[str, Any] | None], namespace: str, name: str
) -> tuple[dict[str, Any] | None, bool]:
    """(the object or None, whether the read was forbidden)."""
    try:
        return call(namespace, name), False
    except Exception as err:
        if Kube.status_code(err) != 403:
            raise
        return None, True


def _decoded(data: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in data.items():
        if key.startswith(CREDENTIAL_PREFIXES):
            try:
                out[key] = base64.b64decode(value).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue
    return out


def _plain_env(config: OperatorConfig) -> dict[str, str]:
    return {k: v for k, v in config.env.items() if k.startswith(CREDENTIAL_PREFIXES)}


@contextlib.contextmanager
def environment(values: Mapping[str, str], keep_own: bool = False) -> Iterator[None]:
    """These AWS_* / MLFLOW_TRACKING_* variables while the probes run: the only ones of their kind,
    unless `keep_own` (then over this machine's own)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_PREFIXES)}
    try:
        for key in () if keep_own else saved:
            del os.environ[key]
        os.environ.update(values)
        yield
    finally:
        for key in [k for k in os.environ if k.startswith(CREDENTIAL_PREFIXES)]:
            del os.environ[key]
        os.environ.update(saved)


def resolves(url: str | None) -> bool:
    """Whether the host of `url` resolves from here (None: AWS, whose names always do)."""
    host = urllib.parse.urlsplit(url).hostname if url else None
    if not host:
        return True
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def bucket_check(settings: Settings, creds: str) -> Check:
    prefix = settings.defaults.storage_prefix
    options = probe_options(None)
    endpoint = options.resolved_endpoint()
    reachable = resolves(endpoint)
    why = probe_write(prefix, options) if prefix and reachable else None
    return doctor.check_bucket(prefix, endpoint, reachable, why, creds)


def mlflow_probe(uri: str | None) -> doctor.HttpProbe | None:
    """GET `/health` and one authenticated API call; None for a URI that is not http(s)."""
    if not uri or urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return None
    if not resolves(uri):
        return doctor.HttpProbe(resolves=False)
    base = uri.rstrip("/")
    health, error = _get(f"{base}/health")
    if health != 200:
        return doctor.HttpProbe(health=health, error=error)
    api, error = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default")
    return doctor.HttpProbe(health=health, api=api, error=error)


def _get(url: str) -> tuple[int | None, str | None]:
    """(HTTP status, None) or (None, why there was no answer), with the tracking credentials."""
    request = urllib.request.Request(url)
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    elif user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return int(response.status), None
    except urllib.error.HTTPError as err:
        return int(err.code), None
    except (urllib.error.URLError, OSError) as err:
        return None, str(getattr(err, "reason", err))


def sweep_checks(path: str, settings: Settings) -> list[Check]:
    """The sweep file admitted with the operator's defaults, then every input it needs probed (as
    `sphinxx sweep check` does, with the operator's storage prefix and credentials)."""
    try:
        name, raw = read_sweep(path)
        points = plan(name, raw, settings.defaults.apply_run)
    except (SchemaError, OSError) as err:
        return [doctor.check_sweep_file(path, str(err), 0)]
    checks = [doctor.check_sweep_file(path, None, len(points))]
    return checks + [doctor.check_sweep_input(item, _probe(item)) for item in needed(points)]


def _probe(item: Needed) -> str | None:
    options = probe_options(item.endpoint_url)
    return probe(item.input.uri, item.input.access, item.input.needs_any, options)


def probe_options(endpoint_url: str | None) -> StorageOptions:
    """The doctor answers in seconds: two tries per request, not the training job's ten."""
    return StorageOptions(
        endpoint_url=endpoint_url, max_attempts=2, connect_timeout_s=5.0, read_timeout_s=15.0
    )
