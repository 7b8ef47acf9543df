"""Every check-data error is found, reported with its file, and the CLI exits non-zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sideformer.cli import main
from sideformer.data.check import check_dataset
from sideformer.data.metadata import load_metadata
from tests.helpers import write_metadata_json, write_pair

CLASSES = ["background", "sidewalk", "road"]
PALETTE = [[0, 0, 0], [0, 0, 255], [255, 0, 255]]


def good_mask() -> np.ndarray:
    mask = np.zeros((8, 8), np.uint8)
    mask[4:] = 2
    mask[0, 0] = 255  # ignore_index is allowed
    return mask


def make_dataset(root: Path) -> dict:
    train = [write_pair(root, f"t{i}", good_mask()) for i in range(2)]
    valid = [write_pair(root, "v0", good_mask(), split="valid")]
    return {"name": "t", "classes": CLASSES, "palette": PALETTE, "splits": {"train": train, "valid": valid}}


def problems(root: Path, doc: dict) -> list[str]:
    write_metadata_json(root, doc)
    return [str(p) for p in check_dataset(load_metadata(root)).problems]


def test_a_clean_dataset_has_no_problems(tmp_path: Path, capsys) -> None:
    write_metadata_json(tmp_path, make_dataset(tmp_path))
    assert problems(tmp_path, make_dataset(tmp_path)) == []
    assert main(["check-data", str(tmp_path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_missing_files(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    (tmp_path / doc["splits"]["train"][0]["image"]).unlink()
    (tmp_path / doc["splits"]["train"][1]["mask"]).unlink()
    found = problems(tmp_path, doc)
    assert any("t0.png: image file is missing" in p for p in found)
    assert any("masks/t1.png: mask file is missing" in p for p in found)


def test_unreadable_image_and_mask(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    (tmp_path / doc["splits"]["train"][0]["image"]).write_bytes(b"not an image")
    (tmp_path / doc["splits"]["train"][1]["mask"]).write_bytes(b"")
    found = problems(tmp_path, doc)
    assert any("images/t0.png: cannot decode image" in p for p in found)
    assert any("masks/t1.png" in p and "cannot read mask" in p for p in found)


def test_size_mismatch(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    doc["splits"]["train"][0] = write_pair(tmp_path, "t0", good_mask(), image=np.zeros((8, 9, 3), np.uint8))
    found = problems(tmp_path, doc)
    assert any("masks/t0.png: mask is 8x8 but its image t0.png is 9x8" in p for p in found)


def test_ids_outside_classes(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    mask = good_mask()
    mask[1, 1] = 7
    doc["splits"]["valid"][0] = write_pair(tmp_path, "v0", mask, split="valid")
    found = problems(tmp_path, doc)
    assert any("masks/v0.png: class id(s) [7] outside 0..2" in p and "ignore_index" in p for p in found)


def test_unknown_palette_colour(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2, 2] = (10, 20, 30)
    doc["splits"]["train"][0] = write_pair(tmp_path, "t0", rgb[:, :, ::-1].copy())
    found = problems(tmp_path, doc)
    assert any("masks/t0.png" in p and "colour (10, 20, 30)" in p for p in found)


def test_colour_mask_without_palette(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    del doc["palette"]
    doc["splits"]["train"][0] = write_pair(tmp_path, "t0", np.zeros((8, 8, 3), np.uint8))
    assert any("no 'palette'" in p for p in problems(tmp_path, doc))


def test_16_bit_mask(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    doc["splits"]["train"][0] = write_pair(tmp_path, "t0", np.zeros((8, 8), np.uint16))
    assert any("8-bit PNG" in p for p in problems(tmp_path, doc))


def test_empty_split_and_duplicate_sample(tmp_path: Path) -> None:
    doc = make_dataset(tmp_path)
    doc["splits"]["valid"] = [doc["splits"]["train"][0]]
    doc["splits"]["train"] = doc["splits"]["train"][:1] + doc["splits"]["train"]
    found = problems(tmp_path, doc)
    assert any("listed in 'train' and again in 'train'" in p for p in found)
    assert any("listed in 'train' and again in 'valid'" in p for p in found)
    doc["splits"]["valid"] = []
    assert any("split 'valid' is empty" in p for p in problems(tmp_path, doc))


def test_cli_reports_every_problem_and_fails(tmp_path: Path, capsys) -> None:
    doc = make_dataset(tmp_path)
    (tmp_path / doc["splits"]["train"][0]["image"]).unlink()
    mask = good_mask()
    mask[0, 1] = 9
    doc["splits"]["train"][1] = write_pair(tmp_path, "t1", mask)
    write_metadata_json(tmp_path, doc)
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out
    assert "image file is missing" in out and "class id(s) [9]" in out


def test_size_mismatch_from_exif_orientation_says_so(tmp_path: Path) -> None:
    from PIL import Image

    doc = make_dataset(tmp_path)
    mask = np.zeros((6, 8), np.uint8)  # the stored pixels: 8 wide, 6 high
    entry = write_pair(tmp_path, "rotated", mask)
    image = tmp_path / "train" / "images" / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show it upright (6 wide, 8 high)
    Image.new("RGB", (8, 6), (127, 127, 127)).save(image, exif=exif)
    doc["splits"]["train"].append({"image": "train/images/rotated.jpg", "mask": entry["mask"]})
    found = problems(tmp_path, doc)
    assert len(found) == 1
    assert "mask is 8x6 but its image rotated.jpg is 6x8 after its EXIF orientation is applied" in found[0]
    assert "stored as 8x6" in found[0] and "rotate the mask" in found[0]
