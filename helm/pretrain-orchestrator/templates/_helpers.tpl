{{/*
Names, labels and the pieces every component's pod shares. Components call the ones that take
a component with (dict "context" $ "component" "api").
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "pretrain-orchestrator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: fullnameOverride, else <release>-<chart> (the release alone when it
already contains the chart's name). Truncated to 63 characters, the DNS label limit.
*/}}
{{- define "pretrain-orchestrator.fullname" -}}
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

{{/* A component's object name: <fullname>-<component>. */}}
{{- define "pretrain-orchestrator.componentName" -}}
{{- printf "%s-%s" (include "pretrain-orchestrator.fullname" .context) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "pretrain-orchestrator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "pretrain-orchestrator.labels" -}}
helm.sh/chart: {{ include "pretrain-orchestrator.chart" . }}
{{ include "pretrain-orchestrator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pretrain-orchestrator
{{- end }}

{{/* Labels that select the release's pods; never change them after an install. */}}
{{- define "pretrain-orchestrator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pretrain-orchestrator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The release's labels plus app.kubernetes.io/component. */}}
{{- define "pretrain-orchestrator.componentLabels" -}}
{{ include "pretrain-orchestrator.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels that select one component's pods. */}}
{{- define "pretrain-orchestrator.componentSelectorLabels" -}}
{{ include "pretrain-orchestrator.selectorLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of every pod the controller creates for a job (service/controller/manifests). */}}
{{- define "pretrain-orchestrator.trainerSelectorLabels" -}}
app.kubernetes.io/managed-by: pretrain-orchestrator
{{- end }}

{{/* The ServiceAccount the service's pods run as. */}}
{{- define "pretrain-orchestrator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pretrain-orchestrator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The service image: repository@digest when a digest is set, else repository:tag (appVersion). */}}
{{- define "pretrain-orchestrator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The trainer image the controller puts in PyTorchJobs (PRETRAIN_TRAINER_IMAGE). */}}
{{- define "pretrain-orchestrator.trainerImage" -}}
{{- $image := .Values.jobs.trainerImage }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The namespace training jobs run in (PRETRAIN_NAMESPACE), where the Role is granted. */}}
{{- define "pretrain-orchestrator.jobsNamespace" -}}
{{- default .Release.Namespace .Values.jobs.namespace }}
{{- end }}

{{/* The Secret holding the database URL, Redis URL and admin token: the chart's or yours. */}}
{{- define "pretrain-orchestrator.secretName" -}}
{{- default (include "pretrain-orchestrator.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/* The ConfigMap of non-secret PRETRAIN_* settings. */}}
{{- define "pretrain-orchestrator.configMapName" -}}
{{- printf "%s-config" (include "pretrain-orchestrator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The API's Service name. */}}
{{- define "pretrain-orchestrator.apiServiceName" -}}
{{- include "pretrain-orchestrator.componentName" (dict "context" . "component" "api") }}
{{- end }}

{{/* Where trainer pods report metrics and checkpoints: the API Service, unless overridden. */}}
{{- define "pretrain-orchestrator.ingestUrl" -}}
{{- if .Values.jobs.ingestUrl }}
{{- .Values.jobs.ingestUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "pretrain-orchestrator.apiServiceName" .) .Release.Namespace (int .Values.api.service.port) }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when their settings change. The chart cannot see into an
existing Secret, so only its own is checksummed.
*/}}
{{- define "pretrain-orchestrator.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secret.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/*
The environment of a service container: the ConfigMap's settings, and from the Secret the
database URL, the Redis URL and password (redis.auth) and (for the api only: adminToken true)
the admin token.
*/}}
{{- define "pretrain-orchestrator.env" -}}
{{- $root := .context }}
{{- $secret := include "pretrain-orchestrator.secretName" $root }}
envFrom:
  - configMapRef:
      name: {{ include "pretrain-orchestrator.configMapName" $root }}
env:
  - name: PRETRAIN_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ $secret }}
        key: {{ $root.Values.secret.keys.databaseUrl }}
  - name: PRETRAIN_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ $secret }}
        key: {{ $root.Values.secret.keys.redisUrl }}
{{- if $root.Values.redis.auth }}
  - name: PRETRAIN_REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $secret }}
        key: {{ $root.Values.secret.keys.redisPassword }}
{{- end }}
{{- if .adminToken }}
  - name: PRETRAIN_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ $secret }}
        key: {{ $root.Values.secret.keys.adminToken }}
{{- end }}
{{- end }}

{{/*
Writable places under a read-only root filesystem: /tmp, and the state directory
(PRETRAIN_STATE_DIR; empty with Postgres, but `pretrainctl` run in the pod may write there).
*/}}
{{- define "pretrain-orchestrator.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: {{ .Values.config.stateDir }}
{{- end }}

{{- define "pretrain-orchestrator.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: state
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/* Pod-level fields every component shares. */}}
{{- define "pretrain-orchestrator.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling of one component's pods: its nodeSelector, tolerations and affinity. */}}
{{- define "pretrain-orchestrator.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A secret value of the chart's Secret: the one given in values, else the one the installed
Secret holds under .key (kept across upgrades), else 48 random alphanumerics.
*/}}
{{- define "pretrain-orchestrator.keptSecret" -}}
{{- $previous := index .installed .key | default "" }}
{{- if .given }}
{{- .given }}
{{- else if $previous }}
{{- $previous | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
