"""How a study starts and when it stops taking trials: its first trials and its wall-clock deadline.

- First trials, enqueued once when the study is created (`sideformer study create`, or the first worker
  that finds no study): a warm start's trials (`--warm-start FROM`: a previous study's best trials or a
  best_hyperparams.json), then the configuration's own values of the searched keys (by default the
  SegFormer recipe), so a search never starts from nothing. Workers that join later enqueue nothing and
  do not read their --warm-start (the chart gives every worker the creator's, for the one that may
  find no study yet).
- Deadline (`--timeout SECONDS`, `search.timeout`): an absolute UTC time stored in the study's user
  attribute `deadline` by whoever creates the study, or by the first worker with a timeout that finds none.
  Every worker reads the study's deadline before each trial, so several workers on one PostgreSQL study
  stop together however late each one started (and an operator may move it with Optuna's
  `study.set_user_attr("deadline", ISO-TIME)`). After it no worker starts a trial; running trials finish,
  and a worker exits once none is running, so the study's best is known when they are gone.

Everything a warm start reads is checked before anything is written: a missing file or study, a parameter
outside today's space, another objective or direction is one UserError.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sideformer.config import Config
from sideformer.errors import UserError
from sideformer.search_space import Param, config_value, outside_space, read_params_json, to_stored
from sideformer.study import DIRECTIONS, load_study, open_storage, redact

log = logging.getLogger(__name__)

WARM_START_TRIALS = 3
"""Best trials of a previous study that a warm start enqueues (one is luck; three keep the good region)."""
DEADLINE_ATTR = "deadline"


def recipe_trial(config: Config, space: list[Param]) -> dict[str, Any]:
    """The configuration's own values of the searched keys that lie inside the space (stored form)."""
    trial = {}
    for param in space:
        stored = to_stored(param, config_value(config, param.key))
        if stored is not None:
            trial[param.key] = stored
    return trial


def warm_start_trials(
    spec: str, config: Config, space: list[Param], storage_url: str
) -> list[dict[str, Any]]:
    """The trials `spec` names, checked against today's objective and space, in stored form, best first.

    `spec` is a best_hyperparams.json file (any path ending in .json), a study name in `storage_url`, or
    `STORAGE_URL#STUDY` for a study in another database."""
    objective = config.search.objective
    if spec.endswith(".json"):
        return [_from_file(Path(spec), objective, space)]
    url, _, name = spec.rpartition("#") if "#" in spec else (storage_url, "", spec)
    where = f"--warm-start {redact(url)}#{name}" if "#" in spec else f"--warm-start {name}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise UserError(f"{where}: no study database at {url.removeprefix('sqlite:///')}; check the path.")
    try:
        study = load_study(open_storage(url, config.search), name)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    _same_objective(where, study.user_attrs.get("objective"), study.direction.name.lower(), objective)
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None
    ]
    if not complete:
        raise UserError(f"{where}: the study has no completed trial to start from.")
    complete.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    return [
        outside_space(t.params, space, f"{where} (trial {t.number})") for t in complete[:WARM_START_TRIALS]
    ]


def _from_file(path: Path, objective: str, space: list[Param]) -> dict[str, Any]:
    where = f"--warm-start {path}"
    doc = read_params_json(
        path,
        where,
        not_found="file not found; give a best_hyperparams.json or a study name.",
        expected="expected a best_hyperparams.json (an object with a 'params' mapping).",
    )
    _same_objective(where, doc.get("objective"), doc.get("direction"), objective)
    return outside_space(doc["params"], space, where)


def _same_objective(where: str, theirs: str | None, direction: str | None, objective: str) -> None:
    if theirs is not None and theirs != objective:
        raise UserError(
            f"{where}: it optimised {theirs}, this search optimises {objective} (search.objective); "
            f"warm-start from a search of the same objective."
        )
    if direction is not None and direction != DIRECTIONS[objective]:
        raise UserError(
            f"{where}: it {direction}s its objective, this search {DIRECTIONS[objective]}s {objective}; "
            f"warm-start from a search of the same objective."
        )


def first_trials(warm: list[dict[str, Any]], recipe: dict[str, Any]) -> list[dict[str, Any]]:
    """The warm start's trials, then the recipe unless one of them already is it."""
    trials = [t for i, t in enumerate(warm) if t not in warm[:i]]
    if recipe and recipe not in trials:
        trials.append(recipe)
    return trials


def deadline_from(timeout: float | None) -> datetime.datetime | None:
    if timeout is None:
        return None
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=timeout)


def study_deadline(study: optuna.Study, timeout: float | None) -> datetime.datetime | None:
    """The study's deadline; a worker with a timeout sets it when the study has none."""
    stored = study.user_attrs.get(DEADLINE_ATTR)
    if stored is None and timeout is not None:
        study.set_user_attr(DEADLINE_ATTR, deadline_from(timeout).isoformat())
        stored = study.user_attrs[DEADLINE_ATTR]  # read back: two workers racing agree within seconds
    elif stored is not None and timeout is not None:
        log.info(
            "the study's deadline %s was set when it started; this worker's --timeout is not used", stored
        )
    return None if stored is None else datetime.datetime.fromisoformat(stored)


def read_deadline(study: optuna.Study) -> datetime.datetime | None:
    """The study's deadline now (one query): `study.set_user_attr("deadline", ...)` moves it for all."""
    stored = study.user_attrs.get(DEADLINE_ATTR)
    return None if stored is None else datetime.datetime.fromisoformat(stored)


def past(deadline: datetime.datetime | None) -> bool:
    return deadline is not None and datetime.datetime.now(datetime.timezone.utc) >= deadline
