"""The pod settings of a run rendered into the RayCluster's pod templates. Pure.

`render.py` builds the head and worker pod templates KubeRay needs; this module adds what a GPU
cluster asks of them (docs/operator.md, "Pod settings"), in this order:

- /dev/shm: a `Memory` emptyDir of `resources.shmSize` mounted at /dev/shm in the worker
  container; by default 4Gi per GPU of the pod (NCCL and DataLoader workers exchange data
  through it; the container runtime's default is 64 MiB), none on the head and on CPU pods;
- worker pods: extra `volumes`, their `volumeMounts`, `affinity`, and `extraResources`
  (extended resources such as `rdma/hca` or `vpc.amazonaws.com/efa`, requested and limited);
- every pod: `schedulerName`, `priorityClassName`, `imagePullSecrets`, `podLabels`,
  `podAnnotations`;
- last, `headPodPatch` / `workerPodPatch`: a strategic-merge patch of the template, the escape
  hatch for anything else. Maps merge key by key and `null` deletes a key; lists named in
  `sphinxx.schema.pods.MERGE_KEYS` (containers, volumes, env, volumeMounts, ports, ...)
  merge item by item on their key, and an item `{"<key>": ..., "$patch": "delete"}` removes one;
  every other list is replaced, as `kubectl patch --type strategic` does for them.
"""

from __future__ import annotations

import copy
from typing import Any

from sphinxx.schema.pods import MERGE_KEYS, SHM_PATH, SHM_VOLUME, shm_size
from sphinxx.schema.resources import Resources


def apply(template: dict[str, Any], res: Resources, worker: bool, gpus_per_pod: int) -> dict[str, Any]:
    """A pod template (`{"spec": ...}`) with the run's pod settings; the input is not changed."""
    out = copy.deepcopy(template)
    pod = out["spec"]
    container = pod["containers"][0]
    if worker:
        shm = shm_size(res.shm_size, gpus_per_pod)
        if shm is not None:
            pod.setdefault("volumes", []).append(
                {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm}}
            )
            container.setdefault("volumeMounts", []).append({"name": SHM_VOLUME, "mountPath": SHM_PATH})
        if res.volumes:
            pod.setdefault("volumes", []).extend(copy.deepcopy(res.volumes))
        if res.volume_mounts:
            container.setdefault("volumeMounts", []).extend(copy.deepcopy(res.volume_mounts))
        if res.affinity:
            pod["affinity"] = copy.deepcopy(res.affinity)
        for name, amount in sorted(res.extra_resources.items()):
            container["resources"]["requests"][name] = container["resources"]["limits"][name] = amount
    if res.scheduler_name:
        pod["schedulerName"] = res.scheduler_name
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    if res.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in res.image_pull_secrets]
    if res.pod_labels:
        out.setdefault("metadata", {})["labels"] = dict(res.pod_labels)
    if res.pod_annotations:
        out.setdefault("metadata", {})["annotations"] = dict(res.pod_annotations)
    patch = res.worker_pod_patch if worker else res.head_pod_patch
    return strategic_merge(out, patch) if patch else out


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """`patch` merged into `base` (see the module docstring for the rules); neither is changed."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = _clean(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        return _merge_list(base, patch, MERGE_KEYS[field])
    return _clean(patch)


def _merge_list(base: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = copy.deepcopy(base)
    for item in patch:
        index = next(
            (i for i, old in enumerate(out) if isinstance(old, dict) and old.get(key) == item.get(key)), None
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del out[index]
        elif index is None:
            out.append(_clean(item))
        else:
            out[index] = strategic_merge(out[index], item)
    return out


def _clean(value: Any) -> Any:
    """A patch value as it lands in the object: directives dropped, nulls meaning "absent" left out."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "$patch" and v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
