{{/*
Thin helpers, all namespaced `shopserve.`. Templates stay readable; logic that two templates need
lives here once.
*/}}

{{/* Chart name, overridable. */}}
{{- define "shopserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>` unless the release name already contains the chart name. */}}
{{- define "shopserve.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "shopserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shopserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shopserve
shopserve.io/environment: {{ .Values.environment }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Model and InferenceService names: the v2 model names of shopserve.protocol (SEARCH_MODEL,
RECALL_MODEL, RANKER_MODEL, SEQUENCE_MODEL, QUERY_ENCODER_MODEL). KServe names the model of a
transformer after its InferenceService, and `seq-recommender` and `query-encoder` are each both an
InferenceService and its Triton model, so these are fixed; tests/charts asserts they equal the
Python constants.
*/}}
{{- define "shopserve.searchModel" -}}search{{- end -}}
{{- define "shopserve.recallModel" -}}mf-recall{{- end -}}
{{- define "shopserve.rankerModel" -}}bert-ranker{{- end -}}
{{- define "shopserve.sequenceModel" -}}seq-recommender{{- end -}}
{{- define "shopserve.queryEncoderModel" -}}query-encoder{{- end -}}

{{/* Where KServe's storage initializer puts a storageUri in every pod. */}}
{{- define "shopserve.modelMount" -}}/mnt/models{{- end -}}

{{/*
Selector of the pods of one component, as KServe labels them: the InferenceService name and the
component. Usage: include "shopserve.componentSelector" (list "search" "transformer")
*/}}
{{- define "shopserve.componentSelector" -}}
serving.kserve.io/inferenceservice: {{ index . 0 }}
component: {{ index . 1 }}
{{- end -}}

{{/* The shopserve image: registry/repository, then @digest or :tag (tag defaults to appVersion). */}}
{{- define "shopserve.image" -}}
{{- $root := index . 0 -}}
{{- $tag := index . 1 | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- $repo := printf "%s/%s" $root.Values.image.registry $root.Values.image.repository -}}
{{- if and $root.Values.image.digest (not (index . 1)) -}}
{{- printf "%s@%s" $repo $root.Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{- define "shopserve.tritonImage" -}}
{{- with .Values.ranker.runtime.image -}}
{{- printf "%s/%s:%s" .registry .repository (toString .tag) -}}
{{- end -}}
{{- end -}}

{{- define "shopserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shopserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Runtime the Triton predictors (ranker, sequence model, query encoder) name: the configured one,
else the chart's own ServingRuntime, else empty (KServe then picks a cluster runtime that
auto-selects the `triton` model format).
*/}}
{{- define "shopserve.runtimeName" -}}
{{- if .Values.ranker.runtime.name -}}
{{- .Values.ranker.runtime.name -}}
{{- else if .Values.ranker.runtime.create -}}
{{- printf "%s-triton" (include "shopserve.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
In-cluster gRPC addresses of the predictors. Both modes expose a predictor's first container port
(its gRPC port, see the templates) on port 80 of `<isvc>-predictor`: Knative through its
cluster-local gateway (which splits traffic between revisions), Standard through a plain Service.
*/}}
{{- define "shopserve.recallHost" -}}
{{- default (printf "%s-predictor.%s.svc.cluster.local:80" (include "shopserve.recallModel" .) .Release.Namespace) .Values.search.recallHost -}}
{{- end -}}
{{- define "shopserve.sequenceHost" -}}
{{- default (printf "%s-predictor.%s.svc.cluster.local:80" (include "shopserve.sequenceModel" .) .Release.Namespace) .Values.search.sequenceHost -}}
{{- end -}}
{{- define "shopserve.semanticHost" -}}
{{- default (printf "%s-predictor.%s.svc.cluster.local:80" (include "shopserve.queryEncoderModel" .) .Release.Namespace) .Values.search.semanticHost -}}
{{- end -}}
{{- define "shopserve.rankerHost" -}}
{{- default (printf "%s-predictor.%s.svc.cluster.local:80" (include "shopserve.searchModel" .) .Release.Namespace) .Values.search.rankerHost -}}
{{- end -}}

{{/*
Settings of each component that values set one to one: Helm `<component>.<camelCase>` ->
env `<PREFIX><UPPER_SNAKE>` -> settings field `<snake_case>`. The settings the chart fixes itself
(bind host, bundle dir, model names, ports, upstream hosts) are written by the ConfigMap templates;
tests/charts checks both directions against shopserve.settings.
*/}}
{{- define "shopserve.search.settingsKeys" -}}
workers logLevel requestLogs recallTimeoutMs rankerTimeoutMs sequenceTimeoutMs upstreamRetries breakerFailures breakerCooldownMs rankerMaxConcurrency relevanceCacheEnabled relevanceCacheEntries failureLogIntervalMs lexicalCandidates recallCandidates rankCandidates sequenceCandidates sequenceEnabled semanticTimeoutMs semanticCandidates semanticEnabled maxRecentItems queryRewrite lexicalScale semanticGate queryNegation rankerEnabled weightRelevance weightLexical weightPersonal weightPopularity weightSession weightSemantic defaultTopN maxTopN maxQueryChars maxBatch driftWindow driftMinSamples faultDelayMs faultErrorRatio maxRequestBytes
{{- end -}}
{{- define "shopserve.recall.settingsKeys" -}}
workers logLevel requestLogs index topK maxTopK maxBatch hnswM hnswEfConstruction hnswEfSearch ivfNlist ivfNprobe mipsToL2 searchThreads maxRequestBytes
{{- end -}}

{{/*
`KEY: "value"` lines for the settings of one component.
Usage: include "shopserve.settingsEnv" (list "SEARCH_" .Values.search (include "shopserve.search.settingsKeys" .))
*/}}
{{- define "shopserve.settingsEnv" -}}
{{- $prefix := index . 0 -}}
{{- $values := index . 1 -}}
{{- range $key := splitList " " (index . 2) }}
{{ printf "%s%s" $prefix ($key | snakecase | upper) }}: {{ index $values $key | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Replica bounds of a component: autoscaling (min..max) or a fixed count (replicas), never both.
Standard mode cannot scale to zero through an HPA, so a minimum of 0 becomes 1 there.
Usage: include "shopserve.minReplicas" (list $ .Values.search)
*/}}
{{- define "shopserve.minReplicas" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
{{- $min := ternary $c.autoscaling.minReplicas $c.replicas $c.autoscaling.enabled | int -}}
{{- if and (eq $root.Values.deploymentMode "Standard") (lt $min 1) -}}1{{- else -}}{{ $min }}{{- end -}}
{{- end -}}
{{- define "shopserve.maxReplicas" -}}
{{- $c := index . 1 -}}
{{- ternary $c.autoscaling.maxReplicas $c.replicas $c.autoscaling.enabled | int -}}
{{- end -}}

{{/*
Scaling fields of one InferenceService component (ComponentExtensionSpec): replica bounds plus,
per mode and autoscaler class, KServe's own scaleMetric/scaleTarget or autoScaling.metrics.
With `external` the chart's HPA template owns scaling, so only the bounds are written.
Usage: include "shopserve.componentScaling" (list $ .Values.ranker)
*/}}
{{- define "shopserve.componentScaling" -}}
{{- $root := index . 0 -}}
{{- $c := index . 1 -}}
minReplicas: {{ include "shopserve.minReplicas" (list $root $c) }}
maxReplicas: {{ include "shopserve.maxReplicas" (list $root $c) }}
{{- if $c.autoscaling.enabled }}
{{- if eq $root.Values.deploymentMode "Knative" }}
scaleMetric: {{ $c.autoscaling.knative.metric }}
scaleTarget: {{ $c.autoscaling.knative.target }}
{{- else if eq $root.Values.standard.autoscalerClass "hpa" }}
scaleMetric: {{ $c.autoscaling.hpa.metric }}
scaleTarget: {{ $c.autoscaling.hpa.target }}
{{- else if eq $root.Values.standard.autoscalerClass "keda" }}
autoScaling:
  metrics:
    {{- if $c.autoscaling.keda.query }}
    - type: External
      external:
        metric:
          backend: prometheus
          serverAddress: {{ $root.Values.standard.prometheusAddress }}
          query: {{ tpl $c.autoscaling.keda.query $root | quote }}
        target:
          type: Value
          value: {{ $c.autoscaling.keda.threshold | quote }}
    {{- else }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $c.autoscaling.hpa.target }}
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Annotations of an InferenceService: the deployment mode and, in Standard mode, who scales. */}}
{{- define "shopserve.isvcAnnotations" -}}
serving.kserve.io/deploymentMode: {{ .Values.deploymentMode }}
{{- if eq .Values.deploymentMode "Standard" }}
serving.kserve.io/autoscalerClass: {{ .Values.standard.autoscalerClass }}
{{- end }}
{{- end -}}

{{/* Pod annotations of a component: Knative autoscaler class and Prometheus scraping. */}}
{{- define "shopserve.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $port := index . 1 -}}
{{- if eq $root.Values.deploymentMode "Knative" }}
autoscaling.knative.dev/class: {{ $root.Values.knative.autoscalerClass }}
{{- end }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* Pod-level fields every component shares: identity, no API token, hardening, pull secrets. */}}
{{- define "shopserve.podCommon" -}}
serviceAccountName: {{ include "shopserve.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling of a component. Usage: include "shopserve.scheduling" .Values.ranker */}}
{{- define "shopserve.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The writable /tmp of every container (the root filesystem is read-only). */}}
{{- define "shopserve.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
{{- end -}}
{{- define "shopserve.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/*
Resources of a Triton predictor: its values plus the GPU, in requests and limits, when count > 0.
Usage: include "shopserve.tritonResources" .Values.ranker  (or .Values.sequence, .Values.semantic)
*/}}
{{- define "shopserve.tritonResources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpu.count) 0 -}}
{{- $_ := set $res.requests .gpu.resourceName (int .gpu.count) -}}
{{- $_ := set $res.limits .gpu.resourceName (int .gpu.count) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}
{{- define "shopserve.rankerResources" -}}
{{- include "shopserve.tritonResources" .Values.ranker -}}
{{- end -}}

{{/*
Checks the schema cannot express; `helm template` and `helm install` stop with the message.
*/}}
{{- define "shopserve.validateValues" -}}
{{- $triton := eq .Values.ranker.server "triton" -}}
{{- if and (not $triton) (gt (int .Values.ranker.gpu.count) 0) -}}
{{- fail "ranker.server=torchserve runs the bundle's CPU graph on the CPU: set ranker.gpu.count=0" -}}
{{- end -}}
{{- if and $triton (has .Values.environment (list "staging" "prod")) (lt (int .Values.ranker.gpu.count) 1) -}}
{{- fail (printf "environment %s needs a GPU ranker: set ranker.gpu.count >= 1 (CPU Triton is for dev only)" .Values.environment) -}}
{{- end -}}
{{- if and $triton (lt (int .Values.ranker.gpu.count) 1) (not .Values.ranker.modelConfigName) -}}
{{- fail "ranker.gpu.count is 0: Triton on CPU cannot load the bundle's default config.pbtxt (KIND_GPU); set ranker.modelConfigName=cpu" -}}
{{- end -}}
{{- if and .Values.sequence.enabled (lt (int .Values.sequence.gpu.count) 1) (not .Values.sequence.modelConfigName) -}}
{{- fail "sequence.gpu.count is 0: Triton on CPU cannot load the bundle's default seq-recommender/config.pbtxt (KIND_GPU); set sequence.modelConfigName=cpu" -}}
{{- end -}}
{{- if and .Values.semantic.enabled (lt (int .Values.semantic.gpu.count) 1) (not .Values.semantic.modelConfigName) -}}
{{- fail "semantic.gpu.count is 0: Triton on CPU cannot load the bundle's default query-encoder/config.pbtxt (KIND_GPU); set semantic.modelConfigName=cpu" -}}
{{- end -}}
{{- if and .Values.search.canary.enabled (eq .Values.deploymentMode "Standard") -}}
{{- fail "search.canary: KServe's Standard-mode canary (spec.canary) covers predictors only; roll a transformer canary in Knative mode" -}}
{{- end -}}
{{- if and .Values.search.canary.enabled (not .Values.search.canary.imageTag) -}}
{{- fail "search.canary.enabled needs search.canary.imageTag (the candidate image)" -}}
{{- end -}}
{{- /* A disabled sequence model or query encoder renders nothing, so its values cannot fail the
release. */ -}}
{{- $optional := concat (ternary (list "sequence") (list) .Values.sequence.enabled) (ternary (list "semantic") (list) .Values.semantic.enabled) -}}
{{- range $name := concat (list "ranker" "recall") $optional -}}
{{- $c := index $.Values $name -}}
{{- if and $c.canary.enabled (not $c.canary.storageUri) -}}
{{- fail (printf "%s.canary.enabled needs %s.canary.storageUri (the candidate bundle)" $name $name) -}}
{{- end -}}
{{- end -}}
{{- range $name := concat (list "search" "ranker" "recall") $optional -}}
{{- $c := index $.Values $name -}}
{{- if and $c.autoscaling.enabled (gt (int $c.autoscaling.minReplicas) (int $c.autoscaling.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas (%v) exceeds maxReplicas (%v)" $name $c.autoscaling.minReplicas $c.autoscaling.maxReplicas) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Pod fields of the ranker predictor apart from scaling, shared by the stable predictor and a
Standard-mode canary. Usage: include "shopserve.rankerPod" (list $ storageUri isCanary)
*/}}
{{- define "shopserve.rankerPod" -}}
{{- $root := index . 0 -}}
{{- $storageUri := index . 1 -}}
{{- $isCanary := index . 2 -}}
{{- $torchserve := eq $root.Values.ranker.server "torchserve" -}}
{{- with $root -}}
{{ include "shopserve.podCommon" . }}
{{- include "shopserve.terminationGrace" (list . .Values.ranker.termination) }}
securityContext:
  {{- $uid := int .Values.ranker.runtime.runAsUser }}
  {{- toYaml (merge (dict "runAsUser" $uid "runAsGroup" $uid "fsGroup" $uid) (deepCopy .Values.podSecurityContext)) | nindent 2 }}
labels:
  app.kubernetes.io/part-of: shopserve
  app.kubernetes.io/instance: {{ .Release.Name }}
  app.kubernetes.io/component: ranker
annotations:
  {{- include "shopserve.podAnnotations" (list . (ternary 8082 .Values.ranker.runtime.containerPorts.metrics $torchserve)) | trim | nindent 2 }}
{{- include "shopserve.scheduling" .Values.ranker }}
model:
  {{- if $isCanary }}
  {{- /* The canary's model is a full container spec, whose name the CRD requires; the stable
  predictor's model must not carry one (KServe's webhook rejects it). */}}
  name: kserve-container
  {{- end }}
  {{- if $torchserve }}
  {{- /* KServe's kserve-torchserve runtime (auto-selected by the pytorch format) starts
  `torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`
  behind its v2 wrapper on port 8080 and sets TS_SERVICE_ENVELOPE=kservev2 for the v2 protocols.
  grpc-v2, as for Triton: the transformer calls its predictor over v2 gRPC, which the wrapper
  translates to TorchServe's own gRPC (v2 REST stays served). The storageUri is the bundle's
  TorchServe model store; logs go to the writable /tmp (the root filesystem is read-only). */}}
  modelFormat:
    name: pytorch
  protocolVersion: grpc-v2
  storageUri: {{ printf "%s/torchserve" (trimSuffix "/" $storageUri) | quote }}
  env:
    - name: LOG_LOCATION
      value: /tmp/torchserve-logs
    - name: METRICS_LOCATION
      value: /tmp/torchserve-logs
    - name: TEMP
      value: /tmp
  {{- else }}
  modelFormat:
    name: triton
  protocolVersion: grpc-v2
  {{- with include "shopserve.runtimeName" . }}
  runtime: {{ . }}
  {{- end }}
  storageUri: {{ $storageUri | quote }}
  {{- end }}
  {{- with and (not $torchserve) .Values.ranker.modelConfigName }}
  {{- /* KServe appends the predictor's args to the runtime's `tritonserver` args (also a
  cluster-wide runtime's): Triton then loads bert-ranker/configs/<name>.pbtxt (the CPU one). */}}
  args:
    - --model-config-name={{ . }}
  {{- end }}
  resources:
    {{- include "shopserve.rankerResources" . | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "shopserve.tmpMount" . | nindent 4 }}
volumes:
  {{- include "shopserve.tmpVolume" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
Pod fields of a Triton model predictor of its own (the sequence model, the query encoder) apart
from scaling, shared by the stable predictor and a Standard-mode canary: Triton on the ranker's
ServingRuntime (its probes, preStop sleep and `--exit-timeout-secs`), serving a bundle component
(`sequence/`, `semantic/`) as its model repository. `component` is the values key, also the pods'
`app.kubernetes.io/component` label (NetworkPolicy, PodMonitor).
Usage: include "shopserve.tritonModelPod" (list $ "sequence" storageUri isCanary)
*/}}
{{- define "shopserve.tritonModelPod" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $storageUri := index . 2 -}}
{{- $isCanary := index . 3 -}}
{{- $values := index $root.Values $component -}}
{{- with $root -}}
{{ include "shopserve.podCommon" . }}
{{- include "shopserve.terminationGrace" (list . $values.termination) }}
securityContext:
  {{- $uid := int .Values.ranker.runtime.runAsUser }}
  {{- toYaml (merge (dict "runAsUser" $uid "runAsGroup" $uid "fsGroup" $uid) (deepCopy .Values.podSecurityContext)) | nindent 2 }}
labels:
  app.kubernetes.io/part-of: shopserve
  app.kubernetes.io/instance: {{ .Release.Name }}
  app.kubernetes.io/component: {{ $component }}
annotations:
  {{- include "shopserve.podAnnotations" (list . .Values.ranker.runtime.containerPorts.metrics) | trim | nindent 2 }}
{{- include "shopserve.scheduling" $values }}
model:
  {{- if $isCanary }}
  name: kserve-container
  {{- end }}
  modelFormat:
    name: triton
  protocolVersion: grpc-v2
  {{- with include "shopserve.runtimeName" . }}
  runtime: {{ . }}
  {{- end }}
  storageUri: {{ $storageUri | quote }}
  {{- with $values.modelConfigName }}
  {{- /* Appended by KServe to the runtime's `tritonserver` args: <model>/configs/<name>.pbtxt. */}}
  args:
    - --model-config-name={{ . }}
  {{- end }}
  resources:
    {{- include "shopserve.tritonResources" $values | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    {{- include "shopserve.tmpMount" . | nindent 4 }}
volumes:
  {{- include "shopserve.tmpVolume" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
Pod fields of the recall predictor apart from scaling (stable and Standard-mode canary).
Usage: include "shopserve.recallPod" (list $ storageUri)
*/}}
{{- define "shopserve.recallPod" -}}
{{- $root := index . 0 -}}
{{- $storageUri := index . 1 -}}
{{- with $root -}}
{{ include "shopserve.podCommon" . }}
{{- include "shopserve.terminationGrace" (list . .Values.recall.termination) }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
labels:
  app.kubernetes.io/part-of: shopserve
  app.kubernetes.io/instance: {{ .Release.Name }}
  app.kubernetes.io/component: recall
annotations:
  checksum/config: {{ include (print .Template.BasePath "/configmap-settings.yaml") . | sha256sum }}
  {{- include "shopserve.podAnnotations" (list . .Values.recall.containerPorts.http) | trim | nindent 2 }}
{{- include "shopserve.scheduling" .Values.recall }}
storageUris:
  - uri: {{ $storageUri | quote }}
    mountPath: {{ include "shopserve.modelMount" . }}
containers:
  - name: kserve-container
    image: {{ include "shopserve.image" (list . "") }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["python", "-m", "predictors.recall"]
    envFrom:
      - configMapRef:
          name: {{ include "shopserve.fullname" . }}-recall
    ports:
      {{- /* First port = the gRPC port the transformer calls (service port 80 in both modes);
      Knative allows one port, and names it h2c for HTTP/2 cleartext. */}}
      - name: h2c
        containerPort: {{ .Values.recall.containerPorts.grpc }}
        protocol: TCP
      {{- if eq .Values.deploymentMode "Standard" }}
      - name: http
        containerPort: {{ .Values.recall.containerPorts.http }}
        protocol: TCP
      {{- end }}
    {{- /* Knative allows probes only on its single (gRPC) port: a TCP connect there. */}}
    {{- $http := ternary .Values.recall.containerPorts.http 0 (eq .Values.deploymentMode "Standard") }}
    {{- include "shopserve.probes" (list .Values.recall.probes $http .Values.recall.containerPorts.grpc) | indent 4 }}
    {{- include "shopserve.preStop" (list . .Values.recall.termination) | indent 4 }}
    resources:
      {{- toYaml .Values.recall.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "shopserve.tmpMount" . | nindent 6 }}
volumes:
  {{- include "shopserve.tmpVolume" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
Startup, readiness and liveness probes of a container, timings from `<component>.probes`.
With an HTTP port: startup and readiness on `/v2/health/ready` (the model has loaded; send me
traffic), liveness on `/v2/health/live` (restart me). Without one (a Knative predictor exposes
only its gRPC port, and Knative rejects probes on other ports): a TCP connect on the gRPC port,
which KServe and Triton open only once their models have loaded.
Usage: include "shopserve.probes" (list .Values.search.probes httpPort grpcPort)  (httpPort 0: none)
*/}}
{{- define "shopserve.probes" -}}
{{- $probes := index . 0 -}}
{{- $http := index . 1 | int -}}
{{- $grpc := index . 2 | int -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  {{- if $http }}
  httpGet:
    path: {{ ternary "/v2/health/live" "/v2/health/ready" (eq $kind "liveness") }}
    port: {{ $http }}
  {{- else }}
  tcpSocket:
    port: {{ $grpc }}
  {{- end }}
  {{- toYaml (index $probes $kind) | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Graceful stop in Standard mode: a preStop sleep on the container, so that the endpoints drop the
pod before SIGTERM reaches the server, which then drains what it accepted. Knative forbids
lifecycle hooks and terminationGracePeriodSeconds: its queue-proxy drains the pod itself.
Usage: include "shopserve.preStop" (list $ .Values.search.termination)
*/}}
{{- define "shopserve.preStop" -}}
{{- $root := index . 0 -}}
{{- $t := index . 1 -}}
{{- if and (eq $root.Values.deploymentMode "Standard") (gt (int $t.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ $t.preStopSleepSeconds }}
{{- end }}
{{- end -}}
{{- define "shopserve.terminationGrace" -}}
{{- $root := index . 0 -}}
{{- $t := index . 1 -}}
{{- if eq $root.Values.deploymentMode "Standard" }}
terminationGracePeriodSeconds: {{ $t.gracePeriodSeconds }}
{{- end }}
{{- end -}}
