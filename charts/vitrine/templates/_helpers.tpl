{{- define "vitrine.fullname" -}}{{ .Release.Name }}-vitrine{{- end -}}
{{- define "vitrine.shardAddrs" -}}
{{- $root := . -}}
{{- $addrs := list -}}
{{- range $i := until (int .Values.shard.count) -}}
{{- $addrs = append $addrs (printf "%s-shard-%d.%s-shard.%s.svc:%d" (include "vitrine.fullname" $root) $i (include "vitrine.fullname" $root) $root.Release.Namespace (int $root.Values.shard.port)) -}}
{{- end -}}
{{- join "," $addrs -}}
{{- end -}}
