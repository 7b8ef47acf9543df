"""`sideformer search --trials-per-gpu N` on a real PostgreSQL study: N slot processes run trials at the
same time, and a slot killed mid-trial starts again and queues its own trial again at once (its worker id
is the same), resuming it from the trial's checkpoint. On CPU the memory split is skipped (no GPU)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import wait_until
from tests.integration.conftest import REPO, env_for
from tests.integration.test_tune import FINISHED, create_study, search_cmd, write_config

pytestmark = pytest.mark.slow


def slot_processes(parent: int) -> dict[str, int]:
    """The supervisor's child processes by their SIDEFORMER_TRIAL_SLOT ("k/N")."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    out = {}
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"SIDEFORMER_TRIAL_SLOT="):
                out[item.split(b"=", 1)[1].decode()] = int(pid)
    return out


def test_two_slots_share_one_study_and_a_killed_slot_s_trial_is_queued_again(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    # A grace period far beyond the test: only the restarted slot's own reclaim can re-queue the trial.
    config = write_config(tmp_path / "search.yaml", n_trials=4, epochs=4, pruner="none", grace_period=3600)
    create_study(config, postgres_url, run)
    output, log = tmp_path / "out", tmp_path / "search.log"
    supervisor = subprocess.Popen(
        search_cmd(synth_dataset, output, config, postgres_url, "--trials-per-gpu", "2", "--seed", "5"),
        env=env_for(SIDEFORMER_WORKER_ID="tune-0-master-0"),
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    study = optuna.load_study(study_name="test", storage=postgres_url)

    def two_running() -> bool:
        assert supervisor.poll() is None, log.read_text()[-3000:]
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return len(running) == 2 and all("worker" in t.user_attrs for t in running)

    wait_until(two_running, 300, lambda: log.read_text()[-3000:], interval=0.2)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert {t.user_attrs["worker"] for t in running} == {"tune-0-master-0-slot0", "tune-0-master-0-slot1"}

    # Kill the slot that runs trial 0 once that trial has a checkpoint to resume from.
    victim = next(t for t in running if t.number == min(r.number for r in running))
    progress = Path(victim.user_attrs["output"]) / "train_log.jsonl"
    wait_until(lambda: progress.exists() and progress.read_text().count("\n") >= 2, 300, log.read_text)
    slot = victim.user_attrs["worker"].removeprefix("tune-0-master-0-slot")
    os.kill(slot_processes(supervisor.pid)[f"{slot}/2"], signal.SIGKILL)

    assert supervisor.wait(timeout=600) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"slot {slot} was killed by signal 9" in text
    assert f"trial {victim.number} was left running by this worker (tune-0-master-0-slot{slot})" in text
    trials = optuna.load_study(study_name="test", storage=postgres_url).get_trials(deepcopy=False)
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert min(retries[0].intermediate_values) > 1  # resumed from its checkpoint, not restarted
    assert len([t for t in trials if t.state in FINISHED]) == 4
    assert {t.user_attrs["worker"] for t in trials} == {"tune-0-master-0-slot0", "tune-0-master-0-slot1"}


def test_sigterm_reaches_every_slot_and_each_queues_its_trial_again(
    synth_dataset: Path, tmp_path: Path, postgres_url: str, run
) -> None:
    """A drained node: the supervisor forwards SIGTERM, each slot saves its trial's step and re-queues it."""
    config = write_config(tmp_path / "search.yaml", n_trials=4, epochs=4, pruner="none", grace_period=3600)
    create_study(config, postgres_url, run)
    log = tmp_path / "search.log"
    supervisor = subprocess.Popen(
        search_cmd(synth_dataset, tmp_path / "out", config, postgres_url, "--trials-per-gpu", "2"),
        env=env_for(),
        cwd=REPO,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    study = optuna.load_study(study_name="test", storage=postgres_url)

    def two_training() -> bool:
        assert supervisor.poll() is None, log.read_text()[-3000:]
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return len(running) == 2 and log.read_text().count("training SegFormer") >= 2

    wait_until(two_training, 300, lambda: log.read_text()[-3000:], interval=0.2)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=300) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    trials = optuna.load_study(study_name="test", storage=postgres_url).get_trials(deepcopy=False)
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert len(stopped) == 2 and not [t for t in trials if t.state == TrialState.RUNNING]
    queued = [t.system_attrs.get("failed_trial") for t in trials if t.state == TrialState.WAITING]
    assert sorted(queued) == sorted(t.number for t in stopped)  # both queued again at once
