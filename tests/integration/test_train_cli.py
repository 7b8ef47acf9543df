"""`sideformer train` and `sideformer demo` through the command line, as a user runs them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sideformer.data.images import read_mask
from sideformer.data.metadata import load_metadata
from tests.integration.conftest import TINY, env_for, sideformer

pytestmark = pytest.mark.slow


def with_settings(cmd: list[str], settings: list[str]) -> list[str]:
    return cmd + [arg for s in settings for arg in ("--set", s)]


def test_bad_data_is_refused_before_training(synth_dataset: Path, tmp_path: Path, run) -> None:
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    meta = load_metadata(data)
    meta.split("train")[0].image.unlink()
    output = tmp_path / "run"
    proc = run(with_settings(sideformer("train", "--data", str(data), "--output", str(output)), TINY))
    assert proc.returncode == 2
    assert "image file is missing" in proc.stderr and str(meta.split("train")[0].image) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not output.exists()


def test_outputs_and_wandb_offline(synth_dataset: Path, tmp_path: Path, run) -> None:
    output = tmp_path / "run"
    settings = [s for s in TINY if not s.startswith("wandb")] + ["train.epochs=2", "wandb.group=tests"]
    proc = run(
        with_settings(sideformer("train", "--data", str(synth_dataset), "--output", str(output)), settings)
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    state = torch.load(output / "final_ckpts/best_model.pth", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    hf_config = json.loads((output / "final_ckpts/model/config.json").read_text())
    assert hf_config["id2label"]["1"] == "sidewalk_blocks" and len(hf_config["id2label"]) == 22
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["epochs_run"] == 2 and len(summary["best"]["val_per_class_iou"]) == 22
    assert 0.0 <= summary["test"]["miou"] <= 1.0 and len(summary["test"]["per_class_iou"]) == 22
    lines = (output / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (output / "config.yaml").is_file()
    assert not (output / "temp_ckpts").exists()
    offline_runs = list((output / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 1, list((output / "wandb").rglob("*"))


def test_broken_wandb_is_a_warning_not_a_failure(synth_dataset: Path, tmp_path: Path, run) -> None:
    broken = tmp_path / "site" / "wandb"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('simulated broken wandb install')\n")
    env = env_for()
    env["PYTHONPATH"] = f"{tmp_path / 'site'}:{env['PYTHONPATH']}"
    settings = [s for s in TINY if not s.startswith("wandb")] + ["train.epochs=1"]
    output = tmp_path / "run"
    proc = run(
        with_settings(sideformer("train", "--data", str(synth_dataset), "--output", str(output)), settings),
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "W&B disabled for this run: simulated broken wandb install" in proc.stdout + proc.stderr
    assert (output / "final_ckpts/best_model.pth").is_file()


def majority_class_miou(data: Path) -> tuple[float, float]:
    """mIoU and pixel accuracy of always predicting the most frequent validation class: chance level."""
    meta = load_metadata(data)
    counts = np.zeros(256, np.int64)
    for sample in meta.split("valid"):
        counts += np.bincount(read_mask(sample.mask, meta.palette).ravel(), minlength=256)
    counts = counts[: meta.num_classes]
    present = int((counts > 0).sum())
    majority_share = counts.max() / counts.sum()
    return majority_share / present, majority_share  # IoU of the majority class, 0 for every other


def test_demo_learns_well_above_chance(tmp_path: Path, run) -> None:
    folder = tmp_path / "demo"
    proc = run(
        sideformer("demo", "--output", str(folder), "--set", "train.epochs=4", "--set", "wandb.enabled=false")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-class IoU" in proc.stdout and "sidewalk_blocks" in proc.stdout
    best = json.loads((folder / "run/metrics.json").read_text())["best"]
    chance_miou, chance_accuracy = majority_class_miou(folder / "data")
    assert best["val_miou"] > 3 * chance_miou, (best["val_miou"], chance_miou)
    assert best["val_pixel_accuracy"] > chance_accuracy + 0.1, (best["val_pixel_accuracy"], chance_accuracy)
    # It ends with pictures, and says where they are: the curves and a few prediction overlays.
    curves = folder / "run/training_curves.png"
    overlays = sorted((folder / "predictions/overlays").glob("*.jpg"))
    assert len(overlays) == 4 and all(str(path) in proc.stdout for path in [curves, *overlays])
    assert cv2.imread(str(curves)).shape == (420, 1210, 3)
    for overlay in overlays:
        assert cv2.imread(str(overlay)).shape == (128, 128, 3)
        mask = cv2.imread(str(folder / "predictions/masks" / f"{overlay.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (128, 128) and len(np.unique(mask)) > 1


def test_unreachable_pretrained_weights_fail_before_training(
    synth_dataset: Path, tmp_path: Path, run
) -> None:
    """Air-gapped: a hub id that is not in the local cache is one clear error line, not a traceback."""
    env = env_for(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf-cache"))
    settings = [*TINY, "model.pretrained=nvidia/mit-b0"]
    cmd = with_settings(
        sideformer("train", "--data", str(synth_dataset), "--output", str(tmp_path / "run")), settings
    )
    proc = run(cmd, env=env)
    assert proc.returncode == 2
    assert "model.pretrained='nvidia/mit-b0': cannot load weights" in proc.stderr
    assert "Traceback" not in proc.stderr
