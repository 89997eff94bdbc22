"""A KubeRay stand-in for the end-to-end tests. In production, KubeRay does this job.

The real KubeRay operator (ray-project/kuberay, `ray-operator/controllers/ray/rayjob_controller.go`)
watches RayJobs, creates a RayCluster from `spec.rayClusterSpec`, runs `spec.entrypoint` through
`ray job submit` (K8sJobMode: a submitter Kubernetes Job), polls the Ray job and writes the RayJob
status. There is no Kubernetes here (the API is kmock) and no pods, so this stand-in plays both
KubeRay controllers against one local Ray head started for the test:

- RayJob status goes through KubeRay's state machine with KubeRay's field names and values, via
  the status subresource: `""` (New) -> `Initializing` (jobId, rayClusterName, startTime) ->
  `Running` -> `Complete` / `Failed` (reason `AppFailed` when the Ray job FAILED; `endTime`; the
  `succeeded` / `failed` counters); `jobStatus` is the Ray job's own (`RUNNING`, `SUCCEEDED`,
  `FAILED`, `STOPPED`), `message` is Ray's job message, `rayJobInfo` its start/end times.
  `spec.suspend` gives `Suspending` (the process is stopped, the cluster deleted, the job fields
  reset) -> `Suspended`, and `suspend: false` -> New again (a new cluster and job id).
  `activeDeadlineSeconds` fails the job with `DeadlineExceeded`; `backoffLimit` retries through
  `Retrying`; `shutdownAfterJobFinishes` deletes the RayCluster `ttlSecondsAfterFinished` after
  the end. A RayJob that is deleted has its process killed (its RayCluster goes by owner reference).
- The RayCluster object is created like KubeRay creates it (the RayJob's labels plus
  `ray.io/originated-from-*`, an owner reference, a generated `<rayjob>-xxxxx` name) and gets the
  RayCluster controller's status (`state: ready`, worker replica counts, conditions) at once.
- The entrypoint runs as a subprocess against the local head, the way Ray's job supervisor runs it:
  `RAY_ADDRESS` set, the job's runtime env passed in `RAY_JOB_CONFIG_JSON_ENV_VAR` (so Ray workers
  of the job get its `env_vars`), `PYTHONUNBUFFERED=1`, own process group. Environment the pods
  would get from their spec (`env`, `envFrom` Secrets) is read from the API: the head's for the
  driver, the worker group's for the job's workers. Of the test process's own environment only
  what an image would set passes (`image_env`), so credentials and endpoints reach a job only the
  way they would in a cluster. Output goes to one log file per RayJob (what `kubectl logs
  job/<rayjob>` shows in a cluster).

Not emulated: pods, the submitter Job object, the dashboard (`dashboardURL` stays empty), the
autoscaler (worker bounds are read once), KubeRay's events and its stop-job finalizer, Kueue.

Fault injection for tests: `kill_driver(rayjob)` kills the entrypoint's process group, as if the
driver died; Ray then ends the job's actors and the RayJob goes `Failed`/`AppFailed`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

log = logging.getLogger("kuberay-standin")

GROUP, VERSION = "ray.io", "v1"
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # ray._private.runtime_env.constants
TERMINAL_JOB = ("STOPPED", "SUCCEEDED", "FAILED")
TERMINAL_DEPLOYMENT = ("Complete", "Failed")
LOG_LINES_ON_ERROR = 10  # Ray's job supervisor quotes the last lines of the log on failure
RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery util/rand, used for names
# What a container image would set (paths, locale, Python and Ray tuning). Nothing else of the test
# process reaches a job: credentials and endpoints must come through the pod spec and the RayJob.
IMAGE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "TZ", "TMPDIR")
IMAGE_ENV_PREFIXES = ("LC_", "PYTHON", "RAY_", "OMP_", "MKL_", "TORCH_", "HF_", "TRANSFORMERS_")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def generated_name(base: str) -> str:
    """`<base>-xxxxx`, KubeRay's utils.GenerateRayClusterName / GenerateRayJobId."""
    return f"{base}-{''.join(random.choices(RAND_ALPHABET, k=5))}"


@dataclass
class RayJobProcess:
    """One submitted Ray job: its entrypoint process and what Ray's job info would say."""

    rayjob: str
    job_id: str
    proc: subprocess.Popen
    log_path: Path
    start_ms: int
    stopped: bool = False  # stopped on purpose (suspend, deletion, deadline): STOPPED, not FAILED
    end_ms: int | None = None

    def job_status(self) -> tuple[str, str]:
        """(jobStatus, message) as Ray's JobInfo reports them."""
        code = self.proc.poll()
        if code is None:
            return "RUNNING", "Job is currently running."
        if self.end_ms is None:
            self.end_ms = int(time.time() * 1000)
        if self.stopped:
            return "STOPPED", "Job was intentionally stopped."
        if code == 0:
            return "SUCCEEDED", "Job finished successfully."
        tail = _tail(self.log_path, LOG_LINES_ON_ERROR)
        if not tail:
            return "FAILED", f"Job entrypoint command failed with exit code {code}. No logs available."
        return "FAILED", (
            f"Job entrypoint command failed with exit code {code}, last available logs "
            f"(truncated to 20,000 chars):\n{tail[-20_000:]}"
        )

    def terminate(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL after the grace period (Ray's `ray job stop`)."""
        if self.proc.poll() is not None:
            return
        self.stopped = True
        _signal_group(self.proc, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.proc, signal.SIGKILL)
            self.proc.wait(grace_s)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class KubeRayStandIn:
    """Runs RayJobs of one namespace on a local Ray head; see the module docstring."""

    def __init__(self, kube, namespace: str, ray_address: str, workdir: Path, poll_s: float = 0.5) -> None:
        self.api = client.CustomObjectsApi(kube.api_client())
        self.core = client.CoreV1Api(self.api.api_client)
        self.namespace = namespace
        self.ray_address = ray_address
        self.workdir = workdir
        self.poll_s = poll_s
        self.jobs: dict[str, RayJobProcess] = {}  # RayJob name -> its current Ray job
        self.submissions: list[tuple[str, str]] = []  # (RayJob, jobId) of every submission, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KubeRayStandIn:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        with self._lock:
            for job in self.jobs.values():
                job.terminate()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile_all()
            except Exception as err:  # noqa: BLE001 - a controller keeps going; tests read `errors`
                log.exception("stand-in reconcile failed")
                self.errors.append(f"{type(err).__name__}: {err}")
            self._stop.wait(self.poll_s)

    # -- test hooks --------------------------------------------------------------------------

    def kill_driver(self, rayjob: str) -> None:
        """Fault injection: SIGKILL the entrypoint's process group (the driver dies)."""
        with self._lock:
            job = self.jobs[rayjob]
            _signal_group(job.proc, signal.SIGKILL)

    def log(self, rayjob: str) -> str:
        """The entrypoint's output (what `kubectl logs` of the submitter would show)."""
        path = self.workdir / f"{rayjob}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- reconcile ---------------------------------------------------------------------------

    def reconcile_all(self) -> None:
        items = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayjobs")["items"]
        live = {obj["metadata"]["name"] for obj in items}
        with self._lock:
            for name in [n for n in self.jobs if n not in live]:  # deleted: stop its Ray job
                self.jobs.pop(name).terminate()
            for obj in items:
                self._reconcile(obj)

    def _reconcile(self, obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        name = meta["name"]
        if meta.get("deletionTimestamp"):
            if name in self.jobs:
                self.jobs.pop(name).terminate()
            return
        old = obj.get("status") or {}
        st = dict(old)
        deployment = st.get("jobDeploymentStatus") or ""
        if deployment == "":
            self._initialize(name, spec, st)
        elif deployment == "Initializing":
            if not self._to_suspending(spec, st) and not self._deadline(name, spec, st):
                cluster = self._ensure_cluster(obj, st)
                self._submit(obj, st, cluster)
                st["jobDeploymentStatus"] = "Running"
        elif deployment == "Running":
            if not self._to_suspending(spec, st) and not self._deadline(name, spec, st):
                self._observe(name, st)
        elif deployment in ("Suspending", "Retrying"):
            self._release(name, st)
            st["jobDeploymentStatus"] = "Suspended" if deployment == "Suspending" else ""
        elif deployment == "Suspended" and not spec.get("suspend"):
            st.update(jobStatus="", jobDeploymentStatus="")
        elif deployment in TERMINAL_DEPLOYMENT:
            self._shutdown_after_finish(name, spec, st)
            return
        self._count_and_retry(spec, old, st)
        # KubeRay writes status only when jobStatus or jobDeploymentStatus changes.
        if (st.get("jobStatus"), st.get("jobDeploymentStatus")) != (
            old.get("jobStatus"),
            old.get("jobDeploymentStatus"),
        ):
            if st.get("jobDeploymentStatus") in TERMINAL_DEPLOYMENT:
                st["endTime"] = _now()
            self._write_status(name, old, st)

    def _initialize(self, name: str, spec: dict[str, Any], st: dict[str, Any]) -> None:
        """New -> Initializing: job id and cluster name fixed up front, as initRayJobStatusIfNeed does."""
        st["jobId"] = st.get("jobId") or spec.get("jobId") or generated_name(name)
        st["rayClusterName"] = st.get("rayClusterName") or generated_name(name)
        st["jobStatus"] = st.get("jobStatus") or ""
        st["jobDeploymentStatus"] = "Initializing"
        st["startTime"] = _now()

    def _to_suspending(self, spec: dict[str, Any], st: dict[str, Any]) -> bool:
        if spec.get("suspend"):
            st["jobDeploymentStatus"] = "Suspending"
            return True
        return False

    def _deadline(self, name: str, spec: dict[str, Any], st: dict[str, Any]) -> bool:
        deadline = spec.get("activeDeadlineSeconds")
        started = _epoch(st.get("startTime"))
        if not deadline or started is None or time.time() < started + deadline:
            return False
        if name in self.jobs:
            self.jobs[name].terminate()
        st.update(
            jobDeploymentStatus="Failed",
            reason="DeadlineExceeded",
            message=f"The RayJob has passed the activeDeadlineSeconds. StartTime: {st['startTime']}. "
            f"ActiveDeadlineSeconds: {deadline}",
        )
        return True

    def _observe(self, name: str, st: dict[str, Any]) -> None:
        """Running: mirror the Ray job; a terminal Ray job ends the deployment (AppFailed if FAILED)."""
        job = self.jobs.get(name)
        if job is None:  # the stand-in restarted mid-job: that Ray job is gone with its driver
            st.update(jobStatus="FAILED", message="Job entrypoint command failed: driver lost")
        else:
            st["jobStatus"], st["message"] = job.job_status()
            info = {"startTime": _ms_iso(job.start_ms)}
            if job.end_ms is not None:
                info["endTime"] = _ms_iso(job.end_ms)
            st["rayJobInfo"] = info
        st["rayClusterStatus"] = self._cluster_status(st.get("rayClusterName"))
        if st["jobStatus"] in TERMINAL_JOB:
            failed = st["jobStatus"] == "FAILED"
            st["jobDeploymentStatus"] = "Failed" if failed else "Complete"
            st["reason"] = "AppFailed" if failed else ""

    def _count_and_retry(self, spec: dict[str, Any], old: dict[str, Any], st: dict[str, Any]) -> None:
        """checkBackoffLimitAndUpdateStatusIfNeeded: counters on the transition; Retrying if allowed."""
        if st.get("jobDeploymentStatus") == old.get("jobDeploymentStatus"):
            return
        st["failed"] = int(old.get("failed") or 0) + (st.get("jobDeploymentStatus") == "Failed")
        st["succeeded"] = int(old.get("succeeded") or 0) + (
            st.get("jobDeploymentStatus") == "Complete" and st.get("jobStatus") == "SUCCEEDED"
        )
        limit = spec.get("backoffLimit")
        if (
            st.get("jobDeploymentStatus") == "Failed"
            and limit is not None
            and st["failed"] < int(limit) + 1
            and st.get("reason") != "DeadlineExceeded"
        ):
            st["jobDeploymentStatus"] = "Retrying"

    def _release(self, name: str, st: dict[str, Any]) -> None:
        """Suspending / Retrying: stop the job, delete the cluster, reset the job fields."""
        if name in self.jobs:
            self.jobs.pop(name).terminate()
        if st.get("rayClusterName"):
            self._delete_cluster(st["rayClusterName"])
        for key in ("rayClusterName", "dashboardURL", "jobId", "message", "reason"):
            st.pop(key, None)
        st["rayClusterStatus"] = {}
        st["rayJobInfo"] = {}
        st["jobStatus"] = ""

    def _shutdown_after_finish(self, name: str, spec: dict[str, Any], st: dict[str, Any]) -> None:
        self.jobs.pop(name, None)
        ended = _epoch(st.get("endTime"))
        ttl = int(spec.get("ttlSecondsAfterFinished") or 0)
        if spec.get("shutdownAfterJobFinishes") and ended is not None and time.time() >= ended + ttl:
            if st.get("rayClusterName"):
                self._delete_cluster(st["rayClusterName"])

    # -- the RayCluster ----------------------------------------------------------------------

    def _ensure_cluster(self, rayjob: dict[str, Any], st: dict[str, Any]) -> dict[str, Any]:
        name = st["rayClusterName"]
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayclusters", name)
        except client.ApiException as err:
            if err.status != 404:
                raise
        meta = rayjob["metadata"]
        labels = {
            **(meta.get("labels") or {}),
            "ray.io/originated-from-cr-name": meta["name"],
            "ray.io/originated-from-crd": "RayJob",
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RayCluster",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "RayJob",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": rayjob["spec"]["rayClusterSpec"],
        }
        self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayclusters", body)
        cluster = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayclusters", name)
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "rayclusters", name, {"status": ready_status(cluster)}
        )
        return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayclusters", name)

    def _cluster_status(self, name: str | None) -> dict[str, Any]:
        if not name:
            return {}
        try:
            cluster = self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "rayclusters", name
            )
        except client.ApiException as err:
            if err.status == 404:
                return {}
            raise
        return cluster.get("status") or {}

    def _delete_cluster(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "rayclusters", name)
        except client.ApiException as err:
            if err.status != 404:
                raise

    # -- the Ray job -------------------------------------------------------------------------

    def _submit(self, rayjob: dict[str, Any], st: dict[str, Any], cluster: dict[str, Any]) -> None:
        """`ray job submit`: the entrypoint on the head, with the job's runtime env."""
        name = rayjob["metadata"]["name"]
        if name in self.jobs and self.jobs[name].job_id == st["jobId"]:
            return  # already submitted under this job id (KubeRay's jobId guards the same)
        spec = rayjob["spec"]
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "") or {}
        env_vars = {k: str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
        head_env, worker_env = self._pod_envs(cluster["spec"], cluster["metadata"]["name"])
        job_runtime_env = {**runtime_env, "env_vars": {**worker_env, **env_vars}}
        bin_dir = str(Path(sys.executable).parent)  # the image's `python` is the one with sphinxx
        env = {
            **image_env(),
            **head_env,
            **env_vars,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "RAY_ADDRESS": self.ray_address,
            RAY_JOB_CONFIG_ENV: json.dumps({"runtime_env": job_runtime_env, "metadata": {}}),
            "PYTHONUNBUFFERED": "1",
        }
        cwd = self.workdir / st["jobId"]
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", spec["entrypoint"]],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.jobs[name] = RayJobProcess(name, st["jobId"], proc, log_path, int(time.time() * 1000))
        self.submissions.append((name, st["jobId"]))

    def _pod_envs(self, cluster_spec: dict[str, Any], cluster: str) -> tuple[dict[str, str], dict[str, str]]:
        """Environment of the head pod and of the worker pods: `env` plus `envFrom` Secrets.

        Every pod has a /tmp of its own; here the cluster's pods share one under the workdir, so a
        path in /tmp (the workers' stop file) never lands in this machine's shared /tmp.
        """
        pod_tmp = self.workdir / cluster / "pod-tmp"
        pod_tmp.mkdir(parents=True, exist_ok=True)

        def local(env: dict[str, str]) -> dict[str, str]:
            return {k: f"{pod_tmp}{v[len('/tmp') :]}" if v.startswith("/tmp/") else v for k, v in env.items()}

        head = local(self._container_env(cluster_spec["headGroupSpec"]["template"]))
        groups = cluster_spec.get("workerGroupSpecs") or []
        worker = local(self._container_env(groups[0]["template"])) if groups else dict(head)
        return head, worker

    def _container_env(self, template: dict[str, Any]) -> dict[str, str]:
        container = template["spec"]["containers"][0]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            ref = source.get("secretRef") or {}
            if ref.get("name"):
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                decoded = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
                env.update({f"{source.get('prefix', '')}{k}": v for k, v in decoded.items()})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
        return env

    def _write_status(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        # Empty strings and empty objects are omitted (`omitempty`), so they become deletions.
        patch: dict[str, Any] = {k: None for k in old if _empty(new.get(k))}
        patch.update({k: v for k, v in new.items() if not _empty(v) and old.get(k) != v})
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "rayjobs", name, {"status": patch}
        )


def image_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in IMAGE_ENV or k.startswith(IMAGE_ENV_PREFIXES)}


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == {}


def _ms_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_status(cluster: dict[str, Any]) -> dict[str, Any]:
    """What KubeRay's RayCluster controller reports once every pod runs (all pods are up at once here)."""
    groups = cluster["spec"].get("workerGroupSpecs") or []
    desired = sum(int(g.get("replicas", g.get("minReplicas", 0)) or 0) for g in groups)
    now = _now()
    return {
        "state": "ready",
        "desiredWorkerReplicas": desired,
        "availableWorkerReplicas": desired,
        "readyWorkerReplicas": desired,
        "minWorkerReplicas": sum(int(g.get("minReplicas", 0) or 0) for g in groups),
        "maxWorkerReplicas": sum(int(g.get("maxReplicas", 0) or 0) for g in groups),
        "lastUpdateTime": now,
        "observedGeneration": int(cluster["metadata"].get("generation", 1)),
        "conditions": [
            {
                "type": "HeadPodReady",
                "status": "True",
                "reason": "HeadPodRunningAndReady",
                "message": "",
                "lastTransitionTime": now,
            },
            {
                "type": "RayClusterProvisioned",
                "status": "True",
                "reason": "AllPodRunningAndReadyFirstTime",
                "message": "",
                "lastTransitionTime": now,
            },
        ],
    }
