"""`sideformer report`: a run's training curves (loss, mIoU) as a PNG, from its JSON-lines log, so a run
is visible without W&B. Light on purpose: no torch, only the log and OpenCV drawing (`plots`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sideformer import plots
from sideformer.errors import UserError
from sideformer.rundir import RunDir

# --- training curves -------------------------------------------------------------------------------


def read_history(run: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run: train_log.jsonl, else the history in metrics.json."""
    run = Path(run)
    log_file = RunDir(run).train_log
    if log_file.is_file():
        history = []
        for number, line in enumerate(log_file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                history.append(json.loads(line))
            except ValueError:
                raise UserError(f"{log_file}:{number}: not a JSON object; the log is damaged.") from None
        if history:
            return history
    metrics = RunDir(run).metrics
    if metrics.is_file():
        try:
            history = json.loads(metrics.read_text(encoding="utf-8")).get("history") or []
        except (ValueError, AttributeError):
            raise UserError(f"{metrics}: not valid JSON.") from None
        if history:
            return history
    if not run.is_dir():
        raise UserError(f"--run {run}: no such folder.")
    raise UserError(
        f"--run {run}: no epochs logged (no train_log.jsonl or metrics.json history). Give a training run "
        f"folder, the --output of `sideformer train`, after its first epoch."
    )


def training_curves(history: list[dict[str, Any]], title: str = "") -> np.ndarray:
    """Two panels: train/val loss, and validation mIoU and pixel accuracy, per epoch."""
    epochs = [h["epoch"] for h in history]

    def values(key: str) -> list[float]:
        return [float(h[key]) if h.get(key) is not None else math.nan for h in history]

    loss = plots.line_chart(
        {"train loss": (epochs, values("train_loss")), "val loss": (epochs, values("val_loss"))},
        f"loss{' - ' + title if title else ''}",
        "epoch",
        "cross-entropy",
    )
    scores = plots.line_chart(
        {
            "val mIoU": (epochs, values("val_miou")),
            "val pixel accuracy": (epochs, values("val_pixel_accuracy")),
        },
        "validation",
        "epoch",
        "score",
        y_range=(0.0, 1.0),
    )
    return plots.hstack([loss, scores])


def write_training_curves(run: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run)
    history = read_history(run)
    return plots.write_png(out or RunDir(run).curves, training_curves(history, run.resolve().name))


def describe_curves(history: list[dict[str, Any]], path: Path) -> str:
    """What `sideformer report` prints: the epochs, the best mIoU and where the picture is."""
    best = max(history, key=lambda h: h.get("val_miou") or 0.0)
    return (
        f"{len(history)} epoch(s); highest val mIoU {best.get('val_miou', float('nan')):.4f} at epoch "
        f"{best.get('epoch')}\ntraining curves: {path}"
    )
