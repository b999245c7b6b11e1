{{/*
Name of the chart, overridable so that two copies can live side by side.
*/}}
{{- define "octoconn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: "<release>-<chart>", or just the release name when it already contains the chart name,
truncated to 63 characters because some Kubernetes name fields are limited to that (DNS-1123 label).
*/}}
{{- define "octoconn.fullname" -}}
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

{{- define "octoconn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object, so `kubectl get all -l app.kubernetes.io/instance=<release>` finds them all.
*/}}
{{- define "octoconn.labels" -}}
helm.sh/chart: {{ include "octoconn.chart" . }}
{{ include "octoconn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: octoconn
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: only the stable ones, because a Deployment's selector is immutable.
*/}}
{{- define "octoconn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "octoconn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "octoconn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "octoconn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "octoconn.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Secret holding the Universal Auth client id and secret: the user's own, or the one this chart creates (or expects
the user to create under that name when neither clientId/clientSecret nor existingSecret is given).
*/}}
{{- define "octoconn.universalAuthSecretName" -}}
{{- default (printf "%s-universal-auth" (include "octoconn.fullname" .)) .Values.auth.universal.existingSecret }}
{{- end }}

{{- define "octoconn.createUniversalAuthSecret" -}}
{{- if and (eq .Values.auth.method "universal") (not .Values.auth.universal.existingSecret) .Values.auth.universal.clientId .Values.auth.universal.clientSecret }}true{{ end }}
{{- end }}

{{/*
Rules the operator needs in every namespace it watches. Secrets are read-only on purpose: the operator must never
modify the Secret a user points it at, so it is not allowed to.
*/}}
{{- define "octoconn.namespacedRules" -}}
- apiGroups: ["octoconn.dev"]
  resources: ["octopusdeployconnections", "octopusdeploysecretsyncs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["octoconn.dev"]
  resources: ["octopusdeployconnections/status", "octopusdeploysecretsyncs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Rules that cannot be namespaced: Kopf lists and watches namespaces and CRDs to decide what to serve.
*/}}
{{- define "octoconn.clusterScanRules" -}}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
Cross-field checks the JSON schema cannot word clearly; each message says which value to set.
*/}}
{{- define "octoconn.validate" -}}
{{- $u := .Values.auth.universal }}
{{- if eq .Values.auth.method "kubernetes" }}
{{- if not .Values.auth.kubernetes.identityId }}
{{- fail "auth.method=kubernetes needs auth.kubernetes.identityId (the Infisical machine identity configured with Kubernetes Auth)" }}
{{- end }}
{{- else }}
{{- if and $u.existingSecret (or $u.clientId $u.clientSecret) }}
{{- fail "set either auth.universal.existingSecret or auth.universal.clientId/clientSecret, not both" }}
{{- end }}
{{- if and (not $u.existingSecret) (or $u.clientId $u.clientSecret) (not (and $u.clientId $u.clientSecret)) }}
{{- fail "auth.universal.clientId and auth.universal.clientSecret must be set together" }}
{{- end }}
{{- end }}
{{- if and .Values.octopus.caBundle.configMapName (not .Values.octopus.caBundle.key) }}
{{- fail "octopus.caBundle.configMapName needs octopus.caBundle.key (the ConfigMap key holding the PEM bundle)" }}
{{- end }}
{{- end }}

{{/*
"true" when the replicas peer through Kopf (more than one replica); one replica runs --standalone.
*/}}
{{- define "octoconn.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}
