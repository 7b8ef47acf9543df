{{/*
Names, labels and the pieces every SideFormer pod shares. Fixed paths inside the pods:
  /data                        dataset (read-only)
  /output/<study>              search outputs (trials/, best_hyperparams.json, wandb/)
  /etc/sideformer/config.yaml  the config ConfigMap
  /hf-cache                    HF_HOME, when hfCache.enabled
  /tmp, /dev/shm               emptyDirs (the root filesystem is read-only)
*/}}

{{- define "sideformer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sideformer.fullname" -}}
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

{{- define "sideformer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sideformer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sideformer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sideformer.labels" -}}
helm.sh/chart: {{ include "sideformer.chart" . }}
{{ include "sideformer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sideformer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sideformer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sideformer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: [global.imageRegistry/]repository, then @digest when set, else :tag; argument:
dict "root" $ "repository" .. "tag" .. "digest" .. */}}
{{- define "sideformer.imageRef" -}}
{{- $ref := .repository -}}
{{- with .root.Values.global.imageRegistry }}
{{- $ref = printf "%s/%s" (trimSuffix "/" .) $ref -}}
{{- end }}
{{- if .digest }}{{ printf "%s@%s" $ref .digest }}{{ else }}{{ printf "%s:%s" $ref (toString .tag) }}{{ end }}
{{- end }}

{{/* The training image (CUDA build by default). */}}
{{- define "sideformer.image" -}}
{{- include "sideformer.imageRef" (dict "root" . "repository" .Values.image.repository "tag" .Values.image.tag "digest" .Values.image.digest) }}
{{- end }}

{{/* The CPU build of the SideFormer image, for pods that need no GPU (study creator, helm test). */}}
{{- define "sideformer.cpuImage" -}}
{{- include "sideformer.imageRef" (dict "root" . "repository" .Values.image.repository "tag" .Values.image.cpuTag "digest" .Values.image.cpuDigest) }}
{{- end }}

{{/* The dashboard's image: its own repository/tag when set, else the CPU build. */}}
{{- define "sideformer.dashboardImage" -}}
{{- $d := .Values.dashboard.image -}}
{{- if or $d.repository $d.tag }}
{{- include "sideformer.imageRef" (dict "root" . "repository" (default .Values.image.repository $d.repository) "tag" (default .Values.image.cpuTag $d.tag) "digest" "") }}
{{- else }}
{{- include "sideformer.cpuImage" . }}
{{- end }}
{{- end }}

{{- define "sideformer.postgresql.image" -}}
{{- include "sideformer.imageRef" (dict "root" . "repository" .Values.postgresql.image.repository "tag" .Values.postgresql.image.tag "digest" .Values.postgresql.image.digest) }}
{{- end }}

{{/* A short content hash of a value (its YAML), for names that must change when an immutable spec does. */}}
{{- define "sideformer.hash" -}}
{{- toYaml . | sha256sum | trunc 8 }}
{{- end }}


{{/*
study.warmStart, checked: the name of a previous study in the release's database, or "" (none). A URL or
URL#STUDY would put a database password into the values, and a .json path is read from no volume the
creator mounts: both fail here. The messages never print the value (it may hold a password), and the
schema sets no pattern on it for the same reason (its error would print it).
*/}}
{{- define "sideformer.warmStart" -}}
{{- with .Values.study.warmStart }}
{{- if or (contains "://" .) (contains "#" .) }}
{{- fail "study.warmStart takes the name of a previous study in this release's database, not a URL or URL#STUDY: a storage URL holds the database password, and the chart takes secrets only from Secrets. To start from a study in another database, copy it into this one first (optuna.copy_study) and give the copy's name" }}
{{- end }}
{{- if or (not (regexMatch "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$" .)) (hasSuffix ".json" .) }}
{{- fail "study.warmStart takes the name of a previous study in this release's database: letters, digits, '-', '_' and '.', starting with a letter or digit (a name ending in .json would be read as a best_hyperparams.json). To start from a best_hyperparams.json, write its params into `config` as the config's own values: the study's first trial runs them (search.start_from_config)" }}
{{- end }}
{{- if eq . $.Values.study.name }}
{{- fail "study.warmStart names study.name itself: a warm start seeds a new study from a previous one; give the previous study's name, or \"\" for none" }}
{{- end }}
{{- . }}
{{- end }}
{{- end }}

{{- define "sideformer.studyOutput" -}}
{{- printf "/output/%s" .Values.study.name }}
{{- end }}

{{/* The Secret holding the storage URLs, and its keys. */}}
{{- define "sideformer.db.secretName" -}}
{{- if .Values.postgresql.enabled }}
{{- default (printf "%s-db" (include "sideformer.fullname" .)) .Values.postgresql.auth.existingSecret }}
{{- else }}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled=false" .Values.externalDatabase.existingSecret }}
{{- end }}
{{- end }}

{{- define "sideformer.db.storageUrlKey" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.auth.secretKeys.storageUrlKey }}{{ else }}{{ .Values.externalDatabase.storageUrlKey }}{{ end }}
{{- end }}

{{- define "sideformer.db.dashboardStorageUrlKey" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.auth.secretKeys.dashboardStorageUrlKey }}{{ else }}{{ .Values.externalDatabase.dashboardStorageUrlKey }}{{ end }}
{{- end }}

{{- define "sideformer.db.host" -}}
{{- if .Values.postgresql.enabled }}{{ include "sideformer.fullname" . }}-postgresql{{ else }}{{ required "externalDatabase.host is required when postgresql.enabled=false" .Values.externalDatabase.host }}{{ end }}
{{- end }}

{{- define "sideformer.db.port" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.port }}{{ else }}{{ .Values.externalDatabase.port }}{{ end }}
{{- end }}

{{/* env entry OPTUNA_STORAGE from the database Secret; argument: dict "root" $ "key" <secret key>. */}}
{{- define "sideformer.env.storage" -}}
- name: OPTUNA_STORAGE
  valueFrom:
    secretKeyRef:
      name: {{ include "sideformer.db.secretName" .root }}
      key: {{ .key }}
{{- end }}

{{/*
Init container: wait until PostgreSQL accepts connections (pg_isready from the postgres image); argument:
dict "root" $ "storageKey" <secret key>|"" . With a storage key, also wait until the study tables exist.
PGUSER: libpq takes the default user name from the account of the current uid, and the postgres image
has none for the pods' uid 1000: without a user name pg_isready answers "no attempt" (exit 3) forever.
*/}}
{{- define "sideformer.waitForDatabase" -}}
{{- $root := .root -}}
- name: wait-for-database
  image: {{ include "sideformer.postgresql.image" $root }}
  imagePullPolicy: {{ $root.Values.postgresql.image.pullPolicy }}
  command: [sh, -c]
  args:
    - {{ $root.Files.Get "files/wait-for-db.sh" | quote }}
  env:
    - name: DB_HOST
      value: {{ include "sideformer.db.host" $root | quote }}
    - name: DB_PORT
      value: {{ include "sideformer.db.port" $root | quote }}
    - name: DB_WAIT_SECONDS
      value: {{ $root.Values.waitForDatabase.timeoutSeconds | quote }}
    - name: PGUSER
      value: {{ ternary $root.Values.postgresql.auth.username "postgres" $root.Values.postgresql.enabled | quote }}
    {{- with .storageKey }}
    {{- include "sideformer.env.storage" (dict "root" $root "key" .) | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml $root.Values.waitForDatabase.resources | nindent 4 }}
{{- end }}

{{/* The environment of every SideFormer container: storage URL, W&B, HF cache, writable HOME. */}}
{{- define "sideformer.trainerEnv" -}}
{{ include "sideformer.env.storage" (dict "root" . "key" (include "sideformer.db.storageUrlKey" .)) }}
- name: HOME
  value: /tmp
- name: WANDB_DIR
  value: {{ include "sideformer.studyOutput" . }}
# The pod's name: unique among running workers and kept across container restarts, so a restarted
# worker knows the trial it left running as its own and queues it again at once.
- name: SIDEFORMER_WORKER_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.wandb.existingSecret }}
- name: WANDB_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.wandb.secretKey }}
{{- end }}
{{- if .Values.hfCache.enabled }}
- name: HF_HOME
  value: /hf-cache
{{- if .Values.hfCache.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
{{- end }}
{{- end }}
{{- with .Values.tune.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A volume source for data/output/hfCache settings; argument: dict "cfg" <values> "claim" <created claim name>. */}}
{{- define "sideformer.volumeSource" -}}
{{- $cfg := .cfg -}}
{{- if eq $cfg.type "existingClaim" }}
persistentVolumeClaim:
  claimName: {{ $cfg.existingClaim }}
{{- else if eq $cfg.type "pvc" }}
persistentVolumeClaim:
  claimName: {{ .claim }}
{{- else if eq $cfg.type "nfs" }}
nfs:
  server: {{ $cfg.nfs.server }}
  path: {{ $cfg.nfs.path }}
{{- else if eq $cfg.type "hostPath" }}
hostPath:
  path: {{ $cfg.hostPath.path }}
  type: Directory
{{- else if eq $cfg.type "synthetic" }}
emptyDir: {}
{{- end }}
{{- end }}

{{/* Init container that writes the synthetic dataset (data.type=synthetic). */}}
{{- define "sideformer.synthData" -}}
{{- $s := .Values.data.synthetic -}}
- name: synth-data
  image: {{ include "sideformer.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["synth", "--out", "/data", "--train", "{{ $s.train }}", "--valid", "{{ $s.valid }}", "--test", "{{ $s.test }}", "--size", "{{ $s.size }}", "--seed", "{{ $s.seed }}"]
  env:
    - name: HOME
      value: /tmp
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.studyCreator.resources | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: /data
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/*
Pod template of one tune-worker replica; argument: dict "root" $ "replica" "Master"|"Worker" "args" <list>
"container" <name> (default "pytorch": the Training Operator's; Trainer v2's torch plugin wants "node").
The Master mounts the output volume; Workers (ranks > 0, which never write outputs) get an emptyDir there.
A TrainJob's nodes share one template, so they all pass "Master".
*/}}
{{- define "sideformer.tunePodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $fullname := include "sideformer.fullname" $root -}}
metadata:
  labels:
    {{- include "sideformer.labels" $root | nindent 4 }}
    app.kubernetes.io/component: tune-worker
    {{- with $v.tune.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ $v.config | sha256sum }}
    {{- with $v.tune.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "sideformer.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tune.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  initContainers:
    {{- include "sideformer.waitForDatabase" (dict "root" $root "storageKey" "") | nindent 4 }}
    {{- if eq $v.data.type "synthetic" }}
    {{- include "sideformer.synthData" $root | nindent 4 }}
    {{- end }}
  containers:
    - name: {{ .container | default "pytorch" }}
      image: {{ include "sideformer.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        {{- include "sideformer.trainerEnv" $root | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      resources:
        {{- include "sideformer.tuneResources" $root | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
          readOnly: true
          {{- with $v.data.subPath }}
          subPath: {{ . }}
          {{- end }}
        - name: output
          mountPath: /output
        - name: config
          mountPath: /etc/sideformer
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
        {{- if $v.hfCache.enabled }}
        - name: hf-cache
          mountPath: /hf-cache
        {{- end }}
  volumes:
    - name: data
      {{- include "sideformer.volumeSource" (dict "cfg" $v.data "claim" (printf "%s-data" $fullname)) | nindent 6 }}
    - name: output
      {{- if eq .replica "Master" }}
      {{- include "sideformer.volumeSource" (dict "cfg" $v.output "claim" (printf "%s-output" $fullname)) | nindent 6 }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    - name: config
      configMap:
        name: {{ $fullname }}-config
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.tune.shmSize }}
    {{- if $v.hfCache.enabled }}
    - name: hf-cache
      {{- include "sideformer.volumeSource" (dict "cfg" $v.hfCache "claim" (printf "%s-hf-cache" $fullname)) | nindent 6 }}
    {{- end }}
  {{- with $v.tune.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tune.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tune.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
The arguments of `sideformer search` in every tune worker, as a YAML list (read with fromYamlArray). A worker
may find no study (it started before the study creator's Job) and create it: --warm-start goes to every
worker too, so whichever process creates the study seeds it; the others join it as it is.
*/}}
{{- define "sideformer.tuneArgs" -}}
{{- $args := list "search" "--data" "/data" "--output" (include "sideformer.studyOutput" .) "--config" "/etc/sideformer/config.yaml" "--study" .Values.study.name -}}
{{- with include "sideformer.warmStart" . }}
{{- $args = concat $args (list "--warm-start" .) -}}
{{- end }}
{{- if not (kindIs "invalid" .Values.tune.nTrials) }}
{{- $args = concat $args (list "--n-trials" (toString .Values.tune.nTrials)) -}}
{{- end }}
{{- with .Values.tune.trialsPerGpu }}{{ if gt (int .) 1 }}
{{- if or (ne (int $.Values.tune.gpusPerNode) 1) (ne (int $.Values.tune.nodesPerTrial) 1) }}
{{- fail "tune.trialsPerGpu > 1 shares one GPU among one-process trials: set tune.gpusPerNode=1 and tune.nodesPerTrial=1" }}
{{- end }}
{{- $args = concat $args (list "--trials-per-gpu" (toString .)) -}}
{{- end }}{{ end }}
{{- toYaml (concat $args .Values.tune.extraArgs) }}
{{- end }}

{{/* Processes per pod: one per GPU, or one on CPU (torchrun's and Trainer v2's "auto" would start one per core). */}}
{{- define "sideformer.nprocPerNode" -}}
{{- ternary 1 .Values.tune.gpusPerNode (eq (int .Values.tune.gpusPerNode) 0) }}
{{- end }}

{{/* The resources of a training container: tune.resources plus the GPU limit from gpusPerNode. */}}
{{- define "sideformer.tuneResources" -}}
{{- $resources := deepCopy .Values.tune.resources }}
{{- if gt (int .Values.tune.gpusPerNode) 0 }}
{{- $limits := merge (dict "nvidia.com/gpu" (int .Values.tune.gpusPerNode)) (default dict $resources.limits) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/*
The longest pod host name of the tune workers must be a DNS label (at most 63 characters) or the pods never
start: the Training Operator names pods and Services <job>-master-0 / <job>-worker-<i>, JobSet names them
<trainjob>-node-0-<i> (and uses that as the host name; a TrainJob's name ends in an 8-character hash). Fail at render, with the way out.
*/}}
{{- define "sideformer.checkPodNames" -}}
{{- $fullname := include "sideformer.fullname" . -}}
{{- $lastJob := sub (int .Values.tune.workers) 1 -}}
{{- $longest := "" -}}
{{- if eq .Values.tune.backend "trainjob" }}
{{- $longest = printf "%s-tune-%d-12345678-node-0-%d" $fullname $lastJob (sub (int .Values.tune.nodesPerTrial) 1) -}}
{{- else }}
{{- $longest = printf "%s-tune-%d-worker-%d" $fullname $lastJob (max 0 (sub (int .Values.tune.nodesPerTrial) 2)) -}}
{{- end }}
{{- if gt (len $longest) 63 }}
{{- fail (printf "pod name %s would be %d characters, over Kubernetes' limit of 63: shorten the release name or set fullnameOverride" $longest (len $longest)) }}
{{- end }}
{{- end }}
