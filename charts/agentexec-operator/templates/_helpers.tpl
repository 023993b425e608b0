{{- define "aex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aex.fullname" -}}
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

{{- define "aex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "aex.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aex.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The image of the operator and runner pods: pinned by digest when
     image.digest is set (the tag then only names it for people). */}}
{{- define "aex.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{- define "aex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aex.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* The install's identity (AGENTEXEC_INSTALL): the release's namespace and
       full name, unique in a cluster (a namespace has no dot). Its task queues
       derive from it unless named, so that two releases sharing a Temporal
       namespace never take each other's tasks (issue #22). */}}
{{- define "aex.install" -}}
{{- printf "%s.%s" .Release.Namespace (include "aex.fullname" .) -}}
{{- end -}}

{{- define "aex.taskQueue" -}}
{{- .Values.temporal.taskQueue | default (printf "%s-executions" (include "aex.install" .)) -}}
{{- end -}}

{{- define "aex.runnerTaskQueue" -}}
{{- .Values.temporal.runnerTaskQueue | default (printf "%s-runner" (include "aex.install" .)) -}}
{{- end -}}

{{/* The rules the operator needs: no wildcards, only what it calls. */}}
{{- define "aex.rules" -}}
- apiGroups: [agentexec.io]
  resources: [agentexecutions]
  # delete: finished executions whose ttlSecondsAfterFinished ran out.
  verbs: [get, list, watch, patch, delete]
- apiGroups: [agentexec.io]
  resources: [agentexecutions/status]
  verbs: [patch]
- apiGroups: [agentexec.io]
  resources: [agents]
  verbs: [get, list, watch]
# ExecutionPolicies are read; their status holds each namespace's spending.
- apiGroups: [agentexec.io]
  resources: [executionpolicies]
  verbs: [get, list, watch]
- apiGroups: [agentexec.io]
  resources: [executionpolicies/status]
  verbs: [patch]
# AgentApprovals: read, relayed to the waiting workflow, and said Applied.
- apiGroups: [agentexec.io]
  resources: [agentapprovals]
  verbs: [get, list, watch]
- apiGroups: [agentexec.io]
  resources: [agentapprovals/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}


{{/* The runner's pods: a name of their own, so that no operator selector
     (Deployment, PodDisruptionBudget, Service, NetworkPolicy) matches them. */}}
{{- define "aex.runnerName" -}}
{{- printf "%s-runner" (include "aex.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "aex.runnerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-runner" (include "aex.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: runner
{{- end -}}

{{- define "aex.runnerLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aex.runnerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "aex.runnerServiceAccountName" -}}
{{- if .Values.runner.serviceAccount.create -}}
{{- default (include "aex.runnerName" .) .Values.runner.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.runner.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* How to reach Temporal, for the operator and for the runner: the same
     server settings, each its own credential (aex.temporalCredentials). The
     context is (dict "root" $ "cred" <tls and apiKey>). */}}
{{- define "aex.temporalEnv" -}}
{{- $root := .root -}}
{{- $tls := .cred.tls -}}
- name: TEMPORAL_ADDRESS
  value: {{ $root.Values.temporal.address | quote }}
- name: TEMPORAL_NAMESPACE
  value: {{ $root.Values.temporal.namespace | quote }}
- name: TEMPORAL_PROBE_INTERVAL_SECONDS
  value: {{ $root.Values.temporal.probeIntervalSeconds | quote }}
- name: TEMPORAL_PROBE_TIMEOUT_SECONDS
  value: {{ $root.Values.temporal.probeTimeoutSeconds | quote }}
- name: TEMPORAL_DOWN_AFTER_SECONDS
  value: {{ $root.Values.temporal.downAfterSeconds | quote }}
- name: TEMPORAL_BACKOFF_MAX_SECONDS
  value: {{ $root.Values.temporal.backoffMaxSeconds | quote }}
- name: TEMPORAL_CIRCUIT_THRESHOLD
  value: {{ $root.Values.temporal.circuitThreshold | quote }}
- name: TEMPORAL_CIRCUIT_BACKOFF_MAX_SECONDS
  value: {{ $root.Values.temporal.circuitBackoffMaxSeconds | quote }}
{{- if $tls.enabled }}
- name: TEMPORAL_TLS
  value: "true"
{{- end }}
{{- if $tls.secretName }}
{{- /* Only the keys that are named: a missing ca.crt means the
       system roots, a missing client pair means no mTLS. */}}
{{- with $tls.keys.ca }}
- name: TEMPORAL_TLS_CA_FILE
  value: /etc/agentexec/temporal-tls/ca.crt
{{- end }}
{{- if $tls.keys.cert }}
- name: TEMPORAL_TLS_CERT_FILE
  value: /etc/agentexec/temporal-tls/tls.crt
- name: TEMPORAL_TLS_KEY_FILE
  value: /etc/agentexec/temporal-tls/tls.key
{{- end }}
{{- end }}
{{- with $tls.serverName }}
- name: TEMPORAL_TLS_SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- if .cred.apiKey.secretName }}
- name: TEMPORAL_API_KEY_FILE
  value: /etc/agentexec/temporal-api-key/{{ .cred.apiKey.secretKey }}
{{- end }}
{{- with $root.Values.payloadEncryption.secretName }}
# Payloads encrypted at rest in Temporal (the keys: one file per key ID).
- name: AGENTEXEC_PAYLOAD_KEYS_DIR
  value: /etc/agentexec/payload-keys
- name: AGENTEXEC_PAYLOAD_KEY_ID
  value: {{ $root.Values.payloadEncryption.currentKeyId | quote }}
{{- end }}
{{- end -}}

{{- define "aex.temporalVolumeMounts" -}}
{{- if .cred.tls.secretName }}
- name: temporal-tls
  mountPath: /etc/agentexec/temporal-tls
  readOnly: true
{{- end }}
{{- if .cred.apiKey.secretName }}
- name: temporal-api-key
  mountPath: /etc/agentexec/temporal-api-key
  readOnly: true
{{- end }}
{{- if .root.Values.payloadEncryption.secretName }}
- name: payload-keys
  mountPath: /etc/agentexec/payload-keys
  readOnly: true
{{- end }}
{{- end -}}

{{- define "aex.temporalVolumes" -}}
{{- $tls := .cred.tls -}}
{{- if $tls.secretName }}
- name: temporal-tls
  secret:
    secretName: {{ $tls.secretName }}
    # Projected under fixed names; a named key that is missing from
    # the Secret fails the mount (a pod event), not the operator.
    items:
      {{- with $tls.keys.ca }}
      - key: {{ . | quote }}
        path: ca.crt
      {{- end }}
      {{- if $tls.keys.cert }}
      - key: {{ $tls.keys.cert | quote }}
        path: tls.crt
      - key: {{ $tls.keys.key | quote }}
        path: tls.key
      {{- end }}
{{- end }}
{{- if .cred.apiKey.secretName }}
- name: temporal-api-key
  secret:
    secretName: {{ .cred.apiKey.secretName }}
{{- end }}
{{- with .root.Values.payloadEncryption.secretName }}
# Every key of the Secret, by its key ID (no subPath: an added key reaches
# the running pods within the kubelet's sync, without a restart).
- name: payload-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- /* The Temporal credential of each workload: the operator's
       (temporal.tls, temporal.apiKey), and the runner's, which is its own
       where runner.temporal names one (the server's TLS settings, enabled and
       serverName, are shared). */}}
{{- define "aex.runnerCredential" -}}
{{- $t := .Values.temporal -}}
{{- $r := .Values.runner.temporal -}}
{{- $tls := $t.tls -}}
{{- if $r.tls.secretName -}}
{{- $tls = merge (dict "secretName" $r.tls.secretName "keys" $r.tls.keys) (omit $t.tls "secretName" "keys") -}}
{{- end -}}
{{- dict "tls" $tls "apiKey" (ternary $r.apiKey $t.apiKey (not (empty $r.apiKey.secretName))) | toYaml -}}
{{- end -}}

{{- /* The chat agent's providers file (agentexec.runner.providers): URLs,
       timeouts, headers, the key's header, CA files, and where each key is
       mounted; never a key. */}}
{{- define "aex.runnerProvidersFile" -}}
{{- $providers := dict -}}
{{- range $name, $p := .Values.runner.providers -}}
{{- $entry := dict "baseURL" $p.baseURL -}}
{{- with $p.timeoutSeconds }}{{ $_ := set $entry "timeoutSeconds" . }}{{ end -}}
{{- with $p.stallTimeoutSeconds }}{{ $_ := set $entry "stallTimeoutSeconds" . }}{{ end -}}
{{- if hasKey $p "stream" }}{{ $_ := set $entry "stream" $p.stream }}{{ end -}}
{{- with $p.headers }}{{ $_ := set $entry "headers" . }}{{ end -}}
{{- with $p.apiKeyHeader }}{{ $_ := set $entry "apiKeyHeader" . }}{{ end -}}
{{- with $p.caFile }}{{ $_ := set $entry "caFile" . }}{{ end -}}
{{- if $p.apiKeySecret }}{{ $_ := set $entry "apiKeyFile" (printf "/var/run/agentexec/providers/%s/apiKey" $name) }}{{ end -}}
{{- $_ := set $providers $name $entry -}}
{{- end -}}
{{- dict "providers" $providers | toPrettyJson -}}
{{- end -}}


{{- /* The MCP servers file (agentexec.runner.mcpServers): URLs, headers, and
       where each header's Secret is mounted; never a secret. A header's file
       is named by its lower-cased name. */}}
{{- define "aex.runnerMcpServersFile" -}}
{{- $servers := dict -}}
{{- range $name, $m := .Values.runner.mcpServers -}}
{{- $entry := dict "url" $m.url -}}
{{- with $m.headers }}{{ $_ := set $entry "headers" . }}{{ end -}}
{{- $files := dict -}}
{{- range $header, $_ := $m.headerSecrets }}{{ $_ := set $files $header (printf "/var/run/agentexec/mcp/%s/%s" $name (lower $header)) }}{{ end -}}
{{- if $files }}{{ $_ := set $entry "headerFiles" $files }}{{ end -}}
{{- $_ := set $servers $name $entry -}}
{{- end -}}
{{- dict "servers" $servers | toPrettyJson -}}
{{- end -}}


{{- /* Whether the operator serves /metrics and /statusz securely (HTTPS, a
       bearer token checked with TokenReview and SubjectAccessReview):
       metrics.secure.enabled, or by default where no NetworkPolicy limits
       who reaches the pod. "true" or "". */}}
{{- define "aex.metricsSecure" -}}
{{- $on := .Values.metrics.secure.enabled -}}
{{- if kindIs "invalid" $on -}}
{{- $on = not .Values.networkPolicy.enabled -}}
{{- end -}}
{{- if $on }}true{{ end -}}
{{- end -}}
