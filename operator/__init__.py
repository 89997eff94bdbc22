"""sphinxx.operator: the Kubernetes operator for ScalingSweep and TrainingRun (group sphinxx.dev/v1alpha1).

It speaks the project's vocabulary (`sphinxx.schema`: specs, status, admission) and runs
sweeps through the sweep core (`sphinxx.sweep`: points, MLflow runs, the fit); what is
Kubernetes- and KubeRay-specific lives here.
Pure parts (no API calls, unit-tested): names.py (deterministic names and labels), crds.py (CRDs
generated from the vocabulary), expand.py (points as TrainingRun objects), render.py (RayJob per
attempt), status.py (KubeRay status -> ours, roll-up), decide.py (reconcile decisions).
Acting parts: kube.py (the only Kubernetes API caller), checkpoints.py (sphinxx.storage seam),
reconcile.py (admit -> observe -> decide -> act), handlers.py (thin kopf triggers), settings.py,
cli.py (`sphinxx operator run|crds`), kubectl_plugin.py (`kubectl sphinxx`).
"""
