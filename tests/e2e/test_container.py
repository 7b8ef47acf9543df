"""The CPU image, built offline, running what the cluster runs: the commands, environment, mounts and
security settings are read from the rendered chart and k8s/ manifests (tests/e2e/manifests.py), and the
Training Operator's variables are set as it sets them. Containers stand in for pods on a user-defined
network; a real PostgreSQL on the host holds the study."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from tests.e2e import manifests as m
from tests.e2e.docker import Container, Network, docker, writable_dir
from tests.e2e.pods import Cluster
from tests.integration.conftest import TINY
from tests.pg import PostgresServer

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY = "sideformer"  # the kind values' study name
DB_SECRET = ("sideformer-tune-db", "storage-url")


def test_image_runs_the_cli_as_a_non_root_user(cpu_image: str) -> None:
    help_text = docker("run", "--rm", cpu_image, "--help").stdout
    assert "usage: sideformer" in help_text and "search" in help_text
    assert docker("run", "--rm", "--entrypoint", "id", cpu_image, "-u").stdout.strip() == "1000"

    config = json.loads(docker("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"][-1] == "sideformer-entrypoint"
    assert config["Labels"]["org.opencontainers.image.title"] == "sideformer"
    baked = [
        e for e in config["Env"] if any(w in e.split("=")[0] for w in ("KEY", "TOKEN", "PASSWORD", "STORAGE"))
    ]
    assert not baked, f"secrets baked into the image: {baked}"


def test_training_in_a_read_only_container_writes_only_to_volumes(
    cpu_image: str, synth_dataset: Path, tmp_path: Path
) -> None:
    output = writable_dir(tmp_path / "output")
    settings = [s for s in TINY if not s.startswith("wandb")] + ["train.epochs=2"]  # W&B on, offline
    args = ["train", "--data", "/data", "--output", "/output/run"]
    for setting in settings:
        args += ["--set", setting]
    container = Container(
        name=f"sideformer-train-{tmp_path.name[-8:].lower()}",
        args=args,
        mounts={str(synth_dataset): "/data:ro", str(output): "/output"},
    )
    try:
        code = container.start().wait(timeout=600)
        logs = container.logs()
        assert code == 0, logs[-4000:]
        # --read-only: anything written outside /output and /tmp would have failed the run.
        run = output / "run"
        state = torch.load(run / "final_ckpts" / "best_model.pth", weights_only=True)
        assert any(k.startswith("decode_head") for k in state)
        assert (run / "final_ckpts" / "model" / "config.json").is_file()
        assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
        assert list((run / "wandb").glob("offline-run-*")), "W&B offline run not written to the volume"
        assert not (run / "temp_ckpts").exists()
    finally:
        container.remove()


# -- the tuning flow: study creator, two tune workers (one killed and restarted), the final DDP job ----------


@dataclass
class SearchedStudy:
    cluster: Cluster
    storage_url: str  # from the host
    budget: int
    worker_logs: str  # the tune workers' logs after the restart


def _fast_heartbeat(config_text: str) -> str:
    """The kind config with a short heartbeat, so that the killed worker's trial is retried within seconds."""
    config = yaml.safe_load(config_text)
    config["search"].update(epochs=3, heartbeat_interval=1, grace_period=5)
    return yaml.safe_dump(config)


def _run_init_containers(cluster: Cluster, job: dict, replica: str = "Master") -> None:
    """The pod's init containers that run our image (synthetic data); the others (wait-for-database, on
    the postgres image) need an image registry, and the database here is up before the pods start."""
    for init in m.pytorchjob_pod(job, replica).get("initContainers", []):
        if init["image"].startswith("sideformer"):
            cluster.run(cluster.pod(job, replica, container=init["name"]))


@pytest.fixture(scope="module")
def searched_study(
    network: Network, network_postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SearchedStudy]:
    kind = yaml.safe_load(m.KIND_VALUES.read_text())
    # One pod per trial keeps four trials quick on two cores; the final job below shows DDP across pods.
    objects = m.render_chart(
        m.KIND_VALUES, set_values={"tune.nodesPerTrial": 1, "config": _fast_heartbeat(kind["config"])}
    )
    network_postgres.create_database("e2e")
    # The containers reach the server through the network's gateway, the tests through loopback.
    in_network = network_postgres.url_for("e2e", host=network.gateway)
    cluster = Cluster(objects, {DB_SECRET: in_network}, tmp_path_factory.mktemp("cluster"), network)
    try:
        creator = m.one(objects, "Job")
        cluster.run(cluster.pod(creator, container=m.pod_spec(creator)["containers"][0]["name"]))

        workers = m.find(objects, "PyTorchJob")
        assert len(workers) == 2
        pods = []
        for job in workers:
            _run_init_containers(cluster, job)
            pods.append(cluster.start(cluster.pod(job)))

        # Kill the second worker in the middle of a trial, as a node failure would, then start the same
        # command again, as the operator's restart does.
        victim = pods[1]
        victim.wait_for_log("epoch 1/", timeout=600)
        victim.kill()
        victim.wait(timeout=60)
        cluster.start(victim)

        for pod in pods:
            code = pod.wait(timeout=900)
            assert code == 0, f"{pod.name} exited {code}:\n{pod.logs()[-4000:]}"
        budget = yaml.safe_load(m.config_text(objects))["search"]["n_trials"]
        yield SearchedStudy(cluster, network_postgres.url_for("e2e"), budget, "".join(p.logs() for p in pods))
    finally:
        cluster.remove_all()


def test_two_tune_workers_finish_the_study_budget(searched_study: SearchedStudy) -> None:
    study = optuna.load_study(study_name=STUDY, storage=searched_study.storage_url)
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    assert len(finished) == searched_study.budget
    assert len({tuple(sorted(t.params.items())) for t in finished}) == searched_study.budget
    best = json.loads(
        (
            searched_study.cluster.claims["sideformer-tune-output"] / STUDY / "best_hyperparams.json"
        ).read_text()
    )
    assert best["params"] == study.best_trial.params


def test_a_killed_tune_worker_restarts_and_resumes_its_trial(searched_study: SearchedStudy) -> None:
    trials = optuna.load_study(study_name=STUDY, storage=searched_study.storage_url).get_trials(
        deepcopy=False
    )
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state.name) for t in trials]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == failed[0].params
    assert min(retries[0].intermediate_values) >= 2, "the retry started over instead of resuming"
    # Either worker may take the retry: the restarted one or the one that kept running.
    assert f"retry of {failed[0].number}" in searched_study.worker_logs
    assert "resuming from" in searched_study.worker_logs


def test_final_training_runs_ddp_across_two_containers(
    searched_study: SearchedStudy,
) -> None:
    cluster = searched_study.cluster
    job = m.one(m.render_kustomize("cpu"), "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 1
    pods = []
    for replica in ("Master", "Worker"):
        _run_init_containers(cluster, job, replica)
        pods.append(cluster.start(cluster.pod(job, replica)))
    deadline = time.monotonic() + 900
    for pod in pods:
        code = pod.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code == 0, f"{pod.name} exited {code}:\n{pod.logs()[-4000:]}"

    master_logs = pods[0].logs()
    assert "2 process(es)" in master_logs, master_logs[-3000:]
    spec = m.run_spec(job)
    output = Path(spec.args[spec.args.index("--output") + 1])
    claim = spec.volume_mounts["/output"].source["persistentVolumeClaim"]["claimName"]
    final = cluster.claims[claim] / output.relative_to("/output")
    state = torch.load(final / "final_ckpts" / "best_model.pth", weights_only=True)
    assert any(k.startswith("decode_head") for k in state)
    metrics = json.loads((final / "metrics.json").read_text())
    best = json.loads((final.parent / "best_hyperparams.json").read_text())
    assert len(metrics["history"]) == best["best_epoch"], "the final run trains for the best trial's epochs"
