"""What a training run remembers between epochs and across restarts, and where a run starts.

`TrainState.state_dict()` is what temp_ckpts/last.pth holds; `choose_start` decides from the run folder
whether a run starts fresh, resumes from that checkpoint, or has already finished.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sideformer.errors import UserError
from sideformer.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: the number of epochs completed
    train_loss: float
    val_loss: float
    val_miou: float
    val_pixel_accuracy: float
    val_per_class_iou: dict[str, float]
    lr: float
    images_per_second: float
    """Training images per second over all ranks, data loading included, validation excluded."""
    seconds: float
    """Wall time of the epoch, validation included."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EarlyStopping:
    """Counts epochs without an improvement of at least `min_delta`; patience 0 never stops."""

    def __init__(self, monitor: str, patience: int, min_delta: float) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = 1.0 if monitor == "val_miou" else -1.0  # maximise mIoU, minimise loss
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, metrics: EpochMetrics) -> None:
        """Record an epoch: it becomes `best_epoch`, or counts as one more epoch without improvement."""
        value = self.sign * getattr(metrics, self.monitor)
        if value > self.best + self.min_delta or self.best_epoch == 0:
            self.best, self.best_epoch, self.bad_epochs = value, metrics.epoch, 0
        else:
            self.bad_epochs += 1

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


@dataclass
class EpochProgress:
    """How far the epoch in progress got: what a step checkpoint adds to an epoch checkpoint."""

    epoch: int
    """0-based index of the epoch in progress."""
    batches: int = 0
    """Batches this rank has trained on in it (always right after an optimizer step)."""
    optimizer_steps: int = 0
    loss_sums: list[float] = field(default_factory=list)
    """Each rank's summed training loss so far (rank 0 writes the checkpoint for all)."""
    images: list[int] = field(default_factory=list)
    """Each rank's images so far."""
    seconds: float = 0.0
    """Training time spent on it so far (validation excluded)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rank_totals(self, rank: int, world_size: int) -> tuple[float, int]:
        """This rank's (loss sum, images) so far. Resumed with another process count, rank 0 carries
        everyone's so the epoch's totals stay right."""
        if len(self.loss_sums) == world_size:
            return self.loss_sums[rank], self.images[rank]
        return (sum(self.loss_sums), sum(self.images)) if rank == 0 else (0.0, 0)


@dataclass
class TrainState:
    """Everything a checkpoint restores: weights, optimizer, schedule, early stopping, history, RNG, and
    for a checkpoint taken inside an epoch, how far that epoch got.

    `state_dict()` is what temp_ckpts/last.pth holds; `load_state_dict()` puts a run back where it was."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    early: EarlyStopping
    history: list[EpochMetrics] = field(default_factory=list)
    progress: EpochProgress | None = None
    """Set by a step checkpoint (inside an epoch); None after a whole epoch."""

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def best_metrics(self, select: str) -> EpochMetrics:
        """The epoch whose weights are kept: the last one, or early stopping's best."""
        return self.history[-1] if select == "last" else self.history[self.early.best_epoch - 1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early.state_dict(),
            "history": [h.to_dict() for h in self.history],
            "progress": None if self.progress is None else self.progress.to_dict(),
            "rng": torch.get_rng_state(),
            # This process's GPU: every rank was seeded alike and draws alike, so rank 0's state is theirs.
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.early.load_state_dict(state["early_stopping"])
        self.history = [EpochMetrics(**h) for h in state["history"]]
        progress = state.get("progress")  # absent from checkpoints written before step checkpoints
        self.progress = None if progress is None else EpochProgress(**progress)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])


class Start(enum.Enum):
    """Where a run begins, decided on rank 0 from what the run folder holds."""

    FRESH = "fresh"
    RESUME = "resume"
    """From temp_ckpts/last.pth."""
    FINISHED = "finished"
    """Nothing to train: the run completed; its result is read back from metrics.json."""


def choose_start(run: RunDir, resume: bool) -> Start:
    """Fresh, from the last checkpoint, or already finished; refuses to train over another run."""
    if not resume:
        if run.last.exists():
            raise UserError(
                f"{run.root} holds an unfinished run ({run.last}); pass --resume to continue it, "
                f"or choose another --output."
            )
        if run.final.exists():
            raise UserError(
                f"{run.root} already holds a finished run (final_ckpts/); choose another --output."
            )
        return Start.FRESH
    if run.last.exists():
        return Start.RESUME
    if run.finished:
        log.info("%s already finished; nothing to resume", run.root)
        return Start.FINISHED
    log.info("--resume: no checkpoint in %s, starting from epoch 1", run.temp)
    return Start.FRESH
