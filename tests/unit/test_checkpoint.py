"""Checkpoint writes are atomic: a crash mid-save leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sideformer.checkpoint import load_checkpoint, save_checkpoint
from sideformer.errors import UserError


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "history": [{"val_miou": 0.5}]}
    save_checkpoint(tmp_path / "c.pth", state)
    loaded = load_checkpoint(tmp_path / "c.pth")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3


def test_exception_during_save_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "last.pth"
    save_checkpoint(target, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(target, {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_process_killed_mid_save_keeps_the_previous_file(tmp_path: Path) -> None:
    """SIGKILL a process while torch.save is writing a large checkpoint over an existing one."""
    target = tmp_path / "last.pth"
    save_checkpoint(target, {"epoch": 1})
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from sideformer import atomic
        real_save = torch.save
        def save_then_die(obj, f):
            real_save(obj, f)  # the temp file is complete but not yet renamed into place
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = save_then_die
        from sideformer.checkpoint import save_checkpoint
        save_checkpoint({str(target)!r}, {{"epoch": 2, "w": torch.zeros(1_000_000)}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy())
    assert proc.returncode == -9
    assert load_checkpoint(target)["epoch"] == 1


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "c.pth"
    save_checkpoint(target, {"w": torch.zeros(1000)})
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(target)


def test_code_is_not_unpickled(tmp_path: Path) -> None:
    target = tmp_path / "evil.pth"
    torch.save({"x": subprocess.Popen}, target)  # a class reference: weights_only refuses it
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(target)


def test_atomic_writes_get_the_mode_of_a_plain_write(tmp_path: Path) -> None:
    # mkstemp's 0600 would hide datasets and results from other users (a container's uid, other pods).
    import os

    from sideformer.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "metadata.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "metadata.json").stat().st_mode & 0o777 == 0o644
