"""The study database: its URL, opening it, creating and loading a study, and exporting its trials.

Used by the search (`tune`) and by `sideformer study create|best|export`. Storage is an RDB URL
(`--storage`, `OPTUNA_STORAGE`, default SQLite under the output folder), opened with `pool_pre_ping`
(survives a database restart) and heartbeats (`optuna_compat.rdb_storage`).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from sideformer.atomic import DiskFull, atomic_write_text
from sideformer.config import SearchConfig
from sideformer.errors import UserError, chain, first_line
from sideformer.optuna_compat import rdb_storage
from sideformer.rundir import RunDir

log = logging.getLogger(__name__)

DIRECTIONS = {"val_miou": "maximize", "val_loss": "minimize"}

T = TypeVar("T")


def resolve_storage_url(url: str | None, output: str | Path) -> str:
    """`--storage`, else OPTUNA_STORAGE, else SQLite in the output folder. Unknown schemes are refused."""
    url = url or os.environ.get("OPTUNA_STORAGE") or f"sqlite:///{RunDir(Path(output).resolve()).study_db}"
    backend = url.split("://", 1)[0].split("+", 1)[0] if "://" in url else ""
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UserError(
            f"storage {redact(url)!r}: unknown URL scheme; use sqlite:///PATH or "
            f"postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE."
        )
    return url


def redact(url: str) -> str:
    """The URL with its password hidden: storage URLs end up in logs and error messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def sqlite_disk_full(exc: BaseException, url: str) -> DiskFull | None:
    """SQLite's own words for a full disk anywhere in the chain, as the error naming the study file. Unlike
    a database server that restarts, a full disk is nothing to wait out."""
    if not url.startswith("sqlite:///"):
        return None
    if any("database or disk is full" in str(seen) for seen in chain(exc)):
        return DiskFull(url.removeprefix("sqlite:///"))
    return None


def open_storage(url: str, search: SearchConfig) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # wait on concurrent writers
    else:
        engine_kwargs = {"pool_pre_ping": True}  # reconnect transparently after a database restart
    try:
        return with_retries(
            lambda: rdb_storage(
                url, engine_kwargs, search.heartbeat_interval, search.grace_period, search.max_retry
            )
        )
    except ImportError as exc:  # a dialect whose driver is not installed (mysql://, ...)
        raise UserError(
            f"cannot open the study database {redact(url)}: no database driver for it ({first_line(exc)}). "
            f"Use postgresql+psycopg2://... (installed with sideformer[postgres]) or sqlite:///FILE."
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise UserError(
            f"cannot open the study database {redact(url)}: {first_line(exc)}. "
            f"Check that the server is up and the host, port, user and password are right."
        ) from None


def study_exists(url: str, name: str, search: SearchConfig) -> bool:
    """Whether the storage at `url` holds study `name`. A SQLite file that does not exist yet holds none,
    and is not created by asking."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return False
    return name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(url, search))}


def admin_storage_url(url: str | None) -> str:
    """The storage `sideformer study ...` works on: --storage or OPTUNA_STORAGE, never a default."""
    if not (url or os.environ.get("OPTUNA_STORAGE")):
        raise UserError("no storage given: pass --storage URL or set OPTUNA_STORAGE.")
    return resolve_storage_url(url, ".")


def create_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    search: SearchConfig,
    first_trials: Sequence[dict[str, Any]] = (),
    deadline: datetime.datetime | None = None,
) -> optuna.Study:
    """Create the study if it does not exist, else load it. Safe when many processes race on an empty
    database: Optuna's own create_study(load_if_exists=True) is not (optuna#1092). Only the process that
    creates it enqueues `first_trials` (parameters in stored form) and records `deadline`, so many workers
    starting at once add them exactly once."""

    def create_or_load() -> tuple[optuna.Study, bool]:
        try:
            study = optuna.create_study(
                storage=storage, study_name=name, direction=DIRECTIONS[search.objective]
            )
        except optuna.exceptions.DuplicatedStudyError:
            return optuna.load_study(study_name=name, storage=storage), False
        study.set_user_attr("objective", search.objective)
        if deadline is not None:
            study.set_user_attr("deadline", deadline.isoformat())
        for params in first_trials:
            study.enqueue_trial(params, user_attrs={"enqueued": "first trials"})
        return study, True

    study, created = with_retries(create_or_load)
    if created and first_trials:  # said by the creator alone, also when another process won a race
        log.info(
            "study %r starts with %d enqueued trial(s): %s", name, len(first_trials), json.dumps(first_trials)
        )
    if study.direction.name.lower() != DIRECTIONS[search.objective]:
        raise UserError(
            f"study {name!r} {study.direction.name.lower()}s but search.objective={search.objective!r} "
            f"{DIRECTIONS[search.objective]}s; use another --study name or the study's objective."
        )
    return study


def load_study(storage: optuna.storages.RDBStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise UserError(f"no study named {name!r} in this storage (studies: {names or 'none'}).") from None


def with_retries(fn: Callable[[], T], attempts: int = 8) -> T:
    """Retry transient database races (concurrent table creation, serialization failures) with jitter."""
    for attempt in range(attempts):
        try:
            return fn()
        except (
            sqlalchemy.exc.IntegrityError,
            sqlalchemy.exc.ProgrammingError,
            sqlalchemy.exc.OperationalError,
        ):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1) + secrets.randbelow(300) / 1000)
    raise AssertionError("unreachable")


def export_trials(study: optuna.Study, out: str | Path) -> int:
    """Every trial of `study` as one JSON object per line; returns how many."""
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "intermediate_values": t.intermediate_values,
            "user_attrs": t.user_attrs,
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        }
        for t in study.get_trials(deepcopy=False)
    ]
    atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)
