from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Tiny, fast settings: a 64x64 synthetic dataset, b0 from random weights, no loader workers.
TINY = [
    "model.variant=b0",
    "data.crop_size=[64, 64]",
    "data.num_workers=0",
    "train.batch_size=4",
    "optim.lr=1e-3",
    "optim.warmup_steps=2",
    "wandb.enabled=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def sideformer(*args: str, **kwargs) -> list[str]:
    return [sys.executable, "-m", "sideformer", *args]


@pytest.fixture
def run():
    """subprocess.run with the test environment, captured text output and a time limit."""

    def _run(
        cmd: list[str], timeout: int = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, env=env or env_for(), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
        )

    return _run
