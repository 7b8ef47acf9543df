"""`sideformer demo`: synthetic scenes -> a small SegFormer trained on CPU -> a per-class IoU table.

Everything lands under one folder: `data/` (the synthetic dataset) and `run/` (the training run).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from sideformer.config import load_config
from sideformer.data.metadata import load_metadata
from sideformer.data.synth import write_synthetic_dataset
from sideformer.errors import UserError
from sideformer.train import TrainResult, train

log = logging.getLogger(__name__)

DEMO_DATA = {"train": 200, "valid": 40, "size": (128, 128), "seed": 0}

# Random weights learn faster with a higher learning rate and no 10x head multiplier than the
# fine-tuning recipe (6e-5, head x10) that assumes a pretrained encoder.
DEMO_SETTINGS = {
    "model": {"variant": "b0"},
    "data": {"crop_size": [128, 128], "scale_range": [0.75, 1.5], "num_workers": 1},
    "train": {"epochs": 20, "batch_size": 8},
    "optim": {"lr": 1e-3, "head_lr_mult": 1.0, "warmup_steps": 50},
    "early_stop": {"monitor": "val_miou", "patience": 0},
    "wandb": {"name": "demo"},
}


def run_demo(folder: Path, overrides: list[str]) -> int:
    config = load_config(base=DEMO_SETTINGS, overrides=overrides)
    data, run = folder / "data", folder / "run"
    if not (data / "metadata.json").exists():
        log.info("writing %d + %d synthetic scenes to %s", DEMO_DATA["train"], DEMO_DATA["valid"], data)
        write_synthetic_dataset(data, **DEMO_DATA)
    if run.exists():
        if not (run / "config.yaml").exists():
            raise UserError(f"{run} exists and is not a sideformer run; choose another --output.")
        shutil.rmtree(run)  # the demo's own previous run
    config.data.path, config.output = str(data), str(run)
    result = train(config)
    print(format_result(result, load_metadata(data).classes))
    return 0


def format_result(result: TrainResult, classes: list[str]) -> str:
    best = result.best
    width = max(len(c) for c in classes)
    lines = ["", f"per-class IoU on the validation split (best epoch {best.epoch}):"]
    for name in classes:
        iou = best.val_per_class_iou[name]
        bar = "" if math.isnan(iou) else "#" * round(iou * 30)
        value = "  n/a " if math.isnan(iou) else f"{iou:6.3f}"
        lines.append(f"  {name:<{width}}  {value}  {bar}")
    lines += [
        f"  {'mean IoU':<{width}}  {best.val_miou:6.3f}   pixel accuracy {best.val_pixel_accuracy:.3f}",
        "",
        "outputs:",
        f"  model (save_pretrained)   {result.output / 'final_ckpts/model'}",
        f"  state_dict                {result.output / 'final_ckpts/best_model.pth'}",
        f"  metrics                   {result.output / 'metrics.json'}",
        f"  per-epoch log             {result.output / 'train_log.jsonl'}",
    ]
    if (result.output / "wandb").is_dir():
        lines.append(f"  W&B run files             {result.output / 'wandb'}  (`wandb sync` uploads them)")
    return "\n".join(lines)
