{{/*
The operator's grants, one rule per line of sphinxx.operator.kube.RBAC_RULES (a test renders
the chart and checks that the ClusterRole grants exactly those, and the Role exactly the
namespaced ones). Argument: a dict with "root" (the top context) and "clusterWide" (bool);
cluster-scoped resources (CRDs, namespaces, ClusterKopfPeerings) are granted only cluster-wide:
in namespaced-only mode kopf falls back to the namespaces it is given and to one discovery scan.
*/}}
{{- define "sphinxx.operatorRules" -}}
{{- $root := .root }}
# Our resources: kopf watches them and patches annotations/finalizers; the operator creates points.
- apiGroups: ["sphinxx.dev"]
  resources: ["scalingsweeps", "trainingruns"]
  verbs: ["create", "delete", "get", "list", "patch", "watch"]
- apiGroups: ["sphinxx.dev"]
  resources: ["scalingsweeps/status", "trainingruns/status"]
  verbs: ["get", "patch"]
# One KubeRay RayJob per attempt; elastic bounds are patched on the RayCluster it made.
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["create", "delete", "get", "list", "patch", "watch"]
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .clusterWide }}
# kopf: resource discovery, namespace scoping, peering.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings", "kopfpeerings"]
  verbs: ["get", "list", "patch", "watch"]
{{- else }}
# kopf peering in namespaced-only mode (KopfPeering objects live in the watched namespaces).
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "patch", "watch"]
{{- end }}
{{- with $root.Values.rbac.secretNames }}
# Only the Secrets named in values (rbac.secretNames), by name: no list, no watch.
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: {{ toJson . }}
  verbs: ["get"]
{{- end }}
{{- end }}
