"""Progress inside an epoch: plain lines in a piped run (a pod's log), a live bar on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, TINY, env_for, sideformer

pytestmark = pytest.mark.slow

# "epoch 1/2:  50% 8/16 img [00:01<00:01, 6.21img/s, loss=..., lr=...]"
PLAIN_LINE = re.compile(r"^epoch (\d)/2: +\d+% (\d+)/16 img \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s")


def train_command(data: Path, out: Path, *extra: str) -> list[str]:
    settings = [*TINY, "train.epochs=2", "train.batch_size=2", *extra]
    return sideformer(
        "train", "--data", str(data), "--output", str(out), *[a for s in settings for a in ("--set", s)]
    )


def test_a_piped_run_prints_plain_progress_lines(synth_dataset: Path, tmp_path: Path, run) -> None:
    done = run(train_command(synth_dataset, tmp_path / "run", "train.progress_seconds=0.001"))
    assert done.returncode == 0, done.stderr
    lines = [m for m in map(PLAIN_LINE.match, done.stdout.splitlines()) if m]
    assert {m.group(1) for m in lines} == {"1", "2"}, done.stdout  # inside each epoch
    assert len(lines) >= 8, done.stdout  # 8 batches an epoch, each past the (tiny) interval
    assert "\r" not in done.stdout + done.stderr  # no bar redrawn into a log

    quiet = run(train_command(synth_dataset, tmp_path / "quiet", "train.progress_seconds=0"))
    assert quiet.returncode == 0, quiet.stderr
    assert not any(map(PLAIN_LINE.match, quiet.stdout.splitlines())), quiet.stdout


def test_a_terminal_gets_a_bar_with_rate_and_eta(synth_dataset: Path, tmp_path: Path) -> None:
    leader, follower = pty.openpty()  # a real terminal for the child's stderr
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    try:
        proc = subprocess.Popen(
            train_command(synth_dataset, tmp_path / "run", "train.progress_seconds=0.001"),
            env=env_for(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        terminal = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        stdout, _ = proc.communicate(timeout=300)
    finally:
        os.close(leader)
    assert proc.returncode == 0, stdout
    screen = terminal.decode(errors="replace")
    assert "\r" in screen and "img/s" in screen and "epoch 1/2" in screen, screen[-2000:]
    assert not any(map(PLAIN_LINE.match, stdout.splitlines())), stdout  # the bar instead of lines
