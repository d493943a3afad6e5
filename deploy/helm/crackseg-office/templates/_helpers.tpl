{{/* Names and labels shared by the templates. */}}
{{- define "crackseg-office.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "crackseg-office.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "crackseg-office.labels" -}}
app.kubernetes.io/name: {{ include "crackseg-office.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "crackseg-office.secretName" -}}
{{- if .Values.existingSecret -}}
{{- .Values.existingSecret -}}
{{- else -}}
{{- include "crackseg-office.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The database URL without its password (libpq takes that from PGPASSWORD). */}}
{{- define "crackseg-office.dbUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "postgresql://%s@%s-postgresql:5432/%s" .Values.postgresql.user (include "crackseg-office.fullname" .) .Values.postgresql.database -}}
{{- else -}}
{{- required "externalDatabase.url is required when postgresql.enabled is false" .Values.externalDatabase.url -}}
{{- end -}}
{{- end -}}

{{- define "crackseg-office.officeImage" -}}
{{- printf "%s:%s" .Values.office.image.repository .Values.office.image.tag -}}
{{- end -}}
