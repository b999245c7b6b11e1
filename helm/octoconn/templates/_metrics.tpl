{{/*
Settings of the metrics endpoint; metrics.enabled=false turns it off in the operator too (OCTOCONN_METRICS_PORT=0).
*/}}
{{- define "octoconn.metricsEnv" -}}
- name: OCTOCONN_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | toString | quote }}
- name: OCTOCONN_METRICS_PATH
  value: {{ .Values.metrics.path | quote }}
{{- end }}

{{/*
Labels that tell the metrics Service apart from any other Service of the release; the ServiceMonitor selects on them.
*/}}
{{- define "octoconn.metricsSelectorLabels" -}}
{{ include "octoconn.selectorLabels" . }}
octoconn.dev/metrics: "true"
{{- end }}
