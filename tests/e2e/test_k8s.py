"""k8s/: the final-training PyTorchJob as plain YAML and through the kustomize overlays (rendered by
`kubectl kustomize`, the kustomize v5 built into kubectl), validated like the chart, and tied to what the
chart creates (ConfigMap, Secret, claims, study and paths)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sideformer.cli import build_parser
from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.validation import pod_security_errors, validate_object

FINAL = "sideformer-final"


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    # Without kubectl (or kustomize) this fails, never skips: like PostgreSQL and Docker, the tool is part
    # of what `make test` needs (KustomizeUnavailable says how to provide it).
    return {name: m.render_kustomize(name) for name in m.OVERLAYS}


@pytest.fixture(scope="module")
def chart_default() -> list[dict]:
    return m.render_chart()


@pytest.fixture(scope="module")
def chart_kind() -> list[dict]:
    return m.render_chart(m.KIND_VALUES)


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_plain_yaml_is_the_kustomize_base():
    assert m.K8S_FINAL.is_symlink()
    assert m.K8S_FINAL.resolve() == (m.K8S_DIR / "base" / "final-pytorchjob.yaml").resolve()


def test_plain_yaml_validates():
    (job,) = m.load_k8s_final()
    assert (job["kind"], job["metadata"]["name"]) == ("PyTorchJob", FINAL)
    validate_object(job)
    assert not pod_security_errors(job)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_overlay_renders_one_valid_job(overlays, overlay):
    (job,) = overlays[overlay]
    assert (job["kind"], job["metadata"]["name"]) == ("PyTorchJob", FINAL)
    validate_object(job)
    assert not pod_security_errors(job)


def test_gpu_overlay_renders_exactly_the_plain_yaml(overlays):
    assert overlays["gpu"] == m.load_k8s_final()


def test_cpu_overlay_is_the_same_job_on_cpu(overlays):
    (gpu,) = m.load_k8s_final()
    (cpu,) = overlays["cpu"]
    assert cpu["spec"]["nprocPerNode"] == "1" and gpu["spec"]["nprocPerNode"] == "4"
    assert cpu["spec"]["runPolicy"] == gpu["spec"]["runPolicy"]
    for replica in ("Master", "Worker"):
        assert cpu["spec"]["pytorchReplicaSpecs"][replica]["replicas"] == 1
        g, c = m.run_spec(gpu, replica), m.run_spec(cpu, replica)
        assert (c.args, c.env, c.secret_env) == (g.args, g.env, g.secret_env)
        assert c.volume_mounts.keys() == g.volume_mounts.keys()
        for path, mount in g.volume_mounts.items():
            if path != "/data":
                assert c.volume_mounts[path].volume == mount.volume
        assert c.volume_mounts["/data"].source == {"emptyDir": {}}
        gpu_pod, cpu_pod = m.pytorchjob_pod(gpu, replica), m.pytorchjob_pod(cpu, replica)
        assert m.container(gpu_pod)["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert "nvidia.com/gpu" not in m.container(cpu_pod)["resources"]["limits"]
        assert m.container(gpu_pod)["image"] == "sideformer:cuda"
        assert {c["image"] for c in [*cpu_pod["initContainers"], *cpu_pod["containers"]]} == {
            "sideformer:cpu"
        }
        assert "tolerations" not in cpu_pod
        assert cpu_pod["securityContext"] == gpu_pod["securityContext"]


def test_cpu_overlay_trains_on_the_data_the_kind_search_used(overlays, chart_kind):
    """The final run must see the dataset the search saw: the same `sideformer synth` command line."""
    (cpu,) = overlays["cpu"]
    tune = m.find(m.component(chart_kind, "tune-worker"), "PyTorchJob")[0]
    chart_synth = m.run_spec(tune, container_name="synth-data")
    for replica in ("Master", "Worker"):
        synth = m.run_spec(cpu, replica, "synth-data")
        assert synth.args == chart_synth.args
        assert synth.volume_mounts["/data"].volume == "data"


@pytest.mark.parametrize("source", ["plain", "gpu", "cpu"])
def test_final_job_uses_the_objects_the_chart_creates(source, overlays, chart_default, chart_kind):
    (job,) = m.load_k8s_final() if source == "plain" else overlays[source]
    chart = chart_kind if source == "cpu" else chart_default
    study = m.load_values(*(m.VALUES_PRESETS["kind"] if source == "cpu" else ())).get("study", {}).get("name")
    study = study or "sideformer"
    tune = m.find(m.component(chart, "tune-worker"), "PyTorchJob")[0]
    tune_spec = m.run_spec(tune)
    for replica in ("Master", "Worker"):
        args, env, secret_env, mounts = m.run_spec(job, replica)
        # The same study, config file and storage Secret as the search.
        assert arg(args, "--study") == arg(tune_spec.args, "--study") == study
        assert arg(args, "--config") == arg(tune_spec.args, "--config")
        assert secret_env["OPTUNA_STORAGE"] == tune_spec.secret_env["OPTUNA_STORAGE"]
        secret = m.one(chart, "Secret", secret_env["OPTUNA_STORAGE"].name)
        assert secret_env["OPTUNA_STORAGE"].key in secret["data"]
        config_dir = str(Path(arg(args, "--config")).parent)
        config_map = mounts[config_dir].source["configMap"]["name"]
        assert "config.yaml" in m.one(chart, "ConfigMap", config_map)["data"]
        # Outputs under the search's folder on the chart's output claim (Master; Workers write nothing).
        assert arg(args, "--output") == f"{arg(tune_spec.args, '--output')}/final"
        assert arg(args, "--output").startswith("/output/") and env["WANDB_DIR"] == arg(args, "--output")
        if replica == "Master":
            claim = mounts["/output"].source["persistentVolumeClaim"]["claimName"]
            assert m.one(chart, "PersistentVolumeClaim", claim)
            assert mounts["/output"].source == tune_spec.volume_mounts["/output"].source  # the same claim
        else:
            assert mounts["/output"].source == {"emptyDir": {}}
        assert mounts[arg(args, "--data")].read_only
        assert secret_env["WANDB_API_KEY"].optional  # W&B runs offline without the Secret
    if source != "cpu":
        data_claim = m.run_spec(job).volume_mounts["/data"].source["persistentVolumeClaim"]["claimName"]
        assert (
            data_claim == m.run_spec(tune).volume_mounts["/data"].source["persistentVolumeClaim"]["claimName"]
        )


@pytest.mark.parametrize("source", ["plain", "gpu", "cpu"])
def test_final_command_parses_with_the_real_cli(source, overlays):
    (job,) = m.load_k8s_final() if source == "plain" else overlays[source]
    parser = build_parser()
    for replica in ("Master", "Worker"):
        pod = m.pytorchjob_pod(job, replica)
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert "command" not in c  # the image's ENTRYPOINT is `sideformer`
            parser.parse_args(c["args"])
        args = m.run_spec(job, replica).args
        assert args[0] == "final" and "--nproc-per-node" not in args  # torchrun comes from PET_* variables


ELASTIC_ENV = "SIDEFORMER_ELASTIC_MAX_RESTARTS"


def test_operator_environment_of_the_final_job():
    (job,) = m.load_k8s_final()
    master, worker = m.operator_env(job, "Master"), m.operator_env(job, "Worker", 0)
    assert master["MASTER_ADDR"] == worker["PET_MASTER_ADDR"] == f"{FINAL}-master-0"
    assert (master["RANK"], worker["RANK"]) == ("0", "1")
    assert master["WORLD_SIZE"] == "8" and master["PET_NPROC_PER_NODE"] == "4"


@pytest.mark.parametrize("source", ["plain", *m.OVERLAYS])
def test_final_job_has_an_elastic_rendezvous_of_all_its_pods(source, overlays):
    """The final PyTorchJob's elasticPolicy spans exactly its pods (Master + Workers), its rendezvous is
    hosted by the Master, and torchrun builds that rendezvous from the operator's environment."""
    (job,) = m.load_k8s_final() if source == "plain" else overlays[source]
    nodes = sum(spec["replicas"] for spec in job["spec"]["pytorchReplicaSpecs"].values())
    policy = job["spec"]["elasticPolicy"]
    assert policy["minReplicas"] == policy["maxReplicas"] == nodes == 2
    for replica in ("Master", "Worker"):
        config = m.torchrun_launch_config(m.operator_env(job, replica, 0))
        assert (config.min_nodes, config.max_nodes, config.rdzv_backend) == (nodes, nodes, "c10d")
        assert config.rdzv_endpoint == f"{FINAL}-master-0:{m.OPERATOR_MASTER_PORT}"
        assert config.max_restarts == policy["maxRestarts"] > 0


# --- the final training as a Kubeflow Trainer v2 TrainJob -------------------------------------------------


@pytest.fixture(scope="module")
def trainjob_overlays() -> dict[str, list[dict]]:
    return {name: m.render_kustomize(name) for name in m.TRAINJOB_OVERLAYS}


@pytest.mark.parametrize("overlay", m.TRAINJOB_OVERLAYS)
def test_trainjob_overlay_renders_a_valid_trainjob_and_its_runtime(trainjob_overlays, overlay):
    objects = trainjob_overlays[overlay]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("TrainJob", FINAL),
        ("TrainingRuntime", FINAL),
    ]
    for obj in objects:
        validate_object(obj, objects)  # the v2.3.0 CRDs, the torch plugin's rules, the pods strictly
        assert not pod_security_errors(obj)
    job = m.one(objects, "TrainJob")
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": FINAL,
    }


@pytest.mark.parametrize("overlay", m.TRAINJOB_OVERLAYS)
def test_trainjob_overlay_runs_exactly_the_pytorchjob_overlay(trainjob_overlays, overlays, overlay):
    """The same data, output, config and Secret, command, environment, security, resources, scheduling
    and restarts as the PyTorchJob beside it; only the Workers' /output differs (one pod template: every
    node mounts the claim, rank 0 alone writes)."""
    objects = trainjob_overlays[overlay]
    job = m.one(objects, "TrainJob")
    runtime = tj.runtime_of(job, objects)
    (pytorchjob,) = overlays[m.TRAINJOB_OVERLAYS[overlay]]
    specs = pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert tj.num_nodes(job, runtime) == sum(spec["replicas"] for spec in specs.values()) == 2
    assert job["spec"]["trainer"]["numProcPerNode"] == int(pytorchjob["spec"]["nprocPerNode"])
    assert (
        tj.replicated_job(runtime)["template"]["spec"]["backoffLimit"]
        == pytorchjob["spec"]["runPolicy"]["backoffLimit"]
    )
    pod = tj.trainjob_pod(job, objects)
    # The one addition: the TrainJob's stand-in for elasticPolicy (test_trainjob_has_an_elastic_rendezvous).
    node = pod["containers"][0]
    node["env"] = [e for e in node["env"] if e["name"] != ELASTIC_ENV]
    for replica, spec in specs.items():
        expected = copy.deepcopy(spec["template"]["spec"])
        expected["containers"][0]["name"] = "node"
        expected["restartPolicy"] = spec["restartPolicy"]
        if replica == "Worker":
            output = next(v for v in expected["volumes"] if v["name"] == "output")
            output.clear()
            output.update(next(v for v in pod["volumes"] if v["name"] == "output"))
        assert pod == expected, replica
        template = tj.replicated_job(runtime)["template"]["spec"]["template"]
        assert template["metadata"] == spec["template"]["metadata"]
    assert job["metadata"]["labels"] == pytorchjob["metadata"]["labels"]


@pytest.mark.parametrize("overlay", m.TRAINJOB_OVERLAYS)
def test_trainjob_has_an_elastic_rendezvous_of_all_its_nodes(trainjob_overlays, overlays, overlay):
    """What the PyTorchJob's elasticPolicy gives, from SIDEFORMER_ELASTIC_MAX_RESTARTS and the plugin's
    PET_*: torchrun in every node builds a c10d rendezvous of exactly its nodes, hosted by node 0 at the
    master address, with the PyTorchJob's maxRestarts."""
    objects = trainjob_overlays[overlay]
    job = m.one(objects, "TrainJob")
    runtime = tj.runtime_of(job, objects)
    (pytorchjob,) = overlays[m.TRAINJOB_OVERLAYS[overlay]]
    env = {
        e["name"]: e["value"]
        for e in m.container(tj.trainjob_pod(job, objects), "node")["env"]
        if "value" in e
    }
    nodes = tj.num_nodes(job, runtime)
    for index in range(nodes):
        config = m.torchrun_launch_config(
            {**tj.plugin_env(job, runtime, index), ELASTIC_ENV: env[ELASTIC_ENV]}
        )
        assert (config.min_nodes, config.max_nodes, config.rdzv_backend) == (nodes, nodes, "c10d")
        assert config.rdzv_endpoint == f"{tj.master_addr(job)}:{tj.MASTER_PORT}"
        assert config.rdzv_configs["is_host"] == ("true" if index == 0 else "false")
        assert config.max_restarts == pytorchjob["spec"]["elasticPolicy"]["maxRestarts"] > 0


def test_trainjob_overlay_environment_from_the_torch_plugin(trainjob_overlays):
    objects = trainjob_overlays["trainjob"]
    job = m.one(objects, "TrainJob")
    runtime = tj.runtime_of(job, objects)
    env = tj.plugin_env(job, runtime, 1)
    assert env == {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_NODE_RANK": "1",
        "PET_MASTER_ADDR": f"{FINAL}-node-0-0.{FINAL}",
        "PET_MASTER_PORT": "29400",
    }
    assert m.container(tj.trainjob_pod(job, objects), "node")["image"] == "sideformer:cuda"
    cpu = trainjob_overlays["trainjob-cpu"]
    pod = tj.trainjob_pod(m.one(cpu, "TrainJob"), cpu)
    assert {c["image"] for c in [*pod["initContainers"], *pod["containers"]]} == {"sideformer:cpu"}


@pytest.mark.parametrize("overlay", m.TRAINJOB_OVERLAYS)
def test_trainjob_overlay_applies_the_runtime_first(trainjob_overlays, overlay):
    """`kubectl apply -k` creates objects in the rendered order; the Trainer's webhook rejects a TrainJob
    whose runtime does not exist yet (sortOptions: fifo keeps the file's order)."""
    assert [o["kind"] for o in trainjob_overlays[overlay]] == ["TrainingRuntime", "TrainJob"]


@pytest.mark.parametrize("component", ["kueue", "gang-scheduling"])
def test_gang_scheduling_components_render_valid_jobs(component, tmp_path):
    """k8s/components/<component> added to an overlay, as its comment says to."""
    k8s = shutil.copytree(m.K8S_DIR, tmp_path / "k8s", symlinks=True)  # kustomize takes relative paths only
    overlay = k8s / "overlays" / "with-component"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../../base"],
                "components": [f"../../components/{component}"],
            }
        )
    )
    rendered = subprocess.run(
        [*m.kustomize_command(), str(overlay)], capture_output=True, text=True, timeout=120, check=True
    )
    (job,) = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    validate_object(job)
    run_policy = job["spec"]["runPolicy"]
    if component == "kueue":
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "sideformer"
        assert run_policy["suspend"] is True
    else:
        pods = sum(spec["replicas"] for spec in job["spec"]["pytorchReplicaSpecs"].values())
        assert run_policy["schedulingPolicy"] == {"minAvailable": pods, "queue": "default"}


def test_restricted_init_container_component_mounts_the_template_where_the_operator_reads_it(tmp_path):
    """k8s/operator/restricted-init-container added to a Training Operator v1.9 kustomization (here a
    stand-in of its Deployment): the template lands at the flag's default, /etc/config/initContainer.yaml."""
    component = m.REPO / "k8s" / "operator" / "restricted-init-container"
    shutil.copytree(component, tmp_path / "component")
    operator = tmp_path / "operator"
    operator.mkdir()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "training-operator", "namespace": "kubeflow"},
        "spec": {
            "selector": {"matchLabels": {"app": "training-operator"}},
            "template": {
                "metadata": {"labels": {"app": "training-operator"}},
                "spec": {
                    "containers": [{"name": "training-operator", "image": "kubeflow/training-operator:v1-9"}]
                },
            },
        },
    }
    (operator / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    (operator / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": ["deployment.yaml"], "components": ["../component"]})
    )
    rendered = subprocess.run(
        [*m.kustomize_command(), str(operator)], capture_output=True, text=True, timeout=120, check=True
    )
    objects = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    config_map = m.one(objects, "ConfigMap")
    assert config_map["data"]["initContainer.yaml"] == (component / "initContainer.yaml").read_text()
    pod = m.one(objects, "Deployment")["spec"]["template"]["spec"]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/etc/config"  # --pytorch-init-container-template-file's default folder
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    # The template, filled in as the operator fills it, is a container the restricted standard admits.
    (init,) = m.operator_init_containers(
        {"metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Master": {}, "Worker": {}}}}, "Worker"
    )
    assert init["securityContext"]["runAsNonRoot"] and init["securityContext"]["capabilities"]["drop"] == [
        "ALL"
    ]
