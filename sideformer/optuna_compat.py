"""The one place that reaches into Optuna's private API or silences its experimental warnings.

Heartbeats and their retry callback are "experimental" in Optuna 5 (since 2.8), and exactly what fault
tolerance needs; their warnings would only clutter every worker's log, so they are silenced around the
calls, never process-wide.

`fail_trials_without_heartbeat` works around a gap in `fail_stale_trials`: a RUNNING trial that never
recorded a heartbeat (created just as the database went away) is never considered stale, so it would stay
RUNNING forever and every worker would wait for it. tests/unit/test_optuna_compat.py pins that behaviour:
when an Optuna upgrade changes it (or the private names below), that test says so.
"""

from __future__ import annotations

import datetime
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.storages._rdb import models  # private: the heartbeat table
from optuna.trial import FrozenTrial, TrialState

from sideformer.errors import UserError


@contextmanager
def experimental_allowed() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        yield


def rdb_storage(
    url: str, engine_kwargs: dict[str, Any], heartbeat_interval: int, grace_period: int, max_retry: int
) -> optuna.storages.RDBStorage:
    """RDBStorage with heartbeats whose stale trials are failed and re-enqueued (up to `max_retry`)."""
    with experimental_allowed():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=max_retry
            ),
        )


def fail_stale_trials(study: optuna.Study) -> None:
    with experimental_allowed():
        optuna.storages.fail_stale_trials(study)


def retry_history(trial: FrozenTrial) -> list[int]:
    """Numbers of the trials this one retries, oldest first (empty for a first attempt)."""
    with experimental_allowed():
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(trial)


def fail_trials_without_heartbeat(
    study: optuna.Study, trials: list[FrozenTrial], started_before: datetime.datetime
) -> list[int]:
    """Fail (and so retry, through the storage's stale-trial callback) the RUNNING trials started before
    `started_before` (client clock) that never recorded a heartbeat. Returns the numbers of those failed
    here; a trial another worker failed first is skipped."""
    storage = study._storage
    rdb = getattr(storage, "_backend", storage)  # a Study wraps its RDBStorage in a cache
    if not isinstance(rdb, optuna.storages.RDBStorage):
        return []
    old = {
        t._trial_id: t for t in trials if t.state == TrialState.RUNNING and t.datetime_start < started_before
    }
    if not old:
        return []
    session = rdb.scoped_session()
    try:
        beating = {
            row[0]
            for row in session.query(models.TrialHeartbeatModel.trial_id)
            .filter(models.TrialHeartbeatModel.trial_id.in_(list(old)))
            .all()
        }
    finally:
        session.close()
    return fail_and_retry(study, [old[trial_id] for trial_id in set(old) - beating])


def fail_and_retry(study: optuna.Study, trials: list[FrozenTrial]) -> list[int]:
    """Fail these RUNNING trials and retry each through the storage's stale-trial callback, as if their
    heartbeat had gone stale. Returns the numbers failed here; a trial another worker finished or
    failed first is skipped."""
    storage, callback = study._storage, _stale_trial_callback(study)
    failed = []
    for trial in trials:
        try:
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first
        failed.append(trial.number)
        if callback is not None:
            with experimental_allowed():
                callback(study, storage.get_trial(trial._trial_id))
    return sorted(failed)


def retry_trial(study: optuna.Study, number: int) -> bool:
    """Re-enqueue finished (failed) trial `number` through the storage's stale-trial callback, as if its
    worker had died: same parameters, retry history kept, so the retry resumes from its checkpoint.
    False when the storage has no such callback (heartbeats off)."""
    callback = _stale_trial_callback(study)
    if callback is None:
        return False
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    with experimental_allowed():
        callback(study, trial)
    return True


def _stale_trial_callback(study: optuna.Study) -> Any:
    """The storage's heartbeat stale-trial callback (the retry), or None without heartbeats."""
    rdb = getattr(study._storage, "_backend", study._storage)  # a Study wraps its RDBStorage in a cache
    return rdb.get_heartbeat_stale_trial_callback() if isinstance(rdb, optuna.storages.RDBStorage) else None


class _NoTraceForUserErrors(logging.Filter):
    """Optuna logs a failed trial's exception with its traceback. A UserError (a full disk, a folder in
    use) ends the command in one line of its own: keep Optuna's warning, drop the trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_user_error_traces() -> None:
    optuna.logging.get_logger("optuna")  # makes sure Optuna's handler exists
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _NoTraceForUserErrors) for f in handler.filters):
            handler.addFilter(_NoTraceForUserErrors())


quiet_user_error_traces()
