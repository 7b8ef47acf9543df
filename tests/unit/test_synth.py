"""Synthetic street scenes: shapes, determinism, class coverage, metadata and argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer.data.classes import CLASS_ID, CLASS_NAMES, IGNORE_INDEX, PALETTE
from sideformer.data.metadata import load_metadata
from sideformer.data.synth import draw_scene, write_synthetic_dataset
from sideformer.errors import UserError


def _scene(i: int, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    return draw_scene(np.random.default_rng([0, 0, i]), height, width)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("height", "width"), [(128, 128), (64, 96), (200, 120)])
def test_scene_shapes_dtypes_and_ids(height: int, width: int) -> None:
    for i in range(10):
        image, mask = _scene(i, height, width)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert mask.max() < len(CLASS_NAMES)


def test_scene_is_a_function_of_the_rng() -> None:
    a, b = _scene(3), _scene(3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], _scene(4)[0])


def test_scenes_hold_several_classes_and_the_dataset_most_of_them() -> None:
    seen, per_scene = set(), []
    for i in range(200):
        ids = set(np.unique(_scene(i)[1]).tolist())
        seen |= ids
        per_scene.append(len(ids))
    assert min(per_scene) >= 2
    assert np.mean(per_scene) >= 5
    assert len(seen) >= 20, sorted(set(CLASS_NAMES) - {CLASS_NAMES[i] for i in seen})


def test_classes_look_like_their_materials() -> None:
    """Images are textured look-alikes, not palette colours, and sit exactly where the mask says."""
    pixels: dict[int, list[np.ndarray]] = {}
    for i in range(60):
        image, mask = _scene(i)
        for cls in np.unique(mask):
            pixels.setdefault(int(cls), []).append(image[mask == cls].astype(float))
    mean = {cls: np.concatenate(p).mean(0) for cls, p in pixels.items()}
    r, g, b = mean[CLASS_ID["braille_guide_blocks_normal"]]
    assert r > b + 60 and g > b + 40  # yellow
    road = mean[CLASS_ID["roadway_normal"]]
    assert road.max() - road.min() < 20 and road.mean() < 120  # dark grey
    r, g, b = mean[CLASS_ID["sidewalk_urethane"]]
    assert r > g + 50 and r > b + 50  # reddish
    stripes = np.concatenate(pixels[CLASS_ID["roadway_crosswalk"]]).mean(1)
    assert (stripes > 180).mean() > 0.2 and (stripes < 120).mean() > 0.2  # white paint on asphalt
    assert not any(np.allclose(mean[cls], PALETTE[cls], atol=5) for cls in mean)


def test_dataset_layout_and_metadata(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "ds", train=3, valid=2, size=(64, 96), seed=5)
    assert out == tmp_path / "ds"
    meta = load_metadata(out)
    assert meta.name == "synthetic-street"
    assert meta.classes == CLASS_NAMES and meta.palette == PALETTE and meta.ignore_index == IGNORE_INDEX
    assert {name: len(s) for name, s in meta.splits.items()} == {"train": 3, "valid": 2}
    raw = json.loads((out / "metadata.json").read_text())
    assert raw["splits"]["train"][0] == {"image": "train/images/00000.jpg", "mask": "train/masks/00000.png"}
    for sample in meta.split("train") + meta.split("valid"):
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        mask = cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 96, 3) and mask.shape == (64, 96) and mask.dtype == np.uint8
        assert mask.max() < len(CLASS_NAMES)

    # Files hold what draw_scene drew (mask exactly, image up to JPEG loss, in RGB order).
    expected_image, expected_mask = draw_scene(np.random.default_rng([5, 1, 1]), 64, 96)
    mask = cv2.imread(str(out / "valid/masks/00001.png"), cv2.IMREAD_UNCHANGED)
    image = cv2.cvtColor(cv2.imread(str(out / "valid/images/00001.jpg")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(mask, expected_mask)
    assert np.abs(image.astype(int) - expected_image).mean() < 8  # noise and chroma subsampling
    assert np.abs(image.mean((0, 1)) - expected_image.mean((0, 1))).max() < 2  # channels not swapped


def test_test_split_only_when_asked(tmp_path: Path) -> None:
    without = write_synthetic_dataset(tmp_path / "a", train=2, valid=1, size=(48, 48))
    assert "test" not in json.loads((without / "metadata.json").read_text())["splits"]
    with_test = write_synthetic_dataset(tmp_path / "b", train=2, valid=1, test=2, size=(48, 48))
    assert len(load_metadata(with_test).split("test")) == 2
    # Each sample's seed includes its split and index, so adding test images leaves train alone.
    files_a, files_b = _files(without), _files(with_test)
    assert all(files_b[name] == data for name, data in files_a.items() if name != "metadata.json")


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    kwargs = {"train": 3, "valid": 2, "size": (64, 64)}
    a = _files(write_synthetic_dataset(tmp_path / "a", seed=1, **kwargs))
    b = _files(write_synthetic_dataset(tmp_path / "b", seed=1, **kwargs))
    c = _files(write_synthetic_dataset(tmp_path / "c", seed=2, **kwargs))
    assert a == b
    assert a.keys() == c.keys()
    assert a["train/images/00000.jpg"] != c["train/images/00000.jpg"]


def test_overwrites_a_dataset_and_drops_stale_samples(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "ds", train=4, valid=2, test=1, size=(48, 48))
    (out / "notes.txt").write_text("mine")
    write_synthetic_dataset(out, train=2, valid=1, size=(48, 48))
    assert {name: len(s) for name, s in load_metadata(out).splits.items()} == {"train": 2, "valid": 1}
    assert sorted(p.name for p in (out / "train/images").iterdir()) == ["00000.jpg", "00001.jpg"]
    assert not list((out / "test").rglob("*.jpg"))
    assert (out / "notes.txt").read_text() == "mine"  # only files named like samples are removed


def test_overwriting_another_dataset_deletes_none_of_its_files(tmp_path: Path) -> None:
    (tmp_path / "real/train/images").mkdir(parents=True)
    (tmp_path / "real/train/images/00042.jpg").write_bytes(b"a real frame")
    (tmp_path / "real/metadata.json").write_text(json.dumps({"name": "aihub-surface", "splits": {}}))
    write_synthetic_dataset(tmp_path / "real", train=1, valid=1, size=(32, 32))
    assert (tmp_path / "real/train/images/00042.jpg").read_bytes() == b"a real frame"
    assert load_metadata(tmp_path / "real").name == "synthetic-street"


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic_dataset(tmp_path / "photos", train=1, valid=1, size=(32, 32))
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["cat.jpg"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_synthetic_dataset(tmp_path / "file", train=1, valid=1, size=(32, 32))
    (tmp_path / "empty").mkdir()
    write_synthetic_dataset(tmp_path / "empty", train=1, valid=1, size=(32, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": 0}, "train count"),
        ({"valid": 0}, "valid count"),
        ({"test": -1}, "test count"),
        ({"train": 2.5}, "train count"),
        ({"train": True}, "train count"),
        ({"size": (16, 256)}, "size"),
        ({"size": (256,)}, "size"),
        ({"size": 256}, "size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        write_synthetic_dataset(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()
