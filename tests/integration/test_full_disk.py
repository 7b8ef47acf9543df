"""A full disk, on a real small filesystem (a tmpfs the test mounts): every command that writes ends in
one line naming the file and saying the disk is full, exit 2, no temporary or half-written file left, and
what was there before intact. A training run continues with --resume once there is space again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
import torch

from sideformer.atomic import DiskFull, append_line
from sideformer.cli import main
from tests.helpers import resize
from tests.integration.conftest import TINY
from tests.unit.test_aihub import make_source

pytestmark = pytest.mark.slow

Disk = Callable[[str], Path]

# b0 from random weights: best.pth 15 MB, last.pth 45 MB (with AdamW's state). 70 MB holds the first
# epoch's pair, not the second epoch's new file beside them.
ONE_EPOCH_OF_CHECKPOINTS = "70m"


def settings(*extra: str) -> list[str]:
    return [arg for s in [*TINY, *extra] for arg in ("--set", s)]


def one_line_disk_full(capsys: pytest.CaptureFixture[str], disk: Path, others: bool = False) -> str:
    """The error line. `others`: log lines (Optuna's warning about the failed trial, which names the same
    file) may come before it, but no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    if others:
        assert "Traceback" not in err, err
        lines = [line for line in lines if line.startswith("sideformer: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("sideformer: error: ") and "the disk is full" in lines[0], err
    assert str(disk) in lines[0], err  # names the file on the full disk
    assert "Traceback" not in err
    return lines[0]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes, staging folders of the model, partial videos."""
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial.mp4"))]


@pytest.fixture(scope="module")
def trained(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    assert (
        main(["train", "--data", str(synth_dataset), "--output", str(run), *settings("train.epochs=1")]) == 0
    )
    return run


def test_train_stops_with_one_line_and_resumes_once_there_is_space(
    synth_dataset: Path, small_disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk(ONE_EPOCH_OF_CHECKPOINTS)
    out = disk / "run"
    argv = ["train", "--data", str(synth_dataset), "--output", str(out), *settings("train.epochs=3")]
    assert main(argv) == 2
    line = one_line_disk_full(capsys, disk)
    assert "--resume" in line  # what continues the run
    assert leftovers(disk) == []
    last = torch.load(out / "temp_ckpts/last.pth", weights_only=True)  # the epoch-1 checkpoint, whole
    assert len(last["history"]) == 1
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 1

    resize(disk, "400m")  # the user frees space
    assert main([*argv, "--resume"]) == 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3


def test_search_and_final_stop_with_one_line(
    synth_dataset: Path, small_disk: Disk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk(ONE_EPOCH_OF_CHECKPOINTS)
    search = ["search", "--data", str(synth_dataset), "--output", str(disk / "study"), "--n-trials", "1"]
    assert main([*search, *settings("search.epochs=3", "search.pruner=none")]) == 2
    one_line_disk_full(capsys, disk, others=True)
    assert leftovers(disk) == []

    hyperparams = tmp_path / "best_hyperparams.json"
    hyperparams.write_text(json.dumps({"params": {}, "best_epoch": 3}))
    final = ["final", "--data", str(synth_dataset), "--output", str(disk / "final")]
    assert main([*final, "--hyperparams-file", str(hyperparams), *settings()]) == 2
    one_line_disk_full(capsys, disk)
    assert leftovers(disk) == []


def test_predict_keeps_only_whole_files(
    trained: Path, synth_dataset: Path, small_disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk("64k")  # 16 pages: fewer than the masks and overlays of 8 images
    argv = ["predict", "--model", str(trained), "--input", str(synth_dataset / "valid" / "images")]
    assert main([*argv, "--output", str(disk / "pred"), "--workers", "0"]) == 2
    one_line_disk_full(capsys, disk)
    assert leftovers(disk) == []
    written = [p for p in disk.rglob("*") if p.is_file() and p.suffix in (".png", ".jpg")]
    assert written, "some outputs fit before the disk filled"
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None for p in written)


def test_evaluate_stops_with_one_line(
    trained: Path, synth_dataset: Path, small_disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk("16k")
    argv = ["evaluate", "--model", str(trained), "--data", str(synth_dataset), "--split", "valid"]
    assert main([*argv, "--output", str(disk / "eval"), "--workers", "0"]) == 2
    one_line_disk_full(capsys, disk)
    assert leftovers(disk) == []


def test_export_keeps_the_previous_file(
    trained: Path, small_disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk("2m")
    previous = disk / "model.onnx"
    previous.write_bytes(b"the previous export")
    assert main(["export", "--model", str(trained), "--onnx", str(previous)]) == 2
    one_line_disk_full(capsys, disk)
    assert previous.read_bytes() == b"the previous export"
    assert leftovers(disk) == []


def test_convert_aihub_stops_with_one_line(
    tmp_path: Path, small_disk: Disk, capsys: pytest.CaptureFixture[str]
) -> None:
    src = make_source(tmp_path)
    disk = small_disk("32k")
    assert main(["convert-aihub", "--src", str(src), "--out", str(disk / "data")]) == 2
    one_line_disk_full(capsys, disk)
    assert leftovers(disk) == []


def test_preresize_cache_stops_with_one_line(
    synth_dataset: Path, small_disk: Disk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    disk = small_disk("16k")
    argv = ["train", "--data", str(synth_dataset), "--output", str(tmp_path / "run")]
    assert main([*argv, *settings("train.epochs=1", "data.preresize=32", f"data.cache_dir={disk}")]) == 2
    one_line_disk_full(capsys, disk)
    assert leftovers(disk) == []


def test_an_appended_log_line_is_all_or_nothing(small_disk: Disk) -> None:
    disk = small_disk("8k")  # two pages
    log = disk / "train_log.jsonl"
    append_line(log, "{}")
    (disk / "filler").write_bytes(b"x" * (4096 - 100))  # the second page, nearly
    before = log.read_bytes()
    with pytest.raises(DiskFull, match=r"train_log\.jsonl: the disk is full"):
        append_line(log, "y" * 8192)
    assert log.read_bytes() == before


def test_a_full_sqlite_study_is_one_line_not_a_database_outage(
    synth_dataset: Path, small_disk: Disk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite says "database or disk is full": the search names the study file at once instead of waiting
    out its retries for a database that restarts (60 x 5 s)."""
    disk = small_disk("1m")
    storage = f"sqlite:///{disk / 'study.db'}"
    assert main(["study", "create", "--storage", storage, "--study", "s", *settings()]) == 0
    capsys.readouterr()
    with (disk / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError):
        while True:  # the rest of the disk, to the last byte
            filler.write(b"\0" * 4096)
    argv = ["search", "--data", str(synth_dataset), "--output", str(tmp_path / "out"), "--n-trials", "1"]
    assert main([*argv, "--storage", storage, "--study", "s", *settings()]) == 2
    line = one_line_disk_full(capsys, disk, others=True)
    assert "study.db" in line
