{{/* Full name of the release's objects. */}}
{{- define "tandem.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tandem.serviceAccountName" -}}
{{- default (include "tandem.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tandem.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tandem.labels" -}}
{{ include "tandem.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tandem.secretName" -}}
{{- if .Values.otlp.existingSecret -}}
{{- .Values.otlp.existingSecret -}}
{{- else -}}
{{- printf "%s-otlp" (include "tandem.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "tandem.secretKey" -}}
{{- if .Values.otlp.existingSecret -}}
{{- .Values.otlp.existingSecretKey -}}
{{- else -}}
headers
{{- end -}}
{{- end -}}

{{- define "tandem.socket" -}}
{{- printf "%s/loader.sock" (.Values.loader.socketDir | trimSuffix "/") -}}
{{- end -}}
