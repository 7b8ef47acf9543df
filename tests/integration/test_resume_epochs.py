"""--resume with a changed train.epochs says what it does: trains on to the new count (one line), or
refuses with the command that would work."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sideformer.cli import main
from tests.integration.conftest import TINY

pytestmark = pytest.mark.slow


def train(data: Path, out: Path, *extra: str) -> list[str]:
    settings = [arg for s in [*TINY, *extra] for arg in ("--set", s)]
    return ["train", "--data", str(data), "--output", str(out), *settings]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sideformer: error: "), err
    return err


def test_a_finished_run_refuses_more_epochs_with_the_command_that_works(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(train(synth_dataset, out, "train.epochs=1")) == 0
    capsys.readouterr()
    assert main([*train(synth_dataset, out, "train.epochs=2"), "--resume"]) == 2
    line = error_line(capsys)
    assert "cannot train on to train.epochs=2" in line
    assert f"sideformer train --data {synth_dataset} --output NEW_FOLDER --set train.epochs=2" in line
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1  # untouched


def test_a_kept_checkpoint_trains_on_to_the_new_count_and_says_so(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(train(synth_dataset, out, "train.epochs=2", "checkpoint.keep_temp=true")) == 0
    capsys.readouterr()

    assert main([*train(synth_dataset, out, "train.epochs=1", "checkpoint.keep_temp=true"), "--resume"]) == 2
    line = error_line(capsys)
    assert "already holds 2 epoch(s), more than train.epochs=1" in line and "--set train.epochs=2" in line

    with caplog.at_level(logging.INFO, logger="sideformer.train"):
        assert (
            main([*train(synth_dataset, out, "train.epochs=3", "checkpoint.keep_temp=true"), "--resume"]) == 0
        )
    said = [r.getMessage() for r in caplog.records if "train.epochs changed" in r.getMessage()]
    assert said == [
        "--resume: train.epochs changed from 2 to 3: training on to epoch 3, with the warmup and poly decay "
        "rebuilt over 3 epochs (the learning rate from epoch 3 on follows that schedule)"
    ]
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
