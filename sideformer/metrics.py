"""Segmentation metrics from a confusion matrix that lives on the device.

Updating runs on the device with no host sync per batch (a bincount on CPU, a fixed-size scatter on an
accelerator); ranks sum their matrices, so the result equals a single-process evaluation over the same
samples exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegMetrics:
    miou: float
    """Mean IoU over the classes present in the labels or the predictions (NaN classes skipped)."""
    pixel_accuracy: float
    per_class_iou: list[float]
    """NaN for a class absent from both labels and predictions."""


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Rows are labels, columns predictions; ignore_index pixels are skipped."""
        if self.matrix.device.type == "cpu":
            valid = labels != self.ignore_index
            index = labels[valid].long() * self.num_classes + predictions[valid].long()
            self.matrix += torch.bincount(index, minlength=self.num_classes**2).view(self.num_classes, -1)
        else:
            self.matrix += counts_without_sync(predictions, labels, self.num_classes, self.ignore_index)

    def compute(self) -> SegMetrics:
        return metrics_from_confusion(self.matrix)


def counts_without_sync(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int
) -> torch.Tensor:
    """The confusion counts of one batch with fixed-size work only. On an accelerator, boolean indexing and
    bincount size their output from the data, a host sync per batch; this scatter into num_classes**2 + 1
    bins (the last one takes the ignored pixels) needs none."""
    cells = num_classes**2
    valid = labels != ignore_index
    index = torch.where(valid, labels.long() * num_classes + predictions.long(), cells).flatten()
    counts = torch.zeros(cells + 1, dtype=torch.int64, device=labels.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[:cells].view(num_classes, num_classes)


def metrics_from_confusion(matrix: torch.Tensor) -> SegMetrics:
    m = matrix.double().cpu()
    true_positive = m.diag()
    union = m.sum(0) + m.sum(1) - true_positive
    iou = true_positive / union  # 0/0 -> NaN: the class is neither labelled nor predicted
    present = ~torch.isnan(iou)
    total = m.sum()
    return SegMetrics(
        miou=float(iou[present].mean()) if present.any() else math.nan,
        pixel_accuracy=float(true_positive.sum() / total) if total > 0 else math.nan,
        per_class_iou=[float(v) for v in iou],
    )


def format_iou_table(
    classes: list[str], per_class_iou: list[float], miou: float, pixel_accuracy: float, title: str
) -> str:
    """Per-class IoU with a bar each, then the mean: what `demo` and `evaluate` print."""
    width = max(len(c) for c in [*classes, "mean IoU"])
    lines = [title]
    for name, iou in zip(classes, per_class_iou, strict=True):
        bar = "" if math.isnan(iou) else "#" * round(iou * 30)
        value = "  n/a " if math.isnan(iou) else f"{iou:6.3f}"
        lines.append(f"  {name:<{width}}  {value}  {bar}")
    lines.append(f"  {'mean IoU':<{width}}  {miou:6.3f}   pixel accuracy {pixel_accuracy:.3f}")
    return "\n".join(lines)
