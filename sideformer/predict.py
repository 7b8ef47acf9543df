"""Run a trained model on images, folders and videos (`sideformer predict`).

Images go through the same steps as validation: RGB uint8, the shorter side resized to the training's
base size (or `--size`), ImageNet normalisation on the device (`model.normalize`); the 1/4-resolution
logits are upsampled bilinearly to the original size before the argmax, so masks match the input pixel
for pixel. Consecutive images of the same size are batched; images are never padded (SegFormer's attention
sees the whole image, so padding would change the prediction).

Outputs under OUT, mirroring the input's folder structure:

    masks/<name>.png                 class ids (uint8), the dataset format
    overlays/<name>.jpg              the image with the class colours blended in
    masks/<video>/<frame>.png        per video frame
    overlays/<video>.mp4             the video with the overlay
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sideformer.atomic import DiskFull, atomic_write_bytes, nearly_full
from sideformer.data.dataset import worker_init
from sideformer.data.transforms import resize_image, short_side_size
from sideformer.errors import UserError
from sideformer.model import normalize, upsample_logits
from sideformer.output_lock import output_lock
from sideformer.plots import overlay
from sideformer.trained_model import TrainedModel

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}

Size = int | tuple[int, int]
"""An int resizes the shorter side to it (keeping the aspect ratio); (height, width) resizes exactly."""


# --- inference -------------------------------------------------------------------------------------


def inference_size(height: int, width: int, size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return short_side_size(height, width, size)
    return size


@torch.no_grad()
def segment(
    trained: TrainedModel, images: Sequence[np.ndarray], size: Size | None = None
) -> list[np.ndarray]:
    """Class-id masks (uint8, each image's own size) for RGB uint8 images that share one shape."""
    size = size or trained.base_size
    height, width = images[0].shape[:2]
    target = inference_size(height, width, size)
    batch = np.stack([resize_image(image, *target) for image in images])
    return _segment_resized(
        trained, torch.from_numpy(batch).permute(0, 3, 1, 2), [(height, width)] * len(images)
    )


@torch.no_grad()
def _segment_resized(
    trained: TrainedModel, batch: torch.Tensor, sizes: Sequence[tuple[int, int]]
) -> list[np.ndarray]:
    """`batch`: uint8 N x 3 x h x w already at inference size; `sizes`: each image's original size."""
    pixels = normalize(batch.to(trained.device, non_blocking=True))
    with torch.autocast(
        trained.device.type,
        dtype=trained.autocast_dtype or torch.float32,
        enabled=bool(trained.autocast_dtype),
    ):
        logits = trained.model(pixel_values=pixels).logits
    masks = []
    for i, size in enumerate(sizes):  # one at a time: full-size logits of a batch can be large
        full = upsample_logits(logits[i : i + 1].float(), size)
        masks.append(full.argmax(1)[0].to(torch.uint8).cpu().numpy())
    return masks


# --- inputs and outputs ----------------------------------------------------------------------------


@dataclass
class PredictSummary:
    out: Path
    images: int = 0
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    """Overlay files written (one per image, one per video)."""

    @property
    def per_second(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds > 0 else 0.0


def find_inputs(path: str | Path) -> tuple[Path, list[Path], list[Path]]:
    """(root, images, videos): a single file, or every image and video under a folder (sorted)."""
    path = Path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return path.parent, [path], []
        if suffix in VIDEO_SUFFIXES:
            return path.parent, [], [path]
        raise UserError(
            f"--input {path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) or a video "
            f"({', '.join(sorted(VIDEO_SUFFIXES))})."
        )
    if not path.is_dir():
        raise UserError(f"--input {path}: no such file or folder.")
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    masks = _dataset_masks(path)
    if masks:
        files = [p for p in files if p.resolve() not in masks]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    if not images and not videos:
        raise UserError(f"--input {path}: the folder holds no images or videos.")
    return path, images, videos


def _dataset_masks(folder: Path) -> set[Path]:
    """The mask files listed by the metadata.json of the dataset `folder` is in (or is), so that
    `--input DATASET/valid` segments the photos only. Empty when `folder` is not in a dataset."""
    for root in (folder, *folder.resolve().parents[:2]):  # DATASET, DATASET/valid, DATASET/valid/images
        meta_file = root / "metadata.json"
        if not meta_file.is_file():
            continue
        try:
            splits = json.loads(meta_file.read_text(encoding="utf-8")).get("splits", {})
            entries = [e for samples in splits.values() for e in samples]
            masks = {(root / (e["mask"] if isinstance(e, dict) else e[1])).resolve() for e in entries}
        except (ValueError, AttributeError, TypeError, KeyError, IndexError):
            log.warning("%s: unreadable; every image under --input is segmented", meta_file)
            return set()
        log.info("%s is in the dataset %s: its masks are left out", folder, root)
        return masks
    return set()


class _ImageFiles(Dataset):
    """Decoded and resized in loader workers: (resized uint8 3xhxw, original uint8 HxWx3, index), or
    (None, None, index) for an unreadable file (skipped with a warning rather than ending the run)."""

    def __init__(self, paths: Sequence[Path], size: Size) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        bgr = cv2.imread(str(self.paths[index]), cv2.IMREAD_COLOR)
        if bgr is None:
            return None, None, index
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        resized = resize_image(rgb, *inference_size(*rgb.shape[:2], self.size))
        return torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1), torch.from_numpy(rgb), index


def predict(
    trained: TrainedModel,
    inputs: str | Path,
    out: str | Path,
    size: Size | None = None,
    batch_size: int = 8,
    workers: int = 2,
    masks: bool = True,
    overlays: bool = True,
    alpha: float = 0.5,
    limit: int | None = None,
) -> PredictSummary:
    """Segment every image and video under `inputs` into `out`. `limit` keeps the first N images."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be >= 1.")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha}: must be in [0, 1].")
    root, images, videos = find_inputs(inputs)
    out = Path(out)
    # An output folder inside the input folder: never read our own (earlier) outputs as inputs.
    images, videos = (
        [p for p in paths if not p.resolve().is_relative_to(out.resolve())] for paths in (images, videos)
    )
    if not images and not videos:
        raise UserError(f"--input {inputs}: no images or videos outside --output {out}.")
    if limit is not None:
        images = images[:limit]
    names = _output_names(root, images)
    size = size or trained.base_size
    summary = PredictSummary(out=out)
    started = time.perf_counter()
    with output_lock(out):
        if images:
            _predict_images(
                trained, names, images, out, size, batch_size, workers, masks, overlays, alpha, summary
            )
        for video in videos:
            _predict_video(trained, root, video, out, size, batch_size, masks, overlays, alpha, summary)
    if trained.device.type == "cuda":
        torch.cuda.synchronize()
    summary.seconds = time.perf_counter() - started
    if summary.images == 0 and summary.frames == 0:
        raise UserError(
            f"--input {inputs}: no image or video could be read ({', '.join(summary.skipped[:3])})."
        )
    return summary


def _batches(
    loader: DataLoader, batch_size: int, summary: PredictSummary, paths: Sequence[Path]
) -> Iterator[list]:
    """Runs of up to `batch_size` consecutive images that share an inference size."""
    batch: list = []
    for tensor, original, index in loader:
        if tensor is None:
            log.warning("%s: cannot read this image; skipped", paths[index])
            summary.skipped.append(str(paths[index]))
            continue
        if batch and (len(batch) == batch_size or batch[0][0].shape != tensor.shape):
            yield batch
            batch = []
        batch.append((tensor, original, index))
    if batch:
        yield batch


def _output_names(root: Path, paths: Sequence[Path]) -> list[str]:
    """Each input's path under `root` without its suffix, or with it where two inputs (a.jpg, a.png)
    would otherwise write the same mask."""
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in paths]
    counts = Counter(stems)
    return [
        s if counts[s] == 1 else p.relative_to(root).as_posix() for s, p in zip(stems, paths, strict=True)
    ]


def _predict_images(
    trained: TrainedModel,
    names: Sequence[str],
    paths: Sequence[Path],
    out: Path,
    size: Size,
    batch_size: int,
    workers: int,
    masks: bool,
    overlays: bool,
    alpha: float,
    summary: PredictSummary,
) -> None:
    loader = DataLoader(
        _ImageFiles(paths, size),
        batch_size=None,  # one sample at a time: batches are formed by size below
        num_workers=min(workers, len(paths)),
        worker_init_fn=worker_init,
        prefetch_factor=batch_size if workers > 0 else None,
    )
    progress = tqdm(total=len(paths), desc="predicting", unit="img", disable=None, dynamic_ncols=True)
    with progress:
        for batch in _batches(loader, batch_size, summary, paths):
            sizes = [tuple(original.shape[:2]) for _, original, _ in batch]
            results = _segment_resized(trained, torch.stack([t for t, _, _ in batch]), sizes)
            for (_, original, index), mask in zip(batch, results, strict=True):
                relative = names[index]
                if masks:
                    _write_image(out / "masks" / f"{relative}.png", mask)
                if overlays:
                    rgb = original.numpy()
                    target = out / "overlays" / f"{relative}.jpg"
                    _write_image(
                        target, cv2.cvtColor(overlay(rgb, mask, trained.palette, alpha), cv2.COLOR_RGB2BGR)
                    )
                    summary.outputs.append(target)
            summary.images += len(batch)
            progress.update(len(batch))
        progress.update(len(paths) - progress.n)  # skipped files


def _predict_video(
    trained: TrainedModel,
    root: Path,
    path: Path,
    out: Path,
    size: Size,
    batch_size: int,
    masks: bool,
    overlays: bool,
    alpha: float,
    summary: PredictSummary,
) -> None:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        log.warning("%s: cannot open this video; skipped", path)
        summary.skipped.append(str(path))
        return
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    relative = path.relative_to(root).with_suffix("")
    target = out / "overlays" / f"{relative}.mp4"
    partial = target.with_name(f".{target.stem}.partial.mp4")  # renamed once complete
    writer: cv2.VideoWriter | None = None
    frame_index = 0
    complete = False
    try:
        with tqdm(total=total, desc=path.name, unit="frame", disable=None, dynamic_ncols=True) as progress:
            while True:
                frames = []
                while len(frames) < batch_size:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not frames:
                    break
                for rgb, mask in zip(frames, segment(trained, frames, size), strict=True):
                    if masks:
                        _write_image(out / "masks" / relative / f"{frame_index:06d}.png", mask)
                    if overlays:
                        if writer is None:
                            partial.parent.mkdir(parents=True, exist_ok=True)
                            height, width = rgb.shape[:2]
                            writer = cv2.VideoWriter(
                                str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
                            )
                            if not writer.isOpened():
                                raise UserError(
                                    f"{target}: this OpenCV build cannot write MP4 video; pass --no-overlays."
                                )
                        writer.write(
                            cv2.cvtColor(overlay(rgb, mask, trained.palette, alpha), cv2.COLOR_RGB2BGR)
                        )
                    frame_index += 1
                progress.update(len(frames))
        complete = True
    finally:
        capture.release()
        if writer is not None:
            writer.release()
            if complete and nearly_full(partial):  # VideoWriter drops frames on a full disk, silently
                partial.unlink(missing_ok=True)
                raise DiskFull(target)
            if complete:
                os.replace(partial, target)
                summary.outputs.append(target)
        partial.unlink(missing_ok=True)
    summary.videos += 1
    summary.frames += frame_index


def _write_image(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise UserError(f"{path}: OpenCV cannot encode this format.")
    atomic_write_bytes(path, data.tobytes())


def format_summary(summary: PredictSummary) -> str:
    parts = []
    if summary.images:
        parts.append(f"{summary.images} image(s)")
    if summary.videos:
        parts.append(f"{summary.videos} video(s), {summary.frames} frame(s)")
    line = (
        f"segmented {' and '.join(parts)} in {summary.seconds:.1f}s ({summary.per_second:.1f}/s); "
        f"outputs in {summary.out}"
    )
    if summary.skipped:
        line += f"\nskipped {len(summary.skipped)} unreadable file(s): {', '.join(summary.skipped[:5])}"
    return line
