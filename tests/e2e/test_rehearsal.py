"""The install, rehearsed in Docker before a cluster sees it: every container of every pod that the chart
renders for ci/kind-values.yaml and that k8s/overlays/cpu renders runs as the cluster would run it
(tests/e2e/pods.py), on offline stand-ins for the images no registry can give here (image/stand-ins/).
Twice: with the Training Operator v1.9's PyTorchJobs (tune.backend=pytorchjob) and with Kubeflow Trainer
v2's TrainJobs (tune.backend=trainjob, final training from k8s/overlays/trainjob-cpu: two nodes each, with
the PET_* environment the torch plugin injects and JobSet's host names):

  pre-install hooks by weight -> every installed pod at once (PostgreSQL with its initdb script, the study
  creator, the tune workers until the study's budget is met, the dashboard; their init containers order
  them; the trainer of one tune worker's rank-0 pod, which hosts the rendezvous, is SIGKILLed mid-trial
  and restarts in place, as OnFailure does, while the other pod's `sideformer` rejoins the group without
  exiting) -> the
  dashboard lists the study on its Service port -> `helm test` pods -> the final PyTorchJob (Master +
  Worker) or TrainJob (two nodes) -> the outputs the README promises -> the serving pods stopped as an
  uninstall would.

It prints one table (pod, container, image, uid, exit code, seconds) and fails when the containers it ran
differ from the containers rendered (the operator's `init-pytorch` on Worker pods counted in)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from tests.e2e import manifests as m
from tests.e2e import trainjobs as tj
from tests.e2e.docker import Network, build_stand_ins, docker
from tests.e2e.pods import Cluster, Pod, Record, pods_of

pytestmark = pytest.mark.slow

TIMEOUT = 1200  # per container; the whole rehearsal takes a few minutes on two cores
KILLED_JOB = "sideformer-tune-tune-1"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Backend:
    """What differs between the two Kubeflow generations, for the rehearsal."""

    name: str  # tune.backend
    final_overlay: str  # the final training's overlay
    killed: str  # the pod of KILLED_JOB whose trainer is killed mid-trial, as a crash would
    trainer: str  # the training container's name
    rendezvous: str  # how the multi-pod trials rendezvous, for the printout


# The pod killed is the one that hosts the rendezvous store (the elastic agents' or the static one), the
# loss the other pod's torchrun cannot ride out alone: its `sideformer` starts torchrun again (`rejoin`).
BACKENDS = {
    "pytorchjob": Backend("pytorchjob", "cpu", f"{KILLED_JOB}-master-0", "pytorch", "elasticPolicy"),
    # TrainJob (Trainer v2.3): its torch plugin has no elastic policy; the CLI sets the same one up.
    "trainjob": Backend(  # killed: <KILLED_JOB>-<hash>-node-0-0, found in the rendered chart
        "trainjob", "trainjob-cpu", f"{KILLED_JOB}-node-0-0", "node", "SIDEFORMER_ELASTIC_MAX_RESTARTS"
    ),
}


def chart_objects(**set_values: Any) -> list[dict[str, Any]]:
    return m.render_chart(m.KIND_VALUES, set_values=set_values or None)


def images(objects: list[dict[str, Any]]) -> set[str]:
    found = {
        c["image"]
        for obj in objects
        for pod in m.pod_specs(obj)
        for c in [*pod.get("initContainers", []), *pod["containers"]]
    }
    if any(o["kind"] == "PyTorchJob" and "Worker" in o["spec"]["pytorchReplicaSpecs"] for o in objects):
        found.add(m.OPERATOR_INIT_IMAGE)
    return found


@pytest.fixture(scope="module")
def stand_ins(cpu_image: str) -> str:
    """The stand-ins for every rendered image that is not ours; fails on an image nobody stands in for."""
    chart = chart_objects()
    postgres = m.container(m.pod_spec(m.one(chart, "StatefulSet")), "postgresql")["image"]
    rendered = [
        *chart,
        *chart_objects(**{"tune.backend": "trainjob"}),
        *(obj for backend in BACKENDS.values() for obj in m.render_kustomize(backend.final_overlay)),
    ]
    missing = images(rendered) - {cpu_image, postgres, m.OPERATOR_INIT_IMAGE}
    assert not missing, f"rendered images with neither a build nor a stand-in: {missing}"
    build_stand_ins(postgres, m.OPERATOR_INIT_IMAGE)
    return postgres


def expected_containers(objects: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(owner, container) -> how many run, counted from the rendered objects alone: every replica's init
    and main containers, plus the operator's init-pytorch in each Worker pod of a job with a Master; for a
    TrainJob, its runtime's pod (patched, as the TrainJob sets it) once per node."""
    counts: Counter[tuple[str, str]] = Counter()
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
            continue  # a template: its pods are counted under the TrainJobs that use it
        if obj["kind"] == "TrainJob":
            pod = tj.trainjob_pod(obj, objects)
            for c in [*pod.get("initContainers", []), *pod["containers"]]:
                counts[name, c["name"]] += tj.num_nodes(obj, tj.runtime_of(obj, objects))
        elif obj["kind"] == "PyTorchJob":
            for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items():
                pod = spec["template"]["spec"]
                names = [c["name"] for c in [*pod.get("initContainers", []), *pod["containers"]]]
                names += ["init-pytorch"] if replica == "Worker" else []
                for c in names:
                    counts[name, c] += int(spec.get("replicas", 1))
        else:
            replicas = int(obj.get("spec", {}).get("replicas", 1)) if obj["kind"] != "Pod" else 1
            for pod in m.pod_specs(obj):
                for c in [*pod.get("initContainers", []), *pod["containers"]]:
                    counts[name, c["name"]] += replicas
    return counts


def run_together(cluster: Cluster, pods: list[Pod], *also: Callable[[], None]) -> None:
    """Start pods at once, as their controllers create them (and run `also` beside them); the first
    failure ends the wait."""
    pool = ThreadPoolExecutor(max_workers=len(pods) + len(also))
    futures = [pool.submit(cluster.run_pod, pod, TIMEOUT) for pod in pods] + [pool.submit(f) for f in also]
    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        future.result()  # raises the first failure; the fixture's cleanup stops the rest
    for future in futures:
        future.result()


@dataclass
class Kill:
    """What killing one trainer cost, in seconds from the kill: to the failed trial's resumption from its
    checkpoint (a new "resuming from" in any tune worker's log: whichever worker takes the retry), and to
    the killed job's group training again (a new "worker joins study" in its rank-0 pod's log)."""

    seconds_to_progress: float = 0.0
    seconds_to_regroup: float = 0.0


def trainer_logs(cluster: Cluster, trainer: str, pod: str = "-tune-") -> str:
    """The logs of the trainer containers of the pods whose name contains `pod` (a restarted container's
    log holds every run's)."""
    return "".join(c.logs() for c in list(cluster.started) if pod in c.name and f".{trainer}." in c.name)


def kill_mid_trial(cluster: Cluster, backend: Backend, kill: Kill, timeout: float = TIMEOUT) -> None:
    """SIGKILL the trainer of `backend.killed` once the job's rank 0 has finished an epoch, as the OOM killer
    or a crash would: its restart policy (OnFailure) starts the container again in place, as the kubelet
    does. (`docker kill` would count as a manual stop, which no restart policy restarts.) Then wait for
    the trial to resume and the killed job's group to re-form (rank 0 may be on either pod after an
    elastic rendezvous), noting how long each took."""
    job = f"{KILLED_JOB}-"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = list(cluster.started)
        victim = [c for c in started if c.name.startswith(f"{backend.killed}.{backend.trainer}.")]
        if victim and "epoch 1/" in trainer_logs(cluster, backend.trainer, job):
            resumed = trainer_logs(cluster, backend.trainer).count("resuming from")
            joined = trainer_logs(cluster, backend.trainer, job).count("worker joins study")
            killed_at = time.monotonic()
            os.kill(victim[0].state()["Pid"], signal.SIGKILL)
            while time.monotonic() < deadline and not (kill.seconds_to_progress and kill.seconds_to_regroup):
                if not kill.seconds_to_progress and (
                    trainer_logs(cluster, backend.trainer).count("resuming from") > resumed
                ):
                    kill.seconds_to_progress = time.monotonic() - killed_at
                if not kill.seconds_to_regroup and (
                    trainer_logs(cluster, backend.trainer, job).count("worker joins study") > joined
                ):
                    kill.seconds_to_regroup = time.monotonic() - killed_at
                time.sleep(0.5)
            assert kill.seconds_to_progress and kill.seconds_to_regroup, f"no recovery within {timeout:.0f} s"
            return
        time.sleep(0.5)
    raise AssertionError(f"{KILLED_JOB}: no epoch finished within {timeout:.0f} s")


def host_url(cluster: Cluster, secret: str, key: str) -> str:
    """A rendered storage URL with the Service name replaced by the database container's address, which
    the host reaches on the bridge (the test's own queries; the pods use the Service name)."""
    url = urlsplit((cluster.secret(secret) or {})[key])
    container = next(c for c in cluster.started if c.aliases and url.hostname in c.aliases)
    info = json.loads(docker("inspect", container.name).stdout)[0]
    address = info["NetworkSettings"]["Networks"][cluster.network.name]["IPAddress"]
    netloc = url.netloc.replace(f"@{url.hostname}:", f"@{address}:")
    return urlunsplit(url._replace(netloc=netloc))


def dashboard_studies(cluster: Cluster, cpu_image: str, chart: list[dict[str, Any]]) -> list[str]:
    """GET /api/studies from another container on the network, through the dashboard's Service name and
    port: the study names optuna-dashboard lists (it reads them through the read-only role)."""
    service = m.one(m.component(chart, "dashboard"), "Service")
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/api/studies"
    script = (
        "import json, sys, urllib.request\n"
        f"body = json.load(urllib.request.urlopen({url!r}, timeout=30))\n"
        "print(json.dumps([s['study_name'] for s in body['study_summaries']]))\n"
    )
    name = f"probe-{secrets.token_hex(3)}"
    proc = docker(
        "run", "--rm", "--name", name, "--network", cluster.network.name, "--user", "1000:1000",
        "--entrypoint", "python", cpu_image, "-c", script, timeout=120,
    )  # fmt: skip
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_postgres_stand_in_keeps_the_official_images_contract(stand_ins: str, tmp_path: Path) -> None:
    """What the chart relies on: user postgres 999:999 and no account for uid 1000 (so libpq as uid 1000
    has no default user name: "no attempt", exit 3), pg_isready and psql on PATH, and an entrypoint that
    initialises PGDATA and runs /docker-entrypoint-initdb.d once, as uid 999 on a read-only root."""
    probe = (
        "id -u postgres; id -g postgres; getent passwd 1000 || echo none; command -v pg_isready; which psql"
    )
    assert docker("run", "--rm", "--entrypoint", "sh", stand_ins, "-c", probe).stdout.split() == [
        "999", "999", "none", "/usr/bin/pg_isready", "/usr/bin/psql",
    ]  # fmt: skip
    no_user = docker(
        "run", "--rm", "--user", "1000:1000", "--entrypoint", "pg_isready", stand_ins, "--host=127.0.0.1",
        check=False,
    )  # fmt: skip
    assert no_user.returncode == 3 and "no attempt" in no_user.stdout, no_user

    data, initdb, run = tmp_path / "data", tmp_path / "initdb", tmp_path / "run"
    for folder in (data, run):
        folder.mkdir()
        folder.chmod(0o777)
    initdb.mkdir()
    (initdb / "marker.sh").write_text('#!/bin/sh\necho "initdb script ran as $(id -u)"\n')
    (initdb / "marker.sh").chmod(0o555)
    logs = []
    for _ in range(2):  # a first start initialises; a restart on the same data must not run it again
        name = f"pg-contract-{secrets.token_hex(3)}"
        docker(
            "run", "--detach", "--name", name, "--user", "999:999", "--read-only",
            "--mount", f"type=bind,source={run},destination=/var/run/postgresql",  # emptyDirs
            "--mount", f"type=bind,source={run},destination=/tmp",
            "--mount", f"type=bind,source={data},destination=/var/lib/postgresql/data",
            "--mount", f"type=bind,source={initdb},destination=/docker-entrypoint-initdb.d,readonly",
            "--env", "POSTGRES_PASSWORD=contract", "--env", "PGDATA=/var/lib/postgresql/data/pgdata",
            stand_ins,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "database system is ready to accept connections" not in docker("logs", name).stderr:
                running = json.loads(docker("inspect", name).stdout)[0]["State"]["Running"]
                assert running and time.monotonic() < deadline, docker("logs", name)
                time.sleep(1)
            ready = docker("exec", name, "pg_isready", "--host=127.0.0.1", "--username=postgres", check=False)
            assert ready.returncode == 0, ready
            proc = docker("logs", name)
            logs.append(proc.stdout + proc.stderr)
        finally:
            docker("stop", name, check=False)
            docker("rm", "--force", name, check=False)
    assert "initdb script ran as 999" in logs[0] and "initdb script ran" not in logs[1], logs
    assert "Skipping initialization" in logs[1] or "skipping initialization" in logs[1], logs[1]


def test_wait_for_database_init_container_as_rendered(stand_ins: str, tmp_path: Path) -> None:
    """Regression: the chart's `wait-for-database` init container, in the postgres image as uid 1000 (an
    account the image lacks), against the chart's PostgreSQL. Without a user name libpq has none to
    send, and pg_isready answers "no attempt" (exit 3) until the init container gives up."""
    chart = chart_objects(**{"waitForDatabase.timeoutSeconds": 30})
    network = Network.create()
    cluster = Cluster(chart, tmp_path, network)
    try:
        (database,) = pods_of(m.one(chart, "StatefulSet"))
        cluster.run_pod(database, TIMEOUT)  # its readiness probe (pg_isready as uid 999) has passed
        (creator,) = pods_of(m.one(chart, "Job"))
        init = m.container(creator.spec, "wait-for-database")
        assert init["image"] == stand_ins and creator.spec["securityContext"]["runAsUser"] == 1000
        container, _ = cluster.start(creator, init, init=True)
        code = container.finish(timeout=120)
        logs = container.logs()
        assert code == 0 and "accepts connections" in logs, logs
    finally:
        cluster.remove_all()
        network.remove()


@dataclass
class Rehearsal:
    backend: Backend
    cluster: Cluster
    expected: Counter[tuple[str, str]]
    ran: Counter[tuple[str, str]]
    study: str
    budget: int
    finished: int
    distinct_params: int
    best_params: dict[str, Any]
    trials: list[optuna.trial.FrozenTrial]
    worker_logs: str
    listed_studies: list[str]
    final_args: list[str]
    kill: Kill


def owner_of(cluster: Cluster, pod_name: str, objects: list[dict[str, Any]]) -> str:
    return next(o["metadata"]["name"] for o in objects for p in pods_of(o, objects) if p.name == pod_name)


@pytest.fixture(scope="module", params=list(BACKENDS))
def rehearsal(
    request: pytest.FixtureRequest, cpu_image: str, stand_ins: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rehearsal]:
    backend = BACKENDS[request.param]
    chart = chart_objects(**{"tune.backend": backend.name})
    if backend.name == "trainjob":  # a TrainJob's name ends in a hash of its spec
        (job,) = [
            o for o in chart if o["kind"] == "TrainJob" and o["metadata"]["name"].startswith(f"{KILLED_JOB}-")
        ]
        backend = dataclasses.replace(backend, killed=f"{job['metadata']['name']}-node-0-0")
    final = m.render_kustomize(backend.final_overlay)
    network = Network.create()
    cluster = Cluster(chart + final, tmp_path_factory.mktemp(f"rehearsal-{backend.name}"), network)
    kill = Kill()
    try:
        hooks = sorted(
            (o for o in chart if "pre-install" in (m.hook(o) or "").split(",")),
            key=lambda o: int(o["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
        )
        for (
            obj
        ) in hooks:  # the generated Secret, the TrainJobs' runtime (no pods); a hook with pods runs here
            for pod in pods_of(obj, chart):
                cluster.run_pod(pod, TIMEOUT)
        installed = [o for o in m.installed(chart) if not m.is_hook(o)]
        run_together(
            cluster,
            [p for o in installed for p in pods_of(o, chart)],
            lambda: kill_mid_trial(cluster, backend, kill),
        )

        config = yaml.safe_load(m.config_text(chart))
        study_name = yaml.safe_load(m.KIND_VALUES.read_text())["study"]["name"]
        study = optuna.load_study(
            study_name=study_name, storage=host_url(cluster, "sideformer-tune-db", "storage-url")
        )
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        trials, best_params = study.get_trials(deepcopy=False), study.best_trial.params
        worker_logs = trainer_logs(cluster, backend.trainer)
        listed = dashboard_studies(cluster, cpu_image, chart)

        for test in sorted(
            (o for o in chart if m.is_test(o)),
            key=lambda o: (
                int(o["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0")),
                o["metadata"]["name"],
            ),
        ):
            for pod in pods_of(test, chart):
                cluster.run_pod(pod, TIMEOUT)
        (job,) = [o for o in final if pods_of(o, final)]  # the PyTorchJob, or the TrainJob (not its runtime)
        run_together(cluster, pods_of(job, final))
        cluster.stop_serving()

        ran = Counter((owner_of(cluster, r.pod, chart + final), r.container) for r in cluster.records)
        yield Rehearsal(
            backend,
            cluster,
            expected_containers(chart + final),
            ran,
            study_name,
            config["search"]["n_trials"],
            len(finished),
            len({tuple(sorted(t.params.items())) for t in finished}),
            best_params,
            trials,
            worker_logs,
            listed,
            m.run_spec(job).args if job["kind"] == "PyTorchJob" else job["spec"]["trainer"]["args"],
            kill,
        )
    finally:
        (cluster.root / "table.txt").write_text(cluster.table() + "\n")
        cluster.stop_serving()
        cluster.remove_all()
        network.remove()


def test_every_rendered_container_runs_and_exits_cleanly(
    rehearsal: Rehearsal, capsys: pytest.CaptureFixture
) -> None:
    cluster = rehearsal.cluster
    ran, expected = rehearsal.ran, rehearsal.expected
    with capsys.disabled():
        print(f"\n{cluster.table()}\n{sum(ran.values())} containers ran, {sum(expected.values())} rendered")
    assert ran == expected, f"ran, not rendered: {ran - expected}; rendered, not run: {expected - ran}"

    # Exit 0, except: the serving pods end on their stop signal (0, or 143 for SIGTERM; 137 would mean
    # they ignored it until SIGKILL), and the killed trainer restarts in place (only it: the other pod
    # of its job rejoins the group without exiting).
    backend = rehearsal.backend

    def clean(r: Record) -> bool:
        if r.stopped:
            return r.exit_code in (0, 143) and not r.restarts
        return r.exit_code == 0 and (
            not r.restarts or (r.pod == backend.killed and r.container == backend.trainer)
        )

    assert not [r for r in cluster.records if not clean(r)], cluster.table()
    killed = next(r for r in cluster.records if r.pod == backend.killed and r.container == backend.trainer)
    assert killed.restarts >= 1, cluster.table()


def test_a_killed_tune_worker_restarts_in_place_and_its_trial_resumes(
    rehearsal: Rehearsal, capsys: pytest.CaptureFixture
) -> None:
    backend, cluster = rehearsal.backend, rehearsal.cluster
    restarts = sum(
        r.restarts for r in cluster.records if r.pod.startswith(KILLED_JOB) and r.container == backend.trainer
    )
    with capsys.disabled():
        print(
            f"\n{backend.name} (c10d rendezvous from {backend.rendezvous}): the rendezvous host's trainer "
            f"killed -> its trial resumed from its checkpoint after "
            f"{rehearsal.kill.seconds_to_progress:.1f} s, "
            f"the killed job's group re-formed after {rehearsal.kill.seconds_to_regroup:.1f} s, "
            f"{restarts} container restart(s)"
        )
    # Only the killed pod's container restarted: the surviving pod's `sideformer` started torchrun again,
    # which re-formed the group with the restarted pod (and the trial resumed).
    assert restarts == 1, cluster.table()
    rejoined = trainer_logs(cluster, backend.trainer, f"{KILLED_JOB}-")
    assert "rejoining it (1 of 3)" in rejoined, cluster.table()
    failed = [t for t in rehearsal.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state.name) for t in rehearsal.trials]
    retries = [t for t in rehearsal.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == failed[0].params
    assert min(retries[0].intermediate_values) >= 2, "the retry started over instead of resuming"
    assert f"retry of {failed[0].number}" in rehearsal.worker_logs
    # Re-queued by the restarted trainer itself (it knows the trial by its pod name), not by the heartbeat.
    assert f"trial {failed[0].number} was left running by this worker" in rehearsal.worker_logs
    assert "resuming from" in rehearsal.worker_logs


def test_tune_workers_spend_the_study_budget(rehearsal: Rehearsal) -> None:
    assert rehearsal.finished == rehearsal.budget
    assert rehearsal.distinct_params == rehearsal.budget
    output = rehearsal.cluster.claims["sideformer-tune-output"] / rehearsal.study
    best = json.loads((output / "best_hyperparams.json").read_text())
    assert best["params"] == rehearsal.best_params
    assert len(list((output / "trials").iterdir())) == rehearsal.budget


def test_dashboard_lists_the_study_on_its_service_port(rehearsal: Rehearsal) -> None:
    assert rehearsal.listed_studies == [rehearsal.study]


def test_final_training_writes_what_the_readme_promises(rehearsal: Rehearsal) -> None:
    args = rehearsal.final_args
    output = Path(args[args.index("--output") + 1])
    final = rehearsal.cluster.claims["sideformer-tune-output"] / output.relative_to("/output")
    for name in ("config.yaml", "train_log.jsonl", "metrics.json", "final_ckpts/model/config.json"):
        assert (final / name).is_file(), name
    state = torch.load(final / "final_ckpts" / "best_model.pth", weights_only=True)
    assert any(k.startswith("decode_head") for k in state)
    assert not (final / "temp_ckpts").exists()
    metrics = json.loads((final / "metrics.json").read_text())
    best = json.loads((final.parent / "best_hyperparams.json").read_text())
    assert len(metrics["history"]) == best["best_epoch"], "the final run trains for the best trial's epochs"
