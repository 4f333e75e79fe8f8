{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "invsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name contains the chart name. */}}
{{- define "invsync.fullname" -}}
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

{{- define "invsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/). */}}
{{- define "invsync.labels" -}}
helm.sh/chart: {{ include "invsync.chart" . }}
{{ include "invsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: invsync
{{- end }}

{{- define "invsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "invsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "invsync.workerSelectorLabels" -}}
{{ include "invsync.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "invsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "invsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "invsync.headlessServiceName" -}}
{{- printf "%s-headless" (include "invsync.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "invsync.credentialsSecretName" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" (include "invsync.fullname" .)) }}
{{- end }}

{{- define "invsync.channelPolicyConfigMapName" -}}
{{- .Values.channelPolicy.existingConfigMap | default (printf "%s-channel-policy" (include "invsync.fullname" .)) }}
{{- end }}

{{- define "invsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the channel policy file is mounted (INVSYNC_CHANNEL_POLICY). */}}
{{- define "invsync.channelPolicyPath" -}}/etc/invsync/channels.toml{{- end }}

{{/*
Checks across values that values.schema.json cannot express; each fails rendering with the
values to change.
*/}}
{{- define "invsync.validate" -}}
{{- $v := .Values }}
{{- if and (gt (int $v.replicaCount) 0) (gt (int $v.standbyReplicas) 0) (ge (int $v.standbyReplicas) (int $v.replicaCount)) }}
{{- fail (printf "standbyReplicas (%d) must be less than replicaCount (%d): a standby lives on another worker" (int $v.standbyReplicas) (int $v.replicaCount)) }}
{{- end }}
{{- if and (eq (toString $v.erpDispatcher.enabled) "true") (not (include "invsync.erpUrlSet" .)) }}
{{- fail "erpDispatcher.enabled is true but no ERP URL is set: set erp.url or credentials.fromSecret.INVSYNC_ERP_URL" }}
{{- end }}
{{- if and $v.credentials.fromSecret (not $v.credentials.existingSecret) (not $v.credentials.data) }}
{{- fail "credentials.fromSecret names settings but there is no Secret: set credentials.existingSecret or credentials.data" }}
{{- end }}
{{- if not $v.credentials.existingSecret }}
{{- range $setting, $key := $v.credentials.fromSecret }}
{{- if not (hasKey $v.credentials.data $key) }}
{{- fail (printf "credentials.fromSecret.%s reads key %q, which credentials.data does not have" $setting $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One env var: a plain value, or a secretKeyRef when credentials.fromSecret names the setting.
Call with (dict "root" $ "name" "INVSYNC_X" "value" "...").
*/}}
{{- define "invsync.envVar" -}}
{{- $fromSecret := .root.Values.credentials.fromSecret -}}
- name: {{ .name }}
{{- if hasKey $fromSecret .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "invsync.credentialsSecretName" .root }}
      key: {{ get $fromSecret .name | quote }}
{{- else }}
  value: {{ .value | quote }}
{{- end }}
{{- end }}

{{/*
A value as an env var string: lists comma separated; whole numbers without the float64
exponent that YAML numbers get in Helm (1800000, not 1.8e+06).
*/}}
{{- define "invsync.envValue" -}}
{{- if kindIs "slice" . }}{{ join "," . }}
{{- else if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . }}
{{- else }}{{ toString . }}
{{- end }}
{{- end }}

{{/*
The settings every invsync process shares: endpoints (or their Secret references) and every
`config` value. Without extraEnv, which goes last (see invsync.env and invsync.sinkEnv).
*/}}
{{- define "invsync.commonEnv" -}}
{{- include "invsync.envVar" (dict "root" . "name" "INVSYNC_KAFKA_BOOTSTRAP" "value" .Values.kafka.bootstrap) }}
{{ include "invsync.envVar" (dict "root" . "name" "INVSYNC_SCHEMA_REGISTRY_URL" "value" .Values.schemaRegistry.url) }}
{{ include "invsync.envVar" (dict "root" . "name" "INVSYNC_REDIS_URL" "value" .Values.redis.url) }}
{{- if include "invsync.erpUrlSet" . }}
{{ include "invsync.envVar" (dict "root" . "name" "INVSYNC_ERP_URL" "value" .Values.erp.url) }}
{{- end }}
{{- range $key := keys .Values.config | sortAlpha }}
{{- $value := get $.Values.config $key }}
- name: {{ printf "INVSYNC_%s" (upper $key) }}
  value: {{ include "invsync.envValue" $value | quote }}
{{- end }}
{{- end }}

{{/* The worker's environment: every INVSYNC_* setting the chart controls. */}}
{{- define "invsync.env" -}}
{{- include "invsync.commonEnv" . }}
- name: INVSYNC_STANDBY_REPLICAS
  value: {{ include "invsync.envValue" .Values.standbyReplicas | quote }}
- name: INVSYNC_STATE_DIR
  value: {{ .Values.persistence.mountPath | quote }}
- name: INVSYNC_CHANNEL_POLICY
  value: {{ include "invsync.channelPolicyPath" . | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A sink's environment: the shared settings (the sinks read no state directory and no channel
policy), then extraEnv, then the sink's own extraEnv.
Call with (dict "root" $ "sink" .Values.redisSink).
*/}}
{{- define "invsync.sinkEnv" -}}
{{- include "invsync.commonEnv" .root }}
{{- with .root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .sink.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* "true" when the chart sets INVSYNC_ERP_URL (erp.url, or from the Secret); else empty. */}}
{{- define "invsync.erpUrlSet" -}}
{{- if or .Values.erp.url (hasKey .Values.credentials.fromSecret "INVSYNC_ERP_URL") }}true{{ end }}
{{- end }}

{{/*
"true" when the ERP dispatcher is deployed: erpDispatcher.enabled true, or "auto" and the ERP
URL is set; else empty.
*/}}
{{- define "invsync.erpDispatcherEnabled" -}}
{{- $enabled := .Values.erpDispatcher.enabled }}
{{- if or (eq (toString $enabled) "true") (and (eq (toString $enabled) "auto") (include "invsync.erpUrlSet" .)) }}true{{ end }}
{{- end }}

{{/*
Name of a component's objects: <fullname>-<suffix>, the fullname shortened so that the whole
stays a DNS label (63 characters). Call with (dict "root" $ "suffix" "redis-sink").
*/}}
{{- define "invsync.componentName" -}}
{{- $base := include "invsync.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .suffix }}
{{- end }}

{{/* Selector labels of a component's pods. Call with (dict "root" $ "component" "redis-sink"). */}}
{{- define "invsync.componentSelectorLabels" -}}
{{ include "invsync.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
The label a scraped Service carries: the ServiceMonitor takes Prometheus' job from it (jobLabel).
The jobs are those ops/prometheus/alerts.yml and the dashboard select: invsync (the workers),
invsync-redis-sink, invsync-erp (the ERP dispatcher; InvsyncErpDispatcherDown).
*/}}
{{- define "invsync.jobLabelKey" -}}invsync/job{{- end }}
