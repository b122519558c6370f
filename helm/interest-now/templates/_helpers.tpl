{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "interest-now.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> unless the release name already contains the chart
name. Truncated to 52 characters so suffixes such as "-close-day" and the
CronJob's 11-character Job suffix still fit Kubernetes name limits.
*/}}
{{- define "interest-now.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "interest-now.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels shared by every object of the release (stable across upgrades).
*/}}
{{- define "interest-now.selectorLabels" -}}
app.kubernetes.io/name: {{ include "interest-now.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels. Call with the root context.
*/}}
{{- define "interest-now.labels" -}}
helm.sh/chart: {{ include "interest-now.chart" . }}
{{ include "interest-now.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: interest-now
{{- end }}

{{/*
Standard labels plus the component. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "interest-now.componentLabels" -}}
{{ include "interest-now.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels plus the component. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "interest-now.componentSelectorLabels" -}}
{{ include "interest-now.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
ServiceAccount used by the pods.
*/}}
{{- define "interest-now.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "interest-now.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
ServiceAccount for the pre-install/pre-upgrade hook Jobs. On a first install a
chart-created ServiceAccount does not exist yet when pre-install hooks run, so
hooks use the namespace's "default" account then (no token is mounted either
way). An existing account (create: false, name set) is used as is.
*/}}
{{- define "interest-now.hookServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- "default" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: digest wins over tag; tag defaults to appVersion.
*/}}
{{- define "interest-now.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Prefixed topic name. Call with (dict "ctx" $ "topic" "interest-claims").
*/}}
{{- define "interest-now.topic" -}}
{{- printf "%s%s" .ctx.Values.kafka.topicPrefix .topic }}
{{- end }}

{{/*
Environment shared by every container. Secrets only by reference.
Call with (dict "ctx" $ "apiTokens" true) to add API_TOKENS (API pods only).
*/}}
{{- define "interest-now.env" -}}
{{- $v := .ctx.Values -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.existingSecret }}
      key: {{ .databaseUrlKey | default $v.secrets.databaseUrlKey }}
{{- if .apiTokens }}
- name: API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.existingSecret }}
      key: {{ $v.secrets.apiTokensKey }}
{{- end }}
- name: KAFKA_BROKERS
  value: {{ $v.kafka.brokers | quote }}
- name: KAFKA_GROUP_ID
  value: {{ $v.kafka.groupId | quote }}
- name: KAFKA_TOPIC_PREFIX
  value: {{ $v.kafka.topicPrefix | quote }}
- name: KAFKA_SESSION_TIMEOUT_MS
  value: {{ $v.kafka.sessionTimeoutMs | toString | quote }}
- name: KAFKA_HEARTBEAT_INTERVAL_MS
  value: {{ $v.kafka.heartbeatIntervalMs | toString | quote }}
- name: KAFKA_MAX_POLL_INTERVAL_MS
  value: {{ $v.kafka.maxPollIntervalMs | toString | quote }}
- name: HTTP_ADDR
  value: {{ printf "0.0.0.0:%d" (int $v.config.httpPort) | quote }}
- name: ADMIN_ADDR
  value: {{ printf "0.0.0.0:%d" (int $v.config.adminPort) | quote }}
- name: DEFAULT_PLAN
  value: {{ $v.config.defaultPlan | quote }}
- name: CLAIMS_PER_DAY
  value: {{ $v.config.claimsPerDay | toString | quote }}
- name: CLAIM_WAIT_MS
  value: {{ $v.config.claimWaitMs | toString | quote }}
- name: CLOCK_OFFSET_SECONDS
  value: {{ $v.config.clockOffsetSeconds | toString | quote }}
- name: RUST_LOG
  value: {{ $v.config.rustLog | quote }}
- name: PLAN_RELOAD_SECS
  value: {{ $v.config.planReloadSecs | toString | quote }}
- name: HTTP_HEADER_READ_TIMEOUT_MS
  value: {{ $v.config.httpHeaderReadTimeoutMs | toString | quote }}
- name: HTTP_CONNECTIONS_MAX
  value: {{ $v.config.httpConnectionsMax | toString | quote }}
- name: HTTP_REQUESTS_IN_FLIGHT_MAX
  value: {{ $v.config.httpRequestsInFlightMax | toString | quote }}
- name: IDEMPOTENCY_KEY_TTL
  value: {{ $v.config.idempotencyKeyTtl | quote }}
- name: OUTBOX_RETENTION
  value: {{ $v.config.outboxRetention | quote }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Container securityContext (hardening pinned by values.schema.json).
*/}}
{{- define "interest-now.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Pod-level fields shared by every pod: service account, security context,
pull secrets, scheduling. Call with the root context.
*/}}
{{- define "interest-now.podCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Writable /tmp for the read-only root filesystem.
*/}}
{{- define "interest-now.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}

{{- define "interest-now.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Soft/hard spread of one component's pods. Call with (dict "ctx" $ "component" "api").
*/}}
{{- define "interest-now.topologySpread" -}}
{{- $t := .ctx.Values.topologySpread }}
{{- if $t.enabled -}}
topologySpreadConstraints:
  - maxSkew: {{ $t.maxSkew }}
    topologyKey: {{ $t.topologyKey }}
    whenUnsatisfiable: {{ $t.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "interest-now.componentSelectorLabels" . | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}

{{/*
HTTP probes against the admin port. Call with the component's probes dict.
*/}}
{{- define "interest-now.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .startup.periodSeconds }}
  timeoutSeconds: {{ .startup.timeoutSeconds }}
  failureThreshold: {{ .startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: {{ .liveness.periodSeconds }}
  timeoutSeconds: {{ .liveness.timeoutSeconds }}
  failureThreshold: {{ .liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: {{ .readiness.periodSeconds }}
  timeoutSeconds: {{ .readiness.timeoutSeconds }}
  failureThreshold: {{ .readiness.failureThreshold }}
{{- end }}

{{/*
Pod template for Jobs and CronJobs. Call with
(dict "ctx" $ "component" "migrate" "args" (list ...) "command" (list ...)
      "serviceAccountName" "..." "configMap" "" "restartPolicy" "Never"
      ["databaseUrlKey" "..."]: the Secret key of DATABASE_URL, if not secrets.databaseUrlKey).
*/}}
{{- define "interest-now.jobPod" -}}
{{- $ctx := .ctx -}}
metadata:
  labels:
    {{- include "interest-now.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  {{- with $ctx.Values.jobs.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ .serviceAccountName }}
  {{- include "interest-now.podCommon" $ctx | nindent 2 }}
  containers:
    - name: {{ .component }}
      image: {{ include "interest-now.image" $ctx }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      {{- with .command }}
      command:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "interest-now.env" (dict "ctx" $ctx "apiTokens" false "databaseUrlKey" .databaseUrlKey) | nindent 8 }}
      resources:
        {{- toYaml $ctx.Values.jobs.resources | nindent 8 }}
      securityContext:
        {{- include "interest-now.containerSecurityContext" $ctx | nindent 8 }}
      volumeMounts:
        {{- include "interest-now.tmpVolumeMount" $ctx | nindent 8 }}
        {{- if .configMap }}
        - name: plans
          mountPath: /etc/interest-now
          readOnly: true
        {{- end }}
  volumes:
    {{- include "interest-now.tmpVolume" $ctx | nindent 4 }}
    {{- if .configMap }}
    - name: plans
      configMap:
        name: {{ .configMap }}
    {{- end }}
{{- end }}

{{/*
Cross-value checks the JSON schema cannot express.
*/}}
{{- define "interest-now.validate" -}}
{{- $p := int .Values.kafka.partitions }}
{{- if .Values.keda.enabled }}
{{- if gt (int .Values.keda.maxReplicaCount) $p }}
{{- fail (printf "keda.maxReplicaCount (%d) must not exceed kafka.partitions (%d): extra workers would sit idle" (int .Values.keda.maxReplicaCount) $p) }}
{{- end }}
{{- if gt (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount) }}
{{- fail (printf "keda.minReplicaCount (%d) must not exceed keda.maxReplicaCount (%d)" (int .Values.keda.minReplicaCount) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- if and .Values.keda.midnightFloor.enabled (gt (int .Values.keda.midnightFloor.desiredReplicas) (int .Values.keda.maxReplicaCount)) }}
{{- fail (printf "keda.midnightFloor.desiredReplicas (%d) must not exceed keda.maxReplicaCount (%d)" (int .Values.keda.midnightFloor.desiredReplicas) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- if gt (int .Values.keda.fallbackReplicas) (int .Values.keda.maxReplicaCount) }}
{{- fail (printf "keda.fallbackReplicas (%d) must not exceed keda.maxReplicaCount (%d)" (int .Values.keda.fallbackReplicas) (int .Values.keda.maxReplicaCount)) }}
{{- end }}
{{- else if gt (int .Values.worker.replicas) $p }}
{{- fail (printf "worker.replicas (%d) must not exceed kafka.partitions (%d): extra workers would sit idle" (int .Values.worker.replicas) $p) }}
{{- end }}
{{- if eq (int .Values.config.httpPort) (int .Values.config.adminPort) }}
{{- fail "config.httpPort and config.adminPort must differ: the admin port is never exposed through the API Service" }}
{{- end }}
{{- end }}
