"""OpenCV augmentation that keeps image and mask aligned.

Images are resized bilinearly and masks by nearest neighbour with the same target size; padding fills
images with 0 and masks with `ignore_index`, never with a class id, so padding never teaches "background".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sideformer.data.images import read_image


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


@dataclass(frozen=True)
class Jitter:
    """One colour jitter draw: contrast `alpha` around the image mean, brightness `beta`, `saturation`."""

    alpha: float
    beta: float
    saturation: float

    @staticmethod
    def draw(strength: float, rng: np.random.Generator) -> Jitter:
        alpha = 1.0 + rng.uniform(-strength, strength)
        beta = 127.5 * rng.uniform(-strength, strength)
        return Jitter(alpha, beta, 1.0 + rng.uniform(-strength, strength))


def jitter_colour(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation jitter in one pass over uint8 data."""
    return apply_jitter(image, Jitter.draw(strength, rng))


def apply_jitter(image: np.ndarray, jitter: Jitter) -> np.ndarray:
    mean = sum(cv2.mean(image)[:3]) / 3  # 8x faster than ndarray.mean on a 512x512 crop
    # A 256-entry lookup table: one clipped affine map costs a single pass over the pixels.
    lut = np.clip(np.arange(256) * jitter.alpha + jitter.beta + mean * (1 - jitter.alpha), 0, 255)
    out = cv2.LUT(image, lut.astype(np.uint8))
    if abs(jitter.saturation - 1.0) > 1e-3:
        grey = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
        out = cv2.addWeighted(out, jitter.saturation, grey, 1.0 - jitter.saturation, 0.0)
    return out


# The reductions libjpeg's DCT scaling offers: a JPEG decoded at 1/n of its size, largest first.
JPEG_REDUCTIONS = (8, 4, 2)
# Source pixels cut beyond the crop window on each side, so interpolation at the window's edge reads
# the same neighbours it would in the whole frame.
MARGIN = 2
# How many more source pixels a cut may start earlier to align its resized grid with the whole frame's.
SEARCH = 16


@dataclass(frozen=True)
class Crop:
    """One training crop, drawn before anything is decoded: the source frame scaled to `frame`
    (height, width), the crop's top-left corner in that scaled frame (where the crop passes the frame's
    bottom or right edge, it is padding) and whether it is mirrored."""

    frame: tuple[int, int]
    top: int
    left: int
    flip: bool

    def reduction(self, height: int, width: int) -> int:
        """The largest JPEG reduction (1, 2, 4 or 8) of a `height` x `width` source that still keeps at
        least the scaled frame's pixels (libjpeg rounds sides up), so the image is only shrunk after it."""
        for n in JPEG_REDUCTIONS:
            if -(-height // n) >= self.frame[0] and -(-width // n) >= self.frame[1]:
                return n
        return 1


@dataclass(frozen=True)
class _Span:
    """Along one axis: the source pixels to cut, where the window starts once they are resized, and how
    much of the window lies inside the scaled frame."""

    start: int
    stop: int
    offset: int
    valid: int


def _span(corner: int, length: int, frame: int, source: int) -> _Span:
    valid = min(corner + length, frame) - corner
    per = source / frame  # source pixels per scaled pixel
    first = max(0, math.floor(corner * per) - MARGIN)
    # Resized, the cut's pixels sit at start / per + k in the frame: of the SEARCH starts before the
    # window, take the one that puts them closest to the frame's own pixel positions.
    start = min(range(first, max(-1, first - SEARCH), -1), key=lambda s: _off_grid(s * frame / source))
    stop = min(source, math.ceil((corner + valid) * per) + MARGIN)
    return _Span(start, stop, round(corner - start * frame / source), valid)


def _off_grid(position: float) -> float:
    return abs(position - round(position))


@dataclass(frozen=True)
class Cut:
    """What `crop`'s window needs from an array of a given size: the source rows and columns to resize by
    (fy, fx), and where the window lies in the resized cut."""

    rows: _Span
    cols: _Span
    fy: float
    fx: float

    def place(self, resized_height: int, resized_width: int) -> tuple[int, int]:
        """(top, left) of the window in the resized cut (kept inside it when resizing rounded a side)."""
        top = max(0, min(self.rows.offset, resized_height - self.rows.valid))
        left = max(0, min(self.cols.offset, resized_width - self.cols.valid))
        return top, left


def plan_cut(crop: Crop, size: tuple[int, int], height: int, width: int) -> Cut:
    """The cut of a `height` x `width` array that `crop`'s window (`size`) needs; it is scaled by its own
    factor to the same frame, so arrays of any size (a reduced decode, the full mask) land on the same
    pixels."""
    rows = _span(crop.top, size[0], crop.frame[0], height)
    cols = _span(crop.left, size[1], crop.frame[1], width)
    return Cut(rows, cols, crop.frame[0] / height, crop.frame[1] / width)


def cut_scaled(array: np.ndarray, crop: Crop, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """The part of `crop`'s window (`size`) inside the frame, as resizing all of `array` to the scaled
    frame would give it (to within half a pixel), but resizing only the source pixels under the window.

    `array` may be any size (a JPEG decoded reduced, or the full-size mask): it is scaled by its own
    factor to the same frame, so image and mask land on the same pixels."""
    cut = plan_cut(crop, size, *array.shape[:2])
    region = array[cut.rows.start : cut.rows.stop, cut.cols.start : cut.cols.stop]
    if (cut.fy, cut.fx) != (1.0, 1.0):
        shrink = cut.fy * cut.fx < 1
        interp = cv2.INTER_NEAREST_EXACT if nearest else cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        # fx/fy rather than a target size: the cut is resized by exactly the whole frame's factor.
        region = cv2.resize(region, None, fx=cut.fx, fy=cut.fy, interpolation=interp)
    top, left = cut.place(*region.shape[:2])
    return region[top : top + cut.rows.valid, left : left + cut.cols.valid]


@dataclass(frozen=True)
class TrainTransform:
    """Resize to `base_size` short side x random scale, pad, random crop, flip, colour jitter.

    Computed crop first: the window is drawn in the scaled frame's coordinates (`draw`, before decoding,
    so the dataset can decode a JPEG reduced when the scale allows), then only the source pixels under it
    are resized (`apply`). Same draws, same distribution of crops as resizing the whole frame first."""

    crop_size: tuple[int, int]
    base_size: int
    scale_range: tuple[float, float]
    hflip: bool
    color_jitter: float
    ignore_index: int

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return self.apply(image, mask, self.draw(*mask.shape, rng), rng)

    def from_file(
        self, image_path: Path, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same, decoding the image itself: the crop is drawn first, since its scale decides how
        small the JPEG may be decoded."""
        crop = self.draw(*mask.shape, rng)
        return self.apply(read_image(image_path, crop.reduction(*mask.shape)), mask, crop, rng)

    def draw(self, height: int, width: int, rng: np.random.Generator) -> Crop:
        """Scale, window and flip for a `height` x `width` source (the mask's size)."""
        scale = rng.uniform(*self.scale_range)
        frame = short_side_size(height, width, max(1, round(self.base_size * scale)))
        ch, cw = self.crop_size
        top = int(rng.integers(0, max(frame[0], ch) - ch + 1))
        left = int(rng.integers(0, max(frame[1], cw) - cw + 1))
        return Crop(frame, top, left, flip=self.hflip and rng.random() < 0.5)

    def apply(
        self, image: np.ndarray, mask: np.ndarray, crop: Crop, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`crop` cut from image and mask (the image may be a reduced decode), padded, flipped, jittered."""
        image = cut_scaled(image, crop, self.crop_size, nearest=False)
        mask = cut_scaled(mask, crop, self.crop_size, nearest=True)
        image, mask = pad_to(image, mask, *self.crop_size, self.ignore_index)
        if crop.flip:  # cv2.flip copies several times faster than a reversed view made contiguous
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
        if self.color_jitter > 0:
            image = jitter_colour(np.ascontiguousarray(image), self.color_jitter, rng)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def deferred(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[Crop, Jitter | None, np.ndarray]:
        """For an image decoded later, on the training device: the draws `from_file` makes, in the same
        order from the same `rng` (crop, then jitter), and the finished mask, cut exactly as `apply` cuts
        it. sideformer.data.device_augment does the image's part."""
        crop = self.draw(*mask.shape, rng)
        jitter = Jitter.draw(self.color_jitter, rng) if self.color_jitter > 0 else None
        mask = cut_scaled(mask, crop, self.crop_size, nearest=True)
        dh, dw = self.crop_size[0] - mask.shape[0], self.crop_size[1] - mask.shape[1]
        if dh or dw:
            mask = cv2.copyMakeBorder(mask, 0, dh, 0, dw, cv2.BORDER_CONSTANT, value=self.ignore_index)
        return crop, jitter, np.ascontiguousarray(cv2.flip(mask, 1) if crop.flip else mask)


@dataclass(frozen=True)
class EvalTransform:
    """Resize to `base_size` short side, keeping the aspect ratio (the batch collate pads the rest)."""

    base_size: int

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return resize_short_side(image, mask, self.base_size)

    def from_file(
        self, image_path: Path, mask: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self(read_image(image_path), mask, rng)
