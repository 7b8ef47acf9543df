"""Checkpoints inside an epoch: on SIGTERM (a node drain, a spot reclaim, an eviction, `kubectl delete`),
and every `checkpoint.every_minutes` if set.

Kubernetes sends SIGTERM and waits `terminationGracePeriodSeconds` before SIGKILL. The loop asks
`due()` after each optimizer step; when it answers True it writes the step's full state (weights,
optimizer, schedule, early stopping, how far the epoch got, RNG) to temp_ckpts/last.pth, and after a
SIGTERM it stops with `errors.Stopped`. `--resume` (and a retried trial) continue from that step: no optimizer
step is repeated or skipped.

Under several processes every rank must save at the same step, though each gets its signal at its own
moment: the ranks agree through one small all-reduce every `check_every` optimizer steps (a host sync,
so not every step on a GPU).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import torch

from sideformer import distributed
from sideformer.distributed import DistEnv

log = logging.getLogger(__name__)


class StepCheckpoints:
    """A context manager that turns SIGTERM into a request to save and stop at the next step boundary."""

    def __init__(self, every_minutes: float | None, env: DistEnv, check_every: int = 1) -> None:
        self.every_seconds = None if every_minutes is None else every_minutes * 60
        self.env = env
        self.check_every = max(1, check_every)
        self.stop_requested = False
        self._signalled = False
        self._last_save = time.monotonic()
        self._previous: Any = None

    def __enter__(self) -> StepCheckpoints:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = True

    def due(self, optimizer_steps: int) -> bool:
        """After optimizer step number `optimizer_steps` of this epoch: save a step checkpoint now?
        The same answer on every rank; `stop_requested` says whether to stop after saving."""
        if optimizer_steps % self.check_every:
            return False
        timer = self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds
        signalled, timer = self._agree(timer)
        if signalled or timer:
            self._last_save = time.monotonic()
            return True
        return False

    def epoch_saved(self) -> bool:
        """After an epoch checkpoint: the timer starts again; True when a SIGTERM asks every rank to stop."""
        self._last_save = time.monotonic()
        return self._agree(False)[0]

    def _agree(self, timer: bool) -> tuple[bool, bool]:
        """(SIGTERM on any rank, timer due on any rank): one small all-reduce under several processes."""
        signalled = self._signalled
        if self.env.is_distributed:
            flags = torch.tensor([signalled, timer], dtype=torch.float32, device=self.env.device)
            signalled, timer = (bool(v > 0) for v in distributed.all_reduce_sum(flags, self.env).tolist())
        if signalled and not self.stop_requested:
            self.stop_requested = True
            if self.env.is_main:
                log.info("SIGTERM: saving this step's state, then stopping")
        return signalled, timer
