"""Pod settings of a run's RayCluster: the checks the field model cannot express, and shared rules.

`resources.Resources` declares the pod settings a TrainingRun (or a sweep, or one size of a sweep)
may set: the /dev/shm size, extra volumes and mounts, scheduler, priority class, affinity, image
pull secrets, pod labels and annotations, extended resources per worker pod (RDMA, EFA), and a
strategic-merge patch of the head and worker pod templates as the escape hatch. Their types and
simple constraints are field constraints (so the CRD refuses them too); what needs a look at
several values (a mount names a declared volume, a volume has exactly one source, label syntax,
reserved keys, patch shape) is `check_pods`, which admission runs with the field path at fault.

The operator renders them (`sphinxx.operator.render`); `shm_size` and `MERGE_KEYS` are shared so
admission and rendering read one rule. Pure and torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .fields import SchemaError, join

SHM_VOLUME = "dshm"  # the /dev/shm volume's name: reserved
SHM_PATH = "/dev/shm"
SHM_PER_GPU_GI = 4  # default /dev/shm of a GPU pod: NCCL and DataLoader workers share memory through it
GPU_RESOURCE = "nvidia.com/gpu"
# Label and annotation keys the pods carry for KubeRay and the operator: not the user's to set.
RESERVED_PREFIXES = ("ray.io/", "sphinxx.dev/")
# Strategic merge: lists of these fields merge item by item on the key (Kubernetes' patchMergeKey);
# every other list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
}
MOUNT_KEYS = {
    "name",
    "mountPath",
    "readOnly",
    "subPath",
    "subPathExpr",
    "mountPropagation",
    "recursiveReadOnly",
}
AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUANTITY = r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def shm_size(setting: str | None, gpus_per_pod: int) -> str | None:
    """The /dev/shm size of a worker pod: the setting, else 4Gi per GPU; None for none ("0", no GPUs)."""
    if setting is not None:
        return None if re.fullmatch(r"0+(\.0+)?[A-Za-z]*", setting) else setting
    return f"{SHM_PER_GPU_GI * gpus_per_pod}Gi" if gpus_per_pod > 0 else None


def check_pods(res: Any, path: str) -> None:
    """Cross-value rules of the pod settings of a parsed `Resources` (errors name the field)."""
    shm_on = res.shm_size is None or shm_size(res.shm_size, 1) is not None
    volumes = _check_volumes(res.volumes, join(path, "volumes"))
    _check_mounts(res.volume_mounts, volumes, shm_on, join(path, "volumeMounts"))
    for key in res.affinity:
        if key not in AFFINITY_KEYS:
            raise SchemaError(
                join(join(path, "affinity"), key), f"unknown affinity; use {', '.join(sorted(AFFINITY_KEYS))}"
            )
        if not isinstance(res.affinity[key], Mapping):
            raise SchemaError(join(join(path, "affinity"), key), "must be an object")
    _check_metadata(res.pod_labels, join(path, "podLabels"), labels=True)
    _check_metadata(res.pod_annotations, join(path, "podAnnotations"), labels=False)
    _check_extra_resources(res.extra_resources, join(path, "extraResources"))
    for name in ("head_pod_patch", "worker_pod_patch"):
        _check_patch(
            getattr(res, name), join(path, "headPodPatch" if name == "head_pod_patch" else "workerPodPatch")
        )


def _check_volumes(volumes: list[Any], path: str) -> set[str]:
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        where = join(path, i)
        if not isinstance(volume, Mapping):
            raise SchemaError(where, "must be an object (a Kubernetes Volume: name and one source)")
        name = volume.get("name")
        if not isinstance(name, str) or len(name) > 63 or not re.fullmatch(_DNS_LABEL, name):
            raise SchemaError(
                join(where, "name"), f"must be a DNS label (lower-case, at most 63 characters); got {name!r}"
            )
        if name == SHM_VOLUME:
            raise SchemaError(
                join(where, "name"), f"{SHM_VOLUME!r} is the /dev/shm volume (resources.shmSize)"
            )
        if name in names:
            raise SchemaError(join(where, "name"), f"volume names must be unique; {name!r} is used twice")
        names.add(name)
        sources = [k for k in volume if k != "name"]
        if len(sources) != 1 or not isinstance(volume[sources[0]], Mapping):
            raise SchemaError(
                where,
                f"must have exactly one source object (hostPath, persistentVolumeClaim, ...); got {sources}",
            )
    return names


def _check_mounts(mounts: list[Any], volumes: set[str], shm_on: bool, path: str) -> None:
    paths: set[str] = set()
    for i, mount in enumerate(mounts):
        where = join(path, i)
        if not isinstance(mount, Mapping):
            raise SchemaError(where, "must be an object (name, mountPath, readOnly, subPath)")
        unknown = sorted(set(mount) - MOUNT_KEYS)
        if unknown:
            raise SchemaError(
                join(where, unknown[0]), f"unknown field; known fields: {', '.join(sorted(MOUNT_KEYS))}"
            )
        if mount.get("name") not in volumes:
            raise SchemaError(
                join(where, "name"),
                f"names no volume of resources.volumes ({', '.join(sorted(volumes)) or 'none'})",
            )
        target = mount.get("mountPath")
        if not isinstance(target, str) or not target.startswith("/"):
            raise SchemaError(join(where, "mountPath"), f"must be an absolute path; got {target!r}")
        if shm_on and target.rstrip("/") == SHM_PATH:
            raise SchemaError(
                join(where, "mountPath"), '/dev/shm is set by resources.shmSize ("0" turns it off)'
            )
        if target in paths:
            raise SchemaError(join(where, "mountPath"), f"{target} is mounted twice")
        paths.add(target)


def _check_key(key: str, where: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (
        (prefix and (len(prefix) > 253 or not re.fullmatch(_PREFIX, prefix)))
        or len(name) > 63
        or not re.fullmatch(_NAME, name)
    ):
        raise SchemaError(
            where, "is not a valid key: an optional DNS prefix and '/', then at most 63 of [A-Za-z0-9-_.]"
        )
    if key.startswith(RESERVED_PREFIXES):
        raise SchemaError(
            where, f"keys under {' and '.join(RESERVED_PREFIXES)} are set by KubeRay and the operator"
        )


def _check_metadata(values: Mapping[str, str], path: str, labels: bool) -> None:
    for key, value in values.items():
        where = join(path, key)
        _check_key(key, where)
        if labels and (len(value) > 63 or (value and not re.fullmatch(_NAME, value))):
            raise SchemaError(
                where,
                "a label value is at most 63 of [A-Za-z0-9-_.], starting and ending alphanumeric; "
                f"got {value!r}",
            )
    if not labels and sum(len(k) + len(v) for k, v in values.items()) > 256 * 1024:
        raise SchemaError(path, "annotations may hold at most 256 KiB")


def _check_extra_resources(extra: Mapping[str, Any], path: str) -> None:
    for key, value in extra.items():
        where = join(path, key)
        prefix, _, name = key.partition("/")
        if not name or not re.fullmatch(_PREFIX, prefix) or not re.fullmatch(_NAME, name):
            raise SchemaError(
                where, "must be an extended resource <domain>/<name>, e.g. rdma/hca or vpc.amazonaws.com/efa"
            )
        if key == GPU_RESOURCE:
            raise SchemaError(
                where, "GPUs come from config.parallel.gpus_per_worker x resources.workersPerPod"
            )
        if prefix.endswith("kubernetes.io") or prefix.endswith("k8s.io"):
            raise SchemaError(
                where, "is not an extended resource (cpu and memory are resources.cpu / memory)"
            )
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
            isinstance(value, str) and re.fullmatch(_QUANTITY, value)
        )
        if not ok:
            raise SchemaError(where, f"must be a count or a Kubernetes quantity; got {value!r}")


def _check_patch(patch: Mapping[str, Any], path: str) -> None:
    unknown = sorted(set(patch) - {"metadata", "spec"})
    if unknown:
        raise SchemaError(join(path, unknown[0]), "a pod template patch sets metadata and spec only")
    for key in ("metadata", "spec"):
        if key in patch and not isinstance(patch[key], Mapping):
            raise SchemaError(join(path, key), "must be an object")
    _check_merge_lists(patch.get("spec") or {}, join(path, "spec"))


def _check_merge_lists(node: Any, path: str) -> None:
    """Every item of a merge-keyed list carries its key (else the patch could not say what it changes)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            if isinstance(value, list) and key in MERGE_KEYS:
                for i, item in enumerate(value):
                    if not isinstance(item, Mapping) or MERGE_KEYS[key] not in item:
                        raise SchemaError(
                            join(join(path, key), i), f"needs {MERGE_KEYS[key]!r}: items of {key} merge on it"
                        )
            _check_merge_lists(value, join(path, key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_merge_lists(item, join(path, i))
