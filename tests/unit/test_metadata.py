from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sideformer.data.metadata import load_metadata, write_metadata
from sideformer.errors import UserError
from tests.helpers import write_metadata_json, write_pair

CLASSES = ["background", "sidewalk", "road"]


def test_current_form_parses_paths_relative_to_the_folder(tmp_path: Path) -> None:
    write_metadata(
        tmp_path,
        "tiny",
        CLASSES,
        [(0, 0, 0), (0, 0, 255), (255, 0, 255)],
        {"train": [("train/images/a.jpg", "train/masks/a.png")], "valid": []},
    )
    meta = load_metadata(tmp_path)
    assert meta.name == "tiny"
    assert meta.classes == CLASSES
    assert meta.palette == [(0, 0, 0), (0, 0, 255), (255, 0, 255)]
    assert meta.ignore_index == 255
    assert meta.split("train")[0].image == tmp_path / "train/images/a.jpg"
    assert meta.split("test") == []
    assert meta.id2label == {0: "background", 1: "sidewalk", 2: "road"}


def test_legacy_form_takes_classes_from_the_config(tmp_path: Path) -> None:
    write_metadata_json(
        tmp_path,
        {
            "train": [["train/images/a.jpg", "train/masks/a.png"]],
            "valid": [{"image": "v.jpg", "mask": "v.png"}],
        },
    )
    meta = load_metadata(tmp_path, classes=CLASSES)
    assert meta.classes == CLASSES
    assert meta.split("valid")[0].mask == tmp_path / "v.png"
    with pytest.raises(UserError, match=r"data\.classes"):
        load_metadata(tmp_path)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"classes": CLASSES}, "no 'splits'"),
        ({"classes": CLASSES, "splits": {"training": []}}, "unknown split"),
        ({"classes": [], "splits": {"train": []}}, "non-empty list"),
        ({"classes": ["a", "a"], "splits": {"train": []}}, "duplicate class"),
        ({"classes": CLASSES, "ignore_index": 1, "splits": {"train": []}}, "collides with class id 1"),
        ({"classes": CLASSES, "palette": [[0, 0, 0]], "splits": {"train": []}}, "1 colours for 3 classes"),
        ({"classes": CLASSES, "palette": [[0, 0, 0], [0, 0, 0], [1, 1, 1]], "splits": {}}, "share a palette"),
        ({"classes": CLASSES, "splits": {"train": [{"image": "a.jpg"}]}}, r"train\[0\]"),
    ],
)
def test_malformed_metadata_names_the_problem(tmp_path: Path, doc: dict, message: str) -> None:
    write_metadata_json(tmp_path, doc)
    with pytest.raises(UserError, match=message):
        load_metadata(tmp_path)


def test_missing_or_broken_metadata_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="sideformer synth"):
        load_metadata(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_metadata(tmp_path)


def test_palette_masks_are_decoded_to_ids(tmp_path: Path) -> None:
    from sideformer.data.images import read_mask

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:, 2:] = (255, 0, 255)
    rgb[0, 0] = (0, 0, 255)
    entry = write_pair(tmp_path, "a", rgb[:, :, ::-1].copy())  # cv2 writes BGR
    ids = read_mask(tmp_path / entry["mask"], [(0, 0, 0), (0, 0, 255), (255, 0, 255)])
    expected = np.zeros((4, 4), np.uint8)
    expected[:, 2:] = 2
    expected[0, 0] = 1
    np.testing.assert_array_equal(ids, expected)
