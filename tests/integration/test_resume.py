"""Kill a run mid-way and `--resume` finishes it from the saved epoch, as an uninterrupted run would."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.integration.conftest import REPO, TINY, env_for, sideformer

pytestmark = pytest.mark.slow

EPOCHS = 5


def train_cmd(data: Path, output: Path, *extra: str) -> list[str]:
    cmd = sideformer("train", "--data", str(data), "--output", str(output), *extra)
    return cmd + [
        arg for s in [*TINY, f"train.epochs={EPOCHS}", "early_stop.patience=0"] for arg in ("--set", s)
    ]


def epochs_logged(output: Path) -> int:
    log = output / "train_log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_sigkill_then_resume_continues_from_the_last_checkpoint(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    output = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(synth_dataset, output), env=env_for(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(
            lambda: epochs_logged(output) >= 2 or proc.poll() is not None,
            300,
            "two epochs in train_log.jsonl",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_after = epochs_logged(output)
    assert 2 <= killed_after < EPOCHS, (
        f"kill landed after epoch {killed_after}; the run was too fast to interrupt"
    )
    assert (output / "temp_ckpts/last.pth").exists()
    assert not (output / "final_ckpts").exists()

    refused = run(train_cmd(synth_dataset, output))
    assert refused.returncode == 2
    assert "holds an unfinished run" in refused.stderr and "--resume" in refused.stderr

    resumed = run(train_cmd(synth_dataset, output, "--resume"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    history = json.loads((output / "metrics.json").read_text())["history"]
    # The log line is appended just after the checkpoint is saved, so the kill may fall between the two.
    assert (
        f"after epoch {killed_after}" in resumed.stdout or f"after epoch {killed_after + 1}" in resumed.stdout
    )
    first_epoch_line = next(line for line in resumed.stdout.splitlines() if line.startswith("epoch "))
    assert not first_epoch_line.startswith("epoch 1/"), first_epoch_line
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert epochs_logged(output) == EPOCHS
    assert not (output / "temp_ckpts").exists()

    # The optimizer schedule picked up where it stopped: the learning rates match an uninterrupted run.
    reference = tmp_path / "reference"
    assert run(train_cmd(synth_dataset, reference)).returncode == 0
    reference_lrs = [h["lr"] for h in json.loads((reference / "metrics.json").read_text())["history"]]
    assert [h["lr"] for h in history] == pytest.approx(reference_lrs)

    # Resuming a finished run is a no-op, not a second training.
    again = run(train_cmd(synth_dataset, output, "--resume"))
    assert again.returncode == 0 and "already finished" in again.stdout
