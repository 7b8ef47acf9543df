"""The trained-model folder (RUN/final_ckpts/model): written by `train`, read by `predict`, `evaluate`,
`export` and the demo.

    config.json, model.safetensors   `save_pretrained()`, with id2label
    sideformer.json                  classes, palette, ignore_index, and how validation saw the images
                                     (base_size, eval_batch_size), so inference defaults to the same

A folder saved by plain `save_pretrained()` (no sideformer.json) loads too: the classes come from
id2label, the size from the run's config.yaml when the folder sits in a run, else a default.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from transformers import SegformerForSemanticSegmentation
from transformers.utils import logging as hf_logging

from sideformer.atomic import DiskFull, is_disk_full, nearly_full
from sideformer.data.classes import CLASS_NAMES, PALETTE
from sideformer.data.metadata import DatasetMeta
from sideformer.errors import UserError, first_line
from sideformer.model import autocast_dtype, fold_decode_head
from sideformer.rundir import RunDir

log = logging.getLogger(__name__)

EXTRA_FILE = "sideformer.json"
DEFAULT_BASE_SIZE = 512  # SegFormer's ADE20K / Cityscapes-style default, for models saved without one


@dataclass
class TrainedModel:
    model: SegformerForSemanticSegmentation
    folder: Path
    classes: list[str]
    palette: list[tuple[int, int, int]]
    ignore_index: int
    base_size: int
    """Short side validation resized images to; the default inference size."""
    eval_batch_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None


# --- writing ---------------------------------------------------------------------------------------


def save_trained_model(
    model: torch.nn.Module, target: Path, meta: DatasetMeta, inference: dict[str, Any] | None = None
) -> None:
    """`save_pretrained` plus sideformer.json, swapped into place whole: a reader never sees half a folder."""
    hf_logging.disable_progress_bar()  # a shard progress bar per save is noise in logs
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)  # type: ignore[operator]
        extra = {"classes": meta.classes, "palette": meta.palette, "ignore_index": meta.ignore_index}
        (staging / EXTRA_FILE).write_text(json.dumps(extra | (inference or {}), indent=2))
    except Exception as exc:
        full = is_disk_full(exc) or nearly_full(staging)  # safetensors' writer hides the errno
        shutil.rmtree(staging, ignore_errors=True)
        if full:
            raise DiskFull(target) from None
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)


# --- reading ---------------------------------------------------------------------------------------


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder (config.json inside) or a run folder (final_ckpts/model inside)."""
    path = Path(path)
    run = RunDir(path)
    for candidate in (path, run.model):
        if (candidate / "config.json").is_file():
            return candidate
    if run.temp.is_dir():
        raise UserError(f"--model {path}: this run has not finished (no final_ckpts/model yet).")
    raise UserError(
        f"--model {path}: not a trained model. Give a run folder (the --output of `sideformer train`, "
        f"holding final_ckpts/model/) or a save_pretrained() folder holding config.json."
    )


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible to this process; use --device cpu or auto.")
    return torch.device("cuda" if preference in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def load_trained_model(path: str | Path, device: str = "auto", precision: str = "auto") -> TrainedModel:
    """The model in eval mode on `device`, with the classes, palette and sizes its training used."""
    folder = resolve_model_dir(path)
    hf_logging.disable_progress_bar()
    try:
        model = SegformerForSemanticSegmentation.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as exc:
        # Damaged files: a truncated model.safetensors, a config.json with values of the wrong types.
        damaged = {SafetensorError: "model.safetensors", TypeError: "config.json", KeyError: "config.json"}
        where = folder / damaged[type(exc)] if type(exc) in damaged else folder
        raise UserError(
            f"{where}: cannot load the model ({first_line(exc)}); copy the model folder again or point "
            f"--model at another run."
        ) from None
    extra = _read_json(folder / EXTRA_FILE)
    id2label = model.config.id2label
    classes = extra.get("classes") or [id2label[i] for i in range(len(id2label))]
    if len(classes) != model.config.num_labels:
        raise UserError(
            f"{folder / EXTRA_FILE}: lists {len(classes)} classes but the model predicts "
            f"{model.config.num_labels}; the folder mixes two models."
        )
    run_config = _run_config(folder)
    base_size = extra.get("base_size") or _base_size_from(run_config)
    if base_size is None:
        log.info(
            "%s: no training image size recorded; using %d (pass --size to change)", folder, DEFAULT_BASE_SIZE
        )
        base_size = DEFAULT_BASE_SIZE
    train_config = run_config.get("train", {}) if run_config else {}
    eval_batch = (
        extra.get("eval_batch_size")
        or train_config.get("eval_batch_size")
        or train_config.get("batch_size")
        or 8
    )
    device_ = pick_device(device)
    palette = [(int(r), int(g), int(b)) for r, g, b in extra["palette"]] if extra.get("palette") else None
    return TrainedModel(
        model=fold_decode_head(model).to(device_).eval(),  # the same outputs, computed in a cheaper order
        folder=folder,
        classes=list(classes),
        palette=palette or default_palette(classes),
        ignore_index=int(extra.get("ignore_index", model.config.semantic_loss_ignore_index)),
        base_size=int(base_size),
        eval_batch_size=int(eval_batch),
        device=device_,
        autocast_dtype=autocast_dtype(precision, device_),
    )


def default_palette(classes: Sequence[str]) -> list[tuple[int, int, int]]:
    """SideGuide colours for SideGuide class names; golden-angle hues for any other class."""
    if list(classes) == CLASS_NAMES:
        return list(PALETTE)
    known = dict(zip(CLASS_NAMES, PALETTE, strict=True))
    colours = []
    for i, name in enumerate(classes):
        if name in known:
            colours.append(known[name])
            continue
        hue = int(i * 137.508 / 2) % 180  # golden-angle hues (OpenCV hue is 0..180)
        hsv = np.uint8([[[hue, 200, 230 if i % 2 else 170]]])
        colours.append(tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return colours  # type: ignore[return-value]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc}); delete it or restore it from the run.") from None


def _run_config(model_dir: Path) -> dict:
    """config.yaml of the run that saved `model_dir` (RUN/final_ckpts/model), if it is there."""
    run = RunDir.of_model(model_dir)
    if run is None or not run.config.is_file():
        return {}
    try:
        return yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _base_size_from(run_config: dict) -> int | None:
    data = run_config.get("data") or {}
    return data.get("base_size") or (min(data["crop_size"]) if data.get("crop_size") else None)
