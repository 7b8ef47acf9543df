#!/usr/bin/env bash
# The whole Kubernetes flow on a kind cluster, with the CPU image:
#   kind cluster -> Kubeflow Training Operator v1.9 (standalone) -> kind load the image -> helm install with
#   ci/kind-values.yaml -> the study finishes (tune-worker PyTorchJobs Succeeded) -> final PyTorchJob
#   (k8s/overlays/cpu) Succeeded -> outputs checked -> helm test -> clean uninstall.
# BACKEND=trainjob runs the same flow on Kubeflow Trainer v2 instead: Trainer v2.3.0 with its JobSet
#   (manifests/overlays/manager) -> the chart with tune.backend=trainjob (tune-worker TrainJobs Complete) ->
#   final TrainJob (k8s/overlays/trainjob-cpu) Complete -> the same checks.
#
# Needs docker, kind, kubectl (>= 1.27) and helm (>= 4.1) on PATH, and network access for the operator
# manifests and the postgres image. The development machines of this project have none of these (no
# kind, no registry); CI runs it (.github/workflows/kind-e2e.yml), and so can anyone with kind:
#   docker build --build-arg TORCH_VARIANT=cpu -t sideformer:cpu .   # or let this script build it
#   tests/e2e/kind.sh
# Environment: KIND_CLUSTER (default sideformer-e2e), IMAGE (sideformer:cpu), NAMESPACE (sideformer),
# BACKEND (pytorchjob or trainjob), TRAINING_OPERATOR_REF (v1.9.4) and TRAINER_REF (v2.3.0): the releases
# whose CRDs the tests validate against, KEEP_CLUSTER=1 to keep a cluster this script created,
# STUDY_TIMEOUT, FINAL_TIMEOUT and CLAIM_TIMEOUT in seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${KIND_CLUSTER:-sideformer-e2e}
IMAGE=${IMAGE:-sideformer:cpu}
NAMESPACE=${NAMESPACE:-sideformer}
RELEASE=sideformer-tune # k8s/final-pytorchjob.yaml (and overlays/trainjob) refer to this release's ConfigMap, Secret and claim
STUDY=sideformer        # study.name in ci/kind-values.yaml
FINAL_JOB=sideformer-final
TRAINING_OPERATOR_REF=${TRAINING_OPERATOR_REF:-v1.9.4}
TRAINING_OPERATOR="github.com/kubeflow/trainer.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_REF}"
TRAINER_REF=${TRAINER_REF:-v2.3.0}
# The Trainer v2 controller manager, its CRDs and webhooks, and the JobSet it runs TrainJobs through.
TRAINER="github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_REF}"
BACKEND=${BACKEND:-pytorchjob}
case "$BACKEND" in
pytorchjob) JOB_KIND=PyTorchJob DONE=Succeeded FINAL_OVERLAY=cpu JOB_KINDS=pytorchjobs ;;
trainjob) JOB_KIND=TrainJob DONE=Complete FINAL_OVERLAY=trainjob-cpu JOB_KINDS=trainjobs,clustertrainingruntimes,jobsets ;;
*)
    printf 'FAIL: BACKEND=%s: expected pytorchjob or trainjob\n' "$BACKEND" >&2
    exit 1
    ;;
esac
JOB=$(printf '%s' "$JOB_KIND" | tr '[:upper:]' '[:lower:]')
STUDY_TIMEOUT=${STUDY_TIMEOUT:-2400}
FINAL_TIMEOUT=${FINAL_TIMEOUT:-1200}
CLAIM_TIMEOUT=${CLAIM_TIMEOUT:-180}
KEEP_CLUSTER=${KEEP_CLUSTER:-0}
CHART="$ROOT/helm/sideformer-tune"
VALUES="$CHART/ci/kind-values.yaml"
CREATED_CLUSTER=0

log() { printf '\n== %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    exit 1
}
k() { kubectl --namespace "$NAMESPACE" "$@"; }

diagnostics() {
    log "diagnostics"
    k get "$JOB_KINDS,jobs,pods,pvc,svc" -o wide || true
    k describe "${JOB}s" || true
    k get events --sort-by=.lastTimestamp | tail -n 60 || true
    for pod in $(k get pods -o name 2>/dev/null); do
        echo "--- logs of $pod"
        k logs "$pod" --all-containers --tail=80 || true
    done
    if [ "$BACKEND" = trainjob ]; then
        kubectl --namespace kubeflow-system logs deployment/kubeflow-trainer-controller-manager --tail=80 || true
        kubectl --namespace kubeflow-system logs deployment/jobset-controller-manager --tail=80 || true
    else
        kubectl --namespace kubeflow logs deployment/training-operator --tail=80 || true
    fi
}

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        diagnostics
    fi
    if [ "$CREATED_CLUSTER" = 1 ] && [ "$KEEP_CLUSTER" != 1 ]; then
        kind delete cluster --name "$CLUSTER" || true
    fi
    exit "$rc"
}
trap on_exit EXIT

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || fail "kind.sh needs $tool on PATH"
done
# `helm test --logs` fetches the logs of test pods that `hook-succeeded` has already deleted: before
# Helm 4.1 that fails the run ("unable to get pod logs").
helm_version=$(helm version --template '{{.Version}}')
if ! [[ $helm_version =~ ^v([0-9]+)\.([0-9]+) ]] ||
    ((BASH_REMATCH[1] < 4 || (BASH_REMATCH[1] == 4 && BASH_REMATCH[2] < 1))); then
    fail "kind.sh needs Helm >= 4.1 (found '${helm_version}'): older versions fail 'helm test --logs' on hook-succeeded test pods"
fi

# `kind load docker-image` fails for some images under Docker's containerd image store; an archive works.
load_image() {
    local archive
    kind load docker-image "$IMAGE" --name "$CLUSTER" && return 0
    echo "kind load docker-image failed; loading $IMAGE through docker save and kind load image-archive"
    archive=$(mktemp --suffix=.tar)
    docker save --output "$archive" "$IMAGE"
    kind load image-archive "$archive" --name "$CLUSTER"
    rm -f "$archive"
}

# helm install --wait, but a claim that cannot bind (an access mode its storage class lacks, no default
# class) fails within CLAIM_TIMEOUT with the claim's events instead of after the whole --timeout.
install_chart() {
    local start=$SECONDS pending warnings helm_pid
    helm install "$RELEASE" "$CHART" --namespace "$NAMESPACE" -f "$VALUES" --set "tune.backend=$BACKEND" \
        --wait --timeout 10m &
    helm_pid=$!
    while true; do
        pending=$(k get pvc --selector "app.kubernetes.io/instance=$RELEASE" \
            -o jsonpath='{range .items[?(@.status.phase=="Pending")]}{.metadata.name}{" "}{end}')
        warnings=$(k get events --field-selector type=Warning,involvedObject.kind=PersistentVolumeClaim \
            -o jsonpath='{range .items[*]}{.involvedObject.name}: {.reason}: {.message}{"\n"}{end}')
        if [ -n "$pending" ] && { [ -n "$warnings" ] || [ $((SECONDS - start)) -ge "$CLAIM_TIMEOUT" ]; }; then
            kill "$helm_pid" 2>/dev/null || true
            for claim in $pending; do
                k describe pvc "$claim" || true
            done
            fail "claim(s) still Pending after $((SECONDS - start))s: ${pending}${warnings:+; events: $warnings}"
        fi
        kill -0 "$helm_pid" 2>/dev/null || break
        sleep 5
    done
    wait "$helm_pid" || fail "helm install $RELEASE failed"
}

# Wait for a PyTorchJob (condition Succeeded) or TrainJob (Complete) with `kubectl wait`, failing fast
# when it turns Failed.
wait_job() {
    local job=$1 timeout=$2 start=$SECONDS failed
    until k wait --for=condition="$DONE" "$JOB/$job" --timeout=20s >/dev/null 2>&1; do
        failed=$(k get "$JOB" "$job" -o jsonpath='{.status.conditions[?(@.type=="Failed")].status}')
        if [ "$failed" = "True" ]; then
            k get "$JOB" "$job" -o jsonpath='{.status.conditions[?(@.type=="Failed")].message}{"\n"}' >&2
            fail "$JOB_KIND $job failed"
        fi
        if [ $((SECONDS - start)) -ge "$timeout" ]; then
            fail "$JOB_KIND $job did not succeed within ${timeout}s"
        fi
        echo "  $job: $(k get "$JOB" "$job" \
            -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type}{" "}{end}') ($((SECONDS - start))s)"
    done
    echo "  $job: $DONE"
}

# The Trainer's webhooks answer a little after its Deployment is ready: wait until a server-side dry run
# of a TrainingRuntime goes through them (helm install creates the chart's ClusterTrainingRuntime first).
wait_trainer_webhook() {
    for _ in $(seq 1 60); do
        k apply --dry-run=server -f - >/dev/null <<EOF && return 0
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainingRuntime
metadata:
  name: sideformer-webhook-probe
spec:
  mlPolicy: {numNodes: 1, torch: {}}
  template:
    spec:
      replicatedJobs:
        - name: node
          template:
            metadata: {labels: {trainer.kubeflow.org/trainjob-ancestor-step: trainer}}
            spec: {template: {spec: {containers: [{name: node, image: $IMAGE}]}}}
EOF
        sleep 5
    done
    fail "the Kubeflow Trainer webhook did not answer within 300s"
}

# Run a shell script in a throwaway pod of the CPU image that mounts the output claim and gets the
# study's storage URL; print its output and fail if the script fails.
inspect_outputs() {
    local name=$1 script=$2 phase
    k delete pod "$name" --ignore-not-found --wait >/dev/null
    k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $name
  labels:
    app.kubernetes.io/part-of: sideformer-e2e
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000}
  containers:
    - name: inspect
      image: $IMAGE
      imagePullPolicy: IfNotPresent
      command: [sh, -ec]
      args:
        - |
$(printf '%s\n' "$script" | sed -e '/^[[:space:]]*$/d' -e 's/^/          /')
      env:
        - name: OPTUNA_STORAGE
          valueFrom: {secretKeyRef: {name: $RELEASE-db, key: storage-url}}
        - {name: HOME, value: /tmp}
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: [ALL]}
      volumeMounts:
        - {name: output, mountPath: /output, readOnly: true}
        - {name: config, mountPath: /etc/sideformer, readOnly: true}
        - {name: tmp, mountPath: /tmp}
  volumes:
    - name: output
      persistentVolumeClaim: {claimName: $RELEASE-output}
    - name: config
      configMap: {name: $RELEASE-config}
    - name: tmp
      emptyDir: {}
EOF
    for _ in $(seq 1 90); do
        phase=$(k get pod "$name" -o jsonpath='{.status.phase}')
        case "$phase" in Succeeded | Failed) break ;; esac
        sleep 2
    done
    k logs "$name"
    [ "$phase" = "Succeeded" ] || fail "output check $name: pod ended $phase"
    k delete pod "$name" --wait >/dev/null
}

log "image $IMAGE"
if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    docker build --build-arg TORCH_VARIANT=cpu -t "$IMAGE" "$ROOT"
fi

log "kind cluster $CLUSTER"
if ! kind get clusters | grep -qx "$CLUSTER"; then
    kind create cluster --name "$CLUSTER" --wait 180s
    CREATED_CLUSTER=1
fi
kubectl config use-context "kind-$CLUSTER"
load_image

if [ "$BACKEND" = trainjob ]; then
    log "Kubeflow Trainer $TRAINER_REF with JobSet"
    kubectl apply --server-side -k "$TRAINER"
    for crd in trainjobs.trainer.kubeflow.org trainingruntimes.trainer.kubeflow.org jobsets.jobset.x-k8s.io; do
        kubectl wait --for=condition=Established "crd/$crd" --timeout=120s
    done
    kubectl --namespace kubeflow-system rollout status deployment/jobset-controller-manager --timeout=300s
    kubectl --namespace kubeflow-system rollout status deployment/kubeflow-trainer-controller-manager --timeout=300s
else
    log "Kubeflow Training Operator $TRAINING_OPERATOR_REF (standalone)"
    kubectl apply --server-side -k "$TRAINING_OPERATOR"
    kubectl wait --for=condition=Established crd/pytorchjobs.kubeflow.org --timeout=120s
    kubectl --namespace kubeflow rollout status deployment/training-operator --timeout=300s
fi

log "helm install $RELEASE (ci/kind-values.yaml, tune.backend=$BACKEND)"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
[ "$BACKEND" != trainjob ] || wait_trainer_webhook
install_chart
k wait --for=condition=Complete job --selector app.kubernetes.io/component=study-creator --timeout=300s

log "the study runs until its budget is spent"
for job in $(k get "${JOB}s" --selector app.kubernetes.io/component=tune-worker -o name); do
    wait_job "${job#*/}" "$STUDY_TIMEOUT"
done
inspect_outputs check-search "
test -s /output/$STUDY/best_hyperparams.json
cat /output/$STUDY/best_hyperparams.json
ls /output/$STUDY/trials
sideformer study best --study $STUDY --config /etc/sideformer/config.yaml > /tmp/best.json
cat /tmp/best.json
grep -q '\"finished_trials\": 4' /tmp/best.json
"

log "final training: kubectl apply -k k8s/overlays/$FINAL_OVERLAY"
k apply -k "$ROOT/k8s/overlays/$FINAL_OVERLAY"
wait_job "$FINAL_JOB" "$FINAL_TIMEOUT"
inspect_outputs check-final "
cd /output/$STUDY/final
test -s final_ckpts/best_model.pth
test -s final_ckpts/model/config.json
test -s metrics.json
test -s best_hyperparams.json
test ! -e temp_ckpts
ls -R final_ckpts
"

log "helm test $RELEASE"
helm test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout 10m

log "clean uninstall"
k delete -k "$ROOT/k8s/overlays/$FINAL_OVERLAY" --wait
helm uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
# Helm keeps what is marked helm.sh/resource-policy: keep: the generated database Secret (the output claim
# is not kept with ci/kind-values.yaml). Everything else, the TrainJobs' ClusterTrainingRuntime included,
# is an ordinary release object that the uninstall deleted.
k delete secret "$RELEASE-db" --ignore-not-found
# Pods of the deleted PyTorchJobs (TrainJobs) and Jobs go by garbage collection, just after their owners.
k wait --for=delete pod --selector "app.kubernetes.io/instance=$RELEASE" --timeout=180s 2>/dev/null || true
left=$(k get "all,pvc,secrets,configmaps,$JOB_KINDS,jobs" \
    --selector "app.kubernetes.io/instance=$RELEASE" -o name)
[ -z "$left" ] || fail "left behind after uninstall: $left"
kubectl delete namespace "$NAMESPACE" --wait --timeout=300s
log "kind e2e passed"
