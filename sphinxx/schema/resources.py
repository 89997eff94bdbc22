"""The custom resources' specs: TrainingRun (one training run) and ScalingSweep (sizes x data).

Group `sphinxx.dev`, version `v1alpha1`. Declared with the same field model as the run config
(`fields.py`), so the CRD schemas (`sphinxx.operator.crds`), the operator's admission
(`admission.py`, `sphinxx.sweep.points`) and the local runner read one vocabulary.
Python fields are snake_case; the objects spell them camelCase (`Naming.CAMEL`).

`config` of a TrainingRun and `base` of a ScalingSweep are *layers* of a run config (`preset:`
names a base, the rest is merged over it), so they are free-form here and checked by resolving
them (`run.load_config`); their CRD schema is the run config's own (`layer` metadata).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .fields import count, field, nested
from .flavors import NAMES
from .run import MAX_WORKERS

GROUP = "sphinxx.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = ("ScalingSweep", "TrainingRun")  # the CRDs' kinds (operator/crds.py renders one per kind)
DELETE_POLICIES = ("Keep", "Delete")
# Kubernetes: resource quantities ("8", "500m", "64Gi"), DNS-1123 labels and subdomains.
QUANTITY = r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?"
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
MAX_FRACTIONS = 1000  # data fractions per sweep (a sweep has at most 7 x 1000 points)
MAX_POINTS = 10_000
MAX_DAY = 86_400
LAYER_WITH_PRESET = "run-config"
LAYER = "run-config-layer"  # a size's layer: no `preset:` (the axes choose it)


def layer(help: str, preset: bool = True) -> Any:
    """A run-config layer field: free-form data resolved through the run config."""
    meta = {"help": help, "constraints": {}, "layer": LAYER_WITH_PRESET if preset else LAYER}
    return dataclasses.field(default_factory=dict, metadata=meta)


@dataclass
class FailurePolicy:
    max_retries: int = count(
        3, "automatic new attempts after a failed one (each resumes from S3)", maximum=1000
    )
    backoff_seconds: float = field(30.0, "wait before the first retry; doubles with every retry",
                                   minimum=0, maximum=MAX_DAY)  # fmt: skip
    max_backoff_seconds: float = field(
        600.0, "upper bound of the wait between attempts", minimum=0, maximum=MAX_DAY
    )
    active_deadline_seconds: int | None = count(
        None, "fail an attempt that runs longer than this (KubeRay activeDeadlineSeconds)", minimum=1,
        maximum=365 * MAX_DAY,
    )  # fmt: skip


@dataclass
class Resources:
    image: str | None = field(None, "container image with sphinxx installed; default: the operator's --image",
                              min_length=1)  # fmt: skip
    workers_per_pod: int = count(1, "Ray Train workers per worker pod (one per GPU)", minimum=1, maximum=64)
    cpu: str = field("8", "CPU request of a worker pod (a Kubernetes quantity)", pattern=QUANTITY)
    memory: str = field("64Gi", "memory request and limit of a worker pod", pattern=QUANTITY)
    head_cpu: str = field("4", "CPU request of the Ray head pod", pattern=QUANTITY)
    head_memory: str = field("16Gi", "memory request and limit of the Ray head pod", pattern=QUANTITY)
    node_selector: dict[str, str] = field({}, "node selector of the worker pods (e.g. a GPU type)")
    tolerations: list[dict[str, Any]] = field([], "tolerations of the worker pods", max_items=64)
    env_from_secrets: list[str] = field(
        [], "Secrets exposed as environment to every pod (credentials by reference)",
        max_items=32, unique_items=True, items={"pattern": DNS_SUBDOMAIN, "max_length": 253},
    )  # fmt: skip
    service_account: str | None = field(None, "service account of the pods (e.g. for IRSA)",
                                        pattern=DNS_SUBDOMAIN, max_length=253)  # fmt: skip
    # Pod settings of a GPU cluster (checked together by pods.check_pods; rendered by the operator).
    shm_size: str | None = field(
        None, "size of /dev/shm (a memory volume) of each worker pod; default 4Gi per GPU of the pod, none "
        "without GPUs; \"0\" turns it off", pattern=QUANTITY,
    )  # fmt: skip
    volumes: list[dict[str, Any]] = field(
        [],
        "extra volumes of the worker pods (Kubernetes Volumes: a node-local weight cache, a PVC)",
        max_items=64,
    )
    volume_mounts: list[dict[str, Any]] = field(
        [],
        "mounts of those volumes in the worker containers (name, mountPath, readOnly, subPath)",
        max_items=64,
    )
    scheduler_name: str | None = field(None, "scheduler of every pod (e.g. volcano, yunikorn)",
                                       pattern=DNS_SUBDOMAIN, max_length=253)  # fmt: skip
    priority_class_name: str | None = field(None, "PriorityClass of every pod", pattern=DNS_SUBDOMAIN,
                                            max_length=253)  # fmt: skip
    affinity: dict[str, Any] = field(
        {}, "affinity of the worker pods (nodeAffinity, podAffinity, podAntiAffinity)"
    )
    image_pull_secrets: list[str] = field(
        [], "Secrets holding registry credentials, by name, for every pod",
        max_items=16, unique_items=True, items={"pattern": DNS_SUBDOMAIN, "max_length": 253},
    )  # fmt: skip
    pod_labels: dict[str, str] = field(
        {}, "extra labels of every pod (keys under ray.io/ and sphinxx.dev/ are taken)"
    )
    pod_annotations: dict[str, str] = field({}, "extra annotations of every pod")
    extra_resources: dict[str, Any] = field(
        {},
        "extended resources requested (and limited) per worker pod, "
        "e.g. vpc.amazonaws.com/efa: 32, rdma/hca: 1",
    )
    head_pod_patch: dict[str, Any] = field(
        {}, "strategic-merge patch of the head pod template (metadata, spec), applied last: the escape hatch"
    )
    worker_pod_patch: dict[str, Any] = field(
        {},
        "strategic-merge patch of the worker pod template (metadata, spec), applied last: the escape hatch",
    )


@dataclass
class TrainingRunSpec:
    config: dict[str, Any] = layer("the run config (sphinxx config schema); `preset:` names a base")
    min_workers: int | None = count(None, "elastic lower bound of workers; "
                                          "default config.parallel.min_workers",
                                    minimum=1, maximum=MAX_WORKERS)  # fmt: skip
    max_workers: int | None = count(None, "elastic upper bound of workers; "
                                          "default config.parallel.max_workers",
                                    minimum=1, maximum=MAX_WORKERS)  # fmt: skip
    resources: Resources = nested(Resources, "pods of the RayCluster")
    failure_policy: FailurePolicy = nested(FailurePolicy, "retries and deadlines")
    suspend: bool = field(False, "stop the running attempt (keeping its checkpoints) and start none")
    queue_name: str | None = field(None, "Kueue LocalQueue (the RayJob then waits for admission); with "
                                   "resources.schedulerName volcano or yunikorn, that scheduler's queue",
                                   pattern=DNS_SUBDOMAIN, max_length=253)  # fmt: skip
    delete_policy: str = field("Keep", "on deletion, Keep or Delete checkpoints and the MLflow run",
                               enum=DELETE_POLICIES)  # fmt: skip


RESOURCES_LAYER = "resources-layer"  # a size's resources: fields of Resources, merged over the sweep's


def resources_layer(help: str) -> Any:
    """Pod settings of one size: free-form here, checked as `Resources` at admission (CRD: its schema)."""
    return dataclasses.field(
        default_factory=dict, metadata={"help": help, "constraints": {}, "layer": RESOURCES_LAYER}
    )


@dataclass
class SizeOverride:
    min_workers: int | None = count(
        None, "elastic lower bound for this model size", minimum=1, maximum=MAX_WORKERS
    )
    max_workers: int | None = count(
        None, "elastic upper bound for this model size", minimum=1, maximum=MAX_WORKERS
    )
    gpus_per_worker: int | None = count(None, "GPUs per worker", maximum=16)
    zero_stage: int | None = field(None, "DeepSpeed ZeRO stage: 0, 1 or 2", enum=(0, 1, 2))
    ep_size: int | None = count(
        None, "expert-parallel size (MoE sizes; divides the experts)", minimum=1, maximum=1024
    )
    workers_per_pod: int | None = count(None, "workers per worker pod", minimum=1, maximum=64)
    cpu: str | None = field(None, "CPU request of a worker pod", pattern=QUANTITY)
    memory: str | None = field(None, "memory of a worker pod", pattern=QUANTITY)
    config: dict[str, Any] = layer(
        "run-config fields for this size, deep-merged over spec.base (e.g. model.llm_weights)", preset=False
    )
    resources: dict[str, Any] = resources_layer(
        "pod settings for this size (fields of spec.resources), deep-merged over spec.resources"
    )


# Set per point by the axes (or chosen through spec.base): a size's config layer may not set them.
AXIS_FIELDS = {
    "preset": "spec.base.preset",
    "model.flavor": "spec.axes.models",
    "data.fraction": "spec.axes.dataFractions",
}
# Per-size shortcuts and the config fields they set: one size sets each through one of the two.
SHORTCUTS = {
    "min_workers": "parallel.min_workers",
    "max_workers": "parallel.max_workers",
    "gpus_per_worker": "parallel.gpus_per_worker",
    "zero_stage": "parallel.zero_stage",
    "ep_size": "parallel.ep_size",
}


@dataclass
class Axes:
    models: list[str] = field(
        dataclasses.MISSING, "model flavors (the size axis)",
        min_items=1, max_items=len(NAMES), unique_items=True, items={"enum": NAMES},
    )  # fmt: skip
    data_fractions: list[float] = field(
        dataclasses.MISSING, "data fractions in (0, 1] (the data axis)",
        min_items=1, max_items=MAX_FRACTIONS, unique_items=True, items={"exclusive_minimum": 0, "maximum": 1},
    )  # fmt: skip


@dataclass
class ScalingSweepSpec:
    axes: Axes = field(dataclasses.MISSING, "model sizes x data fractions")
    base: dict[str, Any] = layer("the base run config of every point; `preset:` names a base")
    overrides: dict[str, SizeOverride] = field(
        {}, "per model size: workers, GPUs, ZeRO stage, EP size, pod size"
    )
    max_parallel_runs: int = count(
        0, "points running at once (smallest first); 0 = no limit", maximum=MAX_POINTS
    )
    failure_policy: FailurePolicy = nested(FailurePolicy, "for every point")
    resources: Resources = nested(Resources, "pods of every point")
    suspend: bool = field(False, "suspend every point (running ones stop, keeping checkpoints)")
    queue_name: str | None = field(
        None, "Kueue LocalQueue for every point", pattern=DNS_SUBDOMAIN, max_length=253
    )
    delete_policy: str = field("Keep", "passed to every point", enum=DELETE_POLICIES)
