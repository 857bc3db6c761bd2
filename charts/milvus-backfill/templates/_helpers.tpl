{{/* Chart name. */}}
{{- define "milvus-backfill.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "milvus-backfill.fullname" -}}
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

{{- define "milvus-backfill.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "milvus-backfill.selectorLabels" -}}
app.kubernetes.io/name: {{ include "milvus-backfill.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "milvus-backfill.labels" -}}
helm.sh/chart: {{ include "milvus-backfill.chart" . }}
{{ include "milvus-backfill.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "milvus-backfill.operatorLabels" -}}
{{ include "milvus-backfill.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "milvus-backfill.operatorSelectorLabels" -}}
{{ include "milvus-backfill.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "milvus-backfill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "milvus-backfill.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "milvus-backfill.workerServiceAccountName" -}}
{{- if .Values.workerServiceAccount.create }}
{{- default (printf "%s-worker" (include "milvus-backfill.fullname" .) | trunc 63 | trimSuffix "-") .Values.workerServiceAccount.name }}
{{- else }}
{{- default "default" .Values.workerServiceAccount.name }}
{{- end }}
{{- end }}

{{/* "true" or "false": leader election (auto: on when replicaCount > 1). */}}
{{- define "milvus-backfill.leaderElection" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled }}
{{- ternary "true" "false" .Values.leaderElection.enabled }}
{{- else }}
{{- "true" }}
{{- end }}
{{- end }}

{{- define "milvus-backfill.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Watched namespaces, deduplicated, as a JSON list (use with fromJsonArray). */}}
{{- define "milvus-backfill.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- end }}

{{/* Namespaces of the worker ServiceAccount: release, watched, extra; deduplicated. */}}
{{- define "milvus-backfill.workerNamespaces" -}}
{{- concat (list .Release.Namespace) .Values.watchNamespaces .Values.workerServiceAccount.namespaces | uniq | toJson }}
{{- end }}

{{/*
The operator's rules on Backfills and their children; the same rules go into the
ClusterRole (all namespaces) or into one Role per watched namespace.
*/}}
{{- define "milvus-backfill.operatorRules" -}}
# Exactly what the operator's code calls (docs/operations.md#rbac lists each call): nothing
# more, so a compromised operator can do no more than its job.
# Backfills: watched by the controller (list/watch), listed once at startup as a check.
- apiGroups: [milvusbackfill.io]
  resources: [backfills]
  verbs: [list, watch]
# status: read back before a step that must not run twice (get), written with server-side
# apply (patch).
- apiGroups: [milvusbackfill.io]
  resources: [backfills/status]
  verbs: [get, patch]
# Jobs carry an ownerReference with blockOwnerDeletion=true to their Backfill, which needs
# update on the owner's finalizers subresource (OwnerReferencesPermissionEnforcement).
- apiGroups: [milvusbackfill.io]
  resources: [backfills/finalizers]
  verbs: [update]
# Worker, planning and finishing Jobs: applied with server-side apply (create, patch), read
# when an apply is refused as immutable (get), watched (list/watch). Never deleted by the
# operator: the garbage collector removes them with their Backfill.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch, patch]
# Kubernetes Events on Backfills: kube's Recorder writes events.k8s.io/v1 (create, then patch
# to count a repeated Event).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if and (eq .Values.planning.mode "inProcess") .Values.operator.readSecrets }}
# Planning runs in the operator (planning.mode inProcess): it calls Milvus with the token of
# spec.milvus.tokenSecretRef and reads storage with spec.storage/source.credentialsSecretRef.
# Only get: the operator reads the Secrets a Backfill names, it never lists or watches them.
# With planning Jobs there is no such rule: the Jobs get the Secrets through secretKeyRef.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
{{- end }}
{{- end }}
