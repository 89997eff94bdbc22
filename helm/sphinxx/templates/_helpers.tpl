{{/*
Names, labels and derived values shared by the templates. Everything a user sets lives in
values.yaml; what is computed from several values (the tracking URI, the checkpoint prefix,
the peering mode) is computed here once, so every template agrees.
*/}}

{{- define "sphinxx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "sphinxx.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sphinxx.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sphinxx.labels" -}}
helm.sh/chart: {{ include "sphinxx.chart" . }}
{{ include "sphinxx.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sphinxx
{{- end }}

{{- define "sphinxx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sphinxx.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of the MLflow server objects; a different component, so selectors never overlap. */}}
{{- define "sphinxx.mlflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sphinxx.name" . }}-mlflow
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow
{{- end }}

{{- define "sphinxx.mlflow.labels" -}}
helm.sh/chart: {{ include "sphinxx.chart" . }}
{{ include "sphinxx.mlflow.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sphinxx
{{- end }}

{{- define "sphinxx.postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sphinxx.name" . }}-postgresql
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mlflow-backend
{{- end }}

{{- define "sphinxx.postgresql.labels" -}}
helm.sh/chart: {{ include "sphinxx.chart" . }}
{{ include "sphinxx.postgresql.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sphinxx
{{- end }}

{{- define "sphinxx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sphinxx.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sphinxx.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Image of the Ray pods: runtime.image, else the GPU build of the operator's own image
(`<repository>:<tag>-gpu`, Dockerfile target `gpu`): the same code on both sides, with CUDA.
*/}}
{{- define "sphinxx.runtimeImage" -}}
{{- default (printf "%s-gpu" (include "sphinxx.image" .)) .Values.runtime.image }}
{{- end }}

{{- define "sphinxx.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "sphinxx.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sphinxx.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "sphinxx.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The tracking URI: explicit, else the bundled server's Service, else empty (no tracking). */}}
{{- define "sphinxx.trackingUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else if .Values.mlflow.server.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "sphinxx.mlflow.fullname" .) .Release.Namespace (int .Values.mlflow.server.port) }}
{{- end }}
{{- end }}

{{/* Default checkpoint prefix s3://<bucket>/<prefix>, empty without a bucket. */}}
{{- define "sphinxx.storagePrefix" -}}
{{- if .Values.s3.bucket }}
{{- printf "s3://%s/%s" .Values.s3.bucket (trimAll "/" .Values.s3.prefix) | trimSuffix "/" }}
{{- end }}
{{- end }}

{{- define "sphinxx.mlflow.artifacts" -}}
{{- if .Values.mlflow.server.artifactsDestination }}
{{- .Values.mlflow.server.artifactsDestination }}
{{- else }}
{{- printf "%s/mlflow-artifacts" (include "sphinxx.storagePrefix" .) }}
{{- end }}
{{- end }}

{{- define "sphinxx.peeringName" -}}
{{- default (include "sphinxx.fullname" .) .Values.operator.peering.name }}
{{- end }}

{{/* "true" when the operator watches every namespace (cluster-scoped RBAC and peering). */}}
{{- define "sphinxx.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Secrets whose values the operator and the Ray pods receive as environment (envFrom), by
reference only: S3 credentials and MLflow credentials.
*/}}
{{- define "sphinxx.envFromSecrets" -}}
{{- $out := list }}
{{- with .Values.s3.credentialsSecret }}{{ $out = append $out . }}{{ end }}
{{- with .Values.mlflow.credentialsSecret }}{{ $out = append $out . }}{{ end }}
{{- toJson $out }}
{{- end }}
