"""`sideformer check-data`: every problem in a dataset, each with the file and the fix.

Training runs the same check and refuses to start on errors, so a bad file fails in seconds, not in
the middle of epoch 7.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sideformer.data.images import read_mask
from sideformer.data.metadata import DatasetMeta, Sample
from sideformer.errors import UserError

REQUIRED_SPLITS = ("train", "valid")


@dataclass(frozen=True)
class Problem:
    file: Path | None
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.message} -> {self.fix}"


@dataclass
class DataCheck:
    problems: list[Problem]
    counts: dict[str, int]
    pixels_per_class: Counter

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(meta: DatasetMeta, required_splits: tuple[str, ...] = REQUIRED_SPLITS) -> DataCheck:
    problems: list[Problem] = []
    for split in required_splits:
        if not meta.split(split):
            problems.append(
                Problem(
                    meta.root / "metadata.json", f"split '{split}' is empty", f"list samples under '{split}'"
                )
            )
    seen: dict[Path, str] = {}
    samples: list[Sample] = []
    for split, split_samples in meta.splits.items():
        for sample in split_samples:
            if sample.image in seen:
                problems.append(
                    Problem(
                        sample.image,
                        f"listed in '{seen[sample.image]}' and again in '{split}'",
                        "list each image once (a sample in two splits leaks into validation)",
                    )
                )
                continue
            seen[sample.image] = split
            samples.append(sample)

    pixels: Counter = Counter()
    workers = min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # cv2 decoding releases the GIL
        for sample_problems, counts in pool.map(lambda s: _check_sample(s, meta), samples):
            problems.extend(sample_problems)
            pixels.update(counts)
    return DataCheck(
        problems=problems,
        counts={split: len(s) for split, s in meta.splits.items()},
        pixels_per_class=pixels,
    )


def _check_sample(sample: Sample, meta: DatasetMeta) -> tuple[list[Problem], Counter]:
    problems: list[Problem] = []
    for path, kind in ((sample.image, "image"), (sample.mask, "mask")):
        if not path.is_file():
            problems.append(
                Problem(path, f"{kind} file is missing", "fix the path in metadata.json or add the file")
            )
    if problems:
        return problems, Counter()

    image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
    if image is None:
        problems.append(Problem(sample.image, "cannot decode image", "re-export it as JPEG or PNG"))
    elif _truncated_jpeg(sample.image):
        problems.append(
            Problem(sample.image, "JPEG is truncated (no end-of-image marker)", "copy or export it again")
        )
    try:
        mask = read_mask(sample.mask, meta.palette)
    except UserError as exc:
        problems.append(
            Problem(sample.mask, str(exc).removeprefix(f"{sample.mask}: "), "fix or re-export the mask")
        )
        return problems, Counter()
    if image is not None and image.shape[:2] != mask.shape:
        problems.append(_size_mismatch(sample, image.shape[:2], mask.shape))
    ids, counts = np.unique(mask, return_counts=True)
    bad = [int(i) for i in ids if i >= meta.num_classes and i != meta.ignore_index]
    if bad:
        problems.append(
            Problem(
                sample.mask,
                f"class id(s) {bad} outside 0..{meta.num_classes - 1} "
                f"and not ignore_index {meta.ignore_index}",
                "remap them to a class id, or to ignore_index for unlabeled pixels",
            )
        )
    return problems, Counter(
        {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i < meta.num_classes}
    )


def _size_mismatch(sample: Sample, image_hw: tuple[int, ...], mask_hw: tuple[int, ...]) -> Problem:
    """A mask of another size than its image; says so when the image's EXIF orientation is the cause
    (images are decoded upright, as a photo viewer shows them; a mask drawn on the stored pixels is not)."""
    sizes = (
        f"mask is {mask_hw[1]}x{mask_hw[0]} but its image {sample.image.name} is {image_hw[1]}x{image_hw[0]}"
    )
    stored = cv2.imread(str(sample.image), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if stored is not None and stored.shape[:2] == mask_hw:
        return Problem(
            sample.mask,
            f"{sizes} after its EXIF orientation is applied (stored as {stored.shape[1]}x{stored.shape[0]}, "
            "which the mask matches)",
            "rotate the mask the same way, or save the image upright without the EXIF orientation tag",
        )
    return Problem(sample.mask, sizes, "masks must have their image's size; re-export the mask")


def _truncated_jpeg(path: Path) -> bool:
    """A JPEG cut short still decodes (OpenCV fills the rest grey); its end-of-image marker is gone.
    Byte stuffing keeps FF D9 out of the compressed data, so it is searched for near the end only."""
    with path.open("rb") as file:
        if file.read(2) != b"\xff\xd8":
            return False  # not a JPEG
        file.seek(max(0, path.stat().st_size - 65536))
        return b"\xff\xd9" not in file.read()


def format_check(meta: DatasetMeta, report: DataCheck) -> str:
    lines = [
        f"dataset {meta.name!r} at {meta.root}: {meta.num_classes} classes, ignore_index {meta.ignore_index}"
    ]
    lines.append("  " + ", ".join(f"{split}: {n}" for split, n in report.counts.items()))
    missing = [c for i, c in enumerate(meta.classes) if report.pixels_per_class[i] == 0]
    if missing and not report.problems:
        lines.append(f"  note: no pixels of {len(missing)} class(es): {', '.join(missing)}")
    if report.ok:
        lines.append("  OK: no problems found")
    else:
        lines.append(f"  {len(report.problems)} problem(s):")
        lines += [f"  - {p}" for p in report.problems]
    return "\n".join(lines)
