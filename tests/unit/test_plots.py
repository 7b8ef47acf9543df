"""The OpenCV pictures and the small inference helpers, without a trained model."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer import plots
from sideformer.data.classes import CLASS_NAMES, PALETTE
from sideformer.errors import UserError
from sideformer.predict import inference_size
from sideformer.trained_model import default_palette, resolve_model_dir


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert plots.nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert plots.nice_ticks(0.13, 2.71) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert plots.nice_ticks(1, 20, count=8, integer=True) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert plots.nice_ticks(3, 3) == [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0]  # a flat series still gets an axis
    assert plots.nice_ticks(math.nan, 1.0) == []


def test_overlay_leaves_background_and_ignore_untouched() -> None:
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.array([[0, 1, 255, 18]] * 4, np.uint8)
    out = plots.overlay(image, mask, PALETTE, alpha=0.5)
    assert (out[:, 0] == 100).all() and (out[:, 2] == 100).all()  # background (black) and ignore (255)
    assert out[0, 1].tolist() == [50, 50, 178]  # halfway to sidewalk_blocks (0, 0, 255)
    assert out[0, 3].tolist() == [178, 50, 50]  # halfway to caution_zone_manhole (255, 0, 0)


def test_line_chart_with_gaps_and_a_confusion_matrix_with_an_absent_class(tmp_path: Path) -> None:
    chart = plots.line_chart(
        {"a": ([1, 2, 3, 4], [0.5, math.nan, 0.7, 0.9])}, "t", "epoch", "v", size=(300, 400)
    )
    assert chart.shape == (300, 400, 3) and chart.std() > 10
    matrix = np.diag(np.arange(1, 23)) * 100
    matrix[3] = 0  # a class absent from the labels: a grey row, no division by zero
    image = plots.confusion_matrix_image(matrix, CLASS_NAMES, "cm")
    written = cv2.imread(str(plots.write_png(tmp_path / "cm.png", image)))
    grey = (written == [238, 238, 238]).all(axis=2)
    assert written.shape == image.shape and grey.sum() >= 22 * 28 * 28  # the absent class's whole row
    assert grey.any(axis=1).sum() >= 28


def test_default_palette_and_inference_size() -> None:
    assert default_palette(CLASS_NAMES) == PALETTE
    custom = default_palette(["background", "grass", "road", "sky"])
    assert custom[0] == (0, 0, 0) and len(set(custom)) == 4
    assert inference_size(1080, 1920, 512) == (512, 910)
    assert inference_size(1080, 1920, (256, 320)) == (256, 320)


def test_resolve_model_dir(tmp_path: Path) -> None:
    model = tmp_path / "run/final_ckpts/model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path / "run") == model == resolve_model_dir(model)
    (tmp_path / "unfinished/temp_ckpts").mkdir(parents=True)
    with pytest.raises(UserError, match="has not finished"):
        resolve_model_dir(tmp_path / "unfinished")
    with pytest.raises(UserError, match="not a trained model"):
        resolve_model_dir(tmp_path)
