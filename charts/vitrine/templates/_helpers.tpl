{{/* Names. */}}
{{- define "vitrine.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: the release name when it already contains the chart name
(`helm install vitrine ...` gives vitrine, vitrine-router, vitrine-shard),
else <release>-<chart>. Kept to 47 characters so that
<fullname>-shard-<ordinal> and <fullname>-router-metrics stay DNS labels.
*/}}
{{- define "vitrine.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 47 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 47 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vitrine.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vitrine.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "vitrine.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vitrine.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels. */}}
{{- define "vitrine.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vitrine.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vitrine.labels" -}}
helm.sh/chart: {{ include "vitrine.chart" . }}
{{ include "vitrine.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Usage: include "vitrine.componentSelectorLabels" (list $ "router") */}}
{{- define "vitrine.componentSelectorLabels" -}}
{{ include "vitrine.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vitrine.componentLabels" -}}
{{ include "vitrine.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Shards: the StatefulSet and its headless Service share this name. */}}
{{- define "vitrine.shardName" -}}
{{- printf "%s-shard" (include "vitrine.fullname" .) -}}
{{- end -}}

{{/*
The address of shard pod <ordinal> (a number, or "{index}" for the shards'
peer template), resolved through the headless Service:
<fullname>-shard-<ordinal>.<fullname>-shard.<ns>.svc.<domain>:<port>.
*/}}
{{- define "vitrine.shardAddr" -}}
{{- $ := index . 0 -}}
{{- $shard := include "vitrine.shardName" $ -}}
{{- printf "%s-%v.%s.%s.svc.%s:%d" $shard (index . 1) $shard $.Release.Namespace $.Values.clusterDomain (int $.Values.shard.port) -}}
{{- end -}}

{{/*
The router's shard list, one address per pod of the StatefulSet, in ordinal
order: each shard's replicas together (ordinal = shard x replicas + replica).
*/}}
{{- define "vitrine.shardAddrs" -}}
{{- $addrs := list -}}
{{- range $i := until (int (mul .Values.shard.count .Values.shard.replicas)) -}}
{{- $addrs = append $addrs (include "vitrine.shardAddr" (list $ $i)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}

{{/* Secrets. */}}
{{- define "vitrine.authSecretName" -}}
{{- default (printf "%s-auth" (include "vitrine.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "vitrine.checkValues" -}}
{{- $otlp := .Values.tracing.otlpEndpoint -}}
{{- if and (hasPrefix "https://" $otlp) (not .Values.tracing.caSecret) -}}
{{- fail "tracing.otlpEndpoint https:// needs tracing.caSecret (a Secret with ca.crt, the collector's CA)" -}}
{{- end -}}
{{- if and .Values.tracing.caSecret (not (hasPrefix "https://" $otlp)) -}}
{{- fail "tracing.caSecret is set but tracing.otlpEndpoint is not https://" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) -}}
{{- fail "tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt)" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) (not .Values.auth.apiKeys) -}}
{{- fail "auth.enabled needs auth.existingSecret or at least one entry in auth.apiKeys" -}}
{{- end -}}
{{- if and .Values.router.autoscaling.enabled (gt (int .Values.router.autoscaling.minReplicas) (int .Values.router.autoscaling.maxReplicas)) -}}
{{- fail "router.autoscaling.minReplicas must not exceed router.autoscaling.maxReplicas" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (or (eq (int .Values.metrics.port) (int .Values.router.port)) (eq (int .Values.metrics.port) (int .Values.shard.port))) -}}
{{- fail "metrics.port must differ from router.port and shard.port" -}}
{{- end -}}
{{- $hp := int .Values.tls.healthPort -}}
{{- if and .Values.tls.enabled (or (eq $hp (int .Values.router.port)) (eq $hp (int .Values.shard.port)) (and .Values.metrics.enabled (eq $hp (int .Values.metrics.port)))) -}}
{{- fail "tls.healthPort must differ from router.port, shard.port and metrics.port" -}}
{{- end -}}
{{- $pdb := .Values.router.podDisruptionBudget -}}
{{- if and $pdb.enabled (eq (kindOf $pdb.minAvailable) "invalid") (eq (kindOf $pdb.maxUnavailable) "invalid") -}}
{{- fail "router.podDisruptionBudget needs minAvailable or maxUnavailable" -}}
{{- end -}}
{{- if and $pdb.enabled (ne (kindOf $pdb.minAvailable) "invalid") (ne (kindOf $pdb.maxUnavailable) "invalid") -}}
{{- fail "router.podDisruptionBudget: set only one of minAvailable and maxUnavailable" -}}
{{- end -}}
{{- end -}}

{{/* Who may scrape metrics when networkPolicy.enabled. */}}
{{- define "vitrine.metricsNamespaceSelector" -}}
{{- $m := .Values.networkPolicy.metrics -}}
{{- if $m.namespaceSelector -}}
{{- toYaml $m.namespaceSelector -}}
{{- else -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- toYaml $m.namespaces | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* Pod and container security contexts: non-root, read-only root, no capabilities. */}}
{{- define "vitrine.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vitrine.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* TLS env, mount and volume (both workloads); include only when tls.enabled. */}}
{{- define "vitrine.tlsEnv" -}}
- {name: VITRINE_TLS_CERT, value: /etc/vitrine/tls/tls.crt}
- {name: VITRINE_TLS_KEY, value: /etc/vitrine/tls/tls.key}
- {name: VITRINE_TLS_CA, value: /etc/vitrine/tls/ca.crt}
{{- end -}}

{{- define "vitrine.tlsMount" -}}
- {name: tls, mountPath: /etc/vitrine/tls, readOnly: true}
{{- end -}}

{{/* The trace collector's CA (tracing.caSecret), for both workloads. */}}
{{- define "vitrine.otlpCaMount" -}}
- {name: otlp-ca, mountPath: /etc/vitrine/otlp, readOnly: true}
{{- end -}}

{{- define "vitrine.otlpCaVolume" -}}
- name: otlp-ca
  secret:
    secretName: {{ .Values.tracing.caSecret }}
    items:
      - {key: ca.crt, path: ca.crt}
    defaultMode: 288  # 0440: readable by fsGroup
{{- end -}}

{{- define "vitrine.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
    defaultMode: 288  # 0440: readable by fsGroup
{{- end -}}

{{/* Probe timings from values, minus the gRPC target. */}}
{{- define "vitrine.probe" -}}
{{- $port := index . 0 -}}
{{- $timing := index . 1 -}}
grpc:
  port: {{ $port }}
{{- with $timing }}
{{ toYaml . }}
{{- end }}
{{- end -}}
