"""tests/e2e/kind.sh without a cluster: docker, kind, kubectl and helm are replaced by recording stubs, so
the script's order of steps (Training Operator v1.9 and Trainer v2 modes), its fail-fast on a Failed
PyTorchJob or TrainJob, its cleanup and the Pods it applies are checked here. The real run needs kind
(CI: .github/workflows/kind-e2e.yml)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.e2e import manifests as m
from tests.e2e.validation import pod_security_errors, validate_object

SCRIPT = m.REPO / "tests" / "e2e" / "kind.sh"

STUB = r"""#!/usr/bin/env bash
# Recording stand-in for {tool}: logs its arguments, answers what kind.sh asks.
printf '%s\n' "{tool} $*" >> "$STUB_LOG"
args=" $* "
case "{tool}" in
kubectl)
    case "$args" in
    *" apply -f - "*) cat > "$STUB_DIR/applied-$(date +%s%N).yaml" ;;
    *" apply --dry-run=server -f - "*) cat > "$STUB_DIR/dry-run-$(date +%s%N).yaml" ;;
    *" create namespace "*) printf 'apiVersion: v1\nkind: Namespace\nmetadata:\n  name: sideformer\n' ;;
    *" get pytorchjobs "*" -o name "*)
        printf 'pytorchjob.kubeflow.org/%s\n' sideformer-tune-tune-0 sideformer-tune-tune-1 ;;
    *" get trainjobs "*" -o name "*)
        printf 'trainjob.trainer.kubeflow.org/%s\n' sideformer-tune-tune-0 sideformer-tune-tune-1 ;;
    *" wait --for=condition="*"job/$FAIL_JOB "*) exit 1 ;;
    *" get "*"job $FAIL_JOB "*'type=="Failed")].status'*) printf 'True' ;;
    *" get "*"job $FAIL_JOB "*'type=="Failed")].message'*) printf 'pods failed\n' ;;
    *" get pod "*"{{.status.phase}}"*) printf 'Succeeded' ;;
    *" get pvc "*) [ -z "${PENDING_CLAIM:-}" ] || printf '%s ' "$PENDING_CLAIM" ;;
    *" get events "*"PersistentVolumeClaim"*)
        [ -z "${PENDING_CLAIM:-}" ] ||
            printf '%s: ProvisioningFailed: access mode ReadWriteMany is not supported\n' "$PENDING_CLAIM" ;;
    *" -o name "*) ;;
    esac ;;
kind)
    case "$args" in
    *" load docker-image "*) [ -z "${KIND_LOAD_FAILS:-}" ] || exit 1 ;;
    esac ;;
helm)
    case "$args" in *" version "*) printf '%s' "${HELM_VERSION:-v4.2.3}" ;; esac ;;
esac
exit 0
"""


def run_script(
    tmp_path: Path, fail_job: str = "none", **env_extra: str
) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind", "kubectl", "helm"):
        stub = bin_dir / tool
        stub.write_text(STUB.replace("{tool}", tool).replace("{{.status.phase}}", "{.status.phase}"))
        stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "STUB_LOG": str(log),
        "STUB_DIR": str(tmp_path),
        "FAIL_JOB": fail_job,
        **env_extra,
    }
    run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return run, calls, tmp_path


def index_of(calls: list[str], *parts: str) -> int:
    for i, call in enumerate(calls):
        if all(p in call for p in parts):
            return i
    raise AssertionError(f"no call with {parts} in:\n" + "\n".join(calls))


def test_kind_script_runs_the_flow_in_order(tmp_path):
    run, calls, folder = run_script(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [
        index_of(calls, "kind create cluster --name sideformer-e2e"),
        index_of(calls, "kind load docker-image sideformer:cpu"),
        index_of(calls, "kubectl apply --server-side -k github.com/kubeflow/trainer.git/", "ref=v1.9.4"),
        index_of(calls, "kubectl --namespace kubeflow rollout status deployment/training-operator"),
        index_of(
            calls, "helm install sideformer-tune", "ci/kind-values.yaml", "tune.backend=pytorchjob", "--wait"
        ),
        index_of(calls, "kubectl", "wait --for=condition=Complete job", "study-creator"),
        index_of(calls, "kubectl", "wait --for=condition=Succeeded pytorchjob/sideformer-tune-tune-0"),
        index_of(calls, "kubectl", "wait --for=condition=Succeeded pytorchjob/sideformer-tune-tune-1"),
        index_of(calls, "kubectl", "apply -k", "k8s/overlays/cpu"),
        index_of(calls, "kubectl", "wait --for=condition=Succeeded pytorchjob/sideformer-final"),
        index_of(calls, "helm test sideformer-tune"),
        index_of(calls, "kubectl", "delete -k", "k8s/overlays/cpu"),
        index_of(calls, "helm uninstall sideformer-tune", "--wait"),
        index_of(calls, "kubectl", "delete secret sideformer-tune-db"),
        index_of(calls, "kind delete cluster --name sideformer-e2e"),
    ]
    assert steps == sorted(steps), calls
    assert "kind e2e passed" in run.stdout
    assert not any("overlays/manager" in c or "trainjob" in c for c in calls)  # no Trainer v2 here
    # The output checks run as Pods of the CPU image: valid, non-root, reading the chart's objects.
    applied = [yaml.safe_load(p.read_text()) for p in sorted(folder.glob("applied-*.yaml"))]
    assert applied[0]["kind"] == "Namespace"
    pods = [obj for obj in applied if obj["kind"] == "Pod"]
    assert [p["metadata"]["name"] for p in pods] == ["check-search", "check-final"]
    for pod in pods:
        validate_object(pod)
        assert not pod_security_errors(pod)
        spec = m.run_spec(pod, container_name="inspect")
        assert spec.secret_env["OPTUNA_STORAGE"] == m.SecretRef("sideformer-tune-db", "storage-url", False)
        claim = spec.volume_mounts["/output"].source["persistentVolumeClaim"]["claimName"]
        assert m.one(m.render_chart(m.KIND_VALUES), "PersistentVolumeClaim", claim)
        script = m.container(pod["spec"], "inspect")["args"][0]
        assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0
    assert "/output/sideformer/best_hyperparams.json" in m.container(pods[0]["spec"], "inspect")["args"][0]
    assert "final_ckpts/best_model.pth" in m.container(pods[1]["spec"], "inspect")["args"][0]


@pytest.mark.parametrize(("backend", "kind"), [("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")])
@pytest.mark.parametrize("job", ["sideformer-tune-tune-1", "sideformer-final"])
def test_kind_script_fails_fast_on_a_failed_job(tmp_path, job, backend, kind):
    run, calls, _ = run_script(tmp_path, fail_job=job, BACKEND=backend)
    assert run.returncode == 1
    assert f"FAIL: {kind} {job} failed" in run.stderr
    assert not any("helm test" in c for c in calls)
    index_of(calls, f"describe {backend}s")  # diagnostics on the way out
    index_of(calls, "kind delete cluster --name sideformer-e2e")


def test_kind_script_trainer_v2_mode_runs_the_same_flow_with_trainjobs(tmp_path):
    """BACKEND=trainjob: Trainer v2.3.0 and its JobSet instead of the Training Operator, the chart with
    tune.backend=trainjob, TrainJobs waited for Complete, the final TrainJob from k8s/overlays/trainjob-cpu,
    and nothing of the release left after `helm uninstall` (its ClusterTrainingRuntime is an ordinary
    release object) but the kept database Secret, which the script deletes."""
    run, calls, folder = run_script(tmp_path, BACKEND="trainjob")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [
        index_of(calls, "kind create cluster --name sideformer-e2e"),
        index_of(calls, "kind load docker-image sideformer:cpu"),
        index_of(
            calls,
            "kubectl apply --server-side -k github.com/kubeflow/trainer.git/",
            "manifests/overlays/manager?ref=v2.3.0",
        ),
        index_of(calls, "kubectl wait --for=condition=Established crd/trainjobs.trainer.kubeflow.org"),
        index_of(calls, "kubectl wait --for=condition=Established crd/jobsets.jobset.x-k8s.io"),
        index_of(
            calls, "kubectl --namespace kubeflow-system rollout status deployment/jobset-controller-manager"
        ),
        index_of(calls, "rollout status deployment/kubeflow-trainer-controller-manager"),
        index_of(calls, "kubectl", "apply --dry-run=server -f -"),
        index_of(
            calls, "helm install sideformer-tune", "ci/kind-values.yaml", "tune.backend=trainjob", "--wait"
        ),
        index_of(calls, "kubectl", "wait --for=condition=Complete job", "study-creator"),
        index_of(calls, "kubectl", "get trainjobs --selector app.kubernetes.io/component=tune-worker"),
        index_of(calls, "kubectl", "wait --for=condition=Complete trainjob/sideformer-tune-tune-0"),
        index_of(calls, "kubectl", "wait --for=condition=Complete trainjob/sideformer-tune-tune-1"),
        index_of(calls, "kubectl", "apply -k", "k8s/overlays/trainjob-cpu"),
        index_of(calls, "kubectl", "wait --for=condition=Complete trainjob/sideformer-final"),
        index_of(calls, "helm test sideformer-tune"),
        index_of(calls, "kubectl", "delete -k", "k8s/overlays/trainjob-cpu"),
        index_of(calls, "helm uninstall sideformer-tune", "--wait"),
        index_of(calls, "kubectl", "delete secret sideformer-tune-db"),
        index_of(
            calls, "kubectl", "get all,pvc,secrets,configmaps,trainjobs,clustertrainingruntimes,jobsets,jobs"
        ),
        index_of(calls, "kind delete cluster --name sideformer-e2e"),
    ]
    assert steps == sorted(steps), calls
    assert not any("training-operator" in c or "pytorchjob" in c for c in calls)
    assert "kind e2e passed" in run.stdout
    assert not any("delete trainingruntime" in c or "delete clustertrainingruntime" in c for c in calls)
    # The chart's runtime, which the leftover check lists by kind, is an ordinary release object.
    chart = m.render_chart(m.KIND_VALUES, set_values={"tune.backend": "trainjob"})
    assert not m.is_hook(m.one(chart, "ClusterTrainingRuntime"))
    # The webhook probe is a TrainingRuntime the v2.3.0 schema and the torch plugin accept.
    (probe,) = [yaml.safe_load(p.read_text()) for p in folder.glob("dry-run-*.yaml")]
    validate_object(probe)
    assert probe["kind"] == "TrainingRuntime" and "torch" in probe["spec"]["mlPolicy"]


def test_kind_script_rejects_an_unknown_backend(tmp_path):
    run, calls, _ = run_script(tmp_path, BACKEND="mpijob")
    assert run.returncode == 1
    assert "BACKEND=mpijob: expected pytorchjob or trainjob" in run.stderr
    assert calls == []


@pytest.mark.parametrize("version", ["v3.18.4", "v4.0.5", "garbage"])
def test_kind_script_requires_helm_4_1_for_helm_test_logs(tmp_path, version):
    run, calls, _ = run_script(tmp_path, HELM_VERSION=version)
    assert run.returncode == 1
    assert f"kind.sh needs Helm >= 4.1 (found '{version}')" in run.stderr
    assert not any(c.startswith("kind create") for c in calls)


def test_kind_script_loads_the_image_through_an_archive_when_kind_load_fails(tmp_path):
    run, calls, _ = run_script(tmp_path, KIND_LOAD_FAILS="1")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = [
        index_of(calls, "kind load docker-image sideformer:cpu"),
        index_of(calls, "docker save --output", "sideformer:cpu"),
        index_of(calls, "kind load image-archive", "--name sideformer-e2e"),
        index_of(calls, "helm install sideformer-tune"),
    ]
    assert steps == sorted(steps), calls


def test_kind_script_fails_fast_on_a_pending_claim_with_its_events(tmp_path):
    run, calls, _ = run_script(tmp_path, PENDING_CLAIM="sideformer-tune-output")
    assert run.returncode == 1
    assert "claim(s) still Pending" in run.stderr and "sideformer-tune-output" in run.stderr
    assert "ProvisioningFailed: access mode ReadWriteMany is not supported" in run.stderr
    index_of(calls, "describe pvc sideformer-tune-output")
    assert not any("wait --for=condition=Complete job" in c for c in calls)


def test_ci_runs_the_kind_flow_for_both_kubeflow_generations():
    workflow = yaml.safe_load((m.REPO / ".github" / "workflows" / "kind-e2e.yml").read_text())
    (job,) = workflow["jobs"].values()
    assert job["strategy"]["matrix"]["backend"] == ["pytorchjob", "trainjob"]
    assert job["strategy"]["fail-fast"] is False  # one generation failing still shows the other's result
    (step,) = [s for s in job["steps"] if "kind.sh" in s.get("run", "")]
    assert step["env"]["BACKEND"] == "${{ matrix.backend }}"
