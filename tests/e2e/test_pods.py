"""tests/e2e/pods.py's translation of a rendered pod into `docker run`, checked without running it: the
rehearsal (test_rehearsal.py) trusts these rules for every container."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.docker import Network
from tests.e2e.pods import Cluster, expand, pods_of
from tests.e2e.volumes import quantity

NETWORK = Network("sideformer-test-0000", "172.30.0.0/16", "172.30.0.1")  # never created: nothing runs


def test_kubernetes_variable_expansion():
    env = {"A": "x", "URL": "postgresql://u:p@h/db"}
    assert expand("$(A)-$(URL)", env) == "x-postgresql://u:p@h/db"
    assert expand("$$(A) $(MISSING) $A", env) == "$(A) $(MISSING) $A"


def test_memory_quantities():
    assert quantity("512Mi") == 512 * 2**20 and quantity("1Gi") == 2**30 and quantity("2G") == 2 * 10**9
    assert quantity(1048576) == 2**20
    with pytest.raises(ValueError):
        quantity("1.5Gi")


def test_operator_pods_get_the_init_container_env_and_restart_policy():
    job = next(o for o in m.render_chart(m.KIND_VALUES) if o["kind"] == "PyTorchJob")
    master, worker = pods_of(job)
    assert (master.name, worker.name) == (
        f"{job['metadata']['name']}-master-0",
        f"{job['metadata']['name']}-worker-0",
    )
    assert [c["name"] for c in master.spec["initContainers"]] == ["wait-for-database", "synth-data"]
    assert [c["name"] for c in worker.spec["initContainers"]] == [
        "wait-for-database",
        "synth-data",
        "init-pytorch",
    ]
    init = worker.spec["initContainers"][-1]
    assert init["image"] == m.OPERATOR_INIT_IMAGE and f"nslookup {master.name};" in init["command"][2]
    env = {e["name"]: e.get("value") for e in worker.spec["containers"][0]["env"]}
    assert env["RANK"] == env["PET_NODE_RANK"] == "1" and env["PET_MASTER_ADDR"] == master.name
    assert worker.spec["restartPolicy"] == "OnFailure"
    assert "RANK" not in {e["name"] for e in worker.spec["initContainers"][0].get("env", [])}


def test_trainjob_pods_are_what_jobset_and_the_torch_plugin_make(tmp_path: Path):
    """A TrainJob's nodes: JobSet's host names and subdomain, the runtime's pod with the TrainJob's trainer
    applied, and the PET_* variables resolved as the kubelet would (the node rank from the pod's
    completion-index annotation), in the container's docker run."""
    chart = m.render_chart(m.KIND_VALUES, set_values={"tune.backend": "trainjob"})
    cluster = Cluster(chart, tmp_path, NETWORK)
    job = m.find(chart, "TrainJob")[1]
    name, runtime = job["metadata"]["name"], tj.runtime_of(job, chart)
    pods = pods_of(job, chart)
    assert [p.name for p in pods] == [f"{name}-node-0-0", f"{name}-node-0-1"]
    for i, pod in enumerate(pods):
        node = m.container(pod.spec, "node")
        assert (node["image"], node["args"]) == (
            job["spec"]["trainer"]["image"],
            job["spec"]["trainer"]["args"],
        )
        assert pod.spec["restartPolicy"] == "OnFailure"
        assert [c["name"] for c in pod.spec["initContainers"]] == ["wait-for-database", "synth-data"]
        container = cluster.container(pod, node, init=False)
        pet = {k: v for k, v in container.env.items() if k.startswith("PET_")}
        assert pet == tj.plugin_env(job, runtime, i)
        assert pet["PET_NODE_RANK"] == str(i) and pet["PET_MASTER_ADDR"] == f"{name}-node-0-0.{name}"
        assert container.hostname == pod.name
        assert list(container.aliases) == [pod.name, f"{pod.name}.{name}"]  # JobSet's headless Service
        assert container.restart == "on-failure" and container.user == "1000:1000"
        assert container.env["OPTUNA_STORAGE"] == m.secret_data(chart, "sideformer-tune-db")["storage-url"]


def test_a_rendered_container_becomes_its_docker_run(tmp_path: Path):
    chart = m.render_chart(m.KIND_VALUES)
    cluster = Cluster(chart, tmp_path, NETWORK)
    (dashboard,) = pods_of(m.one(chart, "Deployment"))
    container = cluster.container(dashboard, dashboard.spec["containers"][0], init=False)
    url = m.secret_data(chart, "sideformer-tune-db")["dashboard-storage-url"]
    assert container.entrypoint == "tini" and container.args[:3] == [
        "--",
        "python",
        "/etc/sideformer-dashboard/dashboard.py",
    ]
    assert not any(url in a for a in container.args)  # the URL is a file, never on the command line
    assert "OPTUNA_STORAGE" not in container.env and url in container.redact
    path = container.env["OPTUNA_STORAGE_FILE"]
    (mount,) = [s for s in container.extra_mounts if f"destination={path.rsplit('/', 1)[0]}" in s]
    url_file = Path(mount.split(",")[1].split("=")[1]) / path.rsplit("/", 1)[1]
    assert url_file.read_text() == url and url_file.stat().st_mode & 0o777 == 0o440
    assert container.user == "1000:1000" and container.group_add == [1000]
    assert container.read_only_root and container.no_new_privileges and container.cap_drop == ["ALL"]
    assert container.memory == quantity("512Mi") and container.restart == "always"
    assert container.aliases == [dashboard.name, "sideformer-tune-dashboard"]

    (database,) = pods_of(m.one(chart, "StatefulSet"))
    db = cluster.container(database, database.spec["containers"][0], init=False)
    assert db.user == "999:999" and "sideformer-tune-postgresql" in db.aliases
    initdb = next(s for s in db.extra_mounts if "docker-entrypoint-initdb.d" in s)
    assert initdb.endswith(",readonly")
    script = Path(initdb.split(",")[1].split("=")[1]) / "sideformer-roles.sh"
    assert script.stat().st_mode & 0o777 == 0o555 and script.stat().st_gid == 999  # defaultMode, fsGroup

    job = next(o for o in chart if o["kind"] == "PyTorchJob")
    master = pods_of(job)[0]
    trainer = cluster.container(master, master.spec["containers"][0], init=False)
    assert (
        f"type=tmpfs,destination=/dev/shm,tmpfs-mode=1777,tmpfs-size={quantity('256Mi')}"
        in trainer.extra_mounts
    )
    assert trainer.restart == "on-failure" and trainer.env["MASTER_ADDR"] == master.name


def test_what_the_kubelet_would_refuse_is_refused(tmp_path: Path):
    chart = m.render_chart(m.KIND_VALUES)
    cluster = Cluster(chart, tmp_path, NETWORK)
    (creator,) = pods_of(m.one(chart, "Job"))
    c = copy.deepcopy(creator.spec["containers"][0])
    c["env"].append({"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}})
    with pytest.raises(KeyError, match="needs Secret absent key k"):
        cluster.container(creator, c, init=False)
    c = copy.deepcopy(creator.spec["containers"][0])
    c["securityContext"]["privileged"] = True
    with pytest.raises(ValueError, match="privileged"):
        cluster.container(creator, c, init=False)
    job = next(o for o in chart if o["kind"] == "PyTorchJob")
    master = pods_of(job)[0]
    master.spec["volumes"][0] = {"name": "data", "persistentVolumeClaim": {"claimName": "nobody-renders-it"}}
    with pytest.raises(LookupError, match="nobody-renders-it"):
        cluster.container(master, master.spec["containers"][0], init=False)
