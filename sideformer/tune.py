"""Hyperparameter search with Optuna: many workers, each possibly a torchrun DDP job, share one study.

- Storage (`study`): an RDB URL opened with heartbeats: a trial whose worker died is failed after the
  grace period and re-enqueued by `RetryHeartbeatStaleTrialCallback`; the retry resumes from that
  trial's last checkpoint under `<output>/trials/`.
- Budget: `search.n_trials` finished (complete or pruned) trials in the study, over all workers. A trial
  that would exceed it (two workers racing for the last slot) is failed as surplus before it trains, so
  the study ends with exactly the budget.
- DDP: rank 0 owns the Optuna trial and sends every other rank the trial's config; `train` broadcasts the
  prune decision; a final "stop" message releases the other ranks. No rank waits forever.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from sideformer import distributed, optuna_compat, search_start
from sideformer.atomic import atomic_write_json
from sideformer.config import Config, SearchConfig
from sideformer.data.metadata import load_metadata
from sideformer.distributed import DistEnv
from sideformer.errors import Stopped, UserError, chain, first_line
from sideformer.rundir import RunDir
from sideformer.search_space import Param, apply_params, parse_space, read_params_json, space_size
from sideformer.study import (
    create_study,
    load_study,
    open_storage,
    redact,
    resolve_storage_url,
    sqlite_disk_full,
    study_exists,
    with_retries,
)
from sideformer.train import TrainResult, train
from sideformer.train_state import EpochMetrics

log = logging.getLogger(__name__)

WAIT_SECONDS = 5.0
WORKER_ID_ENV = "SIDEFORMER_WORKER_ID"  # unique among the running workers, the same after a restart
MAX_DATABASE_ERRORS = 60  # consecutive failed attempts, WAIT_SECONDS apart: five minutes


# --- running trials -----------------------------------------------------------------------------------


class SurplusTrial(Exception):
    """The study's budget was met by other workers while this trial was being created."""


class DuplicateTrial(Exception):
    """The sampler proposed parameters another trial already has."""


def run_search(
    config: Config,
    storage_url: str,
    study_name: str,
    env: DistEnv,
    seed: int | None = None,
    warm_start: str | None = None,
) -> dict[str, Any] | None:
    """Run trials until the study holds `search.n_trials` finished ones or its deadline (search.timeout)
    passes; return the best hyperparameters (also written to <output>/best_hyperparams.json). Every rank
    of a torchrun worker calls this, inside the command's `distributed.process_group()`. `warm_start`
    (see search_start.warm_start_trials) seeds a study this call creates."""
    if not env.is_main:
        _follow(env)
        return None
    try:
        return _lead(config, storage_url, study_name, seed, env, warm_start)
    except Exception as exc:
        if (full := sqlite_disk_full(exc, storage_url)) is not None:
            raise full from None
        raise
    finally:
        distributed.broadcast_object(("stop", None), env)


def _follow(env: DistEnv) -> None:
    """Ranks > 0: train whatever rank 0 sends until it says stop."""
    while True:
        kind, trial_config = distributed.broadcast_object(None, env)
        if kind == "stop":
            return
        if kind == "train":
            train(trial_config, resume=True, env=env)


def _caused_by_database(exc: BaseException) -> bool:
    """True when a database error is anywhere in the chain (Optuna re-raises some as other types)."""
    database_errors = sqlalchemy.exc.OperationalError | optuna.exceptions.StorageInternalError
    return any(isinstance(seen, database_errors) for seen in chain(exc))


def _lead(
    config: Config, storage_url: str, study_name: str, seed: int | None, env: DistEnv, warm_start: str | None
) -> dict[str, Any]:
    search = config.search
    params = parse_space(search.space)
    if space_size(params) < search.n_trials:
        raise UserError(
            f"search.space has only {space_size(params):.0f} distinct combinations for "
            f"search.n_trials={search.n_trials}; widen the space or lower the budget."
        )
    study = open_study(config, params, storage_url, study_name, warm_start)
    deadline = search_start.study_deadline(study, search.timeout)
    seed = seed if seed is not None else secrets.randbits(31)  # distinct per worker: no duplicate proposals
    study.sampler = optuna.samplers.TPESampler(
        seed=seed, constant_liar=True, n_startup_trials=search.sampler_startup_trials
    )
    study.pruner = _pruner(search)
    log.info("worker joins study %r on %s (sampler seed %d)", study_name, redact(storage_url), seed)
    _reclaim_own_trials(study)

    database_errors = 0
    running: list[int] = []  # the trials this worker trained, the last for a SIGTERM in the middle of it
    while True:
        try:
            trials = study.get_trials(deepcopy=False)  # one query per round
            states = Counter(t.state for t in trials)
            finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
            if finished >= search.n_trials:
                break
            in_flight, waiting = states[TrialState.RUNNING], states[TrialState.WAITING]
            deadline = search_start.read_deadline(study)  # each round: it may be moved while running
            if search_start.past(deadline) and in_flight == 0:
                log.info("the study's time budget ended at %s; no new trial starts", deadline)
                break
            if (finished + in_flight >= search.n_trials and waiting == 0) or search_start.past(deadline):
                # Other workers run the last trials (or the time is up and theirs finish). Stay, to pick
                # up the retry if one of them dies before the deadline, and to report the best after.
                optuna_compat.fail_stale_trials(study)
                _fail_trials_that_never_beat(study, trials, search)
                distributed.broadcast_object(("wait", None), env)
                time.sleep(WAIT_SECONDS)
                continue
            try:
                study.optimize(
                    lambda trial: _objective(trial, config, params, env, running),
                    n_trials=1,
                    catch=(SurplusTrial, DuplicateTrial),
                )
            except Exception as exc:
                # Stopped by SIGTERM, or a peer pod of this trial died: Optuna marked the trial FAIL. Queue
                # its retry now instead of after the heartbeat's grace period, and exit; whichever worker
                # takes the retry resumes from the trial's checkpoint (with several pods, torchrun's elastic
                # agent or this pod's `sideformer` starts this process again and the group re-forms).
                stopped = isinstance(exc, Stopped)
                if running and (stopped or (env.is_distributed and distributed.lost_a_peer(exc))):
                    why = "stopped by SIGTERM" if stopped else f"lost a peer ({first_line(exc)})"
                    if optuna_compat.retry_trial(study, running[-1]):
                        log.warning("trial %d %s; queued again", running[-1], why)
                raise
            database_errors = 0
        except Exception as exc:
            if not _caused_by_database(exc) or sqlite_disk_full(exc, storage_url) is not None:
                raise
            # The database restarted or the network blinked. A trial caught in it stays RUNNING without
            # heartbeats, so it is failed and retried (resuming from its checkpoint) like a dead worker's.
            database_errors += 1
            if database_errors > MAX_DATABASE_ERRORS:
                raise UserError(f"lost the study database {redact(storage_url)}: {first_line(exc)}") from None
            log.warning("study database unavailable (%s); retrying in %.0fs", first_line(exc), WAIT_SECONDS)
            time.sleep(WAIT_SECONDS)
    best = best_hyperparams(study, search, timed_out=search_start.past(deadline))
    atomic_write_json(RunDir(config.output).hyperparams, best)
    log.info(
        "study %r has %d finished trials; best %s = %.4f",
        study_name,
        finished,
        search.objective,
        best["value"],
    )
    return best


def open_study(
    config: Config,
    params: list[Param],
    storage_url: str,
    study_name: str,
    warm_start: str | None = None,
    *,
    warn_if_existed: bool = False,
) -> optuna.Study:
    """Create or load the study. Only a study this call creates is seeded: its warm start is read and
    checked before anything is written, and the creating process enqueues it and the recipe trial
    (search_start). A study that exists is joined as it is and its warm start not read (the previous
    study may be gone, or outside today's space, by then). That is the normal case of a worker (the chart
    gives every worker the creator's --warm-start, for the worker that finds no study yet), said at INFO;
    `sideformer study create` passes `warn_if_existed`, since its user asked for a seeded study."""
    search = config.search
    existed = study_exists(storage_url, study_name, search)
    warm = (
        []
        if warm_start is None or existed
        else search_start.warm_start_trials(warm_start, config, params, storage_url)
    )
    recipe = search_start.recipe_trial(config, params) if search.start_from_config else {}
    first = search_start.first_trials(warm, recipe)
    storage = open_storage(storage_url, search)
    study = create_study(storage, study_name, search, first, search_start.deadline_from(search.timeout))
    if existed and warm_start is not None:
        log.log(
            logging.WARNING if warn_if_existed else logging.INFO,
            "study %r already existed: --warm-start only seeds a new study, nothing enqueued",
            study_name,
        )
    return study


def _reclaim_own_trials(study: optuna.Study) -> None:
    """A worker that restarted (its container, in the same pod) re-queues the trials its previous life
    left RUNNING at once, instead of leaving them to wait out the heartbeat's grace period. Only where
    SIDEFORMER_WORKER_ID names this worker uniquely among the running ones (the chart sets the pod name):
    two workers on one machine share a host name, and neither may fail the other's trial."""
    worker = os.environ.get(WORKER_ID_ENV)
    if not worker:
        return
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [t for t in running if t.user_attrs.get("worker") == worker]
    for number in optuna_compat.fail_and_retry(study, mine):
        log.warning(
            "trial %d was left running by this worker (%s) before it restarted; queued again", number, worker
        )


def _objective(
    trial: optuna.Trial, config: Config, params: list[Param], env: DistEnv, running: list[int]
) -> float:
    search = config.search
    stored = {p.key: _suggest(trial, p) for p in params}
    _refuse_surplus_or_duplicate(trial, stored, search.n_trials)
    values = {
        p.key: p.labels.get(stored[p.key], stored[p.key]) if p.labels else stored[p.key] for p in params
    }

    # A retried trial continues in the folder of the trial it retries, from its last checkpoint.
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    history = optuna_compat.retry_history(frozen)
    root = history[0] if history else trial.number
    trial_config = apply_params(config, values)
    trial_config.output = str(RunDir(config.output).trial(root))
    trial_config.train.epochs = search.epochs
    trial_config.data.train_fraction = search.data_fraction
    trial_config.early_stop.monitor = search.objective
    trial_config.wandb.group = trial.study.study_name
    trial_config.wandb.name = f"trial-{trial.number}"
    trial.set_user_attr("output", trial_config.output)
    if WORKER_ID_ENV in os.environ:
        trial.set_user_attr("worker", os.environ[WORKER_ID_ENV])
    log.info("trial %d%s: %s", trial.number, f" (retry of {root})" if history else "", json.dumps(values))

    def report_to_study(metrics: EpochMetrics) -> bool:
        # Never raise here: under DDP the other ranks are waiting for this decision.
        def report_and_decide() -> bool:
            trial.report(getattr(metrics, search.objective), step=metrics.epoch)
            # After the last epoch there is nothing left to save: pruning would only discard a finished
            # trial (successive halving's rung at 9 epochs is a trial of 9 epochs' end).
            return metrics.epoch < search.epochs and trial.should_prune()

        try:
            return bool(with_retries(report_and_decide))
        except sqlalchemy.exc.SQLAlchemyError as exc:
            log.warning(
                "could not report epoch %d to the study (%s); not pruning", metrics.epoch, first_line(exc)
            )
            return False

    distributed.broadcast_object(("train", trial_config), env)
    running.append(trial.number)
    result = train(trial_config, on_epoch=report_to_study, resume=True, env=env)
    with_retries(lambda: _store_metrics(trial, result))
    if result.stop_reason == "reported":
        raise optuna.TrialPruned(f"pruned after epoch {result.history[-1].epoch}")
    return getattr(result.best, search.objective)


def _suggest(trial: optuna.Trial, param: Param) -> Any:
    d = param.distribution
    if hasattr(d, "choices"):
        return trial.suggest_categorical(param.key, d.choices)
    if isinstance(d.low, float):
        return trial.suggest_float(param.key, d.low, d.high, log=d.log, step=d.step)
    return trial.suggest_int(param.key, d.low, d.high, log=d.log, step=d.step)


# Trials that take a place in the study's budget. A queued (WAITING) one will run, as workers take queued
# trials first: a retry queued by a restarted worker while another started a new trial counts too.
_STARTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
_BUDGETED = (*_STARTED, TrialState.WAITING)


def trials_ahead(study: optuna.Study, number: int) -> int:
    """How many trials before trial `number` take a place in the budget (n_trials)."""
    return sum(1 for t in study.get_trials(deepcopy=False, states=_BUDGETED) if t.number < number)


def _refuse_surplus_or_duplicate(trial: optuna.Trial, values: dict[str, Any], budget: int) -> None:
    ahead = trials_ahead(trial.study, trial.number)
    if ahead >= budget:
        trial.set_user_attr("surplus", True)
        trial.study.stop()
        raise SurplusTrial(f"trial {trial.number}: the study's budget of {budget} is already taken")
    for t in trial.study.get_trials(deepcopy=False, states=_STARTED):
        if t.number != trial.number and t.params == values:
            trial.set_user_attr("duplicate_of", t.number)
            raise DuplicateTrial(f"trial {trial.number} repeats trial {t.number}'s parameters")


def _store_metrics(trial: optuna.Trial, result: TrainResult) -> None:
    """Key numbers as user attributes: optuna-dashboard shows them beside each trial."""
    best = result.best
    trial.set_user_attr("best_epoch", best.epoch)
    trial.set_user_attr("epochs_run", len(result.history))
    trial.set_user_attr("val_miou", best.val_miou)
    trial.set_user_attr("val_loss", best.val_loss)
    trial.set_user_attr("val_pixel_accuracy", best.val_pixel_accuracy)
    trial.set_user_attr("images_per_second", best.images_per_second)


def _pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(search.pruner_startup_trials, search.pruner_warmup_epochs)
    if search.pruner == "percentile":
        return optuna.pruners.PercentilePruner(
            25.0, search.pruner_startup_trials, search.pruner_warmup_epochs
        )
    if search.pruner == "asha":
        # Rungs at min_resource * 3**k epochs (3, 9, 27, ... by default); asynchronous, so no worker waits for
        # a rung to fill, and a trial's only cost of losing is the epochs it already ran.
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=max(1, search.pruner_warmup_epochs), reduction_factor=3
        )
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=search.epochs)
    return optuna.pruners.NopPruner()


def _fail_trials_that_never_beat(study: optuna.Study, trials: list, search: SearchConfig) -> None:
    """A trial created just as the database went away has no heartbeat, so Optuna never fails it as
    stale: fail (and so retry) those started more than grace + 30 s ago (client clocks)."""
    deadline = datetime.datetime.now() - datetime.timedelta(seconds=search.grace_period + 30)
    for number in optuna_compat.fail_trials_without_heartbeat(study, trials, deadline):
        log.warning("trial %d never reported a heartbeat; failed so that it is retried", number)


# --- best parameters and the final run ----------------------------------------------------------------


def best_hyperparams(study: optuna.Study, search: SearchConfig, timed_out: bool = False) -> dict[str, Any]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete and timed_out:
        raise UserError(
            f"study {study.study_name!r}: its time budget (--timeout / search.timeout) ended before any "
            f"trial completed; give it more time or a new --study."
        )
    if not complete:
        raise UserError(
            f"study {study.study_name!r} has no completed trial yet; run `sideformer search` first."
        )
    best = study.best_trial
    labels = {p.key: p.labels for p in parse_space(search.space)}
    params = {k: labels.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in best.params.items()}
    return {
        "study": study.study_name,
        "objective": study.user_attrs.get("objective", search.objective),
        "direction": study.direction.name.lower(),
        "value": best.value,
        "trial": best.number,
        "best_epoch": int(best.user_attrs.get("best_epoch", search.epochs)),
        "params": params,
        "finished_trials": len(
            study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        ),
    }


def read_hyperparams(path: str | Path) -> dict[str, Any]:
    """A best_hyperparams.json, checked: an object with 'params' (dotted config keys) and 'best_epoch'."""
    path = Path(path)
    doc = read_params_json(
        path,
        str(path),
        not_found="hyperparameter file not found; run the search first or pass --hyperparams-file.",
        expected="expected an object with a 'params' mapping of config keys to values.",
    )
    epoch = doc.get("best_epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise UserError(
            f"{path}: 'best_epoch' must be a positive integer (epochs of the final run), got {epoch!r}."
        )
    apply_params(Config(), doc["params"], source=str(path))  # unknown keys and bad values fail here
    return doc


def best_for_final(
    config: Config, storage_url: str | None, study_name: str, hyperparams_file: Path | None
) -> dict[str, Any]:
    """From `hyperparams_file`, else from the study (and then written to OUTPUT/best_hyperparams.json)."""
    if hyperparams_file is not None:
        return read_hyperparams(hyperparams_file)
    storage = open_storage(resolve_storage_url(storage_url, config.output), config.search)
    best = best_hyperparams(load_study(storage, study_name), config.search)
    atomic_write_json(RunDir(config.output).hyperparams, best)
    return best


def run_final(config: Config, best: dict[str, Any], env: DistEnv | None = None) -> TrainResult:
    """Train on train+valid with the best parameters for the best trial's epoch count; validate on test
    when the dataset has one. The last epoch is the model (there is no held-out split to pick another)."""
    final = apply_params(config, best["params"])
    final.train.epochs = int(best["best_epoch"])
    final.data.train_splits = ["train", "valid"]
    final.data.train_fraction = 1.0
    final.early_stop.patience = 0
    final.checkpoint.select = "last"
    has_test = bool(load_metadata(config.data.path, classes=config.data.classes).split("test"))
    final.data.eval_split = "test" if has_test else "valid"
    final.wandb.name = final.wandb.name or "final"
    return train(final, resume=True, env=env)
