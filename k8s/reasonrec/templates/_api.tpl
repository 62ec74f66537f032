{{/*
One API Deployment. Called for the stable track (api-deployment.yaml) and, with canary.enabled,
for the canary track (api-canary.yaml):
  (dict "root" $ "track" "stable" "release" $rel "image" $img "replicas" 2 "hpa" true)
Both tracks share the Service (it selects component=api); the track label lets the Istio
DestinationRule address each as a subset.
*/}}
{{- define "reasonrec.api.deployment" -}}
{{- $root := .root -}}
{{- $api := $root.Values.api -}}
{{- $exp := $root.Values.experiments -}}
{{- $name := include "reasonrec.fullname" $root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}-api{{ if eq .track "canary" }}-canary{{ end }}
  labels:
    {{- include "reasonrec.componentLabels" (dict "root" $root "component" "api") | nindent 4 }}
    reasonrec.io/track: {{ .track }}
spec:
  {{- /* The HPA owns the replica count of the stable track when it is on. */}}
  {{- if not .hpa }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 25%
  selector:
    matchLabels:
      {{- include "reasonrec.componentSelectorLabels" (dict "root" $root "component" "api") | nindent 6 }}
      reasonrec.io/track: {{ .track }}
  template:
    metadata:
      labels:
        {{- include "reasonrec.componentSelectorLabels" (dict "root" $root "component" "api") | nindent 8 }}
        reasonrec.io/track: {{ .track }}
        {{- with $api.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- $annotations := include "reasonrec.scrapeAnnotations" (dict "root" $root "port" $api.httpPort) | fromYaml | default dict }}
      {{- if and $exp.enabled $exp.rolloutOnChange (not $exp.existingConfigMap) }}
      {{- $_ := set $annotations "checksum/experiments" ($exp.content | sha256sum) }}
      {{- end }}
      {{- $annotations = mergeOverwrite $annotations (deepCopy $api.podAnnotations) }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "reasonrec.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $api.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $api.terminationGracePeriodSeconds }}
      {{- with (include "reasonrec.releaseInitContainers" (dict "root" $root "release" .release) | trim) }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: api
          image: {{ include "reasonrec.image" (dict "image" .image "root" $root) }}
          imagePullPolicy: {{ .image.pullPolicy }}
          {{- /* The image's ENTRYPOINT is `tini -- reasonrec`; only the subcommand is set here. */}}
          args:
            - serve
            - --release
            - {{ .release.mountPath | quote }}
            - --host
            - "0.0.0.0"
            - --port
            - {{ $api.httpPort | quote }}
            - --grpc-port
            - {{ $api.grpcPort | quote }}
          ports:
            - name: http
              containerPort: {{ $api.httpPort }}
              protocol: TCP
            - name: grpc
              containerPort: {{ $api.grpcPort }}
              protocol: TCP
          env:
            {{- include "reasonrec.commonEnv" (dict "root" $root "release" .release) | nindent 12 }}
            {{- if $exp.enabled }}
            - name: REASONREC_EXPERIMENTS_FILE
              value: {{ printf "%s/%s" (trimSuffix "/" $exp.mountDir) $exp.fileName | quote }}
            {{- end }}
            {{- if $root.Values.auth.existingSecret }}
            - name: REASONREC_API_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.auth.existingSecret }}
                  key: {{ $root.Values.auth.secretKey }}
            {{- end }}
            {{- with $api.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $api.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            {{- toYaml $api.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            {{- toYaml $api.probes.readiness | nindent 12 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $api.preStopSleepSeconds | quote }}]
          resources:
            {{- toYaml $api.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "reasonrec.releaseMount" (dict "release" .release) | nindent 12 }}
            - name: tmp
              mountPath: /tmp
            {{- if $exp.enabled }}
            - name: experiments
              mountPath: {{ $exp.mountDir }}
              readOnly: true
            {{- end }}
      volumes:
        {{- include "reasonrec.releaseVolume" (dict "root" $root "release" .release) | nindent 8 }}
        - name: tmp
          emptyDir:
            sizeLimit: 1Gi
        {{- if $exp.enabled }}
        - name: experiments
          configMap:
            name: {{ default (printf "%s-experiments" $name) $exp.existingConfigMap }}
            items:
              - key: {{ $exp.fileName }}
                path: {{ $exp.fileName }}
        {{- end }}
      {{- with $api.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $api.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $api.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $api.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
