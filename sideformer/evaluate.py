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
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sideformer import plots
from sideformer.atomic import atomic_write_json
from sideformer.data.images import colorize
from sideformer.data.metadata import DatasetMeta, load_metadata
from sideformer.distributed import DistEnv
from sideformer.errors import UserError
from sideformer.metrics import ConfusionMatrix, format_iou_table
from sideformer.output_lock import output_lock
from sideformer.rundir import RunDir
from sideformer.trained_model import TrainedModel, load_trained_model
from sideformer.validation import EvalResult, eval_loader, evaluate

EVALUATION_FILE = "evaluation.json"
CONFUSION_FILE = "confusion_matrix.png"
WORST_FILE = "worst_predictions.png"


@dataclass
class Evaluation:
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
) -> Evaluation:
    """Evaluate a trained model on one split of a dataset and write the report files into `out`."""
    trained = load_trained_model(model, device, precision)
    out = Path(out) if out is not None else default_output(trained.folder, split)
    meta = load_metadata(data)
    _check_split(meta, split, trained, size)
    with output_lock(out):  # before the work: a second evaluation into `out` refuses at once
        base_size, batch = size or trained.base_size, batch_size or trained.eval_batch_size
        env = DistEnv(rank=0, world_size=1, local_rank=0, device=trained.device)
        loader = eval_loader(meta, split, base_size, batch, workers, env)
        worst_images = WorstImages(worst, meta.num_classes, meta.ignore_index)
        result = _validate(trained, meta, loader, split, env, worst_images)

        samples = meta.split(split)
        evaluation = Evaluation(
            out=out, split=split, classes=meta.classes, result=result, images=len(samples)
        )
        title = f"{meta.name} / {split}: mIoU {result.metrics.miou:.3f}"
        assert result.confusion is not None
        evaluation.files["confusion matrix"] = plots.write_png(
            out / CONFUSION_FILE, plots.confusion_matrix_image(result.confusion.numpy(), meta.classes, title)
        )
        if worst_images.ranked():
            grid, evaluation.worst = _worst_grid(worst_images, loader, meta, split, trained.palette)
            evaluation.files["worst predictions"] = plots.write_png(out / WORST_FILE, grid)
        _write_evaluation_json(evaluation, trained, meta, base_size, batch)
        return evaluation


def _check_split(meta: DatasetMeta, split: str, trained: TrainedModel, size: int | None) -> None:
    if not meta.split(split):
        available = {name: len(s) for name, s in meta.splits.items() if s}
        raise UserError(f"{meta.root / 'metadata.json'}: split '{split}' is empty; splits here: {available}.")
    if meta.classes != trained.classes:
        raise UserError(
            f"{meta.root}: the dataset's classes {meta.classes} are not the model's {trained.classes} "
            f"({trained.folder}); evaluate on data in the model's class order."
        )
    if size is not None and size < 32:
        raise UserError(f"--size {size}: must be >= 32 pixels.")


class WorstImages:
    """A validation batch hook keeping the `count` images with the lowest own mIoU, with their predictions:
    a max-heap of (-score, index) in loader order."""

    def __init__(self, count: int, num_classes: int, ignore_index: int) -> None:
        self.count, self.num_classes, self.ignore_index = count, num_classes, ignore_index
        self.heap: list[tuple[float, int]] = []
        self.predictions: dict[int, np.ndarray] = {}
        self.seen = 0

    def __call__(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        for prediction, label in zip(predictions, labels, strict=True):
            index, self.seen = self.seen, self.seen + 1
            if self.count <= 0:
                continue
            confusion = ConfusionMatrix(self.num_classes, self.ignore_index, prediction.device)
            confusion.update(prediction, label)
            score = confusion.compute().miou
            if math.isnan(score):
                continue  # nothing labelled in this image
            heapq.heappush(self.heap, (-score, index))
            self.predictions[index] = prediction.to(torch.uint8).cpu().numpy()
            if len(self.heap) > self.count:
                _, dropped = heapq.heappop(self.heap)
                del self.predictions[dropped]

    def ranked(self) -> list[tuple[float, int]]:
        """(mIoU, index), worst first."""
        return sorted((-negative, index) for negative, index in self.heap)


def _validate(
    trained: TrainedModel,
    meta: DatasetMeta,
    loader: DataLoader,
    split: str,
    env: DistEnv,
    on_batch: WorstImages,
) -> EvalResult:
    batches = tqdm(
        loader, desc=f"evaluating {split}", unit="batch", disable=None, dynamic_ncols=True, leave=False
    )
    try:
        return evaluate(
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


def _worst_grid(
    worst: WorstImages,
    loader: DataLoader,
    meta: DatasetMeta,
    split: str,
    palette: list[tuple[int, int, int]],
) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Rows of image | truth | prediction with a legend of the classes shown, and (name, mIoU) per row."""
    samples = meta.split(split)
    rows, captions, ids, named = [], [], set(), []
    for score, index in worst.ranked():
        image, label = loader.dataset[index]
        label_np = label.numpy()
        prediction = worst.predictions[index][: label_np.shape[0], : label_np.shape[1]]  # drop batch padding
        ids |= set(np.unique(label_np).tolist()) | set(np.unique(prediction).tolist())
        rows.append(
            [image.permute(1, 2, 0).numpy(), colorize(label_np, palette), colorize(prediction, palette)]
        )
        name = samples[index].image.relative_to(meta.root).as_posix()
        captions.append(f"{name}   mIoU {score:.3f}")
        named.append((name, score))
    grid = plots.image_grid(rows, ["image", "truth", "prediction"], captions)
    present = sorted(i for i in ids if i < meta.num_classes)
    return plots.vstack([grid, plots.legend(meta.classes, palette, present, grid.shape[1])]), named


def _write_evaluation_json(
    evaluation: Evaluation, trained: TrainedModel, meta: DatasetMeta, base_size: int, batch: int
) -> None:
    result, metrics = evaluation.result, evaluation.result.metrics
    assert result.confusion is not None
    path = evaluation.out / EVALUATION_FILE
    atomic_write_json(
        path,
        {
            "model": str(trained.folder),
            "data": str(meta.root),
            "split": evaluation.split,
            "images": evaluation.images,
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
            "worst": [{"image": name, "miou": score} for name, score in evaluation.worst],
        },
    )
    evaluation.files["evaluation"] = path


def format_evaluation(evaluation: Evaluation) -> str:
    metrics = evaluation.result.metrics
    table = format_iou_table(
        evaluation.classes,
        metrics.per_class_iou,
        metrics.miou,
        metrics.pixel_accuracy,
        f"per-class IoU on the {evaluation.split} split ({evaluation.images} image(s)):",
    )
    width = max(len(k) for k in evaluation.files)
    files = [f"  {kind:<{width}}  {path}" for kind, path in evaluation.files.items()]
    return "\n".join([table, "", "outputs:", *files])


def _finite(value: float) -> float | None:
    """NaN (a class absent from labels and predictions) as JSON null."""
    return None if math.isnan(value) else value
