"""OpenCV augmentation that keeps image and mask aligned.

Images are resized bilinearly and masks by nearest neighbour with the same target size; padding fills
images with 0 and masks with `ignore_index`, never with a class id, so padding never teaches "background".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is `short`, keeping the aspect ratio."""
    scale = short / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    interp = cv2.INTER_AREA if height * width < h * w else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)  # cv2 wants (width, height)


def resize_short_side(image: np.ndarray, mask: np.ndarray, short: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = short_side_size(*mask.shape, short)
    if (height, width) == mask.shape:
        return image, mask
    return resize_image(image, height, width), cv2.resize(
        mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT
    )


def pad_to(
    image: np.ndarray, mask: np.ndarray, height: int, width: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right up to at least height x width."""
    h, w = mask.shape
    dh, dw = max(0, height - h), max(0, width - w)
    if dh == 0 and dw == 0:
        return image, mask
    image = cv2.copyMakeBorder(image, 0, dh, 0, dw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    mask = cv2.copyMakeBorder(mask, 0, dh, 0, dw, cv2.BORDER_CONSTANT, value=ignore_index)
    return image, mask


def jitter_colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter in one pass over uint8 data."""
    alpha = 1.0 + rng.uniform(-strength, strength)  # contrast, around the image mean
    beta = 127.5 * rng.uniform(-strength, strength)  # brightness
    mean = float(image.mean())
    # A 256-entry lookup table: one clipped affine map costs a single pass over the pixels.
    lut = np.clip(np.arange(256) * alpha + beta + mean * (1 - alpha), 0, 255).astype(np.uint8)
    out = cv2.LUT(image, lut)
    saturation = 1.0 + rng.uniform(-strength, strength)
    if abs(saturation - 1.0) > 1e-3:
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, saturation, grey, 1.0 - saturation, 0.0)
    return out


@dataclass(frozen=True)
class TrainTransform:
    """Resize to `base_size` short side x random scale, pad, random crop, flip, colour jitter."""

    crop_size: tuple[int, int]
    base_size: int
    scale_range: tuple[float, float]
    hflip: bool
    color_jitter: float
    ignore_index: int

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        scale = rng.uniform(*self.scale_range)
        image, mask = resize_short_side(image, mask, max(1, round(self.base_size * scale)))
        ch, cw = self.crop_size
        image, mask = pad_to(image, mask, ch, cw, self.ignore_index)
        h, w = mask.shape
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image, mask = image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
        if self.hflip and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.color_jitter > 0:
            image = jitter_colour(np.ascontiguousarray(image), self.color_jitter, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)


@dataclass(frozen=True)
class EvalTransform:
    """Resize to `base_size` short side, keeping the aspect ratio (the batch collate pads the rest)."""

    base_size: int

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return resize_short_side(image, mask, self.base_size)
