"""The speed-up options train end to end: data.preresize, train.compile (wiring only: compiling takes
minutes on CPU), fused AdamW and the folded decode head (the defaults)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sideformer.config import load_config
from sideformer.data.metadata import load_metadata
from sideformer.model import FoldedDecodeHead
from sideformer.train import train

pytestmark = pytest.mark.slow


def test_preresize_and_compile_train(synth_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or module)
    optimizers: list[torch.optim.Optimizer] = []
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(
        torch.optim, "AdamW", lambda *a, **k: optimizers.append(real_adamw(*a, **k)) or optimizers[-1]
    )
    cache = tmp_path / "cache"
    config = load_config(
        base={
            "output": str(tmp_path / "run"),
            "data": {
                "path": str(synth_dataset),
                "crop_size": [48, 48],
                "num_workers": 0,
                "preresize": 48,  # the 64x64 sources become 48x48 copies
                "cache_dir": str(cache),
            },
            "model": {"variant": "b0"},
            "optim": {"lr": 1e-3, "warmup_steps": 1},
            "train": {"epochs": 1, "batch_size": 4, "compile": True},
            "wandb": {"enabled": False},
        }
    )
    result = train(config)
    assert math.isfinite(result.best.train_loss) and 0.0 <= result.best.val_miou <= 1.0
    assert len(compiled) == 1 and isinstance(compiled[0].decode_head, FoldedDecodeHead)
    assert optimizers and optimizers[0].defaults["fused"] is True
    train_images = len(load_metadata(synth_dataset).split("train"))
    assert len(list(cache.rglob("*.jpg"))) == len(list(cache.rglob("*.png"))) == train_images
    config.output = str(tmp_path / "again")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.*")}
    train(config)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.*")} == before  # reused, not rewritten
