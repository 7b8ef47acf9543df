"""Training images decoded and augmented on the training device (data.decode: device).

The loader's workers make the same draws as the OpenCV path (TrainTransform.deferred: crop, then jitter,
from the same per-sample seed), cut the mask exactly as it does (nearest neighbour, `ignore_index`
padding), and read the JPEG's bytes without decoding them. The training process decodes a whole batch
where it trains (on a GPU, nvJPEG through torchvision: one batched call) and cuts, resizes, pads, flips
and jitters each image as torch ops. The window and the arithmetic are the OpenCV path's; what differs is
the resampling filter when shrinking (antialiased bilinear for OpenCV's area average) and the decoder's
rounding, so the two paths give the same distribution of training images, not the same bytes.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sideformer.data.images import decode_image, is_jpeg, read_image
from sideformer.data.transforms import Crop, Jitter, TrainTransform, plan_cut
from sideformer.errors import UserError

log = logging.getLogger(__name__)

_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class EncodedImage:
    """One training image as a loader worker ships it, with the draws that augment it on the device."""

    data: torch.Tensor
    """A JPEG file's bytes (uint8, 1-D), or the image decoded already (uint8 HxWx3) where the device's
    decoder does not apply: other formats, and JPEGs that EXIF rotates (nvJPEG ignores the tag)."""
    encoded: bool
    crop: Crop
    jitter: Jitter | None
    path: str


def encode_sample(
    image_path: Path, mask: np.ndarray, transform: TrainTransform, rng: np.random.Generator
) -> tuple[EncodedImage, np.ndarray]:
    """In a loader worker: the image's bytes (or its decode, see EncodedImage.data), its draws, and the
    finished mask."""
    crop, jitter, mask = transform.deferred(mask, rng)
    if is_jpeg(image_path):
        try:
            data = np.fromfile(image_path, dtype=np.uint8)
        except OSError as exc:
            raise UserError(f"{image_path}: cannot read image ({exc.strerror}).") from exc
        if _exif_orientation(data) == 1:
            return EncodedImage(torch.from_numpy(data), True, crop, jitter, str(image_path)), mask
        decoded = decode_image(data, image_path)  # OpenCV applies the EXIF rotation
    else:
        decoded = read_image(image_path)
    return EncodedImage(torch.from_numpy(decoded), False, crop, jitter, str(image_path)), mask


def _exif_orientation(data: np.ndarray) -> int:
    """The JPEG's EXIF orientation (1: as stored); Pillow reads only the headers."""
    try:
        with Image.open(io.BytesIO(data.tobytes())) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError):
        return 0  # unreadable headers: let OpenCV decode it (and name the file if it cannot)


@dataclass
class EncodedBatch:
    """A training batch of images not yet decoded. `to(device)` decodes and augments them there and
    returns what the OpenCV path's loader yields for that batch: uint8 B x 3 x H x W, now on `device`;
    so the training loop moves either kind of batch with the same `images.to(device)`."""

    items: list[EncodedImage]
    crop_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.items)

    def pin_memory(self) -> EncodedBatch:
        return self  # the bytes are small; nvJPEG reads them from pageable memory

    def to(self, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
        device = torch.device(device)
        return augment(decode(self.items, device), self.items, self.crop_size)


def collate_encoded(
    crop_size: tuple[int, int],
) -> Callable[[list[tuple[EncodedImage, torch.Tensor]]], tuple[EncodedBatch, torch.Tensor]]:
    """The loader's collate for encoded samples: (EncodedBatch, masks uint8 B x H x W)."""

    def collate(batch: list[tuple[EncodedImage, torch.Tensor]]) -> tuple[EncodedBatch, torch.Tensor]:
        return EncodedBatch([item for item, _ in batch], crop_size), torch.stack([m for _, m in batch])

    return collate


# --- decoding -------------------------------------------------------------------------------------


def decode(items: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """Each item as uint8 3 x H x W on `device`: the JPEGs in one nvJPEG call on a GPU, with OpenCV in
    this process elsewhere (CPU training with data.decode=device, and the tests)."""
    out: list[torch.Tensor | None] = [None] * len(items)
    jpegs = [i for i, item in enumerate(items) if item.encoded]
    if device.type == "cuda" and jpegs:
        try:
            for i, image in zip(jpegs, _nvjpeg([items[i].data for i in jpegs], device), strict=True):
                out[i] = image
            jpegs = []
        except RuntimeError as exc:  # e.g. a CMYK JPEG nvJPEG refuses: this batch decodes on the CPU
            log.warning("nvJPEG could not decode a batch (%s); decoding it on the CPU", exc)
    for i, item in enumerate(items):
        if out[i] is None:
            data = item.data.numpy()
            hwc = decode_image(data, Path(item.path)) if i in jpegs else data
            out[i] = torch.from_numpy(hwc).permute(2, 0, 1).to(device, non_blocking=True)
    return out  # type: ignore[return-value]


def _nvjpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # torchvision >= 0.29 marks its decoders deprecated (TorchCodec)
        warnings.simplefilter("ignore")
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def gpu_decoder_problem(device: torch.device) -> str | None:
    """None when torchvision's nvJPEG decoder works on `device`, else why not (in words)."""
    if device.type != "cuda":
        return f"the device is {device.type}, not a GPU"
    import cv2

    ok, probe = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    try:
        (image,) = _nvjpeg([torch.from_numpy(probe.ravel())], device)
    except Exception as exc:  # ImportError, or a torchvision built for another torch (RuntimeError)
        return f"torchvision's nvJPEG decoder is unavailable ({type(exc).__name__}: {exc})"
    return None if ok and tuple(image.shape) == (3, 16, 16) else "torchvision's nvJPEG decoder failed a probe"


# --- augmenting -----------------------------------------------------------------------------------


def augment(
    images: Sequence[torch.Tensor], items: Sequence[EncodedImage], crop_size: tuple[int, int]
) -> torch.Tensor:
    """TrainTransform.apply's image half, as torch ops on the images' device: each item's window cut and
    resized by the frame's own factor, padded with 0 (bottom, right), flipped, colour-jittered."""
    device = images[0].device
    batch = torch.zeros(len(images), 3, *crop_size, device=device)
    for k, (image, item) in enumerate(zip(images, items, strict=True)):
        window = _window(image, item.crop, crop_size)
        batch[k, :, : window.shape[1], : window.shape[2]] = window
    flips = _to(torch.tensor([item.crop.flip for item in items]), device)
    batch = torch.where(flips[:, None, None, None], batch.flip(-1), batch)
    jitters = [item.jitter for item in items]
    if any(j is not None for j in jitters):
        batch = jitter(batch, [j or Jitter(1.0, 0.0, 1.0) for j in jitters])
    return batch.to(torch.uint8)


def _to(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    # non_blocking: a blocking copy to a GPU would first wait for every step queued before it.
    return values.to(device, non_blocking=True)


def _window(image: torch.Tensor, crop: Crop, size: tuple[int, int]) -> torch.Tensor:
    """cut_scaled for a 3 x H x W image: float values 0..255, rounded as OpenCV's uint8 resize rounds."""
    cut = plan_cut(crop, size, image.shape[1], image.shape[2])
    region = image[:, cut.rows.start : cut.rows.stop, cut.cols.start : cut.cols.stop].float()
    if (cut.fy, cut.fx) != (1.0, 1.0):
        # The frame's exact factor, as OpenCV's fx/fy: the cut's pixels land where the mask's do.
        region = F.interpolate(
            region[None],
            scale_factor=(cut.fy, cut.fx),
            mode="bilinear",
            antialias=cut.fy * cut.fx < 1,  # shrinking: average the source pixels, as INTER_AREA does
            align_corners=False,
            recompute_scale_factor=False,
        )[0]
        region = region.round().clamp(0, 255)
    top, left = cut.place(region.shape[1], region.shape[2])
    return region[:, top : top + cut.rows.valid, left : left + cut.cols.valid]


def jitter(batch: torch.Tensor, draws: Sequence[Jitter]) -> torch.Tensor:
    """transforms.apply_jitter over a float batch of uint8 values: contrast around each image's mean and
    brightness through the same clipped, truncated map as its lookup table, then saturation against the
    image's grey (ITU-R BT.601 weights, as OpenCV's RGB2GRAY), rounded as cv2.addWeighted rounds."""

    def column(values: list[float]) -> torch.Tensor:
        return _to(torch.tensor(values, dtype=batch.dtype), batch.device)[:, None, None, None]

    alpha, beta = column([d.alpha for d in draws]), column([d.beta for d in draws])
    saturation = column([d.saturation for d in draws])
    mean = batch.mean(dim=(1, 2, 3), keepdim=True)
    out = (batch * alpha + beta + mean * (1 - alpha)).clamp(0, 255).floor()
    weights = _to(torch.tensor([0.299, 0.587, 0.114], dtype=batch.dtype), batch.device)
    grey = (out * weights[None, :, None, None]).sum(dim=1, keepdim=True).round()
    saturated = (out * saturation + grey * (1 - saturation)).round().clamp(0, 255)
    return torch.where((saturation - 1).abs() > 1e-3, saturated, out)
