"""sphinxx.operator: the Kubernetes operator for ScalingSweep and TrainingRun (group sphinxx.dev/v1alpha1).

Pure parts (no API calls, unit-tested): spec.py (typed specs + validation with field paths),
names.py (deterministic names), crds.py (CRDs generated from the specs and the run-config schema),
expand.py (sweep -> points), render.py (RayJob per attempt), status.py (KubeRay status -> ours,
roll-up), decide.py (reconcile decisions).
Acting parts: kube.py (the only Kubernetes API caller), tracking.py (MLflow run identity),
checkpoints.py (sphinxx.storage seam), reconcile.py (observe -> decide -> act), handlers.py
(thin kopf triggers), cli.py (`sphinxx operator run|crds`), kubectl_plugin.py (`kubectl sphinxx`).
"""
