"""Augmentation keeps image and mask aligned and pads masks with ignore_index, never a class id."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer.data import images, transforms
from sideformer.data.dataset import SegmentationDataset
from sideformer.data.images import encode_mask, read_image
from sideformer.data.metadata import Sample
from sideformer.data.synth import draw_scene
from sideformer.data.transforms import Crop, EvalTransform, TrainTransform, pad_to, resize_short_side
from sideformer.errors import UserError

IGNORE = 255


def coded_pair(h: int, w: int, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the mask id, so alignment can be checked pixel by pixel."""
    rng = np.random.default_rng(0)
    block = rng.integers(0, 20, size=(h // side + 1, w // side + 1), dtype=np.uint8)
    # Blocks of side x side pixels survive nearest/linear resizing.
    mask = np.kron(block, np.ones((side, side), np.uint8))[:h, :w]
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


def resize_whole_frame(
    transform: TrainTransform, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The transform as it was before crop-first: resize the whole frame, pad, crop, flip (no jitter)."""
    scale = rng.uniform(*transform.scale_range)
    image, mask = resize_short_side(image, mask, max(1, round(transform.base_size * scale)))
    ch, cw = transform.crop_size
    image, mask = pad_to(image, mask, ch, cw, IGNORE)
    top, left = int(rng.integers(0, mask.shape[0] - ch + 1)), int(rng.integers(0, mask.shape[1] - cw + 1))
    image, mask = image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
    if transform.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


@pytest.mark.parametrize("size", [(270, 480), (90, 160)], ids=["shrinking", "enlarging"])
def test_crop_first_gives_what_resizing_the_whole_frame_gave(size: tuple[int, int]) -> None:
    """Same draws, same crops: resizing only the window's source pixels lands within a fraction of a pixel
    of the whole frame's grid. Tolerances: labels agree on >= 97 % of each crop's pixels (>= 99 % on
    average; they differ only along class borders), images differ by < 1 grey level on average."""
    image, mask = draw_scene(np.random.default_rng(0), *size)
    transform = TrainTransform((128, 128), 128, (0.5, 2.0), True, 0.0, IGNORE)
    agreements, differences = [], []
    for seed in range(64):
        old_image, old_mask = resize_whole_frame(transform, image, mask, np.random.default_rng(seed))
        new_image, new_mask = transform(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(new_mask == IGNORE, old_mask == IGNORE)  # the same padding
        agreements.append(float((new_mask == old_mask).mean()))
        differences.append(float(np.abs(new_image.astype(np.int16) - old_image).mean()))
    assert min(agreements) >= 0.97 and np.mean(agreements) >= 0.99, agreements
    assert np.mean(differences) < 1.0 and max(differences) < 4.0, differences


def test_the_reduction_keeps_at_least_the_scaled_frame() -> None:
    def crop(height: int, width: int) -> Crop:
        return Crop((height, width), 0, 0, False)

    assert crop(1080, 1920).reduction(1080, 1920) == 1
    assert crop(541, 962).reduction(1080, 1920) == 1
    assert crop(540, 960).reduction(1080, 1920) == 2
    assert crop(256, 455).reduction(1080, 1920) == 4
    assert crop(135, 240).reduction(1080, 1920) == 8
    assert crop(64, 114).reduction(1080, 1920) == 8  # no reduction beyond 1/8
    assert crop(68, 100).reduction(135, 199) == 2  # libjpeg rounds up: 135 / 2 -> 68, 199 / 2 -> 100
    assert crop(69, 100).reduction(135, 199) == 1


@pytest.mark.parametrize("seed", range(8))
def test_a_reduced_image_stays_aligned_with_its_full_size_mask(seed: int) -> None:
    image, mask = coded_pair(480, 800, side=64)
    transform = TrainTransform((128, 128), 128, (0.5, 1.0), True, 0.0, IGNORE)
    crop = transform.draw(*mask.shape, np.random.default_rng(seed))
    n = crop.reduction(*mask.shape)
    assert n > 1
    # What libjpeg's DCT scaling returns: each side divided by n, rounded up.
    reduced = cv2.resize(image, (-(-800 // n), -(-480 // n)), interpolation=cv2.INTER_AREA)
    out_image, out_mask = transform.apply(reduced, mask, crop, np.random.default_rng(seed))
    assert out_image.shape == (128, 128, 3) and out_mask.shape == (128, 128)
    assert_aligned(out_image, out_mask)


def test_the_dataset_decodes_a_jpeg_reduced_when_the_scale_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reduced decoding changes how the image is shrunk (libjpeg's DCT scaling, then area), not what
    the crop shows: the mask is the same, the image within a few grey levels of a full-size decode."""
    image, mask = draw_scene(np.random.default_rng(0), 480, 800)
    sample = Sample(tmp_path / "a.jpg", tmp_path / "a.png")
    cv2.imwrite(str(sample.image), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    sample.mask.write_bytes(encode_mask(mask))
    transform = TrainTransform((128, 128), 128, (0.5, 1.0), True, 0.2, IGNORE)
    asked: list[int] = []
    monkeypatch.setattr(transforms, "read_image", lambda path, n=1: asked.append(n) or read_image(path, n))
    data = SegmentationDataset([sample], None, transform)
    full = read_image(sample.image)
    for seed in range(6):
        out_image, out_mask = data[0, seed]
        ref_image, ref_mask = transform(full, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(out_mask.numpy(), ref_mask)
        assert np.abs(out_image.permute(1, 2, 0).numpy().astype(np.int16) - ref_image).mean() < 3.0
    assert set(asked) <= {2, 4} and len(asked) == 6  # 480 / 4 = 120 >= the 64..128 frame


@pytest.mark.parametrize("reduction", [1, 2, 4, 8])
@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 4], ids=["empty", "garbage"])
def test_an_unreadable_jpeg_is_a_user_error_at_every_reduction(
    tmp_path: Path, content: bytes, reduction: int
) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"broken\.jpg: cannot read image"):
        read_image(path, reduction)


@pytest.mark.parametrize("reduction", [1, 2, 4])
def test_an_opencv_without_rgb_decoding_gives_the_same_rgb_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reduction: int
) -> None:
    """OpenCV < 4.11 (a machine's preinstalled one) decodes to BGR and the reader converts: the same pixels
    as OpenCV's own RGB decode, at every reduction."""
    image, _ = draw_scene(np.random.default_rng(1), 240, 320)
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    rgb = read_image(path, reduction)
    monkeypatch.setattr(images, "_DECODES_RGB", False)
    monkeypatch.setattr(images, "_COLOUR", cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(path, reduction), rgb)
    assert rgb.shape == (-(-240 // reduction), -(-320 // reduction), 3)
