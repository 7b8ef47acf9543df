"""Decode images and masks with OpenCV. Colour masks are mapped to class ids through the palette."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sideformer.errors import UserError

# A reduction decodes a JPEG at 1/n size via libjpeg's DCT scaling; OpenCV >= 4.11 decodes straight to RGB
# (no colour conversion pass), older ones (a machine's preinstalled OpenCV) to BGR, converted after.
_SCALE = {
    1: cv2.IMREAD_GRAYSCALE,  # 0: no reduction, the colour flag below decides the rest
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_DECODES_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")
_COLOUR = cv2.IMREAD_COLOR_RGB if _DECODES_RGB else cv2.IMREAD_COLOR
_JPEG_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif"}
# Masks are large flat regions: zlib's fastest level with no PNG row filter decodes several times faster
# than OpenCV's default (the Sub filter, a higher level) at about twice the (still small) file size.
# OpenCV 4.11 cannot choose the filter yet; level 1 alone gets most of the gain.
_FAST_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _FAST_PNG += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


def read_image(path: Path, reduction: int = 1) -> np.ndarray:
    """RGB uint8 HxWx3. A JPEG with `reduction` 2, 4 or 8 is decoded at that fraction of its size
    (ceil(side / reduction)), which skips part of the decoding work; other formats ignore `reduction`
    (OpenCV would decode them whole and then resize)."""
    reduced = reduction > 1 and path.suffix.lower() in _JPEG_SUFFIXES
    image = cv2.imread(str(path), _SCALE[reduction if reduced else 1] | _COLOUR)
    if image is None:
        raise UserError(f"{path}: cannot read image (missing, empty or not an image file).")
    return image if _DECODES_RGB else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: np.ndarray, path: Path) -> np.ndarray:
    """An image file's bytes (uint8, 1-D) -> RGB uint8 HxWx3, as `read_image` decodes the file."""
    image = cv2.imdecode(data, _COLOUR)
    if image is None:
        raise UserError(f"{path}: cannot decode image (empty or not an image file).")
    return image if _DECODES_RGB else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def is_jpeg(path: Path) -> bool:
    return path.suffix.lower() in _JPEG_SUFFIXES


def encode_mask(mask: np.ndarray) -> bytes:
    """A class-id (or BGR colour) mask as PNG bytes, written for fast decoding."""
    ok, png = cv2.imencode(".png", mask, _FAST_PNG)
    if not ok:
        raise UserError(f"OpenCV could not encode a {mask.shape} {mask.dtype} mask as PNG.")
    return png.tobytes()


def read_mask(path: Path, palette: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Class ids uint8 HxW. A 3-channel mask is decoded through `palette` by exact colour match."""
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise UserError(f"{path}: cannot read mask (missing, empty or not an image file).")
    return mask_ids(mask, palette, path)


def mask_ids(mask: np.ndarray, palette: Sequence[Sequence[int]] | None, path: Path) -> np.ndarray:
    """A mask as decoded by OpenCV (HxW ids, or BGR(A) colours) -> class ids uint8 HxW."""
    if mask.dtype != np.uint8:
        raise UserError(f"{path}: mask is {mask.dtype}; save masks as 8-bit PNG (class ids 0..255).")
    if mask.ndim == 2:
        return mask
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        if palette is None:
            raise UserError(
                f"{path}: colour mask but the dataset has no 'palette'; add one to metadata.json "
                f"or save masks as single-channel class ids."
            )
        return decode_palette(cv2.cvtColor(mask[:, :, :3], cv2.COLOR_BGR2RGB), palette, path)
    raise UserError(f"{path}: mask has shape {mask.shape}; expected HxW ids or HxWx3 palette colours.")


def decode_palette(
    rgb: np.ndarray, palette: Sequence[Sequence[int]], path: Path | str = "mask"
) -> np.ndarray:
    """Map each pixel's exact colour to its palette index; an unknown colour is an error naming it."""
    codes = _pack(rgb.reshape(-1, 3))
    table = _pack(np.asarray(palette, dtype=np.uint8).reshape(-1, 3))
    order = np.argsort(table)
    positions = np.searchsorted(table, codes, sorter=order).clip(max=len(table) - 1)
    ids = order[positions]
    unknown = table[ids] != codes
    if unknown.any():
        bad = int(codes[unknown][0])
        colour = ((bad >> 16) & 255, (bad >> 8) & 255, bad & 255)
        raise UserError(
            f"{path}: colour {colour} (RGB) at {int(unknown.sum())} pixel(s) is not in the palette; "
            f"add it to metadata.json 'palette' or repaint those pixels."
        )
    return ids.astype(np.uint8).reshape(rgb.shape[:2])


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int32)
    return (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """Class ids → RGB via the palette (ids outside it, e.g. ignore, become black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return lut[mask]
