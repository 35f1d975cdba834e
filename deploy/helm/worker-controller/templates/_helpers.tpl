{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "wc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release alone when it already contains the chart name. */}}
{{- define "wc.fullname" -}}
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

{{- define "wc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "wc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The Secret holding the API key, or "" when the server runs without one. */}}
{{- define "wc.apiKeySecret" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if or .Values.apiKey.value .Values.apiKey.generate }}
{{- printf "%s-api-key" (include "wc.fullname" .) }}
{{- end }}
{{- end }}

{{- define "wc.poolName" -}}
{{- default (include "wc.fullname" .) .Values.gie.poolName | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Seconds from pod deletion to SIGKILL: preStop sleep + drain + deadline + detach margin. */}}
{{- define "wc.gracePeriod" -}}
{{- $l := .Values.lifecycle }}
{{- add $l.preStopSleepSeconds $l.drainDelaySeconds $l.shutdownDeadlineSeconds $l.detachMarginSeconds }}
{{- end }}

{{/* One TOML section's keys from a map: key = value, values written as JSON (valid TOML). */}}
{{- define "wc.tomlKeys" -}}
{{- range $key, $value := . }}
{{ $key }} = {{ toJson $value }}
{{- end }}
{{- end }}

{{/* The pods' ServiceAccount: the chart's (full name unless named), or the one named, or "default". */}}
{{- define "wc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}
