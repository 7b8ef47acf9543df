"""The sideformer-tune Helm chart, rendered and linted by Helm v4's own engine (helm-python-sdk), every
object validated with real schemas, and the values checked to land where the commands read them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from sideformer.cli import build_parser
from sideformer.config import load_config
from sideformer.tune import parse_space, space_size
from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.validation import K8S_VERSION, pod_security_errors, validate_object

PRESETS = list(m.VALUES_PRESETS)
CONFIG_PATH = "/etc/sideformer/config.yaml"


def render(preset: str, **set_values) -> list[dict]:
    return m.render_chart(*m.VALUES_PRESETS[preset], set_values=set_values or None)


def tune_jobs(objects: list[dict]) -> list[dict]:
    return [j for j in m.find(objects, "PyTorchJob") if j in m.component(objects, "tune-worker")]


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# --- Helm lint, render, validation ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("preset", PRESETS)
def test_chart_lints_strict(preset, backend):
    report = m.lint_chart(*m.VALUES_PRESETS[preset], set_values={"tune.backend": backend})
    problems = [msg for msg in report["messages"] if msg["severity"] >= 2]  # warnings and errors
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("preset", PRESETS)
def test_every_rendered_object_validates(preset):
    objects = render(preset)
    kinds = {o["kind"] for o in objects}
    assert {
        "StatefulSet",
        "Service",
        "PersistentVolumeClaim",
        "Secret",
        "Job",
        "PyTorchJob",
        "Deployment",
    } <= kinds
    assert {"ConfigMap", "ServiceAccount", "Pod"} <= kinds
    for obj in objects:  # hooks and `helm test` pods included
        validate_object(obj)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == m.RELEASE
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_kubernetes_validate_cli_strict_accepts_every_rendered_object(tmp_path):
    """The kubernetes-validate command itself (validation.py caches the same schemas for speed). It skips
    PyTorchJobs (a CRD) with a warning, so their pod templates are also given to it as Pods."""
    docs = []
    for preset in PRESETS:
        for obj in render(preset):
            docs.append(obj)
            if obj["kind"] == "PyTorchJob":
                for rtype, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                    name = f"{obj['metadata']['name']}-{rtype.lower()}"
                    docs.append(
                        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, **spec["template"]}
                    )
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).parent / "kubernetes-validate"  # installed beside this Python (test extra)
    run = subprocess.run(
        [str(cli), "--strict", "--quiet", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ERROR" not in run.stdout
    assert run.stdout.count("WARN") == sum(1 for d in docs if d["kind"] == "PyTorchJob")  # the CRD, skipped
    pod = next(d for d in docs if d["kind"] == "Pod")
    pod["spec"]["containers"][0]["imagePullPolicy"] = 3  # and it does reject a wrong object
    path.write_text(yaml.safe_dump(pod))
    run = subprocess.run([str(cli), "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True)
    assert run.returncode == 1 and "imagePullPolicy" in run.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_pods_run_non_root_with_read_only_root_and_secrets_by_reference(preset):
    for obj in render(preset):
        assert not pod_security_errors(obj), (obj["kind"], obj["metadata"]["name"], pod_security_errors(obj))


def test_validators_catch_what_they_are_for():
    """The checks above are not vacuous: broken objects fail them."""
    job = tune_jobs(render("kind"))[0]
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    with pytest.raises(AssertionError, match="no container named 'pytorch'"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Chief"] = broken["spec"]["pytorchReplicaSpecs"]["Master"]
    with pytest.raises(AssertionError, match="only Master and Worker"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    with pytest.raises(AssertionError, match="exactly one Master"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    with pytest.raises(AssertionError, match="restartPolicy"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["nprocPerNode"] = 1  # unquoted
    with pytest.raises(AssertionError, match="nprocPerNode"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["runPolicy"]["backofLimit"] = 3  # typo: the CRD schema rejects unknown fields
    with pytest.raises(AssertionError, match="backofLimit"):
        validate_object(broken)
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(AssertionError, match="volumeMount"):
        validate_object(broken)
    statefulset = m.one(render("default"), "StatefulSet")
    statefulset["spec"]["template"]["spec"]["securityContext"]["runAsUsr"] = 999
    with pytest.raises(AssertionError, match="runAsUsr"):
        validate_object(statefulset)
    pod = m.pytorchjob_pod(job, "Master")
    pod["containers"][0]["env"].append({"name": "DB_PASSWORD", "value": "hunter2"})
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    errors = pod_security_errors(job)
    assert any("DB_PASSWORD is a plain value" in e for e in errors)
    assert any("readOnlyRootFilesystem" in e for e in errors)


# --- values.schema.json ---------------------------------------------------------------------------------

SCHEMA_CASES = {
    "negative GPUs": ({"tune.gpusPerNode": -1}, "at '/tune/gpusPerNode': minimum: got -1, want 0"),
    "fractional GPUs": ({"tune.gpusPerNode": 0.5}, "at '/tune/gpusPerNode': got number, want integer"),
    "no workers": ({"tune.workers": 0}, "at '/tune/workers': minimum: got 0, want 1"),
    "zero nodes per trial": ({"tune.nodesPerTrial": 0}, "at '/tune/nodesPerTrial': minimum: got 0, want 1"),
    "no database": (
        {"postgresql.enabled": False},
        "at '/externalDatabase/existingSecret': minLength: got 0, want 1",
    ),
    "external database without host": (
        {"postgresql.enabled": False, "externalDatabase.existingSecret": "optuna-db"},
        "at '/externalDatabase/host': minLength: got 0, want 1",
    ),
    "unknown top-level key": ({"tunes": {"workers": 2}}, "at '': additional properties 'tunes' not allowed"),
    "unknown nested key": ({"tune.gpus": 2}, "at '/tune': additional properties 'gpus' not allowed"),
    "unknown restart policy": ({"tune.restartPolicy": "Sometimes"}, "at '/tune/restartPolicy'"),
    "Always restarts a finished search": ({"tune.restartPolicy": "Always"}, "at '/tune/restartPolicy'"),
    "existing claim without a name": ({"data.existingClaim": ""}, "at '/data/existingClaim': minLength"),
    "negative elastic restarts": (
        {"tune.elastic.maxRestarts": -1},
        "at '/tune/elastic/maxRestarts': minimum: got -1, want 0",
    ),
    "NFS without a server": ({"output.type": "nfs"}, "at '/output/nfs/server': minLength: got 0, want 1"),
    "secret in extraEnv": (
        {"tune.extraEnv": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        "at '/tune/extraEnv/0'",
    ),
}


@pytest.mark.parametrize("case", SCHEMA_CASES)
def test_values_schema_rejects_wrong_values_with_helms_message(case):
    set_values, message = SCHEMA_CASES[case]
    with pytest.raises(helm.HelmValuesError) as caught:
        render("default", **set_values)
    assert "values don't meet the specifications of the schema" in str(caught.value)
    assert message in str(caught.value)


def test_values_schema_accepts_an_external_database():
    objects = render(
        "default",
        **{
            "postgresql.enabled": False,
            "externalDatabase.host": "db.example.internal",
            "externalDatabase.existingSecret": "optuna-db",
        },
    )
    assert not m.find(objects, "StatefulSet") and not m.find(objects, "Secret")
    job = tune_jobs(objects)[0]
    assert m.run_spec(job).secret_env["OPTUNA_STORAGE"] == m.SecretRef("optuna-db", "storage-url", False)
    wait = m.run_spec(job, container_name="wait-for-database")
    assert wait.env["DB_HOST"] == "db.example.internal"
    dashboard = m.pod_spec(m.one(objects, "Deployment"))
    (credentials,) = [v for v in dashboard["volumes"] if v["name"] == "credentials"]
    assert credentials["secret"]["secretName"] == "optuna-db"
    assert credentials["secret"]["items"] == [{"key": "dashboard-storage-url", "path": "storage-url"}]


def test_values_files_hold_no_secrets():
    for path in [m.CHART_DIR / "values.yaml", *m.VALUES_PRESETS["kind"], *m.VALUES_PRESETS["gpu"]]:
        text = path.read_text()
        # A key holding a credential itself (keys that *name* a Secret's key, like userPasswordKey, are fine).
        assert not re.search(r"(?im)^\s*(\w*password|api[-_]?key|token)\s*:\s*\S", text), path
        assert "postgresql+psycopg2://" not in yaml.safe_dump(yaml.safe_load(text)).replace(
            "postgresql+psycopg2://tuner:PASSWORD@", ""
        ), path


# Templates that may ask the live cluster (`lookup`), and for what: values that already exist are kept.
LOOKUPS = {
    "secret-db.yaml": 1,  # the generated passwords
    "pvc.yaml": 1,  # an existing claim's access modes and class (immutable)
    "postgresql/statefulset.yaml": 1,  # an existing StatefulSet's serviceName (immutable)
}


def test_chart_asks_the_live_cluster_only_to_keep_what_already_exists():
    """DESIGN.md: the one use of the cluster allowed is `lookup` keeping values that already exist."""
    for template in (m.CHART_DIR / "templates").rglob("*"):
        if template.is_file():
            text = template.read_text()
            assert not re.search(r"Capabilities\.APIVersions", text), template
            lookups = re.findall(r"\(lookup\s", text)  # calls, not the word in comments
            name = template.relative_to(m.CHART_DIR / "templates").as_posix()
            assert len(lookups) == LOOKUPS.get(name, 0), template


# --- values land where the commands read them -----------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_gpu_count_sets_nproc_per_node_and_limits(preset):
    gpus = m.load_values(*m.VALUES_PRESETS[preset]).get("tune", {}).get("gpusPerNode", 1)
    for job in tune_jobs(render(preset)):
        assert job["spec"]["nprocPerNode"] == str(max(gpus, 1))
        for replica in job["spec"]["pytorchReplicaSpecs"]:
            limits = m.container(m.pytorchjob_pod(job, replica))["resources"].get("limits", {})
            if gpus:
                assert limits["nvidia.com/gpu"] == gpus
            else:
                assert "nvidia.com/gpu" not in limits


def test_gpu_count_from_set_values():
    job = tune_jobs(render("gpu", **{"tune.gpusPerNode": 8}))[0]
    assert job["spec"]["nprocPerNode"] == "8"
    assert m.container(m.pytorchjob_pod(job, "Master"))["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert m.container(m.pytorchjob_pod(job, "Master"))["resources"]["limits"]["memory"] == "96Gi"


@pytest.mark.parametrize(("workers", "nodes"), [(1, 1), (3, 2), (5, 4)])
def test_number_of_tune_workers_and_nodes_per_trial(workers, nodes):
    jobs = tune_jobs(render("default", **{"tune.workers": workers, "tune.nodesPerTrial": nodes}))
    assert sorted(j["metadata"]["name"] for j in jobs) == [f"{m.RELEASE}-tune-{i}" for i in range(workers)]
    for job in jobs:
        specs = job["spec"]["pytorchReplicaSpecs"]
        assert specs["Master"]["replicas"] == 1
        assert specs.get("Worker", {}).get("replicas", 0) == nodes - 1
        assert all(s["restartPolicy"] == "OnFailure" for s in specs.values())
        assert job["spec"]["runPolicy"]["backoffLimit"] == 6


def test_trial_budget_from_values_reaches_the_command():
    default = m.run_spec(tune_jobs(render("default"))[0]).args
    assert "--n-trials" not in default  # search.n_trials from the config file
    args = m.run_spec(tune_jobs(render("default", **{"tune.nTrials": 12}))[0]).args
    assert arg(args, "--n-trials") == "12"


@pytest.mark.parametrize("preset", PRESETS)
def test_volumes_are_mounted_where_the_commands_read(preset):
    objects = render(preset)
    values = m.load_values(*m.VALUES_PRESETS[preset])
    study = values.get("study", {}).get("name", "sideformer")
    config_map = m.one(objects, "ConfigMap", f"{m.RELEASE}-config")
    assert "config.yaml" in config_map["data"]
    for job in tune_jobs(objects):
        for replica in job["spec"]["pytorchReplicaSpecs"]:
            args, env, secret_env, mounts = m.run_spec(job, replica)
            assert args[0] == "search"
            assert arg(args, "--study") == study
            assert arg(args, "--output") == f"/output/{study}"
            assert mounts[arg(args, "--data")].read_only
            assert mounts["/output"].read_only is False
            assert env["WANDB_DIR"].startswith("/output/")
            config_dir = str(Path(arg(args, "--config")).parent)
            assert mounts[config_dir].source == {"configMap": {"name": config_map["metadata"]["name"]}}
            assert mounts["/dev/shm"].source["emptyDir"]["medium"] == "Memory"
            assert "emptyDir" in mounts["/tmp"].source and env["HOME"] == "/tmp"
            output = mounts["/output"].source
            if replica == "Worker":
                assert output == {"emptyDir": {}}  # ranks > 0 write no outputs
            else:
                assert output == {"persistentVolumeClaim": {"claimName": f"{m.RELEASE}-output"}}
            assert "OPTUNA_STORAGE" in secret_env and "OPTUNA_STORAGE" not in env


def test_data_volume_kinds():
    def data_source(**set_values):
        job = tune_jobs(render("default", **set_values))[0]
        return m.run_spec(job).volume_mounts["/data"]

    assert data_source().source == {"persistentVolumeClaim": {"claimName": "sideformer-data"}}
    baseline = {"podSecurity.restricted": False}  # restricted namespaces refuse nfs and hostPath volumes
    nfs = data_source(
        **baseline, **{"data.type": "nfs", "data.nfs": {"server": "nas", "path": "/export/aihub"}}
    )
    assert nfs.source == {"nfs": {"server": "nas", "path": "/export/aihub"}}
    host = data_source(
        **baseline, **{"data.type": "hostPath", "data.hostPath.path": "/mnt/aihub", "data.subPath": "v1"}
    )
    assert host.source == {"hostPath": {"path": "/mnt/aihub", "type": "Directory"}} and host.sub_path == "v1"
    objects = render("default", **{"data.type": "pvc"})
    assert m.one(objects, "PersistentVolumeClaim", f"{m.RELEASE}-data")
    assert m.run_spec(tune_jobs(objects)[0]).volume_mounts["/data"].source["persistentVolumeClaim"] == {
        "claimName": f"{m.RELEASE}-data"
    }


def test_synthetic_data_is_written_by_sideformer_synth_before_the_trainer_starts():
    job = tune_jobs(render("kind"))[0]
    pod = m.pytorchjob_pod(job, "Master")
    assert [c["name"] for c in pod["initContainers"]] == ["wait-for-database", "synth-data"]
    synth = m.run_spec(job, container_name="synth-data")
    assert synth.args[:3] == ["synth", "--out", "/data"]
    assert synth.volume_mounts["/data"].volume == "data" and not synth.volume_mounts["/data"].read_only
    assert m.run_spec(job).volume_mounts["/data"].source == {"emptyDir": {}}


def test_hf_cache_and_wandb_secret():
    job = tune_jobs(render("gpu"))[0]
    _, env, secret_env, mounts = m.run_spec(job)
    assert env["HF_HOME"] == "/hf-cache" and env["HF_HUB_OFFLINE"] == "1"
    assert mounts["/hf-cache"].source == {"persistentVolumeClaim": {"claimName": "hf-cache"}}
    assert secret_env["WANDB_API_KEY"] == m.SecretRef("sideformer-wandb", "api-key", False)
    assert env["NCCL_DEBUG"] == "WARN"
    _, env, secret_env, mounts = m.run_spec(tune_jobs(render("default"))[0])
    assert "HF_HOME" not in env and "/hf-cache" not in mounts and "WANDB_API_KEY" not in secret_env


def test_scheduling_values_pass_through():
    pod = m.pytorchjob_pod(tune_jobs(render("gpu"))[0], "Master")
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}
    pod = m.pytorchjob_pod(tune_jobs(render("default", **{"tune.affinity": affinity}))[0], "Master")
    assert pod["affinity"] == affinity


# --- secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_secret_reference_resolves(preset):
    """Each secretKeyRef names the generated Secret (and a key it holds) or a Secret the values name."""
    objects = render(preset)
    values = m.load_values(*m.VALUES_PRESETS[preset])
    generated = {s["metadata"]["name"]: s for s in m.find(objects, "Secret")}
    external = {values.get("wandb", {}).get("existingSecret")} - {None, ""}
    refs = 0
    for obj in objects:
        for pod in m.pod_specs(obj):
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                for var in c.get("env", []):
                    ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        refs += 1
                        if ref["name"] in generated:
                            assert ref["key"] in generated[ref["name"]]["data"], (
                                obj["metadata"]["name"],
                                ref,
                            )
                        else:
                            assert ref["name"] in external, ref
    assert refs >= 5


def test_generated_database_secret_is_a_kept_regular_secret():
    """Not a hook (Argo CD re-renders hooks on every sync; a reinstall's before-hook-creation deleted the
    only copy of the passwords): a regular Secret that Helm leaves in place on uninstall."""
    secret = m.one(render("default"), "Secret")
    assert secret["metadata"]["name"] == f"{m.RELEASE}-db"
    assert not m.is_hook(secret)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"])
    assert data["storage-url"] == (
        f"postgresql+psycopg2://tuner:{data['password']}@{m.RELEASE}-postgresql:5432/optuna"
    )
    assert data["dashboard-storage-url"].startswith(
        f"postgresql+psycopg2://viewer:{data['dashboard-password']}@"
    )
    assert len({data["postgres-password"], data["password"], data["dashboard-password"]}) == 3


def test_generated_database_secret_keeps_the_passwords_the_cluster_already_has(tmp_path: Path):
    """An upgrade, or a reinstall over the kept Secret and database volume: `lookup` returns the Secret and
    its passwords are reused, the URLs rebuilt from them. Offline, Helm's `lookup` always returns nothing,
    so this renders a copy of the chart whose `lookup` call is replaced by that answer; the rest of the
    template runs as shipped. (That the real `lookup` finds the Secret only a cluster can show.)"""
    import base64
    import shutil

    import helm_python as helm

    kept = {"postgres-password": "A" * 32, "password": "B" * 32, "dashboard-password": "C" * 32}
    answer = " ".join(f'"{k}" "{base64.b64encode(v.encode()).decode()}"' for k, v in kept.items())
    chart = shutil.copytree(m.CHART_DIR, tmp_path / "chart")
    template = chart / "templates/secret-db.yaml"
    call = '(lookup "v1" "Secret" .Release.Namespace (include "sideformer.db.secretName" .))'
    assert call in template.read_text()
    template.write_text(template.read_text().replace(call, f'(dict "data" (dict {answer}))'))
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values=m.load_values(), name=m.RELEASE, namespace=m.NAMESPACE, is_install=True)
    secret = next(yaml.safe_load(t) for p, t in files.items() if p.endswith("secret-db.yaml"))
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert {k: data[k] for k in kept} == kept
    assert data["storage-url"] == f"postgresql+psycopg2://tuner:{'B' * 32}@{m.RELEASE}-postgresql:5432/optuna"
    assert data["dashboard-storage-url"].startswith(f"postgresql+psycopg2://viewer:{'C' * 32}@")


def test_existing_secret_replaces_the_generated_one():
    objects = render("default", **{"postgresql.auth.existingSecret": "my-optuna-db"})
    assert not m.find(objects, "Secret")
    statefulset = m.one(objects, "StatefulSet")
    secrets = [v["secret"]["secretName"] for v in m.pod_spec(statefulset)["volumes"] if "secret" in v]
    assert secrets == ["my-optuna-db"]
    assert m.run_spec(tune_jobs(objects)[0]).secret_env["OPTUNA_STORAGE"].name == "my-optuna-db"


def test_dashboard_reads_through_the_read_only_role():
    objects = render("default")
    deployment = m.one(objects, "Deployment", f"{m.RELEASE}-dashboard")
    spec = m.run_spec(deployment, container_name="dashboard")
    # The URL is a file the wrapper reads, never a word of the command line (the process list shows those).
    assert not any("OPTUNA_STORAGE" in a or "postgresql" in a for a in spec.args)
    assert "OPTUNA_STORAGE" not in spec.secret_env
    path = spec.env["OPTUNA_STORAGE_FILE"]
    mount = spec.volume_mounts[path.rsplit("/", 1)[0]]
    assert mount.source["secret"]["items"] == [
        {"key": "dashboard-storage-url", "path": path.rsplit("/", 1)[1]}
    ]
    service = m.one(objects, "Service", f"{m.RELEASE}-dashboard")
    assert service["spec"]["type"] == "ClusterIP"
    assert m.find(render("default", **{"dashboard.enabled": False}), "Deployment") == []


# --- the commands ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_every_sideformer_command_parses_with_the_real_cli(preset):
    """What the pods run after the image's ENTRYPOINT (`sideformer`) is a valid sideformer command line."""
    parser = build_parser()
    objects = render(preset)
    seen = set()
    for obj in objects:
        for pod in m.pod_specs(obj):
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                if (
                    c["image"].startswith(
                        m.load_values(*m.VALUES_PRESETS[preset])
                        .get("image", {})
                        .get("repository", "sideformer")
                    )
                    and "command" not in c
                ):
                    parser.parse_args(c["args"])
                    seen.add(" ".join(c["args"][:2]))
    assert {"search --data", "study create", "study export"} <= seen


@pytest.mark.parametrize("preset", PRESETS)
def test_rendered_config_is_a_valid_sideformer_config(preset, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(m.config_text(render(preset)))
    config = load_config(path)
    assert space_size(parse_space(config.search.space)) >= config.search.n_trials


def test_study_creator_creates_the_study_the_workers_use():
    objects = render("default")
    (job,) = m.find(objects, "Job")
    assert re.fullmatch(rf"{m.RELEASE}-study-[0-9a-f]{{8}}", job["metadata"]["name"])  # a hash of its spec
    args, _, secret_env, mounts = m.run_spec(job, container_name="study-creator")
    worker_args = m.run_spec(tune_jobs(objects)[0]).args
    assert args[:2] == ["study", "create"]
    assert arg(args, "--study") == arg(worker_args, "--study")
    assert arg(args, "--config") == arg(worker_args, "--config") == CONFIG_PATH
    assert CONFIG_PATH.startswith(next(p for p in mounts if mounts[p].volume == "config"))
    assert secret_env["OPTUNA_STORAGE"] == m.run_spec(tune_jobs(objects)[0]).secret_env["OPTUNA_STORAGE"]
    assert [c["name"] for c in m.pod_spec(job)["initContainers"]] == ["wait-for-database"]


# --- study.warmStart: seeded by whichever process creates the study -----------------------------------


def worker_args(objects: list[dict]) -> list[list[str]]:
    """The command line of every tune-worker pod: each replica of a PyTorchJob, each TrainJob's trainer."""
    found = []
    for job in m.component(objects, "tune-worker"):
        if job["kind"] == "PyTorchJob":
            found += [m.run_spec(job, replica).args for replica in job["spec"]["pytorchReplicaSpecs"]]
        elif job["kind"] == "TrainJob":
            found.append(job["spec"]["trainer"]["args"])
    return found


def creator_args(objects: list[dict]) -> list[str]:
    return m.run_spec(m.one(objects, "Job"), container_name="study-creator").args


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_warm_start_reaches_the_study_creator_and_every_worker(backend):
    """A worker may find no study (it started before the creator's Job) and create it: so every worker gets
    the creator's --warm-start, and whichever creates the study seeds it."""
    values = {"tune.backend": backend, "tune.nodesPerTrial": 2, "tune.workers": 2}
    objects = render("default", **values, **{"study.warmStart": "segformer-2026.v1"})
    assert arg(creator_args(objects), "--warm-start") == "segformer-2026.v1"
    workers = worker_args(objects)
    assert len(workers) == (4 if backend == "pytorchjob" else 2)
    assert all(arg(args, "--warm-start") == "segformer-2026.v1" for args in workers)
    objects = render("default", **values)  # unset: ""
    assert all("--warm-start" not in args for args in [creator_args(objects), *worker_args(objects)])


SECRET_URL = "postgresql+psycopg2://tuner:s3cret@db.example:5432/optuna#old"


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        (SECRET_URL, "copy it into this one first"),
        ("postgresql://u:s3cret@h/db", "not a URL or URL#STUDY"),
        ("old#s3cret", "not a URL or URL#STUDY"),
        ("/output/s3cret/best_hyperparams.json", "To start from a best_hyperparams.json"),
        ("s3cret.json", "would be read as a best_hyperparams.json"),
        ("-s3cret", "starting with a letter or digit"),
        ("s3cret old", "letters, digits, '-', '_' and '.'"),
    ],
)
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_warm_start_other_than_a_study_name_fails_render_without_printing_it(value, fix, backend):
    with pytest.raises((helm.HelmRenderError, helm.HelmValuesError)) as caught:
        render("default", **{"tune.backend": backend, "study.warmStart": value})
    message = str(caught.value)
    assert "study.warmStart takes the name of a previous study in this release's database" in message
    assert fix in message
    assert "s3cret" not in message and value not in message


def test_warm_start_from_the_study_itself_fails_render():
    with pytest.raises(helm.HelmRenderError, match=r"study.warmStart names study.name itself"):
        render("default", **{"study.name": "search-1", "study.warmStart": "search-1"})


@pytest.mark.slow
def test_a_worker_that_creates_the_study_before_the_creator_seeds_it_with_the_warm_start(
    synth_dataset, tmp_path
):
    """The rendered commands, run by the real CLI on one SQLite study database as the pods would run them
    (OPTUNA_STORAGE from the Secret, the mounts mapped to folders): a worker starts before the study
    creator, finds no study and creates it: the previous study's best trial still runs first. The creator,
    coming second, finds the study and adds nothing."""
    import optuna

    from tests.integration.conftest import env_for
    from tests.integration.test_search_start import previous_study, waiting_params
    from tests.integration.test_tune import write_config

    url = f"sqlite:///{tmp_path / 'study.db'}"
    best_first = previous_study(url, "old")
    tiny = write_config(tmp_path / "tiny.yaml", n_trials=1, epochs=1, pruner="none").read_text()
    objects = render("default", **{"config": tiny, "study.warmStart": "old"})
    (config := tmp_path / "config.yaml").write_text(m.config_text(objects))
    mounts = {CONFIG_PATH: str(config), "/data": str(synth_dataset), "/output": str(tmp_path / "output")}

    def local(args: list[str]) -> list[str]:
        for mount, folder in mounts.items():
            args = [
                folder + a.removeprefix(mount) if a == mount or a.startswith(mount + "/") else a for a in args
            ]
        return [sys.executable, "-m", "sideformer", *args]

    env = env_for(OPTUNA_STORAGE=url)

    def sideformer(args: list[str]) -> subprocess.CompletedProcess:
        proc = subprocess.run(local(args), env=env, capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    worker = sideformer(worker_args(objects)[0])
    assert "study 'sideformer' starts with 4 enqueued trial(s)" in worker.stdout  # 3 best of old, the recipe
    study = optuna.load_study(study_name="sideformer", storage=url)
    first = study.get_trials(deepcopy=False)[0]
    assert first.state == optuna.trial.TrialState.COMPLETE and first.params == best_first[0]
    queued = waiting_params(url, "sideformer")
    assert queued == [*best_first[1:3], {"optim.lr": 6e-5, "optim.weight_decay": 0.01}]

    creator = sideformer(creator_args(objects))
    assert "study 'sideformer' already existed: --warm-start only seeds a new study" in creator.stdout
    assert waiting_params(url, "sideformer") == queued  # nothing enqueued twice


def test_helm_test_hooks():
    objects = render("default")
    tests = [o for o in objects if m.is_test(o)]
    assert sorted(t["metadata"]["name"] for t in tests) == [
        f"{m.RELEASE}-test-readonly-role",
        f"{m.RELEASE}-test-study",
    ]
    assert all(t["kind"] == "Pod" and t["spec"]["restartPolicy"] == "Never" for t in tests)
    assert len(m.installed(objects)) == len(objects) - 2
    # Day 2: the test pods are the only hooks (Helm never deletes hooks on uninstall; Argo CD maps install
    # hooks to PreSync phases), and Argo CD skips them.
    for backend in ("pytorchjob", "trainjob"):
        hooks = [o for o in render("default", **{"tune.backend": backend}) if m.is_hook(o)]
        assert hooks and all(m.is_test(h) for h in hooks)
        assert all(h["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Skip" for h in hooks)


def test_notes_say_how_to_open_the_dashboard_and_run_the_final_job():
    notes = m.render_notes()
    assert f"kubectl port-forward -n default svc/{m.RELEASE}-dashboard 8080:8080" in notes
    assert "kubectl apply -n default -f k8s/final-pytorchjob.yaml" in notes
    assert "kubectl apply -k k8s/overlays/cpu" in notes
    other = m.render_chart_files(release="tuning")
    assert "change the names" in next(t for p, t in other.items() if p.endswith("NOTES.txt"))
    notes = m.render_notes(set_values={"tune.backend": "trainjob"})
    assert "kubectl get trainjobs,pods" in notes and "pytorchjob" not in notes
    assert "kubectl apply -n default -k k8s/overlays/trainjob" in notes
    assert "kubectl apply -k k8s/overlays/trainjob-cpu" in notes
    assert "--for=condition=Complete trainjob/sideformer-final" in notes


# --- the chart's scripts on a real PostgreSQL server ----------------------------------------------------


def test_database_scripts_on_a_real_postgres_server(postgres_server, tmp_path, monkeypatch):
    """files/initdb.sh (what the postgres image runs on first start) creates the workers' role and a
    read-only dashboard role; the wait-for-database init container and both `helm test` pods, run with
    their rendered commands, pass against it; the dashboard role cannot delete the study."""
    import secrets

    import psycopg2

    from sideformer.cli import main as sideformer_main

    objects = render("default")
    suffix = secrets.token_hex(4)
    tuner, viewer = f"tuner_{suffix}", f"viewer_{suffix}"
    tuner_pw, viewer_pw = secrets.token_hex(12), secrets.token_hex(12)
    admin_url = postgres_server.create_database()
    dbname = admin_url.rsplit("/", 1)[1]
    host, port = postgres_server.host, str(postgres_server.port)
    base_env = {**os.environ, "PGHOST": host, "PGPORT": port, "PGPASSWORD": postgres_server.password}
    try:
        initdb = {
            "POSTGRES_USER": postgres_server.user,
            "POSTGRES_DB": dbname,
            "SIDEFORMER_DB_USER": tuner,
            "SIDEFORMER_DB_PASSWORD": tuner_pw,
            "SIDEFORMER_DASHBOARD_USER": viewer,
            "SIDEFORMER_DASHBOARD_PASSWORD": viewer_pw,
        }
        script = m.CHART_DIR / "files" / "initdb.sh"
        run = subprocess.run(["bash", script], env={**base_env, **initdb}, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        # The rendered ConfigMap carries exactly this script.
        configmap = m.one(objects, "ConfigMap", f"{m.RELEASE}-postgresql-initdb")
        assert configmap["data"]["sideformer-roles.sh"] == script.read_text()

        wait = m.run_spec(m.one(objects, "Job"), container_name="wait-for-database")
        wait_script = m.container(m.pod_spec(m.one(objects, "Job")), "wait-for-database")["args"][0]
        env = {**os.environ, **wait.env, "DB_HOST": host, "DB_PORT": port, "DB_WAIT_SECONDS": "20"}
        run = subprocess.run(["sh", "-c", wait_script], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "accepts connections" in run.stdout, run.stdout + run.stderr

        tuner_url = f"postgresql+psycopg2://{tuner}:{tuner_pw}@{host}:{port}/{dbname}"
        viewer_url = f"postgresql+psycopg2://{viewer}:{viewer_pw}@{host}:{port}/{dbname}"
        # The dashboard's wait also needs the study tables, which its read-only role cannot create.
        dashboard = m.one(objects, "Deployment", f"{m.RELEASE}-dashboard")
        dashboard_wait = m.run_spec(dashboard, container_name="wait-for-database")
        assert dashboard_wait.secret_env["OPTUNA_STORAGE"].key == "dashboard-storage-url"
        env = {**env, "OPTUNA_STORAGE": viewer_url, "DB_WAIT_SECONDS": "4"}
        run = subprocess.run(["sh", "-c", wait_script], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "no study tables" in run.stderr, run.stdout + run.stderr
        config = tmp_path / "config.yaml"
        config.write_text(m.config_text(objects))
        creator_args = m.run_spec(m.one(objects, "Job"), container_name="study-creator").args
        creator_args = [str(config) if a == CONFIG_PATH else a for a in creator_args]
        monkeypatch.setenv("OPTUNA_STORAGE", tuner_url)
        assert sideformer_main(creator_args) == 0
        run = subprocess.run(["sh", "-c", wait_script], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "the study tables exist" in run.stdout, run.stdout + run.stderr

        # helm test 1: the study loads through the read-only role.
        test_study = m.run_spec(m.one(objects, "Pod", f"{m.RELEASE}-test-study"), container_name="study")
        out = tmp_path / "trials.jsonl"
        args = [
            str(config) if a == CONFIG_PATH else str(out) if a == "/tmp/trials.jsonl" else a
            for a in test_study.args
        ]
        monkeypatch.setenv("OPTUNA_STORAGE", viewer_url)
        assert sideformer_main(args) == 0 and out.exists()

        # helm test 2: psql as the dashboard's role sees the study and may not delete it.
        pod = m.one(objects, "Pod", f"{m.RELEASE}-test-readonly-role")
        readonly = m.run_spec(pod, container_name="readonly-role")
        script_text = m.container(m.pod_spec(pod), "readonly-role")["args"][0]
        env = {**os.environ, **readonly.env, "OPTUNA_STORAGE": viewer_url, "HOME": str(tmp_path)}
        run = subprocess.run(["sh", "-c", script_text], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "cannot change the study" in run.stdout
        # ... and it fails for a role that can write (the workers' role stands in for a misconfigured one).
        env["OPTUNA_STORAGE"] = tuner_url
        run = subprocess.run(["sh", "-c", script_text], env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and "must be read-only" in run.stderr
    finally:
        postgres_server.drop_database(dbname)
        admin = psycopg2.connect(**{**postgres_server.dsn, "dbname": "postgres"})
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{tuner}"')
            cur.execute(f'DROP ROLE IF EXISTS "{viewer}"')
        admin.close()


# --- what a first real install would hit -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_pod_gets_the_image_pull_secrets(preset, backend):
    """A private registry needs them on every pod: PostgreSQL and the `helm test` pods included (and the
    TrainJobs' pods, through their runtime)."""
    objects = render(preset, imagePullSecrets=[{"name": "registry"}], **{"tune.backend": backend})
    pods = [(o["metadata"]["name"], spec) for o in objects for spec in m.pod_specs(o)]
    assert len(pods) >= 6
    missing = [name for name, spec in pods if spec.get("imagePullSecrets") != [{"name": "registry"}]]
    assert not missing, missing


def test_dashboard_default_image_is_the_cpu_build():
    def dashboard_image(**set_values):
        deployment = m.one(render("default", **set_values), "Deployment")
        return m.container(m.pod_spec(deployment), "dashboard")["image"]

    assert yaml.safe_load((m.CHART_DIR / "values.yaml").read_text())["image"]["tag"] == "cuda"
    assert dashboard_image() == "sideformer:cpu"  # not image.tag (cuda): no GPU, several GB less
    assert dashboard_image(**{"dashboard.image.tag": "v2"}) == "sideformer:v2"
    assert dashboard_image(**{"image.repository": "registry.example/sf"}) == "registry.example/sf:cpu"


def test_pod_names_over_63_characters_fail_at_render():
    """The operator names pods (and their Services) <job>-worker-<i>; past 63 characters they never start."""
    fits = (
        "x" * 45
    )  # x...-tune-1-worker-0 is 61 characters with the kind values (2 workers, 2 pods per trial)
    assert m.find(m.render_chart(m.KIND_VALUES, set_values={"fullnameOverride": fits}), "PyTorchJob")
    with pytest.raises(helm.HelmRenderError, match="66 characters, over Kubernetes' limit of 63"):
        m.render_chart(m.KIND_VALUES, set_values={"fullnameOverride": "x" * 50})
    with pytest.raises(helm.HelmRenderError, match="-tune-11-worker-0 would be 64 characters"):
        m.render_chart(m.KIND_VALUES, set_values={"fullnameOverride": "x" * 47, "tune.workers": 12})


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_notes_point_only_at_files_the_packaged_chart_holds_or_say_where_they_are(backend):
    notes = m.render_notes(set_values={"tune.backend": backend})
    ignored = [line.strip() for line in (m.CHART_DIR / ".helmignore").read_text().splitlines()]
    assert "k8s/" not in ignored and "files/" not in ignored
    for path in re.findall(r"(?<![\w/.:-])((?:k8s|files|templates|ci|examples)/[\w./-]*[\w])", notes):
        if (m.CHART_DIR / path).exists():
            continue  # packaged with the chart
        assert (m.REPO / path).exists(), f"NOTES.txt names {path}, which exists nowhere"
        assert "not\n   part of this chart: they are in the SideFormer repository" in notes, path


# --- Kubeflow Trainer v2: tune.backend=trainjob -----------------------------------------------------------

TRAINJOB = {"tune.backend": "trainjob"}
ELASTIC_ENV = "SIDEFORMER_ELASTIC_MAX_RESTARTS"


def trainjobs_of(objects: list[dict]) -> list[dict]:
    return [j for j in m.find(objects, "TrainJob") if j in m.component(objects, "tune-worker")]


@pytest.mark.parametrize("preset", PRESETS)
def test_trainjob_backend_renders_valid_trainjobs_instead_of_pytorchjobs(preset):
    objects = render(preset, **TRAINJOB)
    workers = m.load_values(*m.VALUES_PRESETS[preset], set_values=TRAINJOB)["tune"].get("workers", 2)
    assert not m.find(objects, "PyTorchJob")
    names = [j["metadata"]["name"] for j in trainjobs_of(objects)]
    assert len(names) == workers
    for i, name in enumerate(names):  # a hash of the spec ends the name (immutable fields: see day 2 below)
        assert re.fullmatch(rf"{m.RELEASE}-tune-{i}-[0-9a-f]{{8}}", name)
    (runtime,) = m.find(objects, "ClusterTrainingRuntime")
    for obj in objects:
        validate_object(obj, objects)  # the v2.3.0 CRDs, the torch plugin's rules, the pods strictly
        assert not pod_security_errors(obj), (obj["metadata"]["name"], pod_security_errors(obj))
    for job in trainjobs_of(objects):
        assert job["spec"]["runtimeRef"] == {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
            "name": runtime["metadata"]["name"],
        }


@pytest.mark.parametrize("preset", PRESETS)
def test_trainjobs_run_exactly_what_the_pytorchjobs_run(preset):
    """Image, args, env, volumes, init containers, security, resources, scheduling and restarts: the pod a
    TrainJob gets (its runtime with spec.trainer applied) is the PyTorchJob Master's, container renamed."""
    pytorchjobs = tune_jobs(render(preset))
    objects = render(preset, **TRAINJOB)
    for pytorchjob, trainjob in zip(pytorchjobs, trainjobs_of(objects), strict=True):
        expected = yaml.safe_load(yaml.safe_dump(m.pytorchjob_pod(pytorchjob, "Master")))
        expected["containers"][0]["name"] = "node"
        expected["restartPolicy"] = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"]
        pod = tj.trainjob_pod(trainjob, objects)
        # The one addition: the TrainJob's stand-in for the PyTorchJob's elasticPolicy, when it has one.
        node = pod["containers"][0]
        elastic = [e for e in node["env"] if e["name"] == ELASTIC_ENV]
        assert len(elastic) == ("elasticPolicy" in pytorchjob["spec"])
        node["env"] = [e for e in node["env"] if e["name"] != ELASTIC_ENV]
        assert pod == expected
        runtime = tj.runtime_of(trainjob, objects)
        template = tj.replicated_job(runtime)["template"]["spec"]["template"]
        assert (
            template["metadata"]
            == pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]
        )
        nodes = 1 + pytorchjob["spec"]["pytorchReplicaSpecs"].get("Worker", {}).get("replicas", 0)
        assert tj.num_nodes(trainjob, runtime) == nodes
        assert trainjob["spec"]["trainer"]["numProcPerNode"] == int(pytorchjob["spec"]["nprocPerNode"])
        run_policy = pytorchjob["spec"]["runPolicy"]
        assert tj.replicated_job(runtime)["template"]["spec"]["backoffLimit"] == run_policy["backoffLimit"]
        assert trainjob["spec"].get("activeDeadlineSeconds") == run_policy.get("activeDeadlineSeconds")


def test_trainjob_restart_and_lifetime_values():
    objects = render(
        "default",
        **TRAINJOB,
        **{
            "tune.restartPolicy": "Never",
            "tune.backoffLimit": 2,
            "tune.ttlSecondsAfterFinished": 600,
            "tune.activeDeadlineSeconds": 86400,
        },
    )
    runtime = m.one(objects, "ClusterTrainingRuntime")
    assert runtime["spec"]["template"]["spec"]["ttlSecondsAfterFinished"] == 600
    assert tj.replicated_job(runtime)["template"]["spec"]["backoffLimit"] == 2
    assert tj.runtime_pod(runtime)["restartPolicy"] == "Never"
    assert {j["spec"]["activeDeadlineSeconds"] for j in trainjobs_of(objects)} == {86400}


@pytest.mark.parametrize(("preset", "nproc"), [("default", 1), ("kind", 1), ("gpu", 4)])
def test_trainjob_sets_num_proc_per_node_explicitly(preset, nproc):
    """Trainer v2's default "auto" starts one process per CPU core on CPU-only nodes: 1 on CPU, else
    the GPU count, and the GPU limit on every node."""
    for job in trainjobs_of(render(preset, **TRAINJOB)):
        trainer = job["spec"]["trainer"]
        assert trainer["numProcPerNode"] == nproc
        gpus = trainer["resourcesPerNode"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (None if preset == "kind" else nproc)


def test_trainjob_environment_is_what_the_torch_plugin_adds():
    objects = render("kind", **TRAINJOB)
    job = trainjobs_of(objects)[0]
    runtime = tj.runtime_of(job, objects)
    name = job["metadata"]["name"]
    assert [tj.plugin_env(job, runtime, i) for i in (0, 1)] == [
        {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": str(i),
            "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
            "PET_MASTER_PORT": "29400",
        }
        for i in (0, 1)
    ]
    assert not set(tj.RESERVED_ENV) & {e["name"] for e in job["spec"]["trainer"]["env"]}


def test_trainjobs_can_patch_an_installed_runtime_instead():
    """createRuntime=false: the TrainJobs reference torch-distributed and carry volumes, mounts, security
    and scheduling as runtimePatches; what a patch cannot add is said at render."""
    values = {**TRAINJOB, "tune.trainJob.createRuntime": False}
    for preset in ("default", "gpu"):
        objects = render(preset, **values)
        assert not m.find(objects, "TrainingRuntime")
        pytorchjob = tune_jobs(render(preset))[0]
        for job in trainjobs_of(objects):
            assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
            validate_object(job, objects)
            pod = tj.trainjob_pod(job, objects)
            expected = m.pytorchjob_pod(pytorchjob, "Master")
            for field in ("volumes", "securityContext", "serviceAccountName"):
                assert pod[field] == expected[field]
            for field in ("nodeSelector", "tolerations", "affinity"):
                assert pod.get(field) == expected.get(field)
            node, pytorch = m.container(pod, "node"), m.container(expected)
            for field in ("image", "args", "env", "resources", "securityContext", "volumeMounts"):
                assert node[field] == pytorch[field], field
    with pytest.raises(
        helm.HelmRenderError, match=r"data\.type=synthetic writes the dataset in an init container"
    ):
        render("kind", **values)
    with pytest.raises(helm.HelmRenderError, match="priorityClassName cannot reach the pods"):
        render("default", **values, **{"tune.priorityClassName": "high"})


def test_multi_pod_trials_get_an_elastic_rendezvous_that_torchrun_reads():
    """nodesPerTrial > 1: every tune PyTorchJob has an elasticPolicy the CRD accepts, and the environment
    the operator derives from it makes the real torchrun parser build a c10d rendezvous of exactly the
    trial's pods, hosted by the Master, with the values' worker-group restarts."""
    objects = render("default", **{"tune.nodesPerTrial": 3, "tune.elastic.maxRestarts": 5})
    jobs = tune_jobs(objects)
    assert len(jobs) == 2
    for job in jobs:
        validate_object(job, objects)  # the CRD schema: elasticPolicy's fields and types
        master = f"{job['metadata']['name']}-master-0"
        for replica, index in (("Master", 0), ("Worker", 0), ("Worker", 1)):
            env = m.operator_env(job, replica, index)
            assert env["PET_NNODES"] == "3:3" and env["PET_MAX_RESTARTS"] == "5", env
            config = m.torchrun_launch_config(env)
            assert (config.min_nodes, config.max_nodes, config.max_restarts) == (3, 3, 5)
            assert config.rdzv_backend == "c10d"
            assert config.rdzv_endpoint == f"{master}:{m.OPERATOR_MASTER_PORT}"
    # One pod per trial, or elastic switched off: torchrun's static rendezvous on the operator's PET_NNODES.
    for values in ({"tune.nodesPerTrial": 1}, {"tune.nodesPerTrial": 3, "tune.elastic.enabled": False}):
        for job in tune_jobs(render("default", **values)):
            assert "elasticPolicy" not in job["spec"]
            config = m.torchrun_launch_config(m.operator_env(job))
            assert config.rdzv_backend == "static" and config.min_nodes == values["tune.nodesPerTrial"]


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_tune_workers_know_themselves_by_pod_name(backend):
    """SIDEFORMER_WORKER_ID is the pod's name (unique among running pods, kept across container restarts):
    a restarted worker re-queues the trial it left running at once (sideformer.tune)."""
    objects = render("default", **{"tune.backend": backend, "tune.nodesPerTrial": 2})
    jobs = [j for j in m.component(objects, "tune-worker") if j["kind"] in ("PyTorchJob", "TrainJob")]
    for job in jobs:
        env = (
            job["spec"]["trainer"]["env"]
            if backend == "trainjob"
            else m.container(m.pod_spec(job, "Master"), "pytorch")["env"]
        )
        (worker,) = [e for e in env if e["name"] == "SIDEFORMER_WORKER_ID"]
        assert worker["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_multi_node_trainjobs_get_the_same_elastic_rendezvous_from_the_cli():
    """Trainer v2.3 has no elastic policy: SIDEFORMER_ELASTIC_MAX_RESTARTS in each TrainJob makes the
    CLI's launcher give torchrun, on every node, a c10d rendezvous of exactly the trial's nodes at the
    plugin's master address, hosted by node 0, with the values' restarts; elastic off: static."""
    values = {**TRAINJOB, "tune.nodesPerTrial": 3, "tune.elastic.maxRestarts": 5}
    objects = render("default", **values)
    for job in trainjobs_of(objects):
        runtime = tj.runtime_of(job, objects)
        env = {e["name"]: e.get("value") for e in job["spec"]["trainer"]["env"]}
        for index in range(3):
            config = m.torchrun_launch_config(
                {**tj.plugin_env(job, runtime, index), ELASTIC_ENV: env[ELASTIC_ENV]}
            )
            assert (config.min_nodes, config.max_nodes, config.max_restarts) == (3, 3, 5)
            assert config.rdzv_backend == "c10d"
            assert config.rdzv_endpoint == f"{tj.master_addr(job)}:{tj.MASTER_PORT}"
            assert config.rdzv_configs["is_host"] == ("true" if index == 0 else "false")
    for values in ({"tune.nodesPerTrial": 1}, {"tune.nodesPerTrial": 3, "tune.elastic.enabled": False}):
        objects = render("default", **TRAINJOB, **values)
        for job in trainjobs_of(objects):
            assert ELASTIC_ENV not in {e["name"] for e in job["spec"]["trainer"]["env"]}
            config = m.torchrun_launch_config(tj.plugin_env(job, tj.runtime_of(job, objects), 0))
            assert config.rdzv_backend == "static" and config.min_nodes == values["tune.nodesPerTrial"]


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_kueue_queue_suspends_the_jobs_and_labels_them(backend):
    objects = render("default", **{"tune.backend": backend, "tune.kueue.queueName": "team-a"})
    jobs = m.component(objects, "tune-worker")
    jobs = [j for j in jobs if j["kind"] in ("PyTorchJob", "TrainJob")]
    assert len(jobs) == 2
    for job in jobs:
        validate_object(job, objects)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        suspend = job["spec"]["runPolicy"]["suspend"] if backend == "pytorchjob" else job["spec"]["suspend"]
        assert suspend is True
    for job in m.component(render("default", **{"tune.backend": backend}), "tune-worker"):
        assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
        assert "suspend" not in job["spec"] and "suspend" not in job["spec"].get("runPolicy", {})


def test_gang_scheduling_policy_reaches_every_pytorchjob_where_the_operator_reads_it():
    values = {
        "tune.nodesPerTrial": 3,
        "tune.schedulingPolicy.enabled": True,
        "tune.schedulingPolicy.queue": "gpu",
    }
    objects = render("default", **values, **{"tune.schedulingPolicy.priorityClass": "research"})
    jobs = [j for j in m.component(objects, "tune-worker") if j["kind"] == "PyTorchJob"]
    assert len(jobs) == 2
    for job in jobs:
        validate_object(job, objects)  # the CRD schema: runPolicy.schedulingPolicy's fields and types
        policy = job["spec"]["runPolicy"]["schedulingPolicy"]
        assert policy == {"minAvailable": 3, "queue": "gpu", "priorityClass": "research"}
    custom = render("default", **values, **{"tune.schedulingPolicy.minAvailable": 2})
    assert {
        j["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] for j in m.find(custom, "PyTorchJob")
    } == {2}
    for job in m.find(render("default"), "PyTorchJob"):
        assert "schedulingPolicy" not in job["spec"]["runPolicy"]


def test_trainjob_validators_catch_what_they_are_for():
    objects = render("kind", **TRAINJOB)
    job = trainjobs_of(objects)[0]

    def broken(change) -> tuple[dict, list[dict]]:
        copied = yaml.safe_load(yaml.safe_dump(objects))
        target = next(o for o in copied if o["metadata"]["name"] == job["metadata"]["name"])
        change(target, m.one(copied, "ClusterTrainingRuntime"))
        return target, copied

    cases = {
        r"reserved \['PET_NNODES'\]": lambda j, r: j["spec"]["trainer"]["env"].append(
            {"name": "PET_NNODES", "value": "2"}
        ),
        "no container named 'node'": lambda j, r: tj.runtime_pod(r)["containers"][0].update(name="trainer"),
        "numProcPerNode": lambda j, r: j["spec"]["trainer"].pop("numProcPerNode"),
        "got|is not of type 'integer'": lambda j, r: j["spec"]["trainer"].update(numProcPerNode="auto"),
        "numProcsPerNode": lambda j, r: j["spec"]["trainer"].update(numProcsPerNode=1),  # a typo
        "env of container 'node' goes in trainer.env": lambda j, r: j["spec"].update(
            runtimePatches=[
                {
                    "manager": "example.com/x",
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": "node",
                                        "template": {
                                            "spec": {
                                                "template": {
                                                    "spec": {
                                                        "containers": [
                                                            {
                                                                "name": "node",
                                                                "env": [{"name": "A", "value": "b"}],
                                                            }
                                                        ]
                                                    }
                                                }
                                            }
                                        },
                                    }
                                ]
                            }
                        }
                    },
                }
            ]
        ),
        "Job pods take OnFailure or Never": lambda j, r: tj.runtime_pod(r).update(restartPolicy="Always"),
        "mlPolicy.torch missing": lambda j, r: r["spec"]["mlPolicy"].pop("torch"),
    }
    for message, change in cases.items():
        target, copied = broken(change)
        with pytest.raises(AssertionError, match=message):
            validate_object(target, copied)
    runtime = yaml.safe_load(yaml.safe_dump(m.one(objects, "ClusterTrainingRuntime")))
    tj.runtime_pod(runtime)["containers"][0]["volumeMount"] = []
    with pytest.raises(AssertionError, match="volumeMount"):
        validate_object(runtime)


TRAINJOB_SCHEMA_CASES = {
    "unknown backend": ({"tune.backend": "mpijob"}, "at '/tune/backend'"),
    "ExitCode on Job pods": ({**TRAINJOB, "tune.restartPolicy": "ExitCode"}, "at '/tune/restartPolicy'"),
    "Always on Job pods": ({**TRAINJOB, "tune.restartPolicy": "Always"}, "at '/tune/restartPolicy'"),
    "unknown runtime kind": (
        {"tune.trainJob.runtimeRef.kind": "JobSet"},
        "at '/tune/trainJob/runtimeRef/kind'",
    ),
    "runtime name not a DNS label": (
        {"tune.trainJob.runtimeRef.name": "Torch_Distributed"},
        "at '/tune/trainJob/runtimeRef/name'",
    ),
    "unknown trainJob key": ({"tune.trainJob.numProcPerNode": 2}, "at '/tune/trainJob'"),
    "queue name not a DNS subdomain": ({"tune.kueue.queueName": "Team A"}, "at '/tune/kueue/queueName'"),
}


@pytest.mark.parametrize("case", TRAINJOB_SCHEMA_CASES)
def test_values_schema_rejects_wrong_trainjob_values(case):
    set_values, message = TRAINJOB_SCHEMA_CASES[case]
    with pytest.raises(helm.HelmValuesError) as caught:
        render("default", **set_values)
    assert message in str(caught.value)


def test_trainjob_pod_host_names_over_63_characters_fail_at_render():
    """JobSet names a TrainJob's pods <trainjob>-node-0-<i>, and that is their host name (a DNS label)."""
    values = {**TRAINJOB, "tune.workers": 2, "tune.nodesPerTrial": 2}
    fits = "x" * 38  # x...-tune-1-<8-character hash>-node-0-1 is 63 characters
    (job, _) = trainjobs_of(m.render_chart(m.KIND_VALUES, set_values={**values, "fullnameOverride": fits}))
    assert len(f"{job['metadata']['name']}-node-0-1") == 63
    with pytest.raises(helm.HelmRenderError, match="-node-0-1 would be 64 characters"):
        m.render_chart(m.KIND_VALUES, set_values={**values, "fullnameOverride": "x" * 39})


def test_trainjob_runtime_exists_before_the_trainjobs_that_name_it():
    """The Trainer's webhook refuses a TrainJob whose runtime it cannot find. Helm creates kinds it does not
    know alphabetically (Helm v4's kind_sorter: ClusterTrainingRuntime < TrainJob < TrainingRuntime), and
    Argo CD by sync wave: either way the chart's runtime, an ordinary release object (so an upgrade updates
    or creates it and uninstall deletes it), comes first."""
    objects = render("kind", **TRAINJOB)
    runtime = m.one(objects, "ClusterTrainingRuntime")
    assert not m.is_hook(runtime)
    jobs = trainjobs_of(objects)
    assert jobs and not any(m.is_hook(job) for job in jobs)
    assert sorted(["TrainJob", "ClusterTrainingRuntime", "TrainingRuntime"]) == [
        "ClusterTrainingRuntime",
        "TrainJob",
        "TrainingRuntime",
    ]  # Go's string order, which Helm uses for kinds it does not know
    wave = lambda o: int(o["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])  # noqa: E731
    assert all(wave(runtime) < wave(job) for job in jobs)
    # Namespaced, for installers without cluster-scoped permissions: ordered by Argo CD's waves only.
    objects = render("kind", **TRAINJOB, **{"tune.trainJob.runtimeKind": "TrainingRuntime"})
    runtime = m.one(objects, "TrainingRuntime")
    assert not m.find(objects, "ClusterTrainingRuntime")
    assert re.fullmatch(rf"{m.RELEASE}-tune-[0-9a-f]{{8}}", runtime["metadata"]["name"])
    for job in trainjobs_of(objects):
        validate_object(job, objects)
        assert job["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"
        assert job["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
        assert wave(runtime) < wave(job)


# --- day 2: upgrade, GitOps, restricted namespaces, isolation (issue 20) ----------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_errors(obj: dict, objects: list[dict] = ()) -> list[str]:
    """The "restricted" Pod Security Standard's rules (kubernetes.io/docs/concepts/security/pod-security-
    standards) for every pod an object makes, the Training Operator's `init-pytorch` included."""
    errors = []
    if obj["kind"] == "PyTorchJob":  # with what the operator adds
        specs = [m.operator_pod_spec(obj, r, 0) for r in obj["spec"]["pytorchReplicaSpecs"]]
    elif obj["kind"] == "TrainJob":  # its runtime's pod with spec.trainer and the runtimePatches applied
        specs = [tj.trainjob_pod(obj, list(objects))]
    else:
        specs = m.pod_specs(obj)
    for pod in specs:
        ctx = pod.get("securityContext") or {}
        for v in pod.get("volumes", []):
            kinds = set(v) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                errors.append(f"volume {v['name']}: {sorted(kinds)}")
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{c['name']}: allowPrivilegeEscalation")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"] or (sc.get("capabilities") or {}).get(
                "add"
            ):
                errors.append(f"{c['name']}: capabilities")
            if (
                not sc.get("runAsNonRoot", ctx.get("runAsNonRoot"))
                or sc.get("runAsUser", ctx.get("runAsUser", 1)) == 0
            ):
                errors.append(f"{c['name']}: runAsNonRoot")
            seccomp = (sc.get("seccompProfile") or ctx.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{c['name']}: seccompProfile")
    return errors


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("data", ["existingClaim", "pvc", "synthetic"])
def test_every_pod_passes_the_restricted_pod_security_standard(backend, nodes, data):
    objects = render("default", **{"tune.backend": backend, "tune.nodesPerTrial": nodes, "data.type": data})
    if backend == "trainjob" and data != "synthetic":  # also patching the installed torch-distributed runtime
        objects += render(
            "default",
            **TRAINJOB,
            **{"tune.nodesPerTrial": nodes, "data.type": data, "tune.trainJob.createRuntime": False},
        )
    checked = 0
    for obj in objects:
        errors = restricted_errors(obj, objects)
        assert not errors, (obj["kind"], obj["metadata"]["name"], errors)
        checked += obj["kind"] in ("PyTorchJob", "TrainJob")
    assert checked >= 2


def test_restricted_checker_and_the_operator_template_catch_what_they_are_for():
    job = tune_jobs(render("default", **{"tune.nodesPerTrial": 2}))[0]
    init = m.operator_pod_spec(job, "Worker", 0)["initContainers"][-1]
    assert init["name"] == "init-pytorch" and init["securityContext"]["allowPrivilegeEscalation"] is False
    assert "nslookup sideformer-tune-tune-0-master-0" in init["command"][2]  # the operator's fields filled in
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["volumes"].append(
        {"name": "x", "hostPath": {"path": "/"}}
    )
    broken["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
        "securityContext"
    ] = {}
    errors = restricted_errors(broken)
    assert "volume x: ['hostPath']" in errors and "pytorch: allowPrivilegeEscalation" in errors


@pytest.mark.parametrize("section", ["data", "output"])
@pytest.mark.parametrize("kind", ["hostPath", "nfs"])
def test_restricted_mode_refuses_host_path_and_nfs_with_the_reason(section, kind):
    values = {
        f"{section}.type": kind,
        f"{section}.hostPath.path": "/mnt/x",
        f"{section}.nfs": {"server": "nas", "path": "/x"},
    }
    with pytest.raises(helm.HelmRenderError, match=rf"{section}\.type={kind}: .*restricted Pod Security"):
        render("default", **values)
    assert render("default", **values, **{"podSecurity.restricted": False})


@pytest.mark.parametrize(
    "values",
    [
        {"podSecurityContext.runAsNonRoot": False},
        {"securityContext.allowPrivilegeEscalation": True},
        {"postgresql.securityContext.capabilities": {"drop": []}},
        {"postgresql.podSecurityContext.seccompProfile": {"type": "Unconfined"}},
    ],
)
def test_restricted_mode_refuses_security_contexts_the_standard_refuses(values):
    with pytest.raises(helm.HelmValuesError):
        render("default", **values)
    assert render("default", **values, **{"podSecurity.restricted": False})


def test_an_upgrade_that_changes_a_trainjob_replaces_it_and_an_unchanged_render_keeps_every_name():
    """Trainer v2.3's CEL rules make spec.trainer and spec.runtimeRef immutable; a Job's template is too."""

    def names(**values) -> dict[str, set[str]]:
        objects = render("kind", **TRAINJOB, **values)
        return {
            k: {o["metadata"]["name"] for o in m.find(objects, k)}
            for k in ("TrainJob", "ClusterTrainingRuntime", "Job")
        }

    first, again = names(), names()
    assert first == again  # offline, twice: the same objects (Argo CD sees nothing to change)
    retagged = names(**{"image.tag": "cpu-2"})
    assert retagged["TrainJob"].isdisjoint(first["TrainJob"])
    more_nodes = names(**{"tune.nodesPerTrial": 3})
    assert more_nodes["TrainJob"].isdisjoint(first["TrainJob"])
    assert more_nodes["ClusterTrainingRuntime"].isdisjoint(first["ClusterTrainingRuntime"])
    assert names(**{"config": "search: {n_trials: 3}\n"})["Job"].isdisjoint(first["Job"])
    assert names(**{"tune.workers": 3})["Job"] == first["Job"]  # the study Job only changes with its spec


def test_gitops_needs_an_existing_secret_and_then_renders_none():
    with pytest.raises(helm.HelmValuesError, match="existingSecret"):
        render("default", **{"gitOps": True})
    objects = render("default", **{"gitOps": True, "postgresql.auth.existingSecret": "optuna-db"})
    assert not m.find(objects, "Secret")


def test_network_policies_admit_only_the_release():
    objects = render("default")
    policies = {p["metadata"]["name"]: p["spec"] for p in m.find(objects, "NetworkPolicy")}
    default = policies[f"{m.RELEASE}-default"]
    assert default["policyTypes"] == ["Ingress"] and "ingress" not in default  # deny, the others open
    database = policies[f"{m.RELEASE}-postgresql"]["ingress"]
    assert database == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/instance": m.RELEASE}}}],
            "ports": [{"port": "postgresql", "protocol": "TCP"}],
        }
    ]
    final = m.render_kustomize("cpu")[0]
    labels = (
        m.pod_specs(final)
        and final["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"]
    )
    assert labels["app.kubernetes.io/instance"] == m.RELEASE  # the final job reaches the database
    workers = policies[f"{m.RELEASE}-tune-worker"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert workers["app.kubernetes.io/component"] == "tune-worker"
    assert f"{m.RELEASE}-dashboard" not in policies  # no source given: only port-forward reaches it
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
    opened = render("default", **{"networkPolicy.dashboard.from": [peer]})
    assert m.one(opened, "NetworkPolicy", f"{m.RELEASE}-dashboard")["spec"]["ingress"][0]["from"] == [peer]
    closed = render("default", **{"networkPolicy.allowExternalEgress": False})
    assert "Egress" in m.one(closed, "NetworkPolicy", f"{m.RELEASE}-default")["spec"]["policyTypes"]
    assert not m.find(render("default", **{"networkPolicy.enabled": False}), "NetworkPolicy")


def test_postgresql_has_a_disruption_budget_a_startup_probe_and_a_headless_governing_service():
    objects = render("default", **{"postgresql.startupTimeoutSeconds": 900})
    statefulset = m.one(objects, "StatefulSet")
    governing = m.one(objects, "Service", statefulset["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    container = m.container(m.pod_spec(statefulset), "postgresql")
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] == 900
    assert "initialDelaySeconds" not in container["livenessProbe"]
    pdb = m.one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]


def test_passwords_reach_postgresql_as_files_and_no_command_line_holds_a_url():
    objects = render("default")
    container = m.container(m.pod_spec(m.one(objects, "StatefulSet")), "postgresql")
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD_FILE"]["value"].startswith("/etc/sideformer-db/")
    assert not any("PASSWORD" in name and not name.endswith("_FILE") for name in env)
    for name in ("wait-for-db.sh", "test-readonly-role.sh"):
        script = (m.CHART_DIR / "files" / name).read_text()
        assert 'psql "$url"' not in script and "pg_env_from_url" in script


def test_images_honour_the_global_registry_and_digests_and_small_pods_use_the_cpu_build():
    digest, cpu_digest = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    objects = render(
        "default",
        **{
            "global.imageRegistry": "reg.example/mirror",
            "image.digest": digest,
            "image.cpuDigest": cpu_digest,
        },
    )
    images = {
        (o["metadata"]["name"], c["name"]): c["image"]
        for o in objects
        for pod in m.pod_specs(o)
        for c in [*pod.get("initContainers", []), *pod["containers"]]
    }
    assert all(i.startswith("reg.example/mirror/") for i in images.values()), images
    cpu = f"reg.example/mirror/sideformer@{cpu_digest}"
    study_job = m.one(objects, "Job")["metadata"]["name"]
    assert images[(study_job, "study-creator")] == cpu
    assert images[(f"{m.RELEASE}-test-study", "study")] == cpu
    assert images[(f"{m.RELEASE}-dashboard", "dashboard")] == cpu
    assert images[(f"{m.RELEASE}-tune-0", "pytorch")] == f"reg.example/mirror/sideformer@{digest}"
    assert images[(f"{m.RELEASE}-postgresql", "postgresql")] == "reg.example/mirror/postgres:17.6"


def test_output_claim_defaults_to_read_write_once_and_chart_metadata_is_complete():
    claim = m.one(render("default"), "PersistentVolumeClaim", f"{m.RELEASE}-output")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    chart = yaml.safe_load((m.CHART_DIR / "Chart.yaml").read_text())
    assert chart["sources"] and chart["maintainers"] and chart["icon"].startswith(("https://", "data:image/"))


def test_dashboard_wrapper_serves_the_study_and_keeps_the_url_off_its_command_line(tmp_path):
    """files/dashboard.py, run with the rendered command's script and arguments: optuna-dashboard answers
    with the study, and the process's command line (what `ps` shows every user) holds no storage URL."""
    import socket
    import time
    import urllib.request

    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="visible", storage=url)
    (url_file := tmp_path / "storage-url").write_text(url + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    container = m.container(m.pod_spec(m.one(render("default"), "Deployment")), "dashboard")
    assert container["command"] == ["tini", "--", "python", "/etc/sideformer-dashboard/dashboard.py"]
    args = [str(port) if a == "8080" else "127.0.0.1" if a == "0.0.0.0" else a for a in container["args"]]
    env = {**os.environ, "OPTUNA_STORAGE_FILE": str(url_file)}
    script = m.CHART_DIR / "files" / "dashboard.py"
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE)
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not body:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.5)
        assert '"visible"' in body
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert "sqlite" not in cmdline and str(tmp_path / "study.db") not in cmdline
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    missing = subprocess.run(
        [sys.executable, str(script)],
        env={**env, "OPTUNA_STORAGE_FILE": str(tmp_path / "nope")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "cannot read the storage URL" in missing.stderr
