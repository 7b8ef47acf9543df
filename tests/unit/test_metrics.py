"""Metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sideformer.metrics import ConfusionMatrix

IGNORE = 255


def test_hand_computed_iou_with_absent_class_and_ignored_pixels() -> None:
    # 4 classes. Class 3 appears in neither labels nor predictions -> NaN, excluded from the mean.
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    preds = torch.tensor([[0, 1, 1, 1], [2, 0, 3 - 3, 1]])  # the last two sit on ignored pixels
    cm = ConfusionMatrix(num_classes=4, ignore_index=IGNORE)
    cm.update(preds, labels)
    m = cm.compute()
    # class 0: TP 1 (pixel 0), FP 1 (label 2 -> 0), FN 1 (label 0 -> 1): IoU 1/3
    # class 1: TP 2, FP 1 (label 0 -> 1), FN 0: IoU 2/3
    # class 2: TP 1, FP 0, FN 1: IoU 1/2
    assert m.per_class_iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(m.per_class_iou[3])
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m.pixel_accuracy == pytest.approx(4 / 6)  # ignored pixels are not counted


def test_class_predicted_but_absent_from_labels_counts_as_zero() -> None:
    labels = torch.tensor([0, 0, 0, 0])
    preds = torch.tensor([0, 0, 0, 2])
    cm = ConfusionMatrix(num_classes=3, ignore_index=IGNORE)
    cm.update(preds, labels)
    m = cm.compute()
    assert m.per_class_iou[0] == pytest.approx(3 / 4)
    assert math.isnan(m.per_class_iou[1])
    assert m.per_class_iou[2] == 0.0
    assert m.miou == pytest.approx((3 / 4 + 0) / 2)


def test_updates_accumulate_like_one_big_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (6, 16, 16), generator=gen)
    labels[:, :2] = IGNORE
    preds = torch.randint(0, 5, (6, 16, 16), generator=gen)
    whole = ConfusionMatrix(5, IGNORE)
    whole.update(preds, labels)
    parts = ConfusionMatrix(5, IGNORE)
    for i in range(6):
        parts.update(preds[i : i + 1], labels[i : i + 1])
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == 6 * 14 * 16


def test_perfect_prediction() -> None:
    labels = torch.tensor([[0, 1], [2, IGNORE]])
    cm = ConfusionMatrix(3, IGNORE)
    cm.update(labels.clone(), labels)
    m = cm.compute()
    assert m.miou == 1.0 and m.pixel_accuracy == 1.0
