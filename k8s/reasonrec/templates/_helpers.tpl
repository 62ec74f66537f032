{{/* Names, labels, images and the pieces every reasonrec pod shares. */}}

{{- define "reasonrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name; truncated so that "-<component>" suffixes stay within 63 characters. */}}
{{- define "reasonrec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "reasonrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "reasonrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reasonrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "reasonrec.labels" -}}
helm.sh/chart: {{ include "reasonrec.chart" . }}
{{ include "reasonrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reasonrec
{{- end }}

{{/* Labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "reasonrec.componentLabels" -}}
{{ include "reasonrec.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "reasonrec.componentSelectorLabels" -}}
{{ include "reasonrec.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "reasonrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "reasonrec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: (dict "image" .Values.images.api "root" $). Digest wins over tag. */}}
{{- define "reasonrec.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}
{{- end }}

{{- define "reasonrec.redisHost" -}}
{{- printf "%s-redis" (include "reasonrec.fullname" .) }}
{{- end }}

{{/* REDIS_URL: the in-chart Redis, or a key of an existing Secret (never a literal URL, which
would put a password into the release's values). */}}
{{- define "reasonrec.redisUrlEnv" -}}
- name: REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s:6379/0" (include "reasonrec.redisHost" .) | quote }}
{{- else }}
{{- if not .Values.redis.external.existingSecret }}
{{- fail "redis.enabled is false: set redis.external.existingSecret (a Secret holding the Redis URL under redis.external.secretKey)" }}
{{- end }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.secretKey }}
{{- end }}
{{- end }}

{{/* Environment shared by the API, the workers and beat: (dict "root" $ "release" $rel). */}}
{{- define "reasonrec.commonEnv" -}}
{{ include "reasonrec.redisUrlEnv" .root }}
- name: REASONREC_RELEASE_DIR
  value: {{ .release.mountPath | quote }}
- name: REASONREC_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
# A pod must never fall back to an embedded Redis: a missing URL is an error.
- name: REASONREC_EMBEDDED
  value: "false"
# The root filesystem is read-only: caches go to the /tmp emptyDir.
- name: HOME
  value: /tmp
- name: HF_HOME
  value: /tmp/hf
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end }}

{{/* The stable release merged with overrides: (dict "root" $ "overrides" .Values.canary.release). */}}
{{- define "reasonrec.mergedRelease" -}}
{{- mergeOverwrite (deepCopy .root.Values.release) (deepCopy (default dict .overrides)) | toJson }}
{{- end }}

{{- define "reasonrec.releaseClaimName" -}}
{{- default (printf "%s-release" (include "reasonrec.fullname" .root)) .release.pvc.existingClaim }}
{{- end }}

{{/* The `release` volume: (dict "root" $ "release" $rel). */}}
{{- define "reasonrec.releaseVolume" -}}
- name: release
{{- if eq .release.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "reasonrec.releaseClaimName" . }}
    readOnly: true
{{- else }}
  emptyDir:
    sizeLimit: {{ .release.image.sizeLimit }}
{{- end }}
{{- end }}

{{- define "reasonrec.releaseMount" -}}
- name: release
  mountPath: {{ .release.mountPath }}
  readOnly: true
{{- if and (eq .release.source "pvc") .release.pvc.subPath }}
  subPath: {{ .release.pvc.subPath }}
{{- end }}
{{- end }}

{{/* For source=image: copy the release out of its image into the emptyDir before the app
starts, and refuse to start on a directory without manifest.json. */}}
{{- define "reasonrec.releaseInitContainers" -}}
{{- if eq .release.source "image" }}
{{- if not .release.image.repository }}
{{- fail "release.source is image: set release.image.repository (and tag or digest)" }}
{{- end }}
- name: copy-release
  image: {{ include "reasonrec.image" (dict "image" .release.image "root" .root) }}
  imagePullPolicy: {{ .release.image.pullPolicy }}
  command: ["sh", "-c"]
  args:
    - >-
      cp -R "$SRC"/. "$DST"/ && test -f "$DST/manifest.json"
      || { echo "no manifest.json in $SRC of the release image" >&2; exit 1; }
  env:
    - name: SRC
      value: {{ .release.image.path | quote }}
    - name: DST
      value: /release-out
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests:
      cpu: 100m
      memory: 64Mi
    limits:
      memory: 512Mi
  volumeMounts:
    - name: release
      mountPath: /release-out
{{- end }}
{{- end }}

{{/* prometheus.io annotations for a pod scraped on `port`: (dict "root" $ "port" 8000). */}}
{{- define "reasonrec.scrapeAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
