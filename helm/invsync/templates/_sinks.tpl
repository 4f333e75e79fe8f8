{{/*
The sink processes (`invsync sink redis`, `invsync sink erp`): one Deployment, Service and
PodDisruptionBudget each, from the same templates. Call each with
  (dict "root" $ "sink" .Values.redisSink "component" "redis-sink" "args" (list "sink" "redis")
        "portName" "redis-sink" "port" .Values.config.redis_sink_port "job" "invsync-redis-sink")
component: the app.kubernetes.io/component label and the objects' name suffix; portName: the
container and Service port (what the ServiceMonitor endpoint names); job: Prometheus' job.
*/}}

{{- define "invsync.sink.deployment" -}}
{{- $root := .root }}
{{- $sink := .sink }}
{{- $selector := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "invsync.componentName" (dict "root" $root "suffix" .component) }}
  labels:
    {{- include "invsync.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  replicas: {{ $sink.replicaCount }}
  # The new pod must pass its start-up checks (Kafka reachable, topics present) and answer on
  # its port before the old one leaves the consumer group.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
  selector:
    matchLabels:
      {{- include "invsync.componentSelectorLabels" $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "invsync.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $checksum := and (not $root.Values.credentials.existingSecret) $root.Values.credentials.data }}
      {{- if or $checksum $root.Values.podAnnotations }}
      annotations:
        {{- if $checksum }}
        checksum/credentials: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- end }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "invsync.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
      # No <SERVICE>_PORT variables: a Service named <release>-redis-sink would otherwise inject
      # INVSYNC_REDIS_SINK_PORT=tcp://... into every pod of the namespace.
      enableServiceLinks: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $sink.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .component }}
          image: {{ include "invsync.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: {{ toJson .args }}
          env:
            {{- include "invsync.sinkEnv" (dict "root" $root "sink" $sink) | nindent 12 }}
          ports:
            - name: {{ .portName }}
              containerPort: {{ .port }}
              protocol: TCP
          # The port opens only after the start-up checks (up to config.startup_timeout_s).
          startupProbe:
            httpGet:
              path: /livez
              port: {{ .portName }}
            periodSeconds: {{ $sink.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $sink.probes.startup.timeoutSeconds }}
            failureThreshold: {{ $sink.probes.startup.failureThreshold }}
          # 503 when the consumer loop has stopped turning; an unreachable Redis or ERP is not a
          # liveness failure (the sink retries; a restart would not help).
          livenessProbe:
            httpGet:
              path: /livez
              port: {{ .portName }}
            periodSeconds: {{ $sink.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ $sink.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ $sink.probes.liveness.failureThreshold }}
          # The sinks have no /readyz: ready = past the start-up checks and the loop turning.
          readinessProbe:
            httpGet:
              path: /livez
              port: {{ .portName }}
            periodSeconds: {{ $sink.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $sink.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $sink.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $sink.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
      {{- with $sink.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $sink.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $sink.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $sink.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "invsync.sink.service" -}}
{{- $root := .root }}
# /metrics and /livez of the {{ .component }} (scraped through the ServiceMonitor as job
# "{{ .job }}"). Not-ready pods are included so that a stalled sink still shows in its metrics.
apiVersion: v1
kind: Service
metadata:
  name: {{ include "invsync.componentName" (dict "root" $root "suffix" .component) }}
  labels:
    {{- include "invsync.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{ include "invsync.jobLabelKey" $root }}: {{ .job }}
spec:
  type: ClusterIP
  publishNotReadyAddresses: true
  selector:
    {{- include "invsync.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- end }}

{{- define "invsync.sink.pdb" -}}
{{- $root := .root }}
# Node drains take at most maxUnavailable {{ .component }} pods at a time (each one costs a
# rebalance of its consumer group).
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "invsync.componentName" (dict "root" $root "suffix" .component) }}
  labels:
    {{- include "invsync.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ .sink.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "invsync.componentSelectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
{{- end }}
