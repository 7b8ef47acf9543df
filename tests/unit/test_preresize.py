"""data.preresize: resized copies aligned with their masks, written once, reused, renewed on change."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer.data import preresize
from sideformer.data.classes import PALETTE
from sideformer.data.images import read_image, read_mask
from sideformer.data.metadata import Sample
from sideformer.data.preresize import cache_paths, preresize_samples
from sideformer.data.synth import draw_scene
from sideformer.data.transforms import resize_short_side


def write_pair(
    folder: Path, name: str, height: int, width: int, seed: int, colour_mask: bool = False
) -> Sample:
    """A synthetic scene: JPEG image and a PNG mask (class ids, or palette colours)."""
    image, mask = draw_scene(np.random.default_rng(seed), height, width)[:2]
    folder.mkdir(parents=True, exist_ok=True)
    sample = Sample(folder / f"{name}.jpg", folder / f"{name}.png")
    cv2.imwrite(str(sample.image), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    stored = cv2.cvtColor(np.asarray(PALETTE, np.uint8)[mask], cv2.COLOR_RGB2BGR) if colour_mask else mask
    cv2.imwrite(str(sample.mask), stored)
    return sample


@pytest.mark.parametrize("colour_mask", [False, True])
def test_copies_are_resized_aligned_and_exact_for_labels(tmp_path: Path, colour_mask: bool) -> None:
    # 4x the target: the JPEG is decoded at 1/4 scale in the DCT domain, the mask at full size.
    source = write_pair(tmp_path / "src", "a", 256, 384, seed=1, colour_mask=colour_mask)
    (copy,) = preresize_samples([source], 64, tmp_path / "cache", PALETTE)
    original_image, original_mask = read_image(source.image), read_mask(source.mask, PALETTE)
    expected_image, expected_mask = resize_short_side(original_image, original_mask, 64)
    image, mask = read_image(copy.image), read_mask(copy.mask, PALETTE)
    assert mask.shape == image.shape[:2] == (64, 96)
    assert np.array_equal(mask, expected_mask)  # nearest neighbour: class ids, never blended
    # The same picture at the same place (JPEG and reduced decoding differ by a few levels only).
    assert np.abs(image.astype(int) - expected_image.astype(int)).mean() < 6
    assert copy.image.suffix == ".jpg" and copy.mask.suffix == ".png"


def test_small_images_are_copied_unresized(tmp_path: Path) -> None:
    source = write_pair(tmp_path / "src", "small", 48, 80, seed=2)
    (copy,) = preresize_samples([source], 64, tmp_path / "cache", None)
    assert read_mask(copy.mask, None).shape == (48, 80) == read_image(copy.image).shape[:2]
    assert np.array_equal(read_mask(copy.mask, None), read_mask(source.mask, None))


def test_cache_is_reused_and_renewed_when_a_source_changes(tmp_path: Path, monkeypatch) -> None:
    samples = [write_pair(tmp_path / "src", f"s{i}", 160, 200, seed=i) for i in range(3)]
    cache = tmp_path / "cache"
    first = preresize_samples(samples, 64, cache, None)
    written: list[Sample] = []
    real_write = preresize.write_copy
    monkeypatch.setattr(preresize, "write_copy", lambda s, t, *a: (written.append(s), real_write(s, t, *a)))

    assert preresize_samples(samples, 64, cache, None) == first and written == []  # reused, nothing written

    changed = write_pair(tmp_path / "src", "s1", 160, 200, seed=99)  # new content under the same name
    stat = changed.image.stat()
    os.utime(changed.image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = preresize_samples(samples, 64, cache, None)
    assert written == [samples[1]]
    assert again[0] == first[0] and again[2] == first[2] and again[1] != first[1]
    assert np.array_equal(read_mask(again[1].mask, None), resize_short_side(*_pair(changed), 64)[1])

    assert preresize_samples(samples, 48, cache, None)[0] != first[0]  # another size: other copies
    assert cache_paths(samples[0], 64, cache, PALETTE) != first[0]  # another palette: other copies


def test_a_half_written_cache_is_completed(tmp_path: Path) -> None:
    samples = [write_pair(tmp_path / "src", f"s{i}", 120, 160, seed=i) for i in range(2)]
    first = preresize_samples(samples, 64, tmp_path / "cache", None)
    first[0].image.unlink()  # as if the build was killed between the mask and the image
    assert preresize_samples(samples, 64, tmp_path / "cache", None) == first
    assert first[0].image.is_file()
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def _pair(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    return read_image(sample.image), read_mask(sample.mask, None)
