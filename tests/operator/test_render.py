"""RayJob rendering: golden manifests per flavor, plus the KubeRay constraints checked independently.

Regenerate the golden files after an intended change with
`SPHINXX_UPDATE_GOLDEN=1 pytest tests/operator/test_render.py` and review the diff.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from sphinxx.operator.render import Attempt, gang_labels, render_rayjob
from sphinxx.schema.admission import admit_run
from sphinxx.schema.flavors import NAMES as FLAVORS
from sphinxx.schema.flavors import SIZE_AXIS
from tests.schema.corpus import DATA


def validate_run(name: str, spec: dict):
    admitted = admit_run(name, spec)
    return admitted.spec, admitted.config


GOLDEN = Path(__file__).parent / "golden"
PRESETS = ("debug", "debug-moe", *SIZE_AXIS)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (runtimeEnvYAML) as literal blocks, so golden diffs stay readable."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)
FLAVOR_CASES = ["debug", *SIZE_AXIS]


def _attempt(name: str, **changes) -> Attempt:
    fields = dict(
        namespace="team-a",
        name=name,
        uid="0b0e7c4e-8f7e-4d4c-9d57-6b8e1f0c2a11",
        attempt=2,
        config_uri=f"s3://bucket/sweeps/{name}-1a2b3c4d/config.yaml",
        image="ghcr.io/sphinxx/sphinxx:0.1.0",
        sweep="scaling",
        resume_uri=f"s3://bucket/sweeps/{name}-1a2b3c4d/checkpoints/step-000001500",
    )
    fields.update(changes)
    return Attempt(**fields)


def _spec(flavor: str, **spec) -> dict:
    storage = {"uri": "s3://bucket/sweeps", "endpoint_url": "http://minio:9000"}
    config = {"preset": flavor if flavor in PRESETS else "llama2-13b", "storage": storage, "data": DATA}
    config["model"] = {"flavor": flavor}
    resources = {"nodeSelector": {"gpu": "h100"}, "envFromSecrets": ["s3-credentials"], "workersPerPod": 8}
    if flavor == "debug":
        resources = {"workersPerPod": 1}
    return {"config": config, "resources": resources, **spec}


def _render(flavor: str, **spec) -> dict:
    name = f"scaling-{flavor.replace('.', '-')}-d100"
    parsed, cfg = validate_run(name, _spec(flavor, **spec))
    return render_rayjob(_attempt(name), parsed, cfg)


def _matches_golden(job: dict, name: str) -> str:
    """The RayJob as YAML equals golden/NAME (rewritten instead with SPHINXX_UPDATE_GOLDEN=1)."""
    rendered = yaml.dump(job, Dumper=_Dumper, sort_keys=False, width=110)
    path = GOLDEN / name
    if os.environ.get("SPHINXX_UPDATE_GOLDEN"):
        path.write_text(rendered)
    assert path.read_text() == rendered, f"{path.name} differs; review and regenerate (see module docstring)"
    return rendered


@pytest.mark.parametrize("flavor", FLAVOR_CASES)
def test_golden_rayjob(flavor: str) -> None:
    rendered = _matches_golden(_render(flavor), f"rayjob-{flavor}.yaml")
    assert yaml.safe_load(rendered) == _render(flavor)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_rayjob_satisfies_kuberay_constraints(flavor: str) -> None:
    spec = _spec(flavor)
    parsed, cfg = validate_run("run", spec)
    job = render_rayjob(_attempt("run"), parsed, cfg)
    name = job["metadata"]["name"]
    assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    js = job["spec"]
    assert js["backoffLimit"] == 0 and js["shutdownAfterJobFinishes"] is True and js["suspend"] is False
    assert "clusterSelector" not in js and "deletionStrategy" not in js
    assert (
        js["entrypoint"]
        == "python -m sphinxx.jobs.train --config s3://bucket/sweeps/run-1a2b3c4d/config.yaml"
    )

    per_pod = parsed.resources.workers_per_pod
    group = js["rayClusterSpec"]["workerGroupSpecs"][0]
    low, high = math.ceil(cfg.parallel.min_workers / per_pod), math.ceil(cfg.parallel.max_workers / per_pod)
    assert (group["minReplicas"], group["maxReplicas"], group["replicas"]) == (low, high, low)
    assert 0 <= group["minReplicas"] <= group["maxReplicas"]
    assert js["rayClusterSpec"]["enableInTreeAutoscaling"] is (low < high)
    assert js["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"

    for template in (group["template"], js["rayClusterSpec"]["headGroupSpec"]["template"]):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]}
        kubernetes_validate.validate(pod, "1.32", strict=True)
        assert template["spec"]["restartPolicy"] == "Never"  # autoscaler v2
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu", 0) == cfg.parallel.gpus_per_worker * per_pod

    env = yaml.safe_load(js["runtimeEnvYAML"])["env_vars"]
    # The run's identity travels in the stored config only; the environment says which attempt.
    assert env == {"SPHINXX_ATTEMPT": "2", "AWS_ENDPOINT_URL": "http://minio:9000"}
    assert not [k for k in env if re.search("SECRET|PASSWORD|TOKEN|ACCESS_KEY", k)]
    assert "secret" not in js["runtimeEnvYAML"].lower()


def test_queue_label_elastic_annotation_and_deadline() -> None:
    job = _render("tinyllama-1.1b", queueName="gpu-queue", failurePolicy={"activeDeadlineSeconds": 86400})
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["annotations"]["kueue.x-k8s.io/elastic-job"] == "true"  # preset: 8..16 workers
    assert job["spec"]["activeDeadlineSeconds"] == 86400


def test_fixed_size_run_has_no_autoscaler() -> None:
    job = _render("debug", minWorkers=2, maxWorkers=2)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in cluster
    assert cluster["workerGroupSpecs"][0]["minReplicas"] == cluster["workerGroupSpecs"][0]["maxReplicas"] == 2


def test_workers_stage_weights_in_the_node_folder_when_one_is_set() -> None:
    parsed, cfg = validate_run("staged", _spec("debug"))
    for host_path, source in (
        (None, {"emptyDir": {}}),
        ("/mnt/nvme/sphinxx", {"hostPath": {"path": "/mnt/nvme/sphinxx", "type": "DirectoryOrCreate"}}),
    ):
        cluster = render_rayjob(_attempt("staged", stage_host_path=host_path), parsed, cfg)["spec"][
            "rayClusterSpec"
        ]
        pod = cluster["workerGroupSpecs"][0]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "sphinxx-stage"]
        assert {k: v for k, v in volume.items() if k != "name"} == source
        (worker,) = pod["containers"]
        assert {"name": "sphinxx-stage", "mountPath": "/var/cache/sphinxx-stage"} in worker["volumeMounts"]
        assert {"name": "SPHINXX_STAGE_DIR", "value": "/var/cache/sphinxx-stage"} in worker["env"]
        assert "volumes" not in cluster["headGroupSpec"]["template"]["spec"]  # the head trains nothing


def test_worker_grace_period_and_stop_hook_follow_the_run_config() -> None:
    spec = _spec("debug")
    spec["config"]["train"] = {"termination_grace_seconds": 300}
    parsed, cfg = validate_run("graceful", spec)
    pod = render_rayjob(_attempt("graceful"), parsed, cfg)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    template = pod["template"]["spec"]
    assert template["terminationGracePeriodSeconds"] == 300
    (worker,) = template["containers"]
    assert {"name": "SPHINXX_STOP_FILE", "value": "/tmp/sphinxx-stop"} in worker["env"]
    command = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:3] == ["python", "-m", "sphinxx.jobs.preemption"] and command[-2:] == ["--wait", "295"]
    # The hook's module is the one the job's workers watch with (same file, same default).
    from sphinxx.jobs import preemption
    from sphinxx.operator import render

    assert render.STOP_FILE == preemption.DEFAULT_STOP_FILE


def test_checkpoint_scratch_is_mounted_and_requested_only_when_set() -> None:
    """storage.scratch: an emptyDir of storage.scratch_gib at that path, requested as ephemeral
    storage, on the workers only; without it the pods ask for no disk (checkpoints stream from memory)."""
    spec = _spec("debug")
    plain = _render("debug")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "ephemeral-storage" not in plain["containers"][0]["resources"]["requests"]
    spec["config"]["storage"] = {**spec["config"]["storage"], "scratch": "/mnt/ckpt", "scratch_gib": 64}
    parsed, cfg = validate_run("scratch", spec)
    job = render_rayjob(_attempt("scratch"), parsed, cfg)
    _matches_golden(job, "rayjob-checkpoint-scratch.yaml")
    cluster = job["spec"]["rayClusterSpec"]
    pod = cluster["workerGroupSpecs"][0]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "sphinxx-checkpoint-scratch"]
    assert volume["emptyDir"] == {"sizeLimit": "64Gi"}
    (worker,) = pod["containers"]
    assert {"name": "sphinxx-checkpoint-scratch", "mountPath": "/mnt/ckpt"} in worker["volumeMounts"]
    assert worker["resources"]["requests"]["ephemeral-storage"] == "64Gi"
    assert worker["resources"]["limits"]["ephemeral-storage"] == "64Gi"
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "ephemeral-storage" not in head["containers"][0]["resources"]["requests"]
    # The path and its size go together (admission names the field).
    spec["config"]["storage"].pop("scratch_gib")
    with pytest.raises(Exception, match="storage.scratch_gib"):
        validate_run("scratch", spec)


# One golden RayJob per pod setting: a GPU size (8 GPUs per pod) with that setting alone.
POD_SETTINGS = {
    "shm-size": {"shmSize": "96Gi"},
    "shm-off": {"shmSize": "0"},
    "volumes": {
        "volumes": [
            {"name": "weights", "hostPath": {"path": "/mnt/nvme/weights", "type": "DirectoryOrCreate"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "sphinx-data", "readOnly": True}},
        ],
        "volumeMounts": [
            {"name": "weights", "mountPath": "/weights"},
            {"name": "data", "mountPath": "/data", "readOnly": True},
        ],
    },
    "scheduler": {"schedulerName": "volcano", "priorityClassName": "training-high"},
    "affinity": {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "topology.kubernetes.io/zone",
                                    "operator": "In",
                                    "values": ["us-east-1a"],
                                }
                            ]
                        }
                    ]
                }
            }
        }
    },
    "service-account": {"serviceAccount": "sphinxx-irsa"},
    "image-pull-secrets": {"imagePullSecrets": ["registry", "mirror"]},
    "pod-metadata": {
        "podLabels": {"team": "vision", "cost-center": "ml-42"},
        "podAnnotations": {"prometheus.io/scrape": "true"},
    },
    "extra-resources": {"extraResources": {"vpc.amazonaws.com/efa": 32, "rdma/hca": "1"}},
    "pod-patches": {
        "headPodPatch": {
            "metadata": {"annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}},
            "spec": {
                "containers": [
                    {
                        "name": "ray-head",
                        "env": [
                            {
                                "name": "RAY_LOG_TO_STDERR",
                                "valueFrom": {
                                    "configMapKeyRef": {"name": "ray-settings", "key": "log-to-stderr"}
                                },
                            }
                        ],
                    }
                ]
            },
        },
        "workerPodPatch": {
            "spec": {
                "hostNetwork": True,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "containers": [
                    {
                        "name": "ray-worker",
                        "securityContext": {"capabilities": {"add": ["IPC_LOCK"]}},
                        "env": [
                            {
                                "name": "NCCL_IB_HCA",
                                "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "ib-hca"}},
                            }
                        ],
                    }
                ],
            }
        },
    },
}


@pytest.mark.parametrize("setting", sorted(POD_SETTINGS))
def test_golden_rayjob_per_pod_setting(setting: str) -> None:
    spec = _spec("tinyllama-1.1b")
    spec["resources"] = {**spec["resources"], **POD_SETTINGS[setting]}
    parsed, cfg = validate_run("scaling-tinyllama-1-1b-d100", spec)
    job = render_rayjob(_attempt("scaling-tinyllama-1-1b-d100"), parsed, cfg)
    cluster = job["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template.get("metadata", {})}}
        kubernetes_validate.validate({**pod, "spec": template["spec"]}, "1.32", strict=True)
    _matches_golden(job, f"rayjob-pod-{setting}.yaml")


def test_pod_settings_land_where_they_belong() -> None:
    spec = _spec("tinyllama-1.1b")
    spec["resources"] = {**spec["resources"], **POD_SETTINGS["volumes"], **POD_SETTINGS["scheduler"],
                         **POD_SETTINGS["extra-resources"], **POD_SETTINGS["pod-metadata"],
                         **POD_SETTINGS["pod-patches"]}  # fmt: skip
    parsed, cfg = validate_run("pods", spec)
    cluster = render_rayjob(_attempt("pods"), parsed, cfg)["spec"]["rayClusterSpec"]
    head, worker = cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]
    wc = worker["spec"]["containers"][0]
    # the node cache, then /dev/shm: 4Gi per GPU of the pod (8 GPUs), on workers only; the user's volumes
    # after them.
    assert [v["name"] for v in worker["spec"]["volumes"]] == ["sphinxx-stage", "dshm", "weights", "data"]
    assert worker["spec"]["volumes"][1]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert [m["mountPath"] for m in wc["volumeMounts"]] == [
        "/var/cache/sphinxx-stage",
        "/dev/shm",
        "/weights",
        "/data",
    ]
    assert "volumes" not in head["spec"]
    # Extended resources: requested and limited per worker pod, next to the GPUs.
    assert wc["resources"]["limits"] == {
        "memory": "64Gi",
        "nvidia.com/gpu": 8,
        "rdma/hca": "1",
        "vpc.amazonaws.com/efa": 32,
    }
    assert wc["resources"]["requests"]["rdma/hca"] == "1"
    # Scheduling and metadata on every pod.
    for template in (head, worker):
        assert (template["spec"]["schedulerName"], template["spec"]["priorityClassName"]) == (
            "volcano",
            "training-high",
        )
        assert template["metadata"]["labels"] == {"team": "vision", "cost-center": "ml-42"}
    # The patches merge: the worker container keeps its env and lifecycle and gains the patch's.
    assert worker["spec"]["hostNetwork"] is True
    assert [e["name"] for e in wc["env"]] == [
        "SPHINXX_STOP_FILE",
        "SPHINXX_STAGE_DIR",
        "NCCL_IB_HCA",
    ] and "lifecycle" in wc
    assert wc["securityContext"] == {"capabilities": {"add": ["IPC_LOCK"]}}
    assert head["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
    }  # fmt: skip
    assert head["spec"]["containers"][0]["env"] == [
        {
            "name": "RAY_LOG_TO_STDERR",
            "valueFrom": {"configMapKeyRef": {"name": "ray-settings", "key": "log-to-stderr"}},
        }
    ]


def test_strategic_merge_rules() -> None:
    from sphinxx.operator.pod_settings import strategic_merge

    base = {
        "spec": {
            "containers": [{"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]}, {"name": "b"}],
            "tolerations": [{"key": "t1"}],
            "nodeSelector": {"gpu": "h100", "zone": "a"},
        }
    }
    patch = {
        "spec": {
            "containers": [
                {"name": "a", "env": [{"name": "K", "value": "2"}, {"name": "L", "value": "3"}]},
                {"name": "b", "$patch": "delete"},
                {"name": "c", "image": "y"},
            ],
            "tolerations": [{"key": "t2"}],  # no merge key: replaced
            "nodeSelector": {"zone": None},  # null deletes
        }
    }
    out = strategic_merge(base, patch)
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "x", "env": [{"name": "K", "value": "2"}, {"name": "L", "value": "3"}]},
        {"name": "c", "image": "y"},
    ]
    assert out["spec"]["tolerations"] == [{"key": "t2"}] and out["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert base["spec"]["containers"][1] == {"name": "b"}  # the input is untouched


@pytest.mark.parametrize("scheduler", ["volcano", "yunikorn"])
def test_golden_rayjob_gang_scheduled_by_volcano_or_yunikorn(scheduler: str) -> None:
    """`schedulerName` volcano / yunikorn: the RayJob carries KubeRay's batch-scheduler labels (so
    KubeRay makes the PodGroup / task groups for head and workers together) and the queue goes to
    that scheduler, not to Kueue; every pod names the scheduler."""
    spec = _spec("tinyllama-1.1b", queueName="research")
    spec["resources"] = {**spec["resources"], "schedulerName": scheduler}
    parsed, cfg = validate_run("scaling-tinyllama-1-1b-d100", spec)
    job = render_rayjob(_attempt("scaling-tinyllama-1-1b-d100"), parsed, cfg)
    labels = job["metadata"]["labels"]
    assert "kueue.x-k8s.io/queue-name" not in labels
    assert "kueue.x-k8s.io/elastic-job" not in job["metadata"].get("annotations", {})
    if scheduler == "volcano":
        assert (labels["ray.io/scheduler-name"], labels["volcano.sh/queue-name"]) == ("volcano", "research")
    else:
        assert (
            labels["ray.io/gang-scheduling-enabled"] == "true"
            and labels["yunikorn.apache.org/queue"] == "research"
        )
        assert labels["yunikorn.apache.org/app-id"] == f"team-a-{job['metadata']['name']}"
    cluster = job["spec"]["rayClusterSpec"]
    for template in (cluster["headGroupSpec"]["template"], cluster["workerGroupSpecs"][0]["template"]):
        assert template["spec"]["schedulerName"] == scheduler
    _matches_golden(job, f"rayjob-gang-{scheduler}.yaml")


def test_yunikorn_app_ids_stay_valid_label_values_and_unique_across_namespaces() -> None:
    long = "p" * 60
    a, b = (
        gang_labels("yunikorn", None, ns, long)["yunikorn.apache.org/app-id"] for ns in ("team-a", "team-b")
    )
    assert a != b and len(a) <= 63 and len(b) <= 63 and a.startswith(long[:54])
    assert gang_labels("default-scheduler", "q", "ns", "r") == {}
