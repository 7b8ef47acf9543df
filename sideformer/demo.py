"""`sideformer demo`: synthetic scenes -> a small SegFormer trained on CPU -> a per-class IoU table,
training curves and a few prediction overlays.

Everything lands under one folder: `data/` (the synthetic dataset), `run/` (the training run, with
`training_curves.png`) and `predictions/` (masks and overlays of a few validation images).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sideformer.config import load_config
from sideformer.curves import write_training_curves
from sideformer.data.metadata import load_metadata
from sideformer.data.synth import write_synthetic_dataset
from sideformer.errors import UserError
from sideformer.metrics import format_iou_table
from sideformer.predict import predict
from sideformer.rundir import RunDir
from sideformer.train import TrainResult, train
from sideformer.trained_model import load_trained_model

log = logging.getLogger(__name__)

DEMO_PREDICTIONS = 4
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
        if not RunDir(run).config.exists():
            raise UserError(f"{run} exists and is not a sideformer run; choose another --output.")
        shutil.rmtree(run)  # the demo's own previous run
    config.data.path, config.output = str(data), str(run)
    result = train(config)
    print(format_result(result, load_metadata(data).classes))
    print(format_pictures(*write_pictures(folder, run)))
    return 0


def write_pictures(folder: Path, run: Path, count: int = DEMO_PREDICTIONS) -> tuple[Path, list[Path]]:
    """The training curves, and `count` validation images segmented by the trained model."""
    curves = write_training_curves(run)
    predictions = folder / "predictions"
    shutil.rmtree(predictions, ignore_errors=True)  # the demo's own previous pictures
    model = load_trained_model(run)
    summary = predict(model, folder / "data" / "valid" / "images", predictions, workers=0, limit=count)
    return curves, summary.outputs


def format_pictures(curves: Path, overlays: list[Path]) -> str:
    lines = ["", "pictures:", f"  training curves           {curves}"]
    lines += [f"  prediction overlay        {path}" for path in overlays]
    if overlays:
        lines.append(f"  class-id masks            {overlays[0].parent.parent / 'masks'}")
    return "\n".join(lines)


def format_result(result: TrainResult, classes: list[str]) -> str:
    best, run = result.best, RunDir(result.output)
    table = format_iou_table(
        classes,
        [best.val_per_class_iou[name] for name in classes],
        best.val_miou,
        best.val_pixel_accuracy,
        f"per-class IoU on the validation split (best epoch {best.epoch}):",
    )
    lines = [
        "",
        table,
        "",
        "outputs:",
        f"  model (save_pretrained)   {run.model}",
        f"  state_dict                {run.best_state_dict}",
        f"  metrics                   {run.metrics}",
        f"  per-epoch log             {run.train_log}",
    ]
    if run.wandb.is_dir():
        lines.append(f"  W&B run files             {run.wandb}  (`wandb sync` uploads them)")
    return "\n".join(lines)
