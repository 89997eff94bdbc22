"""Specs that admission must refuse (and some it must accept). Shared by the schema, CRD and e2e tests.

Every bad entry is a `Case`: the object's kind and name, a spec that is otherwise valid (so the
named field is the only fault), the field path the refusal must name, and whether the CRD schema
can express the rule (`crd=True`: `kubectl apply` on a real API server refuses it too; `False`:
only the operator's admission can, e.g. rules that need the resolved config of every point).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

DATA = {"tokenizer": "s3://data/tokenizer", "sources": [{"name": "dialog", "uri": "s3://data/dialog"}]}
RUN_BASE = {"preset": "debug", "storage": {"uri": "file:///tmp/sphinxx-corpus"}, "data": DATA}
SWEEP_BASE = {"base": RUN_BASE, "axes": {"models": ["debug", "debug-moe"], "dataFractions": [0.5, 1.0]}}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # TrainingRun | ScalingSweep
    name: str
    spec: dict[str, Any]
    path: str  # the field the refusal names
    crd: bool  # the CRD schema (OpenAPI + CEL) refuses it too


def run(**spec: Any) -> dict[str, Any]:
    return {"config": copy.deepcopy(RUN_BASE), **spec}


def config(**sections: Any) -> dict[str, Any]:
    """A TrainingRun whose config has `sections` merged over RUN_BASE (dotted keys: one level)."""
    out = copy.deepcopy(RUN_BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return {"config": out}


def without(section: str, key: str) -> dict[str, Any]:
    out = copy.deepcopy(RUN_BASE)
    del out[section][key]
    return {"config": out}


def sweep(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SWEEP_BASE), **changes}


def axes(models: Any = ("debug", "debug-moe"), fractions: Any = (0.5, 1.0)) -> dict[str, Any]:
    return {"models": list(models), "dataFractions": list(fractions)}


def patch_env(*env: dict[str, Any], container: str = "ray-worker") -> dict[str, Any]:
    """A pod patch that sets `env` on one container."""
    return {"spec": {"containers": [{"name": container, "env": list(env)}]}}


T, S = "TrainingRun", "ScalingSweep"
NAN, INF = float("nan"), float("inf")
MIXTRAL = {
    "base": {k: v for k, v in RUN_BASE.items() if k != "preset"},
    "axes": axes(["mixtral-8x7b"], [1.0]),
}

BAD = [
    # --- TrainingRun: its own fields
    Case("wrong-type", T, "bad-type", run(maxWorkers="two"), "spec.maxWorkers", True),
    Case("unknown-field", T, "bad-field", run(maxWorker=2), "spec.maxWorker", True),
    Case("min-above-max", T, "bad-workers", run(minWorkers=4, maxWorkers=2), "spec.minWorkers", True),
    Case("workers-too-many", T, "many-workers", run(maxWorkers=10**9), "spec.maxWorkers", True),
    Case("negative-retries", T, "bad-retries", run(failurePolicy={"maxRetries": -1}), "spec.failurePolicy.maxRetries", True),
    Case("retries-too-many", T, "many-retries", run(failurePolicy={"maxRetries": 10**6}), "spec.failurePolicy.maxRetries", True),
    Case("backoff-too-long", T, "long-backoff", run(failurePolicy={"backoffSeconds": 1e9}), "spec.failurePolicy.backoffSeconds", True),
    Case("bad-delete-policy", T, "bad-delete", run(deletePolicy="Purge"), "spec.deletePolicy", True),
    Case("bad-quantity", T, "bad-cpu", run(resources={"cpu": "lots"}), "spec.resources.cpu", True),
    Case("bad-secret-name", T, "bad-secret", run(resources={"envFromSecrets": ["S3_Creds"]}), "spec.resources.envFromSecrets[0]", True),
    Case("duplicate-secret", T, "dup-secret", run(resources={"envFromSecrets": ["s3", "s3"]}), "spec.resources.envFromSecrets", True),
    Case("bad-queue-name", T, "bad-queue", run(queueName="my queue"), "spec.queueName", True),
    Case("config-not-object", T, "bad-config", {"config": "debug"}, "spec.config", True),
    Case("name-too-long", T, "r" * 70, run(), "metadata.name", False),
    Case("name-bad-characters", T, "Bad_Name", run(), "metadata.name", False),
    # --- TrainingRun: pod settings (resources)
    Case("bad-shm-size", T, "bad-shm", run(resources={"shmSize": "lots"}), "spec.resources.shmSize", True),
    Case("volume-two-sources", T, "two-sources", run(resources={"volumes": [{"name": "w", "hostPath": {"path": "/w"}, "emptyDir": {}}]}), "spec.resources.volumes[0]", False),
    Case("volume-bad-name", T, "bad-volume", run(resources={"volumes": [{"name": "Weights", "emptyDir": {}}]}), "spec.resources.volumes[0].name", False),
    Case("volume-named-dshm", T, "dshm-volume", run(resources={"volumes": [{"name": "dshm", "emptyDir": {}}]}), "spec.resources.volumes[0].name", False),
    Case("secret-volume", T, "secret-volume", run(resources={"volumes": [{"name": "c", "secret": {"secretName": "x"}}]}), "spec.resources.volumes[0].secret", False),
    Case("mount-unknown-volume", T, "stray-mount", run(resources={"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}), "spec.resources.volumeMounts[0].name", False),
    Case("mount-relative-path", T, "relative-mount", run(resources={"volumes": [{"name": "w", "emptyDir": {}}], "volumeMounts": [{"name": "w", "mountPath": "weights"}]}), "spec.resources.volumeMounts[0].mountPath", False),
    Case("mount-over-shm", T, "shm-mount", run(resources={"volumes": [{"name": "w", "emptyDir": {}}], "volumeMounts": [{"name": "w", "mountPath": "/dev/shm"}]}), "spec.resources.volumeMounts[0].mountPath", False),
    Case("bad-scheduler-name", T, "bad-scheduler", run(resources={"schedulerName": "Volcano Scheduler"}), "spec.resources.schedulerName", True),
    Case("bad-priority-class", T, "bad-priority", run(resources={"priorityClassName": "High"}), "spec.resources.priorityClassName", True),
    Case("bad-affinity", T, "bad-affinity", run(resources={"affinity": {"nodeAfinity": {}}}), "spec.resources.affinity.nodeAfinity", False),
    Case("bad-pull-secret", T, "bad-pull-secret", run(resources={"imagePullSecrets": ["Registry"]}), "spec.resources.imagePullSecrets[0]", True),
    Case("reserved-pod-label", T, "reserved-label", run(resources={"podLabels": {"ray.io/node-type": "worker"}}), "spec.resources.podLabels.ray.io/node-type", False),
    Case("bad-pod-label-value", T, "bad-label", run(resources={"podLabels": {"team": "vision team"}}), "spec.resources.podLabels.team", False),
    Case("gpus-as-extra-resource", T, "extra-gpus", run(resources={"extraResources": {"nvidia.com/gpu": 8}}), "spec.resources.extraResources.nvidia.com/gpu", False),
    Case("bad-extra-resource-amount", T, "bad-rdma", run(resources={"extraResources": {"rdma/hca": "many"}}), "spec.resources.extraResources.rdma/hca", False),
    Case("patch-unknown-key", T, "bad-patch", run(resources={"workerPodPatch": {"kind": "Pod"}}), "spec.resources.workerPodPatch.kind", False),
    Case("patch-container-without-name", T, "nameless-patch", run(resources={"headPodPatch": {"spec": {"containers": [{"image": "x"}]}}}), "spec.resources.headPodPatch.spec.containers[0]", False),
    # --- TrainingRun: the run config
    Case("unknown-flavor", T, "bad-flavor", config(model={"flavor": "gpt-5"}), "spec.config.model.flavor", True),
    Case("unknown-preset", T, "bad-preset", config(preset="nope"), "spec.config.preset", True),
    Case("fraction-above-1", T, "bad-fraction", config(data={"fraction": 1.5}), "spec.config.data.fraction", True),
    Case("fraction-zero", T, "zero-fraction", config(data={"fraction": 0}), "spec.config.data.fraction", True),
    Case("negative-steps", T, "bad-steps", config(train={"steps": -5}), "spec.config.train.steps", True),
    Case("steps-too-many", T, "many-steps", config(train={"steps": 10**12}), "spec.config.train.steps", True),
    Case("lr-zero", T, "zero-lr", config(train={"lr": 0}), "spec.config.train.lr", True),
    Case("unknown-config-key", T, "bad-key", config(train={"lrr": 1e-3}), "spec.config.train.lrr", True),
    Case("unknown-model-override", T, "bad-override", config(model={"overrides": {"hidden_size": 8}}), "spec.config.model.overrides.hidden_size", True),
    Case("secret-in-model-overrides", T, "leaky-override", config(model={"overrides": {"aws_secret_access_key": "abc"}}), "spec.config.model.overrides.aws_secret_access_key", True),
    Case("missing-storage", T, "no-storage", {"config": {"model": {"flavor": "debug"}, "data": DATA}}, "spec.config.storage.uri", False),
    Case("memory-storage", T, "memory-storage", config(storage={"uri": "memory://x"}), "spec.config.storage.uri", False),
    Case("no-sources", T, "no-sources", without("data", "sources"), "spec.config.data.sources", False),
    Case("no-tokenizer", T, "no-tokenizer", without("data", "tokenizer"), "spec.config.data.tokenizer", False),
    Case("override-breaks-decoder", T, "bad-heads", config(model={"overrides": {"n_kv_heads": 3}}), "spec.config.model.overrides", False),
    Case("ep-on-dense-flavor", T, "dense-ep", config(parallel={"ep_size": 2, "min_workers": 2, "max_workers": 2}), "spec.config.parallel.ep_size", False),
    Case("ep-not-dividing-experts", T, "moe-ep3", config(preset="debug-moe", model={"flavor": "debug-moe"}, parallel={"ep_size": 3, "min_workers": 3, "max_workers": 3}, train={"global_batch": 6}), "spec.config.parallel.ep_size", False),
    Case("zero3-unsupported", T, "zero3", config(parallel={"zero_stage": 3}), "spec.config.parallel.zero_stage", True),
    Case("grace-too-short", T, "short-grace", config(train={"termination_grace_seconds": 5}), "spec.config.train.termination_grace_seconds", True),
    Case("megablocks-on-cpu", T, "moe-megablocks", config(preset="debug-moe", model={"flavor": "debug-moe", "moe_kernel": "megablocks"}), "spec.config.model.moe_kernel", False),
    Case("megablocks-in-fp32", T, "moe-megablocks-fp32", config(preset="debug-moe", model={"flavor": "debug-moe", "moe_kernel": "megablocks"}, parallel={"gpus_per_worker": 1}, train={"precision": "fp32"}), "spec.config.model.moe_kernel", False),
    Case("batch-below-workers", T, "small-batch", run(minWorkers=8, maxWorkers=8), "spec.config.train.global_batch", False),
    Case("password-in-tracking-uri", T, "leaky-uri", config(tracking={"uri": "postgresql://mlflow:hunter2@db/mlflow"}), "spec.config.tracking.uri", False),
    Case("aws-key-in-a-value", T, "leaky-value", config(model={"llm_weights": "s3://AKIAIOSFODNN7EXAMPLE@bucket/w"}), "spec.config.model.llm_weights", False),
    Case("secret-in-node-selector", T, "leaky-selector", run(resources={"nodeSelector": {"password": "x"}}), "spec.resources.nodeSelector.password", False),
    # --- ScalingSweep
    Case("missing-axes", S, "no-axes", {"base": RUN_BASE}, "spec.axes", True),
    Case("empty-axes", S, "empty-axes", sweep(axes={}), "spec.axes.models", True),
    Case("empty-axis", S, "empty-axis", sweep(axes=axes([])), "spec.axes.models", True),
    Case("unknown-model-axis", S, "bad-axis", sweep(axes=axes(["debug", "gpt-5"], [1.0])), "spec.axes.models[1]", True),
    Case("fraction-axis-zero", S, "bad-axis-fraction", sweep(axes=axes(["debug"], [0.0, 0.5])), "spec.axes.dataFractions[0]", True),
    Case("duplicate-axis-values", S, "dup-axis", sweep(axes=axes(["debug", "debug"])), "spec.axes.models", True),
    Case("axis-too-long", S, "long-axis", sweep(axes=axes(["debug"], [i / 2000 for i in range(1, 1002)])), "spec.axes.dataFractions", True),
    Case("max-parallel-huge", S, "huge-parallel", sweep(maxParallelRuns=1_000_000_000), "spec.maxParallelRuns", True),
    Case("override-min-above-max", S, "bad-size-bounds", sweep(overrides={"debug": {"minWorkers": 3, "maxWorkers": 1}}), "spec.overrides.debug.minWorkers", True),
    Case("override-bad-gpus", S, "bad-gpus", sweep(overrides={"debug": {"gpusPerWorker": -1}}), "spec.overrides.debug.gpusPerWorker", True),
    Case("override-config-bad-value", S, "bad-size-config", sweep(overrides={"debug": {"config": {"train": {"steps": -5}}}}), "spec.overrides.debug.config.train.steps", True),
    Case("override-config-unknown-override", S, "bad-size-override", sweep(overrides={"debug": {"config": {"model": {"overrides": {"foo": 1}}}}}), "spec.overrides.debug.config.model.overrides.foo", True),
    Case("secret-in-base-overrides", S, "leaky-base", sweep(base={**RUN_BASE, "model": {"overrides": {"aws_secret_access_key": "abc"}}}), "spec.base.model.overrides.aws_secret_access_key", True),
    Case("sweep-name-too-long", S, "s" * 64, sweep(), "metadata.name", False),
    Case("override-config-sets-axis", S, "size-config-axis", sweep(overrides={"debug": {"config": {"data": {"fraction": 0.1}}}}), "spec.overrides.debug.config.data.fraction", False),
    Case("override-for-unlisted-model", S, "stray-override", sweep(overrides={"tinyllama-1.1b": {"maxWorkers": 2}}), "spec.overrides.tinyllama-1.1b", False),
    Case("mixtral-ep-size-3", S, "mixtral-ep3", {**MIXTRAL, "overrides": {"mixtral-8x7b": {"epSize": 3, "minWorkers": 24, "maxWorkers": 24}}}, "spec.overrides.mixtral-8x7b.epSize", False),
    Case("colliding-point-names", S, "collide", sweep(axes=axes(["debug"], [0.1234501, 0.12345])), "spec.axes.dataFractions", False),
    Case("override-bad-shm", S, "bad-size-shm", sweep(overrides={"debug": {"resources": {"shmSize": "lots"}}}), "spec.overrides.debug.resources.shmSize", True),
    Case("override-unknown-resource", S, "bad-size-resource", sweep(overrides={"debug": {"resources": {"shmSise": "1Gi"}}}), "spec.overrides.debug.resources.shmSise", True),
    Case("override-resources-conflict", S, "size-cpu-twice", sweep(overrides={"debug": {"cpu": "4", "resources": {"cpu": "8"}}}), "spec.overrides.debug.resources.cpu", False),
    Case("override-mount-unknown-volume", S, "size-stray-mount", sweep(overrides={"debug": {"resources": {"volumeMounts": [{"name": "w", "mountPath": "/w"}]}}}), "spec.overrides.debug.resources.volumeMounts[0].name", False),
    Case("sweep-bad-affinity", S, "sweep-affinity", sweep(resources={"affinity": {"nodeSelector": {}}}), "spec.resources.affinity.nodeSelector", False),
    Case("secret-in-tolerations", S, "leaky-toleration", sweep(resources={"tolerations": [{"key": "gpu", "token": "abc"}]}), "spec.resources.tolerations[0].token", False),
    Case("base-without-sources", S, "no-data", sweep(base={k: v for k, v in RUN_BASE.items() if k != "data"}), "spec.base", False),
    # --- credentials (round two): every string of a spec, env lists, KEY=value, keys, token shapes
    Case("env-secret-in-worker-patch", T, "env-aws-secret", run(resources={"workerPodPatch": patch_env({"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"})}), "spec.resources.workerPodPatch.spec.containers[0].env[0].value", False),
    Case("env-password-in-head-patch", T, "env-db-password", run(resources={"headPodPatch": patch_env({"name": "DB_PASSWORD", "value": "hunter2"}, container="ray-head")}), "spec.resources.headPodPatch.spec.containers[0].env[0].value", False),
    Case("env-literal-under-plain-name", T, "env-literal", run(resources={"workerPodPatch": patch_env({"name": "NCCL_DEBUG", "valueFrom": {"configMapKeyRef": {"name": "n", "key": "d"}}}, {"name": "SETTING", "value": "hunter2"})}), "spec.resources.workerPodPatch.spec.containers[0].env[1].value", False),
    Case("key-value-in-annotation", T, "annotated-secret", run(resources={"podAnnotations": {"example.com/creds": "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG"}}), "spec.resources.podAnnotations.example.com/creds", False),
    Case("password-flag-in-annotation", T, "annotated-flag", run(resources={"podAnnotations": {"example.com/args": "--verbose --db-password=hunter2"}}), "spec.resources.podAnnotations.example.com/args", False),
    Case("access-key-as-resource-key", T, "keyed-resource", run(resources={"extraResources": {"AKIAIOSFODNN7EXAMPLE": 1}}), "spec.resources.extraResources.AKIAIOSFODNN7EXAMPLE", False),
    Case("token-in-uri-query", T, "query-token", config(data={**DATA, "tokenizer": "s3://data/tokenizer?token=abc123"}), "spec.config.data.tokenizer", False),
    Case("presigned-url-weights", T, "presigned", config(model={"llm_weights": "s3://w/x?X-Amz-Security-Token=abc&X-Amz-Signature=def"}), "spec.config.model.llm_weights", False),
    Case("hf-token-in-label", T, "hf-label", run(resources={"podLabels": {"hub": "hf_" + "a1B2c3D4e5" * 4}}), "spec.resources.podLabels.hub", False),
    Case("private-key-in-annotation", T, "pem-annotation", run(resources={"podAnnotations": {"example.com/key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow"}}), "spec.resources.podAnnotations.example.com/key", False),
    Case("name-value-pair-secret", T, "paired-secret", run(resources={"tolerations": [{"name": "API_KEY", "value": "abc"}]}), "spec.resources.tolerations[0].value", False),
    Case("sweep-env-token-in-patch", S, "sweep-env-token", sweep(resources={"workerPodPatch": patch_env({"name": "GITHUB_TOKEN", "value": "x"})}), "spec.resources.workerPodPatch.spec.containers[0].env[0].value", False),
    Case("size-env-secret-in-patch", S, "size-env-secret", sweep(overrides={"debug": {"resources": {"headPodPatch": patch_env({"name": "HF_TOKEN", "value": "x"}, container="ray-head")}}}), "spec.overrides.debug.resources.headPodPatch.spec.containers[0].env[0].value", False),
    # --- numbers that are not numbers (round two): NaN passes every comparison, inf every one-sided bound
    Case("lr-nan", T, "nan-lr", config(train={"lr": NAN}), "spec.config.train.lr", False),
    Case("lr-inf", T, "inf-lr", config(train={"lr": INF}), "spec.config.train.lr", True),
    Case("eps-nan", T, "nan-eps", config(train={"eps": NAN}), "spec.config.train.eps", False),
    Case("eps-inf", T, "inf-eps", config(train={"eps": INF}), "spec.config.train.eps", True),
    Case("epochs-inf", T, "inf-epochs", config(data={**DATA, "epochs": INF}), "spec.config.data.epochs", True),
    Case("epochs-nan", T, "nan-epochs", config(data={**DATA, "epochs": NAN}), "spec.config.data.epochs", False),
    Case("source-weight-nan", T, "nan-weight", config(data={**DATA, "sources": [{"name": "d", "uri": "s3://data/d", "weight": NAN}]}), "spec.config.data.sources[0].weight", False),
    Case("rope-theta-inf", T, "inf-rope", config(model={"overrides": {"rope_theta": INF}}), "spec.config.model.overrides.rope_theta", True),
    Case("grad-clip-nan", T, "nan-clip", config(train={"grad_clip": NAN}), "spec.config.train.grad_clip", False),
    Case("grad-clip-minus-inf", T, "minus-inf-clip", config(train={"grad_clip": -INF}), "spec.config.train.grad_clip", True),
    Case("betas-nan", T, "nan-betas", config(train={"betas": [0.9, NAN]}), "spec.config.train.betas[1]", False),
    Case("weight-decay-inf", T, "inf-decay", config(train={"weight_decay": INF}), "spec.config.train.weight_decay", True),
    Case("sweep-base-lr-nan", S, "sweep-nan-lr", sweep(base={**RUN_BASE, "train": {"lr": NAN}}), "spec.base.train.lr", False),
    Case("size-config-aux-nan", S, "size-nan-aux", sweep(overrides={"debug-moe": {"config": {"train": {"aux_loss_coef": NAN}}}}), "spec.overrides.debug-moe.config.train.aux_loss_coef", False),
    Case("size-config-min-lr-inf", S, "size-inf-min-lr", sweep(overrides={"debug": {"config": {"train": {"min_lr": INF}}}}), "spec.overrides.debug.config.train.min_lr", True),
    # --- URIs (round two)
    Case("uri-dotdot-s3-storage", T, "uri-dotdot-s3", config(storage={"uri": "s3://bucket/runs/../other-team"}), "spec.config.storage.uri", True),
    Case("uri-dotdot-file-storage", T, "uri-dotdot-file", config(storage={"uri": "file:///tmp/sphinxx/../../etc"}), "spec.config.storage.uri", True),
    Case("uri-dotdot-source", T, "uri-dotdot-source", config(data={"sources": [{"name": "dialog", "uri": "s3://data/dialog/../../other-team/dialog"}]}), "spec.config.data.sources[0].uri", True),
    Case("uri-dotdot-relative-tokenizer", T, "uri-dotdot-relative", config(data={"tokenizer": "../shared/tokenizer"}), "spec.config.data.tokenizer", True),
    Case("uri-dot-segment-weights", T, "uri-dot-weights", config(model={"llm_weights": "s3://weights/./llama2-13b"}), "spec.config.model.llm_weights", True),
    Case("uri-empty-segment-weights", T, "uri-empty-segment", config(model={"dinov2_weights": "s3://weights//dinov2-giant"}), "spec.config.model.dinov2_weights", True),
    Case("uri-backslash-tokenizer", T, "uri-backslash", config(data={"tokenizer": "data\\tokenizer"}), "spec.config.data.tokenizer", True),
    Case("uri-file-not-absolute", T, "uri-file-relative", config(model={"convnext_weights": "file://weights/convnext.bin"}), "spec.config.model.convnext_weights", True),
    Case("uri-gs-storage", T, "uri-gs-scheme", config(storage={"uri": "gs://bucket/runs"}), "spec.config.storage.uri", True),
    Case("uri-http-storage", T, "uri-http-scheme", config(storage={"uri": "http://minio:9000/runs"}), "spec.config.storage.uri", True),
    Case("uri-dotdot-tracking", T, "uri-dotdot-tracking", config(tracking={"uri": "file:///tmp/mlruns/../../etc/mlruns"}), "spec.config.tracking.uri", True),
    Case("uri-dotdot-sweep-base", S, "uri-sweep-base", sweep(base={**RUN_BASE, "storage": {"uri": "s3://bucket/sweeps/../other-team"}}), "spec.base.storage.uri", True),
    Case("uri-dot-size-config", S, "uri-size-weights", sweep(overrides={"debug": {"config": {"model": {"llm_weights": "s3://weights/debug/./v2"}}}}), "spec.overrides.debug.config.model.llm_weights", True),
    Case("uri-gs-size-config", S, "uri-size-tokenizer", sweep(overrides={"debug": {"config": {"data": {"tokenizer": "gs://data/tokenizer"}}}}), "spec.overrides.debug.config.data.tokenizer", True),
]  # fmt: skip

GOOD = [
    (T, "ok-run", run()),
    (T, "ok-bounds", run(minWorkers=1, maxWorkers=2, suspend=False, resources={"envFromSecrets": ["s3"], "cpu": "500m"})),
    (T, "ok-overrides", config(model={"overrides": {"n_layers": 2, "vocab_size": 8000}})),
    (T, "ok-moe-ep", config(preset="debug-moe", model={"flavor": "debug-moe"}, parallel={"ep_size": 2, "min_workers": 2, "max_workers": 4})),
    (S, "ok-sweep", sweep(maxParallelRuns=2, overrides={"debug": {"maxWorkers": 2}})),
    (S, "ok-layered", sweep(overrides={"debug": {"config": {"model": {"llm_weights": "s3://w/debug"}, "storage": {"keep_best": 2}}}})),
    (T, "ok-pods", run(resources={
        "shmSize": "16Gi", "schedulerName": "volcano", "priorityClassName": "training-high",
        "volumes": [{"name": "weights", "hostPath": {"path": "/mnt/nvme/weights", "type": "DirectoryOrCreate"}}],
        "volumeMounts": [{"name": "weights", "mountPath": "/weights", "readOnly": True}],
        "affinity": {"nodeAffinity": {}}, "imagePullSecrets": ["registry"], "podLabels": {"team": "vision"},
        "podAnnotations": {"example.com/note": "a b c"}, "extraResources": {"rdma/hca": 1, "vpc.amazonaws.com/efa": "32"},
        "workerPodPatch": {"spec": {"hostNetwork": True, "containers": [{"name": "ray-worker", "env": [{"name": "NCCL_DEBUG", "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "debug"}}}, {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "secret"}}}]}]}},
    })),
    (S, "ok-size-pods", sweep(resources={"schedulerName": "volcano"}, overrides={"debug-moe": {"resources": {"shmSize": "0", "podLabels": {"size": "moe"}}}})),
    (S, "ok-mixtral-ep8", {**MIXTRAL, "overrides": {"mixtral-8x7b": {"epSize": 8, "minWorkers": 16, "maxWorkers": 32}}}),
    # URIs that must stay accepted: s3a://, a trailing '/', a directory named .demo, a leading ./,
    # file:///abs, sqlite:////abs (an MLflow store: empty segments are its syntax).
    (T, "ok-uris", config(
        model={"llm_weights": "s3a://weights/llama2-13b/", "convnext_weights": "file:///abs/path/convnext.bin",
               "dinov2_weights": "./weights/dinov2-giant"},
        data={"tokenizer": ".demo/data/tokenizer", "sources": [{"name": "dialog", "uri": ".demo/data/synth-dialog"}]},
        storage={"uri": "file:///abs/path/checkpoints/"}, tracking={"uri": "sqlite:////abs/path/mlflow.db"},
    )),
    (S, "ok-size-uris", sweep(overrides={"debug-moe": {"config": {"model": {"llm_weights": "S3A://weights/v1.5/moe"}}}})),
]  # fmt: skip

# Documents that are not what they claim (round two): the API server refuses these before any
# admission runs (no such kind under that apiVersion), so only the offline CLI must say so.
# (id, the manifest's apiVersion and kind, the field the refusal names)
IDENTITY = [
    ("sweep-as-apps-v1", "apps/v1", "ScalingSweep", "apiVersion"),
    ("sweep-as-unserved-version", "sphinxx.dev/v9", "ScalingSweep", "apiVersion"),
    ("sweep-without-api-version", None, "ScalingSweep", "apiVersion"),
    ("run-as-batch-v1", "batch/v1", "TrainingRun", "apiVersion"),
    ("unknown-kind-in-our-group", "sphinxx.dev/v1alpha1", "Sweep", "kind"),
    ("our-group-lowercase-kind", "sphinxx.dev/v1alpha1", "scalingsweep", "kind"),
]

# Files the YAML reader itself must refuse, before any field is looked at (round two):
# (id, the file's text, what the one-line error says). sphinxx.schema.documents has the limits.
_SWEEP_HEAD = "apiVersion: sphinxx.dev/v1alpha1\nkind: ScalingSweep\nmetadata: {name: tiny}\n"
_LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
TEXTS = [
    (
        "alias-bomb",
        _SWEEP_HEAD
        + "spec:\n  base:\n    l0: &l0 lol\n"
        + "".join("    " + line for line in _LAUGHS.splitlines(True)),
        "expands to more than",
    ),
    (
        "deep-flow-nesting",
        _SWEEP_HEAD + "spec: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "nested deeper than",
    ),
    (
        "deep-block-nesting",
        _SWEEP_HEAD + "spec: " + "{a: " * 5_000 + "1" + "}" * 5_000 + "\n",
        "nested deeper than",
    ),
    (
        "duplicate-lr",
        _SWEEP_HEAD + "spec:\n  base:\n    train:\n      lr: 1.0e-4\n      lr: 1.0e-2\n",
        "key 'lr' is given twice (first at line 7)",
    ),
    (
        "duplicate-storage",
        _SWEEP_HEAD + "spec:\n  base:\n    storage: {uri: s3://a/b}\n    storage: {uri: s3://c/d}\n",
        "key 'storage' is given twice (first at line 6)",
    ),
]
