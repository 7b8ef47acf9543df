"""Hyperparameter search against a real PostgreSQL server: parallel workers (one of them a 2-process
torchrun job), a worker killed mid-trial, a database restart."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.integration.conftest import REPO, env_for, free_port, sideformer
from tests.pg import PostgresServer

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def write_config(path: Path, **search: object) -> Path:
    config = {
        "model": {"variant": "b0"},
        "data": {"crop_size": [64, 64], "num_workers": 0, "check": False},
        "train": {"batch_size": 4},
        "optim": {"warmup_steps": 2},
        "wandb": {"enabled": False},
        "search": {
            "epochs": 3,
            "data_fraction": 1.0,
            "pruner_startup_trials": 1,
            "pruner_warmup_epochs": 0,
            "heartbeat_interval": 1,
            "grace_period": 4,
            "space": {
                "optim.lr": {"type": "float", "low": 1e-10, "high": 1e-2, "log": True},
                "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            },
            **search,
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def search_cmd(data: Path, output: Path, config: Path, url: str, *extra: str) -> list[str]:
    return sideformer("search", "--data", str(data), "--output", str(output), "--config", str(config),
                      "--storage", url, "--study", "test", *extra)  # fmt: skip


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env_for(), cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    codes = [p.returncode for p in procs]
    assert codes == [0] * len(procs), "\n\n".join(
        f"exit {c}:\n{log.read_text()[-3000:]}" for c, log in zip(codes, logs, strict=True)
    )


def wait_for_running_trial(
    study: optuna.Study, proc: subprocess.Popen, log: Path, timeout: float = 120
) -> None:

    def started() -> bool:
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return True
        assert proc.poll() is None, f"worker exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        return False

    wait_until(started, timeout, lambda: f"no trial started:\n{log.read_text()[-3000:]}", interval=0.5)


def kill_after_two_epochs(worker: subprocess.Popen, output: Path, log: Path) -> None:
    """SIGKILL a worker once its first trial has logged two epochs, as a crash or the OOM killer would."""
    progress = output / "trials/trial_0000/train_log.jsonl"
    wait_until(
        lambda: (
            (progress.exists() and len(progress.read_text().splitlines()) >= 2) or worker.poll() is not None
        ),
        300,
        log.read_text,
    )
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def create_study(config: Path, url: str, run) -> None:
    proc = run(sideformer("study", "create", "--storage", url, "--study", "test", "--config", str(config)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_three_workers_share_one_study(synth_dataset: Path, tmp_path: Path, postgres_url: str, run) -> None:
    budget = 7
    config = write_config(
        tmp_path / "search.yaml", n_trials=budget, objective="val_loss", sampler_startup_trials=3
    )
    create_study(config, postgres_url, run)
    # The space's low end (lr ~1e-10) cannot learn in three epochs: a clearly bad region. Enqueue trials
    # so that three good ones run first and bad ones follow, then the sampler proposes the rest.
    study = optuna.load_study(study_name="test", storage=postgres_url)
    for lr in (1e-3, 2e-3, 3e-3, 1e-10, 2e-10):
        study.enqueue_trial({"optim.lr": lr, "optim.weight_decay": 0.01})

    output = tmp_path / "out"
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    # The torchrun worker starts slowest; let it claim a trial before the others start, or they may
    # finish the whole budget before it joins.
    ddp_cmd = search_cmd(synth_dataset, output, config, postgres_url, "--seed", "3", "--nproc-per-node", "2")
    ddp_worker = start(ddp_cmd, logs[2])
    wait_for_running_trial(study, ddp_worker, logs[2])
    procs = [
        start(search_cmd(synth_dataset, output, config, postgres_url, "--seed", "1"), logs[0]),
        start(search_cmd(synth_dataset, output, config, postgres_url, "--seed", "2"), logs[1]),
        ddp_worker,
    ]
    wait_all(procs, logs)

    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == budget, [(t.number, t.state.name) for t in trials]
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == budget, "two trials share parameters"
    assert all(t.intermediate_values for t in finished)
    assert any(t.state == TrialState.PRUNED for t in finished), "no trial was pruned"
    pruned_lrs = [t.params["optim.lr"] for t in finished if t.state == TrialState.PRUNED]
    assert min(pruned_lrs) < 1e-6
    assert "2 process(es)" in logs[2].read_text()  # the torchrun worker ran DDP trials
    assert any("2 process(es)" in log.read_text() for log in logs[2:])
    best = json.loads((output / "best_hyperparams.json").read_text())
    assert best["finished_trials"] == budget and best["objective"] == "val_loss"
    assert best["value"] == pytest.approx(study.best_value)
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert all({"val_miou", "val_loss", "best_epoch"} <= set(t.user_attrs) for t in complete)


def test_a_killed_worker_s_trial_is_retried_and_resumes(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    config = write_config(tmp_path / "search.yaml", n_trials=2, epochs=4, pruner="none")
    create_study(config, postgres_url, run)
    output = tmp_path / "out"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = start(search_cmd(synth_dataset, output, config, postgres_url, "--seed", "1"), first_log)
    kill_after_two_epochs(first, output, first_log)

    second = start(search_cmd(synth_dataset, output, config, postgres_url, "--seed", "2"), second_log)
    wait_all([second], [second_log])

    study = optuna.load_study(study_name="test", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL  # failed by heartbeat after the grace period
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[0].params
    assert min(retries[0].intermediate_values) > 2, retries[0].intermediate_values  # resumed, not restarted
    assert "retry of 0" in second_log.read_text() and "resuming from" in second_log.read_text()
    assert len([t for t in trials if t.state in FINISHED]) == 2


def test_a_restarted_worker_queues_its_own_trial_again_at_once(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    """A worker killed mid-trial whose container restarts in the same pod (SIDEFORMER_WORKER_ID, the pod
    name, unchanged) fails and re-queues the trial it left RUNNING as it starts, and resumes it: no wait
    for the heartbeat's grace period, here an hour, which would outlast the test."""
    config = write_config(tmp_path / "search.yaml", n_trials=1, epochs=4, pruner="none", grace_period=3600)
    create_study(config, postgres_url, run)
    output, first_log, second_log = tmp_path / "out", tmp_path / "first.log", tmp_path / "second.log"
    command = search_cmd(synth_dataset, output, config, postgres_url)
    pod = {"SIDEFORMER_WORKER_ID": "sideformer-tune-tune-0-master-0"}
    first = subprocess.Popen(
        command, env=env_for(**pod), cwd=REPO, stdout=first_log.open("w"), stderr=subprocess.STDOUT
    )
    kill_after_two_epochs(first, output, first_log)

    # A worker of another pod leaves the trial alone: it is not its own, and within its grace period.
    other_log = tmp_path / "other.log"
    other_pod = env_for(SIDEFORMER_WORKER_ID="sideformer-tune-tune-1-master-0")
    other = subprocess.Popen(
        command, env=other_pod, cwd=REPO, stdout=other_log.open("w"), stderr=subprocess.STDOUT
    )
    wait_until(lambda: "worker joins study" in other_log.read_text(), 120, other_log.read_text)
    time.sleep(2)
    other.kill()
    other.wait()
    assert "queued again" not in other_log.read_text()
    study = optuna.load_study(study_name="test", storage=postgres_url)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.RUNNING]

    second = subprocess.Popen(
        command, env=env_for(**pod), cwd=REPO, stdout=second_log.open("w"), stderr=subprocess.STDOUT
    )
    wait_all([second], [second_log], timeout=300)
    log = second_log.read_text()
    assert "trial 0 was left running by this worker (sideformer-tune-tune-0-master-0)" in log, log
    trials = optuna.load_study(study_name="test", storage=postgres_url).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].system_attrs.get("failed_trial") == 0 and min(trials[1].intermediate_values) > 2
    assert "retry of 0" in log and "resuming from" in log


def test_workers_survive_a_database_restart(
    synth_dataset: Path, tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, run
) -> None:
    budget = 4
    config = write_config(tmp_path / "search.yaml", n_trials=budget, pruner="none")
    create_study(config, postgres_url, run)
    output = tmp_path / "out"
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = [
        start(search_cmd(synth_dataset, output, config, postgres_url, "--seed", str(i)), logs[i])
        for i in range(2)
    ]
    study = optuna.load_study(study_name="test", storage=postgres_url)

    def one_complete() -> bool:
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return True
        assert all(p.poll() is None for p in procs), logs[0].read_text()
        return False

    wait_until(one_complete, 300, logs[0].read_text, interval=0.2)
    postgres_server.restart()
    wait_all(procs, logs)
    finished = optuna.load_study(study_name="test", storage=postgres_url).get_trials(states=FINISHED)
    assert len(finished) == budget


def test_optuna_dashboard_serves_the_study(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    """The real optuna-dashboard, pointed at the same PostgreSQL storage, returns the study and its trials
    with the metrics SideFormer stores as user attributes."""
    config = write_config(tmp_path / "search.yaml", n_trials=2, epochs=1, pruner="none")
    proc = run(search_cmd(synth_dataset, tmp_path / "out", config, postgres_url, "--seed", "1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    port = free_port()
    executable = Path(sys.executable).parent / "optuna-dashboard"
    dashboard = subprocess.Popen(
        [str(executable), postgres_url, "--host", "127.0.0.1", "--port", str(port)],
        env=env_for(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def studies_page() -> dict | None:
            try:
                return json.loads(urllib.request.urlopen(f"{base}/api/studies", timeout=5).read())
            except OSError:
                assert dashboard.poll() is None, "dashboard did not start"
                return None

        studies = wait_until(studies_page, 60, "dashboard did not start", interval=0.5)["study_summaries"]
        (summary,) = [s for s in studies if s["study_name"] == "test"]
        detail = json.loads(
            urllib.request.urlopen(f"{base}/api/studies/{summary['study_id']}", timeout=10).read()
        )
        trials = detail["trials"]
        assert len(trials) == 2
        assert all(t["state"] == "Complete" for t in trials)
        attrs = {a["key"] for a in trials[0]["user_attrs"]}
        assert {"val_miou", "val_loss", "best_epoch"} <= attrs
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
