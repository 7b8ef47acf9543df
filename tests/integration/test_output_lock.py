"""One run per output folder, with real processes: a second `train` (or a `predict` into a training's
folder) refuses with one line naming the holder; a holder killed with SIGKILL blocks nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from sideformer.output_lock import LOCK_FILE, output_lock
from tests.helpers import wait_until
from tests.integration.conftest import REPO, TINY, env_for, sideformer

pytestmark = pytest.mark.slow


def settings(*extra: str) -> list[str]:
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


def holder_pid(folder: Path) -> int | None:
    try:
        return json.loads((folder / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_run_refuses_and_a_killed_holder_blocks_nothing(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    out = tmp_path / "run"
    model = tmp_path / "model"
    done = run(
        sideformer("train", "--data", str(synth_dataset), "--output", str(model), *settings("train.epochs=1"))
    )
    assert done.returncode == 0, done.stderr
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(  # long enough to be running for the whole test; killed below
            sideformer(
                "train", "--data", str(synth_dataset), "--output", str(out), *settings("train.epochs=500")
            ),
            env=env_for(),
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: holder_pid(out) == first.pid, 120, lambda: log.read_text())

        second = run(sideformer("train", "--data", str(synth_dataset), "--output", str(out), *settings()))
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip()
        assert len(line.splitlines()) == 1 and "Traceback" not in line, line
        for part in (f"pid {first.pid}", socket.gethostname(), "sideformer train --data", "since", str(out)):
            assert part in line, line

        image = next((synth_dataset / "valid" / "images").iterdir())
        predict = sideformer("predict", "--model", str(model), "--input", str(image), "--output", str(out))
        beside = run(predict)
        assert beside.returncode == 2 and f"pid {first.pid}" in beside.stderr, beside.stderr
        assert not (out / "masks").exists()

        evaluate = ["evaluate", "--model", str(model), "--data", str(synth_dataset), "--split", "valid"]
        beside = run(sideformer(*evaluate, "--output", str(out)))
        assert beside.returncode == 2 and f"pid {first.pid}" in beside.stderr, beside.stderr

        onnx = tmp_path / "model.onnx"  # a file output: its lock lies beside it
        with output_lock(onnx):
            export = run(sideformer("export", "--model", str(model), "--onnx", str(onnx)))
        assert export.returncode == 2, export.stderr
        assert f"--onnx {onnx} is in use by pid {os.getpid()}" in export.stderr and not onnx.exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    after = run(predict)  # the kernel dropped the dead holder's lock: nothing to clean up by hand
    assert after.returncode == 0, after.stderr
    assert (out / "masks").is_dir()
