"""Pre-resized copies of large source images (`data.preresize`), written once and reused.

AI-Hub frames are 1920x1080 JPEGs, while training looks at a few hundred pixels: decoding and shrinking
every frame in every epoch costs more than the rest of the input pipeline. With `data.preresize: N` each
training image and its mask are resized once so that the shorter side is N (images area-averaged and saved
as JPEG quality 95; masks by nearest neighbour, as class ids in PNG, so no label is ever blended) and
training reads those copies. Images whose shorter side is already at most N are copied unresized.

A copy is named after what it was made from: the source files' paths, sizes and modification times, N,
the palette and a format version. A changed source therefore gets a new copy, and a cache is reused by
every run, trial and process that needs the same copies. Every file is written atomically (temporary file,
then rename), so processes building the same cache at once, or a build killed half-way, leave only whole
files behind. Who builds is the caller's business: the trainer lets rank 0 build while the other ranks wait.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from sideformer.atomic import atomic_write_bytes
from sideformer.data.images import encode_mask, mask_ids
from sideformer.data.metadata import Sample
from sideformer.data.transforms import resize_image, short_side_size
from sideformer.errors import UserError

log = logging.getLogger(__name__)

VERSION = 2  # 2: masks written for fast decoding (images.encode_mask)
JPEG_QUALITY = 95
# cv2.imread flags that decode a JPEG at 1/2, 1/4, 1/8 size in the DCT domain (several times faster).
_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def default_cache_dir(dataset_root: Path) -> Path:
    return dataset_root / ".sideformer-cache" / "preresize"


def cache_paths(
    sample: Sample, short: int, cache_dir: Path, palette: Sequence[Sequence[int]] | None
) -> Sample:
    """Where the copies of `sample` belong; the name changes whenever a source file changes."""
    parts = [f"v{VERSION}", str(short), json.dumps(palette and [list(c) for c in palette])]
    for path in (sample.image, sample.mask):
        try:
            stat = path.stat()
        except OSError:
            raise UserError(f"{path}: cannot read it (missing?); run `sideformer check-data`.") from None
        parts += [str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
    folder = cache_dir / str(short) / key[:2]
    return Sample(
        image=folder / f"{sample.image.stem}-{key}.jpg", mask=folder / f"{sample.mask.stem}-{key}.png"
    )


def preresize_samples(
    samples: Sequence[Sample],
    short: int,
    cache_dir: Path,
    palette: Sequence[Sequence[int]] | None,
    threads: int | None = None,
) -> list[Sample]:
    """The cached copies of `samples` (same order), writing the ones missing. OpenCV releases the GIL
    while decoding, resizing and encoding, so a thread pool uses every core."""
    targets = [cache_paths(sample, short, cache_dir, palette) for sample in samples]
    missing = [
        (s, t) for s, t in zip(samples, targets, strict=True) if not (t.image.is_file() and t.mask.is_file())
    ]
    if missing:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"data.preresize: cannot create the cache folder {cache_dir} ({exc.strerror}); "
                f"set data.cache_dir to a writable folder shared by every process of the run."
            ) from None
        log.info(
            "data.preresize=%d: writing %d of %d resized copies to %s (once; later runs reuse them)",
            short,
            len(missing),
            len(targets),
            cache_dir,
        )
        workers = threads or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(lambda pair: write_copy(pair[0], pair[1], short, palette), missing))
    return targets


def write_copy(source: Sample, target: Sample, short: int, palette: Sequence[Sequence[int]] | None) -> None:
    """Resize one image/mask pair so the shorter side is `short` (never enlarging) and write both."""
    raw = cv2.imread(str(source.mask), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UserError(f"{source.mask}: cannot read mask (missing, empty or not an image file).")
    height, width = raw.shape[:2]
    if min(height, width) > short:
        height, width = short_side_size(height, width, short)
        # Nearest neighbour before the palette lookup: it only picks pixels, so the ids are exact.
        raw = cv2.resize(raw, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
    mask = mask_ids(raw, palette, source.mask)
    image = _read_at_least(source.image, short)
    if image.shape[:2] != mask.shape:
        image = resize_image(image, height, width)  # the mask's geometry: image and mask stay aligned
    ok_image, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok_image:
        raise UserError(f"{target.image.parent}: OpenCV could not encode the resized copy of {source.image}.")
    atomic_write_bytes(target.mask, encode_mask(mask))
    atomic_write_bytes(target.image, jpeg.tobytes())  # last: a copy counts as present once both exist


def _read_at_least(path: Path, short: int) -> np.ndarray:
    """BGR image, decoded at the smallest JPEG scale whose shorter side is still at least `short`."""
    flag = cv2.IMREAD_COLOR
    try:
        with Image.open(path) as header:  # reads the header only
            width, height = header.size
            jpeg = header.format == "JPEG"
    except OSError:
        jpeg = False
    if jpeg:
        flag = next((f for n, f in _REDUCED.items() if min(height, width) // n >= short), flag)
    image = cv2.imread(str(path), flag)
    if image is None:
        raise UserError(f"{path}: cannot read image (missing, empty or not an image file).")
    return image
