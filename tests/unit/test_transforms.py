"""Augmentation keeps image and mask aligned and pads masks with ignore_index, never a class id."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sideformer.data.transforms import EvalTransform, TrainTransform, pad_to, resize_short_side

IGNORE = 255


def coded_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the mask id, so alignment can be checked pixel by pixel."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 20, size=(h // 8 + 1, w // 8 + 1), dtype=np.uint8)
    mask = np.kron(block, np.ones((8, 8), np.uint8))[:h, :w]  # 8x8 blocks survive nearest/linear resizing
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 10
    image[..., 1] = 200
    return image, mask


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of labelled pixels inside flat image regions whose mask id matches the encoded id.

    Resizing blends image values across block borders, so only pixels whose 3x3 image neighbourhood
    is flat are compared; those sit clear of every border, so a shift of 2 pixels shows.
    """
    red = image[..., 0]
    kernel = np.ones((3, 3), np.uint8)
    flat = (cv2.erode(red, kernel) == cv2.dilate(red, kernel)) & (red % 10 == 0) & (mask != IGNORE)
    return float((red[flat] // 10 == mask[flat]).mean())


def assert_aligned(image: np.ndarray, mask: np.ndarray) -> None:
    assert agreement(image, mask) > 0.995, agreement(image, mask)


def test_the_alignment_check_detects_a_two_pixel_shift() -> None:
    image, mask = coded_pair(64, 64)
    assert agreement(image, mask) == 1.0
    for axis in (0, 1):
        with pytest.raises(AssertionError):
            assert_aligned(image, np.roll(mask, 2, axis=axis))


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_keeps_alignment_and_crop_size(seed: int) -> None:
    image, mask = coded_pair(96, 160)
    transform = TrainTransform(
        crop_size=(128, 128),
        base_size=96,
        scale_range=(0.5, 2.0),
        hflip=True,
        color_jitter=0.0,
        ignore_index=IGNORE,
    )
    out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
    assert out_image.shape == (128, 128, 3) and out_mask.shape == (128, 128)
    assert out_image.dtype == np.uint8 and out_mask.dtype == np.uint8
    assert out_image.flags["C_CONTIGUOUS"] and out_mask.flags["C_CONTIGUOUS"]
    assert_aligned(out_image, out_mask)
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {IGNORE}


def test_padding_uses_ignore_index_and_black() -> None:
    image, mask = coded_pair(40, 50)
    padded_image, padded_mask = pad_to(image, mask, 64, 64, IGNORE)
    assert padded_mask.shape == (64, 64)
    assert (padded_mask[40:, :] == IGNORE).all() and (padded_mask[:, 50:] == IGNORE).all()
    assert (padded_image[40:, :] == 0).all()
    np.testing.assert_array_equal(padded_mask[:40, :50], mask)


def test_small_scale_pads_the_crop_with_ignore() -> None:
    image, mask = coded_pair(64, 64)
    transform = TrainTransform((128, 128), 64, (0.5, 0.5), False, 0.0, IGNORE)
    _, out_mask = transform(image, mask, np.random.default_rng(0))
    assert (out_mask == IGNORE).mean() == pytest.approx(
        1 - (32 * 32) / (128 * 128)
    )  # a 32x32 scene in the crop
    assert not (out_mask == 0).all()


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = coded_pair(64, 64)
    transform = TrainTransform((64, 64), 64, (1.0, 1.0), True, 0.0, IGNORE)
    flipped = [transform(image, mask, np.random.default_rng(s)) for s in range(10)]
    assert any(np.array_equal(m, mask[:, ::-1]) for _, m in flipped), "no flip in 10 draws"
    for out_image, out_mask in flipped:
        assert_aligned(out_image, out_mask)


def test_colour_jitter_changes_pixels_not_labels() -> None:
    image, mask = coded_pair(64, 64)
    transform = TrainTransform((64, 64), 64, (1.0, 1.0), False, 0.5, IGNORE)
    out_image, out_mask = transform(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(out_mask, mask)
    assert not np.array_equal(out_image, image)


def test_eval_transform_resizes_the_short_side_keeping_aspect() -> None:
    image, mask = coded_pair(100, 200)
    out_image, out_mask = EvalTransform(base_size=50)(image, mask)
    assert out_mask.shape == (50, 100) and out_image.shape == (50, 100, 3)
    assert_aligned(out_image, out_mask)
    same_image, same_mask = resize_short_side(image, mask, 100)
    assert same_image is image and same_mask is mask
