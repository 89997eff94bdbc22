"""Operator settings, read once from the environment (the Helm chart and `sphinxx operator run` set them).

Besides the operator's own knobs, the chart passes cluster-wide *RayJob defaults* (`runtime.*`,
`runtime.podDefaults` for the pod settings, `s3.*`, the credential Secrets of values.yaml):
`RunDefaults`. They fill only what a
TrainingRun's (or its sweep's) own spec leaves unset; see `RunDefaults.apply_run`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sphinxx.schema.documents import load_json
from sphinxx.schema.fields import SchemaError

DEFAULT_IMAGE = "ghcr.io/sphinxx/sphinxx:0.1.0"
# Pod settings of `resources` the chart may give every run (`runtime.podDefaults`, SPHINXX_POD_DEFAULTS).
POD_DEFAULT_KEYS = (
    "shmSize", "volumes", "volumeMounts", "schedulerName", "priorityClassName", "affinity",
    "imagePullSecrets", "podLabels", "podAnnotations", "extraResources", "headPodPatch", "workerPodPatch",
)  # fmt: skip


@dataclass(frozen=True)
class RunDefaults:
    """Defaults of every TrainingRun; a key present in the spec (even empty: `nodeSelector: {}`) wins.

    Applied to the raw (camelCase) spec before validation, so the result is validated like a
    spec the user wrote. The storage prefix beats a `preset:`'s `storage.uri` (the presets'
    file:// prefixes are laptop defaults) but never a `storage.uri` written in the spec.
    """

    storage_prefix: str | None = None  # SPHINXX_STORAGE_PREFIX: config.storage.uri
    node_selector: dict[str, str] = field(default_factory=dict)  # SPHINXX_GPU_NODE_SELECTOR (JSON)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # SPHINXX_GPU_TOLERATIONS (JSON)
    queue_name: str | None = None  # SPHINXX_QUEUE_NAME: Kueue LocalQueue
    service_account: str | None = None  # SPHINXX_SERVICE_ACCOUNT: of the Ray pods (IRSA)
    env_from_secrets: list[str] = field(default_factory=list)  # SPHINXX_ENV_FROM_SECRETS (a,b)
    pod: dict[str, Any] = field(
        default_factory=dict
    )  # SPHINXX_POD_DEFAULTS (JSON): POD_DEFAULT_KEYS of resources

    def apply_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """A run config (`spec.config`, a sweep's `spec.base`) with the storage prefix filled in."""
        storage = config.get("storage") if isinstance(config, dict) else None
        if not self.storage_prefix or not isinstance(config, dict):
            return config
        if isinstance(storage, dict) and storage.get("uri") is not None:
            return config
        if storage is not None and not isinstance(storage, dict):
            return config  # invalid either way; leave it for validation to name
        return {**config, "storage": {**(storage or {}), "uri": self.storage_prefix}}

    def apply_run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A TrainingRun spec (camelCase) with every default the spec leaves unset filled in."""
        if not isinstance(spec, dict):
            return spec
        out = dict(spec)
        if "config" in out or self.storage_prefix:
            out["config"] = self.apply_config(out.get("config") or {})
        if self.queue_name and out.get("queueName") is None:
            out["queueName"] = self.queue_name
        resources = out.get("resources")
        if resources is not None and not isinstance(resources, dict):
            return out
        resources = dict(resources or {})
        for key, value in (
            ("nodeSelector", self.node_selector),
            ("tolerations", self.tolerations),
            ("serviceAccount", self.service_account),
            ("envFromSecrets", self.env_from_secrets),
            *self.pod.items(),
        ):
            if value and resources.get(key) is None:
                resources[key] = copy.deepcopy(value)
        if resources:
            out["resources"] = resources
        return out

    def pinned(self, storage_uri: str | None) -> RunDefaults:
        """These defaults with the storage prefix a run already checkpoints under.

        A run records the prefix of its first attempt (`status.storageUri`): changing the chart's
        bucket later must not make a running sweep look for its checkpoints somewhere else.
        """
        if not storage_uri or storage_uri == self.storage_prefix:
            return self
        return dataclasses.replace(self, storage_prefix=storage_uri)


@dataclass
class Settings:
    image: str = DEFAULT_IMAGE  # SPHINXX_IMAGE: the image of every Ray pod unless a spec names one
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI: used when a config names no tracking.uri
    run_interval: float = 15.0  # SPHINXX_RUN_INTERVAL: seconds between level checks of a TrainingRun
    sweep_interval: float = 15.0  # SPHINXX_SWEEP_INTERVAL: seconds between roll-ups of a sweep
    retry_delay: float = 30.0  # SPHINXX_RETRY_DELAY: wait after MLflow or storage errors
    # SPHINXX_PROGRESS_INTERVAL: a Running run's progress record is read at most this often (live status)
    progress_interval: float = 45.0
    progress_stale: float = 300.0  # SPHINXX_PROGRESS_STALE: an older record is ignored, and said so
    # SPHINXX_CHECKPOINT_READ_INTERVAL: while an attempt runs, its checkpoints are listed at most this
    # often, unless its progress record passed a commit boundary (decide.checkpoint_due)
    checkpoint_read_interval: float = 60.0
    peering_lifetime: float = 60.0  # SPHINXX_PEERING_LIFETIME: a silent peer counts as gone after this (kopf)
    preflight: bool = True  # SPHINXX_PREFLIGHT: check each run's input URIs before its first RayJob
    stage_host_path: str | None = (
        None  # SPHINXX_STAGE_HOST_PATH: node folder for staged weights (else emptyDir)
    )
    defaults: RunDefaults = field(default_factory=RunDefaults)  # the RayJob defaults above

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """From the process environment, or from `env` (the operator Deployment's, read by `doctor`)."""
        env = os.environ if env is None else env
        return cls(
            image=env.get("SPHINXX_IMAGE", DEFAULT_IMAGE),
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            run_interval=float(env.get("SPHINXX_RUN_INTERVAL", 15)),
            sweep_interval=float(env.get("SPHINXX_SWEEP_INTERVAL", 15)),
            retry_delay=float(env.get("SPHINXX_RETRY_DELAY", 30)),
            progress_interval=float(env.get("SPHINXX_PROGRESS_INTERVAL", 45)),
            progress_stale=float(env.get("SPHINXX_PROGRESS_STALE", 300)),
            checkpoint_read_interval=float(env.get("SPHINXX_CHECKPOINT_READ_INTERVAL", 60)),
            peering_lifetime=float(env.get("SPHINXX_PEERING_LIFETIME", 60)),
            preflight=env.get("SPHINXX_PREFLIGHT", "1").strip().lower() not in ("0", "false", "no", "off"),
            stage_host_path=env.get("SPHINXX_STAGE_HOST_PATH") or None,
            defaults=RunDefaults(
                storage_prefix=env.get("SPHINXX_STORAGE_PREFIX") or None,
                node_selector=_json_env(env, "SPHINXX_GPU_NODE_SELECTOR", dict, str),
                tolerations=_json_env(env, "SPHINXX_GPU_TOLERATIONS", list, dict),
                queue_name=env.get("SPHINXX_QUEUE_NAME") or None,
                service_account=env.get("SPHINXX_SERVICE_ACCOUNT") or None,
                env_from_secrets=[
                    s.strip() for s in env.get("SPHINXX_ENV_FROM_SECRETS", "").split(",") if s.strip()
                ],
                pod=_pod_defaults(env),
            ),
        )


def _pod_defaults(env: Mapping[str, str]) -> dict[str, Any]:
    """SPHINXX_POD_DEFAULTS: a JSON object of pod settings (POD_DEFAULT_KEYS),
    checked when a run uses them."""
    value: dict[str, Any] = _json_env(env, "SPHINXX_POD_DEFAULTS", dict, object)
    unknown = sorted(set(value) - set(POD_DEFAULT_KEYS))
    if unknown:
        raise ValueError(
            f"SPHINXX_POD_DEFAULTS: unknown pod setting(s) {unknown}; known: {', '.join(POD_DEFAULT_KEYS)}"
        )
    return value


def _json_env(env: Mapping[str, str], name: str, kind: type, item: type) -> Any:
    """A JSON object of strings or a JSON list of objects from `name`; empty when unset."""
    text = env.get(name, "").strip()
    if not text:
        return kind()
    try:
        value = load_json(text, name)  # the one safe reader: a key given twice is refused, not dropped
    except SchemaError as err:
        raise ValueError(f"{err}; got {text!r}") from None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if not isinstance(value, kind) or items is None or not all(isinstance(v, item) for v in items):
        shape = "an object of strings" if kind is dict else "a list of objects"
        raise ValueError(f"{name} must be {shape} in JSON; got {text!r}")
    return value
