"""Pins the Optuna behaviour `sideformer.optuna_compat` works around, on a real SQLite storage.

If an Optuna upgrade fails heartbeat-less RUNNING trials itself, or renames the private API the
workaround uses, these tests fail and say which."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sideformer import optuna_compat

GRACE = 2
# Optuna warns that heartbeats are meant for optimize(); these tests create a trial without one on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage")


def study_with_silent_trial(tmp_path: Path) -> tuple[optuna.Study, int]:
    """A study whose one trial is RUNNING and never beat: `ask()` starts no heartbeat thread."""
    storage = optuna_compat.rdb_storage(
        f"sqlite:///{tmp_path / 'study.db'}", {}, heartbeat_interval=1, grace_period=GRACE, max_retry=1
    )
    study = optuna.create_study(storage=storage, study_name="compat")
    return study, study.ask().number


def test_optuna_never_fails_a_running_trial_that_never_beat(tmp_path: Path) -> None:
    study, number = study_with_silent_trial(tmp_path)
    time.sleep(GRACE + 1)
    optuna_compat.fail_stale_trials(study)
    # The behaviour the workaround exists for: still RUNNING, long after the grace period.
    assert study.get_trials(deepcopy=False)[number].state == TrialState.RUNNING


def test_the_workaround_fails_it_and_the_retry_callback_enqueues_a_retry(tmp_path: Path) -> None:
    study, number = study_with_silent_trial(tmp_path)
    trials = study.get_trials(deepcopy=False)
    not_yet = trials[number].datetime_start - datetime.timedelta(seconds=1)
    assert optuna_compat.fail_trials_without_heartbeat(study, trials, not_yet) == []  # too recent

    later = datetime.datetime.now() + datetime.timedelta(seconds=1)
    assert optuna_compat.fail_trials_without_heartbeat(study, trials, later) == [number]
    after = study.get_trials(deepcopy=False)
    assert after[number].state == TrialState.FAIL
    retries = [t for t in after if t.state == TrialState.WAITING]
    assert len(retries) == 1 and optuna_compat.retry_history(retries[0]) == [number]
    # A second worker doing the same finds nothing left to fail.
    assert optuna_compat.fail_trials_without_heartbeat(study, after, later) == []
