{{- define "orkestr.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "orkestr.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "orkestr.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "orkestr.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "orkestr.secretName" -}}
{{ .Values.secrets.existingSecret | default (printf "%s-secrets" (include "orkestr.fullname" .)) }}
{{- end -}}

{{- define "orkestr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ .Values.serviceAccount.name | default (include "orkestr.fullname" .) }}{{- else -}}{{ .Values.serviceAccount.name | default "default" }}{{- end -}}
{{- end -}}

{{/* Where the Secret is mounted in both workloads, and the node token's file
there (fleet.node_token_file of the config). */}}
{{- define "orkestr.secretsDir" -}}/etc/orkestr/secrets{{- end -}}

{{/* The orkestrd config file: the operator's `config` with the chart's fleet
keys. Secrets and per-pod node keys are refused here: they would be the same
for every pod, or readable by anyone who can read ConfigMaps. */}}
{{- define "orkestr.config" -}}
{{- $c := deepCopy .Values.config -}}
{{- if (($c.database | default dict).url) -}}
{{- fail "config.database.url is a secret: give it as secrets.databaseURL (or key database-url of secrets.existingSecret), not in the ConfigMap" -}}
{{- end -}}
{{- $f := $c.fleet | default dict -}}
{{- range $k := list "node_token" "node_token_file" "node_token_env" -}}
{{- if hasKey $f $k -}}
{{- fail (printf "config.fleet.%s is set by the chart: give the node token as secrets.nodeToken (or key node-token of secrets.existingSecret)" $k) -}}
{{- end -}}
{{- end -}}
{{- $n := $c.node | default dict -}}
{{- range $k := list "id" "listen" "advertise" -}}
{{- if hasKey $n $k -}}
{{- fail (printf "config.node.%s is set per pod by the chart (id: the Kubernetes node name; listen/advertise: the pod IP and node.apiPort): remove it from config" $k) -}}
{{- end -}}
{{- end -}}
{{- $s := $c.snapshots | default dict -}}
{{- range $k := list "master_key" "master_key_file" "master_key_env" -}}
{{- if hasKey $s $k -}}
{{- fail (printf "config.snapshots.%s is set by the chart: give the snapshot master key as secrets.snapshotMasterKey (or key snapshot-master-key of secrets.existingSecret)" $k) -}}
{{- end -}}
{{- end -}}
{{- $s3 := $s.s3 | default dict -}}
{{- range $k := list "access_key_id" "secret_access_key" "secret_access_key_file" "secret_access_key_env" -}}
{{- if hasKey $s3 $k -}}
{{- fail (printf "config.snapshots.s3.%s is set by the chart: give S3 credentials as secrets.s3AccessKeyID and secrets.s3SecretAccessKey (or keys s3-access-key-id and s3-secret-access-key of secrets.existingSecret)" $k) -}}
{{- end -}}
{{- end -}}
{{- if eq (toString ($s.store | default "")) "s3" -}}
{{- if not (or $.Values.secrets.snapshotMasterKey $.Values.secrets.existingSecret) -}}
{{- fail "config.snapshots.store is s3: snapshots in an object store are encrypted, so the chart needs secrets.snapshotMasterKey (openssl rand -base64 32) or key snapshot-master-key of secrets.existingSecret" -}}
{{- end -}}
{{- $_ := set $s "master_key_file" (printf "%s/snapshot-master-key" (include "orkestr.secretsDir" .)) -}}
{{- $_ := set $c "snapshots" $s -}}
{{- end -}}
{{- $_ := set $f "enabled" true -}}
{{- $_ := set $f "node_token_file" (printf "%s/node-token" (include "orkestr.secretsDir" .)) -}}
{{- $_ := set $c "fleet" $f -}}
{{- toYaml $c -}}
{{- end -}}

{{/* The node token: the operator's, else the one the Secret already holds
(kept across upgrades: nodes and control plane read it at start), else a
new random one. */}}
{{- define "orkestr.nodeToken" -}}
{{- $tok := "" -}}
{{- if .Values.secrets.nodeToken -}}
{{- $tok = .Values.secrets.nodeToken -}}
{{- else -}}
{{- $old := lookup "v1" "Secret" .Release.Namespace (include "orkestr.secretName" .) -}}
{{- if and $old $old.data (index $old.data "node-token") -}}
{{- $tok = index $old.data "node-token" | b64dec -}}
{{- else -}}
{{- /* Generated once per render: the Secret and the pods' checksum of it
must see the same token. */ -}}
{{- if not (hasKey .Values.secrets "generatedNodeToken") -}}
{{- $_ := set .Values.secrets "generatedNodeToken" (randAlphaNum 64) -}}
{{- end -}}
{{- $tok = .Values.secrets.generatedNodeToken -}}
{{- end -}}
{{- end -}}
{{- if lt (len $tok) 32 -}}
{{- fail "secrets.nodeToken must be at least 32 bytes (openssl rand -hex 32)" -}}
{{- end -}}
{{- $tok -}}
{{- end -}}

{{/* The fleet's store, from the Secret: both workloads need it. */}}
{{- define "orkestr.databaseEnv" -}}
- name: ORKESTR_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "orkestr.secretName" . }}
      key: database-url
- name: ORKESTR_CONFIG
  value: /etc/orkestr/config.yaml
{{- if eq (toString ((.Values.config.snapshots | default dict).store | default "")) "s3" }}
{{- /* S3 credentials in the standard AWS variables, optional: without
them the SDK's other sources (a web identity token, an instance role)
apply. Both workloads use the store: nodes write and read snapshots, the
control plane deletes them and collects orphans. */}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "orkestr.secretName" . }}
      key: s3-access-key-id
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "orkestr.secretName" . }}
      key: s3-secret-access-key
      optional: true
{{- end }}
{{- end -}}

{{- define "orkestr.requireDatabase" -}}
{{- if not (or .Values.secrets.databaseURL .Values.secrets.existingSecret) -}}
{{- fail "the fleet needs PostgreSQL: set secrets.databaseURL (postgres://…) or secrets.existingSecret (a Secret with keys database-url and node-token)" -}}
{{- end -}}
{{- if and .Values.secrets.existingSecret (or .Values.secrets.databaseURL .Values.secrets.nodeToken) -}}
{{- fail "secrets.existingSecret is set: put database-url and node-token into that Secret, not secrets.databaseURL / secrets.nodeToken (the chart renders no Secret then)" -}}
{{- end -}}
{{- if and .Values.secrets.databaseURL (not (hasPrefix "postgres" .Values.secrets.databaseURL)) -}}
{{- fail "secrets.databaseURL must be a PostgreSQL URL (postgres://…): the fleet's control plane and nodes share one store" -}}
{{- end -}}
{{- end -}}
