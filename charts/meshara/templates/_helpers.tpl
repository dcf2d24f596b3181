{{/*
Names, labels and images.
*/}}

{{- define "meshara.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object's name. At most 40 characters: the longest name built from it,
"<fullname>-authority-<controller-revision hash>", must fit a 63-character label value, and pod
names (<fullname>-seed-N) are DNS labels in the seeds' bootstrap addresses.
*/}}
{{- define "meshara.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "meshara.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels. Argument: dict "root" $ "component" "seed". */}}
{{- define "meshara.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshara.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Standard labels. Argument: dict "root" $ "component" "seed" (component may be empty). */}}
{{- define "meshara.labels" -}}
helm.sh/chart: {{ include "meshara.chart" .root }}
{{ include "meshara.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshara
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Metadata lines shared by every object: labels and the common annotations. */}}
{{- define "meshara.metadata" -}}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "meshara.labels" . | nindent 2 }}
{{- $annotations := merge (dict) (default (dict) .annotations) (default (dict) .root.Values.commonAnnotations) }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* "<fullname>-<component>". Argument: dict "root" $ "component" "seed". */}}
{{- define "meshara.componentName" -}}
{{- printf "%s-%s" (include "meshara.fullname" .root) .component -}}
{{- end -}}

{{/* An image reference. Argument: dict "root" $ "image" .Values.seed.image. */}}
{{- define "meshara.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "meshara.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meshara.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
Addresses. Nodes listen for QUIC on their pod IP, so that the address in their signed record is
one other pods can dial; HTTP listens on every address, so that probes, Services and
`kubectl port-forward` (which connects to the pod's loopback) all reach it.
*/}}

{{/* "$(POD_IP):port". Argument: dict "root" $ "port" 7340. */}}
{{- define "meshara.podAddr" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
{{- printf "[$(POD_IP)]:%d" (int .port) -}}
{{- else -}}
{{- printf "$(POD_IP):%d" (int .port) -}}
{{- end -}}
{{- end -}}

{{/* "0.0.0.0:port" or "[::]:port". Argument: dict "root" $ "port" 8600. */}}
{{- define "meshara.anyAddr" -}}
{{- if eq .root.Values.ipFamily "IPv6" -}}
{{- printf "[::]:%d" (int .port) -}}
{{- else -}}
{{- printf "0.0.0.0:%d" (int .port) -}}
{{- end -}}
{{- end -}}

{{/*
Bootstrap peers of every component, as a JSON list: every seed, pinned to its certificate in the
peers ConfigMap and named by its stable DNS name, then extraBootstrap.
*/}}
{{- define "meshara.bootstrap" -}}
{{- $root := . -}}
{{- $fullname := include "meshara.fullname" . -}}
{{- $list := list -}}
{{- if .Values.seed.enabled -}}
{{- range $i := until (int .Values.seed.replicaCount) -}}
{{- $list = append $list (printf "file:/etc/meshara/peers/seed-%d.crt@quic://%s-seed-%d.%s-seed.%s.svc.%s:%d" $i $fullname $i $fullname $root.Release.Namespace $root.Values.clusterDomain (int $root.Values.seed.ports.quic)) -}}
{{- end -}}
{{- end -}}
{{- toJson (concat $list .Values.extraBootstrap) -}}
{{- end -}}

{{/* Authority nodes the seeds and the explorer take the update root and releases from (JSON list). */}}
{{- define "meshara.authorities" -}}
{{- $list := list -}}
{{- if .Values.authority.enabled -}}
{{- $list = append $list "file:/etc/meshara/peers/authority.crt" -}}
{{- end -}}
{{- toJson (concat $list .Values.updates.authorities) -}}
{{- end -}}

{{/*
Identities. Each is an Ed25519 key made by Helm (PKCS#8 PEM) and a self-signed certificate of
it, which is how the other components learn its public key (Helm cannot print a public key).
Made once per render and kept in a cache on .Values, so that the Secret (private key) and the
peers ConfigMap (certificate) agree; on upgrade the existing Secret's key and certificate are
looked up and reused unchanged. `lookup` returns nothing under `helm template`: a render without
a cluster makes new keys (docs/architecture/deployment.md).

Argument: dict
  "root" $
  "secret"         name of the chart's Secret for this component
  "name"           the identity's name: the key in the Secret is <name>.pem, the certificate <name>.crt
  "cn"             the certificate's common name
  "existingSecret" the operator's Secret, or ""
  "certificate"    the certificate given in values (with existingSecret), or ""
Returns JSON {"key": PEM or "" (existingSecret), "crt": PEM}.
*/}}
{{- define "meshara.identity" -}}
{{- $root := .root -}}
{{- if not (hasKey $root.Values "__mesharaCache") -}}
{{- $_ := set $root.Values "__mesharaCache" (dict) -}}
{{- end -}}
{{- $cache := get $root.Values "__mesharaCache" -}}
{{- $id := printf "identity/%s/%s" .secret .name -}}
{{- if not (hasKey $cache $id) -}}
{{- $keyName := printf "%s.pem" .name -}}
{{- $crtName := printf "%s.crt" .name -}}
{{- if .existingSecret -}}
{{- $crt := .certificate -}}
{{- if not $crt -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace .existingSecret -}}
{{- $data := default (dict) (get (default (dict) $existing) "data") -}}
{{- $crt = get $data $crtName | b64dec -}}
{{- end -}}
{{- if not (contains "BEGIN CERTIFICATE" $crt) -}}
{{- fail (printf "the certificate %s is not known: the Secret %q has no key %q, or it cannot be read (helm template, GitOps); give the certificate in values (identity.certificates / identity.certificate)" .name .existingSecret $crtName) -}}
{{- end -}}
{{- $_ := set $cache $id (dict "key" "" "crt" $crt) -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace .secret -}}
{{- $data := default (dict) (get (default (dict) $existing) "data") -}}
{{- if and (hasKey $data $keyName) (hasKey $data $crtName) -}}
{{- $_ := set $cache $id (dict "key" (get $data $keyName | b64dec) "crt" (get $data $crtName | b64dec)) -}}
{{- else -}}
{{- $key := genPrivateKey "ed25519" -}}
{{- $cert := genSelfSignedCertWithKey .cn nil nil 36500 $key -}}
{{- $_ := set $cache $id (dict "key" $key "crt" $cert.Cert) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- get $cache $id | toJson -}}
{{- end -}}

{{/*
The identities of one component, in order, as JSON [{"name", "peer", "key", "crt"}]:
"name" is the key's file stem in the Secret, "peer" the certificate's file name in the peers
ConfigMap. Argument: dict "root" $ "component" "seed"|"authority"|"bridge"|"explorer".
*/}}
{{- define "meshara.identities" -}}
{{- $root := .root -}}
{{- $c := .component -}}
{{- $values := get $root.Values $c -}}
{{- $fullname := include "meshara.fullname" $root -}}
{{- $out := list -}}
{{- if or (eq $c "seed") (eq $c "bridge") -}}
{{- $secret := printf "%s-%s-identities" $fullname $c -}}
{{- range $i := until (int $values.replicaCount) -}}
{{- $pod := printf "%s-%s-%d" $fullname $c $i -}}
{{- $given := get (default (dict) $values.identity.certificates) $pod | default "" -}}
{{- $id := include "meshara.identity" (dict "root" $root "secret" $secret "name" $pod "cn" $pod "existingSecret" $values.identity.existingSecret "certificate" $given) | fromJson -}}
{{- $out = append $out (dict "name" $pod "peer" (printf "%s-%d.crt" $c $i) "key" $id.key "crt" $id.crt) -}}
{{- end -}}
{{- else -}}
{{- $secret := printf "%s-%s-identity" $fullname $c -}}
{{- $id := include "meshara.identity" (dict "root" $root "secret" $secret "name" "identity" "cn" (printf "%s-%s" $fullname $c) "existingSecret" $values.identity.existingSecret "certificate" $values.identity.certificate) | fromJson -}}
{{- $out = append $out (dict "name" "identity" "peer" (printf "%s.crt" $c) "key" $id.key "crt" $id.crt) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The name of the Secret a component's identity is mounted from. Argument: dict "root" $ "component" c. */}}
{{- define "meshara.identitySecretName" -}}
{{- $values := get .root.Values .component -}}
{{- if $values.identity.existingSecret -}}
{{- $values.identity.existingSecret -}}
{{- else if or (eq .component "seed") (eq .component "bridge") -}}
{{- printf "%s-%s-identities" (include "meshara.fullname" .root) .component -}}
{{- else -}}
{{- printf "%s-%s-identity" (include "meshara.fullname" .root) .component -}}
{{- end -}}
{{- end -}}

{{/*
A random secret value made once and kept: the value in the chart's existing Secret if there is
one, else randAlphaNum. Argument: dict "root" $ "secret" name "key" key "length" 48.
*/}}
{{- define "meshara.randomSecretValue" -}}
{{- $root := .root -}}
{{- if not (hasKey $root.Values "__mesharaCache") -}}
{{- $_ := set $root.Values "__mesharaCache" (dict) -}}
{{- end -}}
{{- $cache := get $root.Values "__mesharaCache" -}}
{{- $id := printf "random/%s/%s" .secret .key -}}
{{- if not (hasKey $cache $id) -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace .secret -}}
{{- $data := default (dict) (get (default (dict) $existing) "data") -}}
{{- if hasKey $data .key -}}
{{- $_ := set $cache $id (get $data .key | b64dec) -}}
{{- else -}}
{{- $_ := set $cache $id (printf "%s%s" (default "" .prefix) (randAlphaNum (int .length))) -}}
{{- end -}}
{{- end -}}
{{- get $cache $id -}}
{{- end -}}

{{/*
TOML. Helm's toToml writes every number from values as a float ("2048.0"), which the binaries'
integer keys refuse, so the configuration files are written by these templates: integral numbers
as integers, other numbers as floats (durations in seconds), strings JSON-quoted (valid TOML
basic strings), scalars of a table before its sub-tables.
*/}}

{{- define "meshara.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "meshara.toml.value" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}
{{- toJson . -}}
{{- else if eq $k "bool" -}}
{{- . -}}
{{- else if or (eq $k "float64") (eq $k "float32") -}}
{{- if eq (floor .) (float64 .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ printf "%v" . }}{{- end -}}
{{- else if has $k (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") -}}
{{- printf "%d" . -}}
{{- else if eq $k "slice" -}}
{{- $items := list -}}
{{- range . -}}
{{- $items = append $items (include "meshara.toml.value" .) -}}
{{- end -}}
[{{ join ", " $items }}]
{{- else -}}
{{- fail (printf "cannot write %v (%s) in a TOML file" . $k) -}}
{{- end -}}
{{- end -}}

{{/* Argument: dict "table" map "prefix" "node" (empty for the root table). */}}
{{- define "meshara.toml.table" -}}
{{- $t := .table -}}
{{- $prefix := .prefix -}}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ include "meshara.toml.key" $k }} = {{ include "meshara.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if kindIs "map" $v }}
{{- $p := include "meshara.toml.key" $k }}
{{- if $prefix }}{{ $p = printf "%s.%s" $prefix $p }}{{ end }}

[{{ $p }}]
{{- include "meshara.toml.table" (dict "table" $v "prefix" $p) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "meshara.toml" -}}
{{- include "meshara.toml.table" (dict "table" . "prefix" "") | trim -}}
{{- end -}}

{{/* i2pd.conf (INI): top-level scalars first, then one [section] per map. */}}
{{- define "meshara.ini.value" -}}
{{- $k := kindOf . -}}
{{- if or (eq $k "float64") (eq $k "float32") -}}
{{- if eq (floor .) (float64 .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ printf "%v" . }}{{- end -}}
{{- else if eq $k "slice" -}}
{{- $items := list -}}
{{- range . }}{{ $items = append $items (include "meshara.ini.value" .) }}{{ end -}}
{{- join "," $items -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{- define "meshara.ini" -}}
{{- $t := . -}}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ $k }} = {{ include "meshara.ini.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if kindIs "map" $v }}

[{{ $k }}]
{{- range $sk := keys $v | sortAlpha }}
{{- $sv := get $v $sk }}
{{- if not (kindIs "invalid" $sv) }}
{{ $sk }} = {{ include "meshara.ini.value" $sv }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod pieces.
*/}}

{{/* Environment every container gets: where the pod is. */}}
{{- define "meshara.podEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end -}}

{{/* Probes on the HTTP port. Argument: dict "values" .Values.seed "port" "http" "startupPath" "/healthz". */}}
{{- define "meshara.probes" -}}
{{- $v := .values -}}
{{- range $probe, $path := dict "livenessProbe" "/healthz" "readinessProbe" "/readyz" "startupProbe" "/healthz" }}
{{- $p := get $v $probe }}
{{- if $p.enabled }}
{{ $probe }}:
  httpGet:
    path: {{ $path }}
    port: http
  initialDelaySeconds: {{ $p.initialDelaySeconds }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
  successThreshold: {{ $p.successThreshold }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "meshara.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Pod-level settings shared by every StatefulSet. Argument: dict "root" $ "values" .Values.seed. */}}
{{- define "meshara.podSpecCommon" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "meshara.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod metadata. Argument: dict "root" $ "component" c "values" v "checksum" text. */}}
{{- define "meshara.podMetadata" -}}
labels:
  {{- include "meshara.labels" (dict "root" .root "component" .component) | nindent 2 }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  checksum/config: {{ .checksum | sha256sum }}
  {{- with .values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/*
Volumes every component mounts: its identity (0440), the peers' certificates, the shipped root
(not the bridge, which follows no releases). Argument: dict "root" $ "component" c.
*/}}
{{- define "meshara.commonVolumes" -}}
- name: identity
  secret:
    secretName: {{ include "meshara.identitySecretName" (dict "root" .root "component" .component) }}
    defaultMode: 288 # 0440: readable by the fsGroup, not by others
- name: peers
  configMap:
    name: {{ include "meshara.fullname" .root }}-peers
    defaultMode: 292 # 0444
{{- if and .root.Values.updates.root.existingConfigMap (ne .component "bridge") }}
- name: update-root
  configMap:
    name: {{ .root.Values.updates.root.existingConfigMap }}
    defaultMode: 292
    items:
      - key: root.pb
        path: root.pb
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}

{{/* The mounts of those volumes. Argument: dict "root" $ "component" c. */}}
{{- define "meshara.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/meshara/config
  readOnly: true
- name: identity
  mountPath: /etc/meshara/identity
  readOnly: true
- name: peers
  mountPath: /etc/meshara/peers
  readOnly: true
{{- if and .root.Values.updates.root.existingConfigMap (ne .component "bridge") }}
- name: update-root
  mountPath: /etc/meshara/update-root
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* A volumeClaimTemplate. Argument: dict "root" $ "component" c "name" "data" "persistence" p. */}}
{{- define "meshara.claimTemplate" -}}
- apiVersion: v1
  kind: PersistentVolumeClaim
  metadata:
    name: {{ .name }}
    labels:
      {{- include "meshara.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
    {{- with .persistence.annotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    accessModes:
      {{- toYaml .persistence.accessModes | nindent 6 }}
    {{- if .persistence.storageClass }}
    {{- if eq "-" .persistence.storageClass }}
    storageClassName: ""
    {{- else }}
    storageClassName: {{ .persistence.storageClass }}
    {{- end }}
    {{- end }}
    resources:
      requests:
        storage: {{ .persistence.size }}
{{- end -}}

{{/* A PodDisruptionBudget. Argument: dict "root" $ "component" c "values" v. */}}
{{- define "meshara.pdb" -}}
{{- if .values.pdb.create }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "meshara.componentName" . }}
  {{- include "meshara.metadata" . | nindent 2 }}
spec:
  {{- if not (kindIs "string" .values.pdb.minAvailable) }}
  minAvailable: {{ .values.pdb.minAvailable }}
  {{- else if .values.pdb.minAvailable }}
  minAvailable: {{ .values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "meshara.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
A ServiceMonitor for the component's HTTP port. Argument: dict "root" $ "component" c. Only one
Service per component has a port named http, so each pod is scraped once.
*/}}
{{- define "meshara.serviceMonitor" -}}
{{- $sm := .root.Values.metrics.serviceMonitor -}}
{{- if $sm.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "meshara.componentName" . }}
  namespace: {{ default .root.Release.Namespace $sm.namespace }}
  labels:
    {{- include "meshara.labels" . | nindent 4 }}
    {{- with $sm.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := merge (dict) (default (dict) $sm.annotations) (default (dict) .root.Values.commonAnnotations) }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  jobLabel: app.kubernetes.io/component
  namespaceSelector:
    matchNames:
      - {{ .root.Release.Namespace }}
  selector:
    matchLabels:
      {{- include "meshara.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      scheme: http
      honorLabels: {{ $sm.honorLabels }}
      {{- with $sm.interval }}
      interval: {{ . }}
      {{- end }}
      {{- with $sm.scrapeTimeout }}
      scrapeTimeout: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
A NetworkPolicy. Argument: dict "root" $ "component" c
  "mesh"  list of node ports (numbers and protocols) open to networkPolicy.mesh.from
  "http"  the HTTP port
  "httpFrom" list of NetworkPolicyPeers allowed to reach HTTP besides the metrics scrapers, or
             the string "all"
*/}}
{{- define "meshara.networkPolicy" -}}
{{- $np := .root.Values.networkPolicy -}}
{{- if $np.enabled }}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "meshara.componentName" . }}
  {{- include "meshara.metadata" . | nindent 2 }}
spec:
  podSelector:
    matchLabels:
      {{- include "meshara.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
    - Egress
  ingress:
    {{- if .mesh }}
    # The mesh: nodes everywhere dial these ports.
    - ports:
        {{- range .mesh }}
        - port: {{ .port }}
          protocol: {{ .protocol }}
        {{- end }}
      {{- with $np.mesh.from }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    {{- if eq (toString .httpFrom) "all" }}
    - ports:
        - port: {{ .http }}
          protocol: TCP
    {{- else }}
    # Health and metrics: the monitoring namespace.
    - ports:
        - port: {{ .http }}
          protocol: TCP
      from:
        - namespaceSelector:
            {{- toYaml $np.metrics.namespaceSelector | nindent 12 }}
          podSelector:
            {{- toYaml $np.metrics.podSelector | nindent 12 }}
    {{- with .httpFrom }}
    - ports:
        - port: {{ $.http }}
          protocol: TCP
      from:
        {{- toYaml . | nindent 8 }}
    {{- end }}
    {{- end }}
  egress:
    {{- if $np.egress.allowAll }}
    - {}
    {{- else }}
    # DNS.
    - ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    # The release's own pods.
    - to:
        - podSelector:
            matchLabels:
              {{- include "meshara.selectorLabels" (dict "root" .root "component" "") | nindent 14 }}
    {{- with $np.egress.extra }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end -}}
