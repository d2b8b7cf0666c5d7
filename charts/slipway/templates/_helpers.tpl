{{- define "slipway.name" -}}slipway{{- end -}}
{{- define "slipway.fullname" -}}{{ .Release.Name }}-slipway{{- end -}}
{{- define "slipway.labels" -}}
app.kubernetes.io/name: slipway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "slipway.selector" -}}
app.kubernetes.io/name: slipway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The leader-election Lease: its name and namespace (defaults: the release's full name and namespace). */}}
{{- define "slipway.leaseName" -}}
{{- .Values.leaderElection.leaseName | default (include "slipway.fullname" .) -}}
{{- end -}}
{{- define "slipway.leaseNamespace" -}}
{{- .Values.leaderElection.leaseNamespace | default .Release.Namespace -}}
{{- end -}}
