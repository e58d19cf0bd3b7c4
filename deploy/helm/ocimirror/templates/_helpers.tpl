{{/* Names: the chart's, and the release's full name (nameOverride, fullnameOverride). */}}
{{- define "ocimirror.name" -}}
{{- .Values.nameOverride | default .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ocimirror.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := .Values.nameOverride | default .Chart.Name -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ocimirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ocimirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ocimirror.labels" -}}
{{ include "ocimirror.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ocimirror.testLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end -}}

{{- define "ocimirror.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ocimirror.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The image: repository (required), tag (default appVersion), digest (wins when set). */}}
{{- define "ocimirror.image" -}}
{{- $repository := required "image.repository is required: ocimirror publishes no image. Build it from the repository's Dockerfile, push it where the cluster pulls from, and set image.repository (and image.tag or image.digest); see the chart README" .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "ocimirror.configMapName" -}}
{{- .Values.existingConfigMap | default (include "ocimirror.fullname" .) -}}
{{- end -}}

{{/* Where every secret file is: one projected volume. */}}
{{- define "ocimirror.secretDir" -}}/run/secrets/ocimirror{{- end -}}

{{/* The credentials Secret: made by the chart (when it has something to hold) or the user's. */}}
{{- define "ocimirror.credentialsData" -}}
{{- $data := dict -}}
{{- with .Values.secret.upstreamPassword }}{{ $_ := set $data "upstream-password" (. | b64enc) }}{{ end -}}
{{- with .Values.secret.redisPassword }}{{ $_ := set $data "redis-password" (. | b64enc) }}{{ end -}}
{{- with .Values.secret.s3AccessKeyId }}{{ $_ := set $data "s3-access-key-id" (. | b64enc) }}{{ end -}}
{{- with .Values.secret.s3SecretAccessKey }}{{ $_ := set $data "s3-secret-access-key" (. | b64enc) }}{{ end -}}
{{- toJson $data -}}
{{- end -}}

{{- define "ocimirror.credentialsSecretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else if and .Values.secret.create (ne (include "ocimirror.credentialsData" .) "{}") -}}
{{- include "ocimirror.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The Secrets projected into the secret directory: credentials, signing key, TLS, cluster. */}}
{{- define "ocimirror.secretSources" -}}
{{- with include "ocimirror.credentialsSecretName" . }}
- secret:
    name: {{ . }}
{{- end }}
{{- if include "ocimirror.auth" . }}
- secret:
    name: {{ .Values.signingKey.existingSecret | default (include "ocimirror.keysSecretName" .) }}
    items:
      - key: token.key
        path: token.key
      - key: token.crt
        path: token.crt
{{- end }}
{{- if include "ocimirror.tls" . }}
- secret:
    name: {{ .Values.tls.existingSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- if .Values.cluster.enabled }}
- secret:
    name: {{ .Values.cluster.existingSecret | default (include "ocimirror.keysSecretName" .) }}
    items:
      - key: cluster-secret
        path: cluster-secret
{{- end }}
{{- end -}}

{{/* The Secret the chart generates keys into, once (see keys-secret.yaml). */}}
{{- define "ocimirror.keysSecretName" -}}
{{- printf "%s-keys" (include "ocimirror.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* config.auth and config.tls are on when present (`auth: null` in a values file removes it). */}}
{{- define "ocimirror.auth" -}}
{{- if hasKey .Values.config "auth" }}true{{ end -}}
{{- end -}}

{{- define "ocimirror.tls" -}}
{{- if hasKey .Values.config "tls" }}true{{ end -}}
{{- end -}}

{{- define "ocimirror.generatesSigningKey" -}}
{{- if and (include "ocimirror.auth" .) (not .Values.signingKey.existingSecret) }}true{{ end -}}
{{- end -}}

{{- define "ocimirror.generatesClusterSecret" -}}
{{- if and .Values.cluster.enabled (not .Values.cluster.existingSecret) }}true{{ end -}}
{{- end -}}

{{/* http or https, after config.tls. */}}
{{- define "ocimirror.scheme" -}}
{{- if include "ocimirror.tls" . }}https{{ else }}http{{ end -}}
{{- end -}}

{{- define "ocimirror.listenPort" -}}
{{- .Values.config.listen | default ":5000" | toString | splitList ":" | last | int -}}
{{- end -}}

{{- define "ocimirror.dataDir" -}}
{{- .Values.config.data_dir | default "/var/lib/ocimirror" -}}
{{- end -}}

{{/* The smallest number of replicas the Deployment can have. */}}
{{- define "ocimirror.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end -}}
{{- end -}}

{{- define "ocimirror.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas | int }}{{ else }}{{ .Values.replicaCount | int }}{{ end -}}
{{- end -}}

{{/* The paths the Ingress routes: the registry API, the token endpoint (config.auth.path), and
     ingress.extraPaths. */}}
{{- define "ocimirror.ingressPaths" -}}
{{- $paths := list "/v2" -}}
{{- if include "ocimirror.auth" . -}}
{{- $paths = append $paths (dig "path" "/auth" (.Values.config.auth | default dict)) -}}
{{- end -}}
{{- toJson (concat $paths .Values.ingress.extraPaths | uniq) -}}
{{- end -}}

{{/* The config file: .Values.config, plus the cluster section when cluster.enabled. */}}
{{- define "ocimirror.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.cluster.enabled -}}
{{- $_ := set $config "cluster" (dict "listen" (printf ":%d" (.Values.cluster.port | int)) "secret_file" (printf "%s/cluster-secret" (include "ocimirror.secretDir" .))) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Combinations that cannot work, refused at render time with what to change. */}}
{{- define "ocimirror.validate" -}}
{{- $min := include "ocimirror.minReplicas" . | int -}}
{{- $max := include "ocimirror.maxReplicas" . | int -}}
{{- $config := .Values.config -}}
{{- $storage := $config.storage | default dict -}}
{{- $cache := $config.cache | default dict -}}
{{- $dir := include "ocimirror.secretDir" . -}}
{{- if .Values.podDisruptionBudget.enabled -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- $hasMax := not (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- if and $hasMax (not (kindIs "string" $pdb.maxUnavailable)) (eq ($pdb.maxUnavailable | int) 0) -}}
{{- fail "podDisruptionBudget.maxUnavailable 0 forbids every eviction, so node drains would block" -}}
{{- end -}}
{{- if and (not $hasMax) (not (kindIs "string" $pdb.minAvailable)) (ge ($pdb.minAvailable | int) $min) -}}
{{- fail (printf "podDisruptionBudget.minAvailable is %d with %d replica(s) at least: no pod could ever be evicted, so node drains would block. Run more replicas (replicaCount, or autoscaling.minReplicas), lower minAvailable, set maxUnavailable, or turn the budget off" ($pdb.minAvailable | int) $min) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.persistence.enabled (gt $max 1) (not (has "ReadWriteMany" .Values.persistence.accessModes)) -}}
{{- fail (printf "persistence with %s: up to %d pods would mount one %s claim, which only one node can. Several replicas share S3 (config.storage.backend: s3) and Redis instead of a volume; turn persistence off, or autoscaling off with replicaCount 1" (ternary "autoscaling" "replicaCount > 1" .Values.autoscaling.enabled) $max (join "/" .Values.persistence.accessModes)) -}}
{{- end -}}
{{- if and (gt $max 1) (or (ne ($storage.backend | default "filesystem") "s3") (ne ($cache.backend | default "memory") "redis")) -}}
{{- fail (printf "up to %d replicas with config.storage.backend %s and config.cache.backend %s: each replica would keep its own cache and fetch every blob again. Several replicas need storage.backend s3 and cache.backend redis (see ci/fleet-values.yaml)" $max ($storage.backend | default "filesystem") ($cache.backend | default "memory")) -}}
{{- end -}}
{{- if and (eq ($storage.backend | default "filesystem") "filesystem") (not .Values.persistence.enabled) .Values.emptyDir.sizeLimit (not (dig "max_size" "" ($config.expiry | default dict))) -}}
{{- fail (printf "the filesystem cache is in an emptyDir of %s with no config.expiry.max_size: when it fills, the kubelet evicts the pod and the cache is lost. Set config.expiry.max_size below emptyDir.sizeLimit (the default values do), or use persistence or S3" .Values.emptyDir.sizeLimit) -}}
{{- end -}}
{{- range $value, $want := dict "upstreamPassword" (list "upstream.password_file" (dig "password_file" "" ($config.upstream | default dict)) "upstream-password") "redisPassword" (list "cache.redis.password_file" (dig "redis" "password_file" "" $cache) "redis-password") "s3SecretAccessKey" (list "storage.s3.secret_access_key_file" (dig "s3" "secret_access_key_file" "" $storage) "s3-secret-access-key") -}}
{{- if and (index $.Values.secret $value) (ne (index $want 1) (printf "%s/%s" $dir (index $want 2))) -}}
{{- fail (printf "secret.%s is set but config.%s is not %s/%s, where the chart mounts it" $value (index $want 0) $dir (index $want 2)) -}}
{{- end -}}
{{- end -}}
{{- if and (include "ocimirror.auth" .) (or (ne (toString (dig "key" "" .Values.config.auth)) (printf "%s/token.key" $dir)) (ne (toString (dig "certificate" "" .Values.config.auth)) (printf "%s/token.crt" $dir))) -}}
{{- fail (printf "config.auth.key and config.auth.certificate must be %s/token.key and %s/token.crt: the chart mounts the signing key there (from signingKey.existingSecret, or the key it generates)" $dir $dir) -}}
{{- end -}}
{{- if and .Values.cluster.enabled (hasKey $config "cluster") -}}
{{- fail "cluster.enabled writes config.cluster itself: remove config.cluster from the values" -}}
{{- end -}}
{{- if include "ocimirror.tls" . -}}
{{- if or (not .Values.tls.existingSecret) (ne (toString (dig "certificate" "" .Values.config.tls)) (printf "%s/tls.crt" $dir)) (ne (toString (dig "key" "" .Values.config.tls)) (printf "%s/tls.key" $dir)) -}}
{{- fail (printf "config.tls needs tls.existingSecret (a kubernetes.io/tls Secret) and config.tls.certificate: %s/tls.crt, config.tls.key: %s/tls.key, where the chart mounts that Secret" $dir $dir) -}}
{{- end -}}
{{- end -}}
{{- end -}}
