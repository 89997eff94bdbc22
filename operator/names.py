"""Deterministic names and the labels/annotations we put on objects.

Deterministic names make every create idempotent: a retried handler, or a restarted operator,
asks for the same name and gets 409, which means "already there" (docs/operator.md, "Names").
"""

from __future__ import annotations

import hashlib
import re

from sphinxx.schema.resources import API_VERSION, GROUP, VERSION

__all__ = ["API_VERSION", "GROUP", "VERSION"]  # the API version lives with the specs

LABEL_SWEEP = f"{GROUP}/sweep"
LABEL_RUN = f"{GROUP}/trainingrun"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_MODEL = f"{GROUP}/model"
LABEL_FRACTION = f"{GROUP}/data-fraction"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "sphinxx-operator"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
KUEUE_ELASTIC = "kueue.x-k8s.io/elastic-job"
# KubeRay's batch-scheduler labels (its `--batch-scheduler` flag must name the same scheduler):
# with them KubeRay creates the PodGroup / task groups that gang-schedule head and workers.
RAY_SCHEDULER_NAME = "ray.io/scheduler-name"
RAY_GANG_SCHEDULING = "ray.io/gang-scheduling-enabled"
VOLCANO_QUEUE = "volcano.sh/queue-name"
YUNIKORN_APP_ID = "yunikorn.apache.org/app-id"
YUNIKORN_QUEUE = "yunikorn.apache.org/queue"

ANNOTATION_RESUME = f"{GROUP}/resume"  # `kubectl annotate ... sphinxx.dev/resume=now --overwrite`
ANNOTATION_ADMITTED = f"{GROUP}/admitted"  # set by the sweep when a point may start (maxParallelRuns)
# `kubectl sphinxx rollback trun NAME --to-step N` writes "N@<time>": a new value is one request.
ANNOTATION_ROLLBACK = f"{GROUP}/rollback"
ANNOTATION_RESUME_FROM = f"{GROUP}/resume-from"  # on a RayJob: the committed checkpoint it starts from
# On a point: the sweep's suspend switched it to suspended (so resuming the sweep resumes it).
ANNOTATION_SUSPENDED_BY_SWEEP = f"{GROUP}/suspended-by-sweep"
FINALIZER = f"{GROUP}/finalizer"

RAYJOB_MAX = 47  # KubeRay: RayCluster names are limited to 53 = 47 + "-xxxxx"
RUN_ID_MAX = 63


def _hash(*parts: object, length: int = 6) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:length]


def dns1035(text: str, limit: int) -> str:
    """Lower-case, [a-z0-9-] only, at most `limit` characters, starting with a letter."""
    base = re.sub(r"[^a-z0-9-]", "-", text.lower())[:limit].rstrip("-")
    if not base or not base[0].isalpha():
        base = ("r" + base)[:limit].rstrip("-")
    return base


def rayjob_name(namespace: str, name: str, uid: str, attempt: int) -> str:
    """`<base>-a<attempt>-<hash6>`: at most 32 + 2 + 3 + 1 + 6 = 44 characters (docs/operator.md, "Names")."""
    return f"{dns1035(name, 32)}-a{attempt}-{_hash(namespace, name, uid, attempt)}"


def run_id(namespace: str, name: str, uid: str) -> str:
    """The stable run id: Ray Train's run name and the checkpoint folder, the same for every attempt.

    The uid makes a deleted-and-recreated TrainingRun a new run (fresh checkpoints) rather than
    silently resuming an old one's.
    """
    base = re.sub(r"[^a-z0-9.-]", "-", name.lower())[: RUN_ID_MAX - 9].strip("-.") or "run"
    return f"{base}-{_hash(namespace, name, uid, length=8)}"
