"""RayJob rendering: one KubeRay `ray.io/v1` RayJob per TrainingRun attempt. Pure.

Field choices follow docs/operator.md, "The RayJob of an attempt" and "Worker group and elastic bounds":
`backoffLimit: 0` (retries are our attempts, each a new RayJob and a new cluster),
`shutdownAfterJobFinishes: true` (frees GPUs; `suspend` and Kueue need it), one worker group `gpu` whose
replica bounds come from the run's elastic bounds, the in-tree autoscaler only when min < max,
`restartPolicy: Never` (autoscaler v2), and no secrets anywhere in the object: credentials come from
`envFrom` Secrets or IRSA. The spec's pod settings (/dev/shm, volumes, scheduler, affinity, RDMA
resources, patches) are added by `pod_settings.apply`.

Golden files under tests/operator/golden/ show the result for every flavor as reviewable YAML.
"""

from __future__ import annotations

import hashlib
import math
import shlex
from dataclasses import dataclass
from typing import Any

import yaml

from sphinxx.schema.resources import TrainingRunSpec
from sphinxx.schema.run import ParallelConfig, RunConfig, StorageConfig

from . import names, pod_settings

RAY_VERSION = "2.60.0"
TTL_SECONDS_AFTER_FINISHED = 300  # keep the finished cluster briefly for log collection
PRE_RUNNING_DEADLINE_SECONDS = 1800  # a cluster stuck in Initializing (unschedulable, image pull)
STOP_FILE = "/tmp/sphinxx-stop"  # the preStop hook writes it, the training workers watch it
STAGE_VOLUME, STAGE_PATH = "sphinxx-stage", "/var/cache/sphinxx-stage"  # the node cache of weights
SCRATCH_VOLUME = "sphinxx-checkpoint-scratch"  # storage.scratch, when the run names one
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Attempt:
    """Everything about one attempt that is not in the TrainingRun spec or its run config.

    The run's identity (run id, MLflow run, tracking store) travels in the stored run config the
    job reads (`config_uri`), nowhere else.
    """

    namespace: str
    name: str  # the TrainingRun
    uid: str
    attempt: int  # 1, 2, ...
    config_uri: str  # the resolved config, stored next to the checkpoints
    image: str
    sweep: str | None = None
    resume_uri: str | None = None  # the committed checkpoint this attempt starts from (annotation)
    stage_host_path: str | None = None  # node folder shared by every worker pod on the node
    suspend: bool = False

    @property
    def rayjob_name(self) -> str:
        return names.rayjob_name(self.namespace, self.name, self.uid, self.attempt)


def worker_bounds(spec: TrainingRunSpec, parallel: ParallelConfig) -> tuple[int, int]:
    """Worker pods (min, max): ceil(workers / workers per pod); the config carries the run's bounds."""
    per_pod = spec.resources.workers_per_pod
    return math.ceil(parallel.min_workers / per_pod), math.ceil(parallel.max_workers / per_pod)


def runtime_env(att: Attempt, storage: StorageConfig) -> dict[str, Any]:
    """The attempt number, and the S3 endpoint for libraries that read it from the environment."""
    env = {"SPHINXX_ATTEMPT": str(att.attempt)}
    if storage.endpoint_url:
        env["AWS_ENDPOINT_URL"] = storage.endpoint_url
    return {"env_vars": env}


def _container(
    name: str, image: str, spec: TrainingRunSpec, cpu: str, memory: str, gpus: int
) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = gpus
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"requests": requests, "limits": limits},
    }
    if spec.resources.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in spec.resources.env_from_secrets]
    return container


def stop_on_sigterm(container: dict[str, Any], grace_s: int) -> None:
    """A worker container that checkpoints when its pod is ended (docs/training.md, "Stop on SIGTERM").

    Kubernetes sends SIGTERM to the container's first process only (Ray), never to the training
    workers; so a preStop hook writes the stop file the workers watch and waits, within the grace
    period, until they have committed their step (`sphinxx.jobs.preemption`).
    """
    container["env"] = [*container.get("env", []), {"name": "SPHINXX_STOP_FILE", "value": STOP_FILE}]
    wait = max(1, grace_s - 5)
    command = ["python", "-m", "sphinxx.jobs.preemption", "--stop-file", STOP_FILE, "--wait", str(wait)]
    container["lifecycle"] = {"preStop": {"exec": {"command": command}}}


def stage_cache(pod: dict[str, Any], host_path: str | None) -> None:
    """The folder weights and tokenizers are staged in (docs/storage.md, "Staging inputs on a node").

    A hostPath (Helm `staging.hostPath`) is shared by every pod on the node and kept across
    attempts and points: one download per file per node for the whole sweep. Without one, an
    emptyDir shared by the pod's workers (one pod per node with `workersPerPod` = GPUs per node).
    """
    source = {"hostPath": {"path": host_path, "type": "DirectoryOrCreate"}} if host_path else {"emptyDir": {}}
    pod["spec"].setdefault("volumes", []).append({"name": STAGE_VOLUME, **source})
    container = pod["spec"]["containers"][0]
    container.setdefault("volumeMounts", []).append({"name": STAGE_VOLUME, "mountPath": STAGE_PATH})
    container["env"] = [*container.get("env", []), {"name": "SPHINXX_STAGE_DIR", "value": STAGE_PATH}]


def checkpoint_scratch(pod: dict[str, Any], storage: StorageConfig) -> None:
    """The volume checkpoints are serialised through, when the run names one (`storage.scratch`,
    docs/storage.md, "Checkpoints from host memory"): an emptyDir of `storage.scratch_gib` mounted
    there, and as much ephemeral storage requested, so the scheduler places the pod where that
    much disk is free and the kubelet does not evict it for using it. Without one the workers
    write nothing to disk: checkpoints go from host memory to the store."""
    if storage.scratch is None:
        return
    size = f"{storage.scratch_gib}Gi"
    pod["spec"].setdefault("volumes", []).append({"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size}})
    container = pod["spec"]["containers"][0]
    container.setdefault("volumeMounts", []).append({"name": SCRATCH_VOLUME, "mountPath": storage.scratch})
    for kind in ("requests", "limits"):
        container["resources"][kind]["ephemeral-storage"] = size


def _pod(container: dict[str, Any], spec: TrainingRunSpec, worker: bool, grace_s: int = 0) -> dict[str, Any]:
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if spec.resources.service_account:
        pod["serviceAccountName"] = spec.resources.service_account
    if worker:
        # train.termination_grace_seconds: the time a worker has to commit its step after SIGTERM.
        pod["terminationGracePeriodSeconds"] = grace_s
        if spec.resources.node_selector:
            pod["nodeSelector"] = dict(spec.resources.node_selector)
        if spec.resources.tolerations:
            pod["tolerations"] = [dict(t) for t in spec.resources.tolerations]
    return {"spec": pod}


def cluster_spec(
    att: Attempt,
    spec: TrainingRunSpec,
    parallel: ParallelConfig,
    grace_seconds: int,
    storage: StorageConfig,
) -> dict[str, Any]:
    res = spec.resources
    image = res.image or att.image
    low, high = worker_bounds(spec, parallel)
    gpus = parallel.gpus_per_worker * res.workers_per_pod
    head = _container("ray-head", image, spec, res.head_cpu, res.head_memory, 0)
    worker = _container("ray-worker", image, spec, res.cpu, res.memory, gpus)
    stop_on_sigterm(worker, grace_seconds)
    worker_pod = _pod(worker, spec, True, grace_seconds)
    stage_cache(worker_pod, att.stage_host_path)  # before the pod settings: a patch may change it
    checkpoint_scratch(worker_pod, storage)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
    ]
    out: dict[str, Any] = {
        "rayVersion": RAY_VERSION,
        "enableInTreeAutoscaling": low < high,
        "headGroupSpec": {
            # No GPUs on the head, so no training worker is placed there.
            "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0"},
            "template": pod_settings.apply(_pod(head, spec, worker=False), res, False, 0),
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu",
                "replicas": low,
                "minReplicas": low,
                "maxReplicas": high,
                "rayStartParams": {},
                "template": pod_settings.apply(worker_pod, res, True, gpus),
            }
        ],
    }
    if low < high:
        out["autoscalerOptions"] = {"upscalingMode": "Default", "idleTimeoutSeconds": 60, "version": "v2"}
    return out


def gang_labels(scheduler: str | None, queue: str | None, namespace: str, rayjob: str) -> dict[str, str]:
    """The RayJob labels that make KubeRay gang-schedule its pods with Volcano or YuniKorn.

    `schedulerName` alone only sets each pod's scheduler, which then places head and workers one
    by one; KubeRay creates a Volcano PodGroup (or YuniKorn task groups) sized for the whole
    cluster only when the RayJob carries its batch-scheduler label. `queueName` names the
    scheduler's queue there (Kueue's LocalQueue otherwise). Other schedulers: no labels.
    """
    if scheduler == "volcano":
        out = {names.RAY_SCHEDULER_NAME: "volcano"}
        if queue:
            out[names.VOLCANO_QUEUE] = queue
        return out
    if scheduler == "yunikorn":
        # YuniKorn's application id must be unique across namespaces and is a label value.
        app = f"{namespace}-{rayjob}"
        if len(app) > 63:
            app = f"{rayjob[:54]}-{hashlib.sha256(f'{namespace}/{rayjob}'.encode()).hexdigest()[:8]}"
        out = {names.RAY_GANG_SCHEDULING: "true", names.YUNIKORN_APP_ID: app}
        if queue:
            out[names.YUNIKORN_QUEUE] = queue
        return out
    return {}


def render_rayjob(att: Attempt, spec: TrainingRunSpec, cfg: RunConfig) -> dict[str, Any]:
    labels = {
        names.LABEL_RUN: att.name,
        names.LABEL_ATTEMPT: str(att.attempt),
        names.LABEL_MODEL: cfg.model.flavor,
        names.LABEL_MANAGED_BY: names.MANAGER,
    }
    if att.sweep:
        labels[names.LABEL_SWEEP] = att.sweep
    annotations = {}
    if att.resume_uri:
        annotations[names.ANNOTATION_RESUME_FROM] = att.resume_uri
    gang = gang_labels(spec.resources.scheduler_name, spec.queue_name, att.namespace, att.rayjob_name)
    labels.update(gang)
    if spec.queue_name and not gang:
        labels[names.KUEUE_QUEUE] = spec.queue_name
        if cfg.parallel.min_workers < cfg.parallel.max_workers:
            annotations[names.KUEUE_ELASTIC] = "true"
    job_spec: dict[str, Any] = {
        "entrypoint": f"python -m sphinxx.jobs.train --config {shlex.quote(att.config_uri)}",
        "runtimeEnvYAML": yaml.dump(
            runtime_env(att, cfg.storage),
            Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
            sort_keys=True,
        ),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
        "backoffLimit": 0,
        "preRunningDeadlineSeconds": PRE_RUNNING_DEADLINE_SECONDS,
        "suspend": att.suspend,
        "rayClusterSpec": cluster_spec(
            att, spec, cfg.parallel, cfg.train.termination_grace_seconds, cfg.storage
        ),
    }
    if spec.failure_policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.failure_policy.active_deadline_seconds
    metadata: dict[str, Any] = {
        "name": att.rayjob_name,
        "namespace": att.namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": names.API_VERSION,
                "kind": "TrainingRun",
                "name": att.name,
                "uid": att.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": job_spec}
