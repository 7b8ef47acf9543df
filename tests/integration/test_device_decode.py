"""data.decode=device trains end to end on CPU (OpenCV stands in for nvJPEG, the augmentation is the
device path's torch ops) and learns as the loader path does from the same draws; the CPU defaults
(data.decode and train.compile auto) stay the OpenCV loader and eager."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sideformer.config import load_config
from sideformer.data.dataset import EncodedDataset, SegmentationDataset
from sideformer.distributed import single_process
from sideformer.train import train
from sideformer.train_data import build_loaders, load_checked_dataset

pytestmark = pytest.mark.slow


def config_for(data: Path, output: Path, decode: str):
    return load_config(
        base={
            "output": str(output),
            "data": {"path": str(data), "crop_size": [48, 48], "num_workers": 1, "decode": decode},
            "model": {"variant": "b0"},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "train": {"epochs": 2, "batch_size": 4},
            "wandb": {"enabled": False},
        }
    )


def test_device_decoding_trains_like_the_loader_path(
    synth_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    compiled: list[object] = []  # train.compile=auto must leave CPU training eager, as it always was
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or module)
    on_device = config_for(synth_dataset, tmp_path / "device", "device")
    in_loader = config_for(synth_dataset, tmp_path / "loader", "auto")  # auto on CPU: the loader path
    env = single_process("cpu")
    meta = load_checked_dataset(on_device)
    assert isinstance(build_loaders(on_device, meta, env).train.dataset, EncodedDataset)
    assert type(build_loaders(in_loader, meta, env).train.dataset) is SegmentationDataset

    device_run, loader_run = train(on_device), train(in_loader)
    device_losses = [m.train_loss for m in device_run.history]
    loader_losses = [m.train_loss for m in loader_run.history]
    assert all(math.isfinite(x) for x in device_losses) and len(device_losses) == 2
    assert compiled == []
    # Same draws, nearly the same pixels: the same losses to within a few per cent.
    for ours, theirs in zip(device_losses, loader_losses, strict=True):
        assert abs(ours - theirs) / theirs < 0.05, (device_losses, loader_losses)
