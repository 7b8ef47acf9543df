"""`sideformer evaluate`: a trained model on one split of a dataset, as a per-class IoU table,
evaluation.json, a confusion-matrix PNG and a grid of the worst predictions (image | truth | prediction).

It runs the trainer's own validation (`validation.eval_loader` + `validation.evaluate`) at the size and
batch size the training validated with, so its mIoU is the trainer's for the same split and weights.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sideformer import plots
from sideformer.atomic import atomic_write_json
from sideformer.data.images import colorize
from sideformer.data.metadata import load_metadata
from sideformer.distributed import DistEnv
from sideformer.errors import UserError
from sideformer.metrics import ConfusionMatrix, format_iou_table
from sideformer.rundir import RunDir
from sideformer.trained_model import load_trained_model
from sideformer.validation import EvalResult, eval_loader, evaluate

EVALUATION_FILE = "evaluation.json"
CONFUSION_FILE = "confusion_matrix.png"
WORST_FILE = "worst_predictions.png"


@dataclass
class EvaluationReport:
    out: Path
    split: str
    classes: list[str]
    result: EvalResult
    images: int
    worst: list[tuple[str, float]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)


def default_output(model_dir: Path, split: str) -> Path:
    """RUN/evaluation/<split> for a model inside a run folder, else beside the model folder."""
    return (RunDir.of_model(model_dir) or RunDir(model_dir.parent)).evaluation(split)


def evaluate_model(
    model: str | Path,
    data: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    size: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    worst: int = 6,
    workers: int = 2,
) -> EvaluationReport:
    """Evaluate a trained model on one split of a dataset and write the report files into `out`."""
    trained = load_trained_model(model, device, precision)
    meta = load_metadata(data)
    samples = meta.split(split)
    if not samples:
        available = {name: len(s) for name, s in meta.splits.items() if s}
        raise UserError(f"{meta.root / 'metadata.json'}: split '{split}' is empty; splits here: {available}.")
    if meta.classes != trained.classes:
        raise UserError(
            f"{meta.root}: the dataset's classes {meta.classes} are not the model's {trained.classes} "
            f"({trained.folder}); evaluate on data in the model's class order."
        )
    if size is not None and size < 32:
        raise UserError(f"--size {size}: must be >= 32 pixels.")
    base_size, batch = size or trained.base_size, batch_size or trained.eval_batch_size
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=trained.device)
    loader = eval_loader(meta, split, base_size, batch, workers, env)

    # The `worst` images by their own mIoU: a max-heap of (-score, index), with their predictions.
    heap: list[tuple[float, int]] = []
    kept: dict[int, np.ndarray] = {}
    seen = 0

    def on_batch(predictions: torch.Tensor, labels: torch.Tensor) -> None:
        nonlocal seen
        for prediction, label in zip(predictions, labels, strict=True):
            index, seen = seen, seen + 1
            if worst <= 0:
                continue
            confusion = ConfusionMatrix(meta.num_classes, meta.ignore_index, prediction.device)
            confusion.update(prediction, label)
            score = confusion.compute().miou
            if math.isnan(score):
                continue  # nothing labelled in this image
            heapq.heappush(heap, (-score, index))
            kept[index] = prediction.to(torch.uint8).cpu().numpy()
            if len(heap) > worst:
                _, dropped = heapq.heappop(heap)
                del kept[dropped]

    batches = tqdm(
        loader, desc=f"evaluating {split}", unit="batch", disable=None, dynamic_ncols=True, leave=False
    )
    try:
        result = evaluate(
            trained.model,
            batches,
            meta.num_classes,
            meta.ignore_index,
            env,
            trained.autocast_dtype,
            on_batch=on_batch,
        )
    except UserError as exc:  # from a loader worker, the message carries the worker's traceback
        raise UserError(
            str(exc).strip().splitlines()[-1].removeprefix("sideformer.errors.UserError: ")
        ) from None
    assert result.confusion is not None

    out = Path(out) if out is not None else default_output(trained.folder, split)
    report = EvaluationReport(out=out, split=split, classes=meta.classes, result=result, images=len(samples))
    title = f"{meta.name} / {split}: mIoU {result.metrics.miou:.3f}"
    report.files["confusion matrix"] = plots.write_png(
        out / CONFUSION_FILE, plots.confusion_matrix_image(result.confusion.numpy(), meta.classes, title)
    )
    ranked = sorted((-negative, index) for negative, index in heap)
    if ranked:
        rows, captions, ids = [], [], set()
        for score, index in ranked:
            image, label = loader.dataset[index]
            label_np = label.numpy()
            prediction = kept[index][: label_np.shape[0], : label_np.shape[1]]  # drop the batch padding
            ids |= set(np.unique(label_np).tolist()) | set(np.unique(prediction).tolist())
            palette = trained.palette
            rows.append(
                [image.permute(1, 2, 0).numpy(), colorize(label_np, palette), colorize(prediction, palette)]
            )
            name = samples[index].image.relative_to(meta.root).as_posix()
            captions.append(f"{name}   mIoU {score:.3f}")
            report.worst.append((name, score))
        grid = plots.image_grid(rows, ["image", "truth", "prediction"], captions)
        present = sorted(i for i in ids if i < meta.num_classes)
        grid = plots.vstack([grid, plots.legend(meta.classes, trained.palette, present, grid.shape[1])])
        report.files["worst predictions"] = plots.write_png(out / WORST_FILE, grid)

    metrics = result.metrics
    atomic_write_json(
        out / EVALUATION_FILE,
        {
            "model": str(trained.folder),
            "data": str(meta.root),
            "split": split,
            "images": len(samples),
            "base_size": base_size,
            "batch_size": batch,
            "miou": _finite(metrics.miou),
            "pixel_accuracy": _finite(metrics.pixel_accuracy),
            "loss": _finite(result.loss),
            "per_class_iou": {
                c: _finite(v) for c, v in zip(meta.classes, metrics.per_class_iou, strict=True)
            },
            "classes": meta.classes,
            "confusion_matrix": result.confusion.tolist(),
            "worst": [{"image": name, "miou": score} for name, score in report.worst],
        },
    )
    report.files["evaluation"] = out / EVALUATION_FILE
    return report


def format_evaluation(report: EvaluationReport) -> str:
    m = report.result.metrics
    table = format_iou_table(
        report.classes,
        m.per_class_iou,
        m.miou,
        m.pixel_accuracy,
        f"per-class IoU on the {report.split} split ({report.images} image(s)):",
    )
    width = max(len(k) for k in report.files)
    files = [f"  {kind:<{width}}  {path}" for kind, path in report.files.items()]
    return "\n".join([table, "", "outputs:", *files])


def _finite(value: float) -> float | None:
    """NaN (a class absent from labels and predictions) as JSON null."""
    return None if math.isnan(value) else value
