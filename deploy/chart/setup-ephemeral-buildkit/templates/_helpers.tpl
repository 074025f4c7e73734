{{/*
The objects' name: the release's name when it contains the chart's (`helm install
setup-ephemeral-buildkit ...` gives deploy/'s names), else <release>-setup-ephemeral-buildkit.
Cut to 55 characters so that "<name>-janitor" stays a valid name.
*/}}
{{- define "seb.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "seb.janitorName" -}}
{{- printf "%s-janitor" (include "seb.fullname" .) -}}
{{- end -}}

{{/* The namespaces that get the runners' Role and a janitor. */}}
{{- define "seb.namespaces" -}}
{{- $namespaces := .Values.runners.namespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/*
Labels of every object: deploy/'s name label, and the release, so that
`kubectl get ... -l app.kubernetes.io/instance=RELEASE` finds what a release installed.
*/}}
{{- define "seb.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* A CEL list of strings; values.schema.json keeps quotes and backslashes out of them. */}}
{{- define "seb.celList" -}}
[{{ range $i, $s := . }}{{ if $i }}, {{ end }}'{{ $s }}'{{ end }}]
{{- end -}}

{{- define "seb.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
