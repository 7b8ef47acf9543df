"""output_lock: exclusive between processes, re-entrant within one, released when its holder ends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sideformer.errors import UserError
from sideformer.output_lock import LOCK_FILE, lock_file_for, output_lock

REPO = Path(__file__).resolve().parents[2]

TRY_LOCK = """
import sys
from sideformer.errors import UserError
from sideformer.output_lock import output_lock
try:
    with output_lock(sys.argv[1]):
        print("locked")
except UserError as exc:
    print(exc)
"""


def try_in_another_process(folder: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", TRY_LOCK, str(folder)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return done.stdout.strip()


def test_another_process_is_refused_while_held_and_not_after(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with output_lock(folder):
        answer = try_in_another_process(folder)
        assert answer.startswith(f"--output {folder} is in use by pid "), answer
        holder = json.loads((folder / LOCK_FILE).read_text())
        assert {"pid", "host", "command", "since"} <= holder.keys()
    assert not folder.exists()  # made for the lock, nothing else written: gone again
    assert try_in_another_process(folder) == "locked"


def test_reentrant_within_a_process(tmp_path: Path) -> None:
    with output_lock(tmp_path), output_lock(tmp_path):  # tune holds the folder its final run trains into
        pass
    with output_lock(tmp_path):
        assert try_in_another_process(tmp_path).startswith("--output")
    assert try_in_another_process(tmp_path) == "locked"


def test_a_file_output_is_locked_beside_it(tmp_path: Path) -> None:
    assert lock_file_for(tmp_path / "model.onnx") == tmp_path / ".model.onnx.lock"
    assert lock_file_for(tmp_path / "run") == tmp_path / "run" / LOCK_FILE


def test_the_holder_s_database_password_is_not_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["sideformer", "search", "--storage", "postgresql://u:s3cret@db/x"])
    with output_lock(tmp_path / "out"):
        text = (tmp_path / "out" / LOCK_FILE).read_text()
    assert "s3cret" not in text and "postgresql://u:***@db/x" in text


def test_refusal_is_a_user_error(tmp_path: Path) -> None:
    done = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom sideformer.output_lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert done.stdout is not None and done.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {done.pid} on "), output_lock(tmp_path):
            pass
    finally:
        done.kill()
        done.wait()
    with output_lock(tmp_path):  # the killed holder's lock went with it
        pass


def test_a_folder_made_for_the_lock_goes_again_when_nothing_was_written(tmp_path: Path) -> None:
    with output_lock(tmp_path / "run" / "evaluation" / "test"):  # a refused run leaves no trace
        pass
    assert list(tmp_path.iterdir()) == []
    with output_lock(tmp_path / "run"):
        (tmp_path / "run" / "config.yaml").write_text("")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]
    with output_lock(tmp_path / "model.onnx"):
        assert (tmp_path / ".model.onnx.lock").exists()
    assert not (tmp_path / ".model.onnx.lock").exists()


def test_waits_for_a_holder_that_goes_away(tmp_path: Path) -> None:
    """A retried trial waits (up to search.grace_period) for the dead worker's lock instead of failing."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom sideformer.output_lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(2)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError), output_lock(tmp_path):  # without waiting: refused
            pass
        with output_lock(tmp_path, wait_seconds=120):  # the lock passes over once the holder ends
            assert (tmp_path / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()
