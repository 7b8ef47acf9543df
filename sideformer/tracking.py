"""Where a run's numbers go: a JSON-lines log beside the checkpoints, and Weights & Biases.

W&B is offline unless WANDB_API_KEY is set. It is a convenience, never a dependency of training: a
missing package, a failed login or a network error is a warning and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from sideformer.atomic import append_line, atomic_write_text
from sideformer.config import WandbConfig
from sideformer.errors import first_line

log = logging.getLogger(__name__)


class JsonLinesLog:
    """One JSON object per epoch. Rewritten from the checkpoint's history on resume, so it never holds
    epochs the checkpoint does not know about."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(record))


class WandbRun:
    """A W&B run that degrades to a no-op on any failure."""

    def __init__(self, config: WandbConfig, run_config: dict[str, Any], directory: Path) -> None:
        self._run: Any = None
        if not config.enabled:
            return
        mode = (
            config.mode
            if config.mode != "auto"
            else ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        )
        try:
            import wandb

            directory.mkdir(parents=True, exist_ok=True)
            self._run = wandb.init(
                project=config.project,
                entity=config.entity,
                group=config.group,
                name=config.name,
                config=run_config,
                dir=str(directory),
                mode=mode,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:  # wandb raises many types; none of them should stop training
            log.warning("W&B disabled for this run: %s", first_line(exc))
            self._run = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(metrics, step=step)
        except Exception as exc:
            log.warning("W&B log failed, continuing without it: %s", exc)
            self._run = None

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is None:
            return
        try:
            self._run.summary.update(metrics)
        except Exception as exc:
            log.warning("W&B summary failed: %s", exc)

    def finish(self) -> None:
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as exc:
            log.warning("W&B finish failed: %s", exc)
        self._run = None
