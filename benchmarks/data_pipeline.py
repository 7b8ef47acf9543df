"""Data pipeline alone: SideFormer's loader vs the HF docs' loader, on 1920x1080 JPEG sources (AI-Hub's size).

No model: images per second delivered by a DataLoader (same workers, batch size, sampler), decoded and
made ready for training, over a fixed number of batches after one warm-up epoch. Sources are synthetic
street scenes drawn at 480x270, upscaled to 1920x1080 with film-grain noise (so the JPEGs weigh what real
frames do, about 0.5 MB) and written as JPEG quality 90, with class-id PNG masks.

  [ref]       the HF docs' way: PIL opens the JPEG and the mask, SegformerImageProcessorPil resizes both to
              the crop size, rescales and normalises to float32 (no augmentation).
  [sf-orig]   SideFormer on the originals: OpenCV decode, random scale 0.5-2x of a 256 short side, pad,
              crop 256x256, flip, colour jitter; uint8 out (normalised later on the device).
  [sf-cache]  the same on data.preresize copies (shorter side 512 = 256 x the largest scale): what
              `sideformer train --set data.preresize=512` reads. Writing the copies is timed separately
              (once per dataset; every later run and trial reuses them).

The work per image is not identical (SideFormer augments, the reference only resizes): the realistic
comparison of the two ways of feeding a training loop.

Before the loaders, [stages] times one worker's work per image (`SegmentationDataset.__getitem__`: decode
the image, decode the mask, transform) in milliseconds, on one core, for each `--stage-crops` size, for
the input path as it was and with each change added in turn (same sources, same random draws, interleaved):

  [old]         OpenCV's default PNG masks, BGR decode + colour conversion, the whole frame resized
                before cropping (the TrainTransform of before, kept here as `old_transform`).
  [fast-png]    the same with masks written as sideformer writes them now (images.encode_mask).
  [crop-first]  + decode straight to RGB, crop before resize (TrainTransform.draw / apply).
  [new]         + the JPEG decoded at 1/2, 1/4 or 1/8 when the drawn scale allows (what training runs).

    .venv/bin/python benchmarks/data_pipeline.py [--quick] [--stages-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
from machine import describe, peak_rss_mib, write_json  # benchmarks/machine.py
from torch.utils.data import DataLoader, RandomSampler
from train_throughput import HFDocsDataset, loader_rate  # benchmarks/train_throughput.py

from sideformer.data.classes import CLASS_NAMES, PALETTE
from sideformer.data.dataset import SegmentationDataset, pad_collate, worker_init
from sideformer.data.images import encode_mask, read_image, read_mask
from sideformer.data.metadata import DatasetMeta, load_metadata, write_metadata
from sideformer.data.preresize import preresize_samples
from sideformer.data.synth import draw_scene
from sideformer.data.transforms import TrainTransform, jitter_colour, pad_to, resize_short_side


def write_large_dataset(root: Path, count: int, size: tuple[int, int], seed: int = 0) -> Path:
    """`count` synthetic scenes as JPEG + PNG mask pairs of `size`, drawn on every core."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    with ProcessPoolExecutor(max_workers=len(os.sched_getaffinity(0))) as pool:
        pairs = list(pool.map(_write_pair, [(root, i, size, seed) for i in range(count)]))
    write_metadata(root, "large-synthetic", CLASS_NAMES, PALETTE, {"train": pairs, "valid": pairs[:1]})
    return root


def _write_pair(job: tuple[Path, int, tuple[int, int], int]) -> tuple[str, str]:
    root, i, (height, width), seed = job
    rng = np.random.default_rng([seed, i])
    image, mask = draw_scene(rng, height // 4, width // 4)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0.0, 6.0, image.shape).astype(np.float32)
    image = np.clip(image + grain, 0, 255).astype(np.uint8)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    name = f"{i:05d}"
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(root / "images" / f"{name}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (root / "masks" / f"{name}.png").write_bytes(encode_mask(mask))  # as `sideformer aihub` writes them
    return f"images/{name}.jpg", f"masks/{name}.png"


def loader(
    dataset: torch.utils.data.Dataset, args: argparse.Namespace, collate=None, init=None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(0)),
        num_workers=args.workers,
        collate_fn=collate,
        worker_init_fn=init,
        persistent_workers=args.workers > 0,
        drop_last=True,
    )


def sideformer_dataset(samples: list, meta: DatasetMeta, crop: int) -> SegmentationDataset:
    transform = TrainTransform(
        crop_size=(crop, crop),
        base_size=crop,
        scale_range=(0.5, 2.0),
        hflip=True,
        color_jitter=0.2,
        ignore_index=meta.ignore_index,
    )
    return SegmentationDataset(samples, meta.palette, transform)


STAGES = ("decode image", "decode mask", "transform")
VARIANTS = ("old", "fast-png", "crop-first", "new")


def old_transform(
    t: TrainTransform, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """TrainTransform before crop-first: resize the whole frame, pad, then crop (same draws)."""
    scale = rng.uniform(*t.scale_range)
    image, mask = resize_short_side(image, mask, max(1, round(t.base_size * scale)))
    ch, cw = t.crop_size
    image, mask = pad_to(image, mask, ch, cw, t.ignore_index)
    top, left = int(rng.integers(0, mask.shape[0] - ch + 1)), int(rng.integers(0, mask.shape[1] - cw + 1))
    image, mask = image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]
    if t.hflip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    if t.color_jitter > 0:
        image = jitter_colour(np.ascontiguousarray(image), t.color_jitter, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def one_image(
    variant: str, t: TrainTransform, image_path: Path, mask_path: Path, seed: int
) -> dict[str, float]:
    """Seconds per stage of one sample's __getitem__ work in `variant` (see the module docstring)."""
    rng, clock, spent = np.random.default_rng(seed), time.perf_counter, {}

    def timed(stage: str, work: Callable[[], object]) -> object:
        started = clock()
        result = work()
        spent[stage] = spent.get(stage, 0.0) + clock() - started
        return result

    mask = timed("decode mask", lambda: read_mask(mask_path, None))
    if variant in ("old", "fast-png"):
        image = timed(
            "decode image",
            lambda: cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB),
        )
        timed("transform", lambda: old_transform(t, image, mask, rng))
    else:
        crop = timed("transform", lambda: t.draw(*mask.shape, rng))
        n = crop.reduction(*mask.shape) if variant == "new" else 1
        image = timed("decode image", lambda: read_image(image_path, n))
        timed("transform", lambda: t.apply(image, mask, crop, rng))
    return spent


def stage_costs(
    samples: list, old_masks: list[Path], crop: int, draws: int, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Milliseconds per image for each variant and stage (and "total"): the median over `rounds` of the
    mean over every (sample, draw), the variants interleaved per sample so load hits all of them alike."""
    cv2.setNumThreads(1)  # as in a loader worker (dataset.worker_init)
    t = TrainTransform((crop, crop), crop, (0.5, 2.0), True, 0.2, 255)
    per_round: dict[str, dict[str, list[float]]] = {v: {s: [] for s in STAGES} for v in VARIANTS}
    for _ in range(rounds):
        sums = {v: dict.fromkeys(STAGES, 0.0) for v in VARIANTS}
        for i, sample in enumerate(samples):
            for draw in range(draws):
                for variant in VARIANTS:
                    mask = old_masks[i] if variant == "old" else sample.mask
                    for stage, seconds in one_image(variant, t, sample.image, mask, draw).items():
                        sums[variant][stage] += seconds
        count = len(samples) * draws
        for variant in VARIANTS:
            for stage in STAGES:
                per_round[variant][stage].append(1000 * sums[variant][stage] / count)
    costs = {v: {s: statistics.median(per_round[v][s]) for s in STAGES} for v in VARIANTS}
    for variant in VARIANTS:
        costs[variant]["total"] = sum(costs[variant][s] for s in STAGES)
    return costs


def print_stage_costs(costs: dict[str, dict[str, float]], crop: int) -> None:
    print(f"  [stages] crop {crop}, ms per image on one core:")
    print("    " + f"{'stage':14s}" + "".join(f"{v:>12s}" for v in VARIANTS))
    for stage in (*STAGES, "total"):
        print("    " + f"{stage:14s}" + "".join(f"{costs[v][stage]:12.2f}" for v in VARIANTS))
    old, new = costs["old"]["total"], costs["new"]["total"]
    print(f"    new / old: {new / old:.2f} ({old / new:.1f}x fewer ms per image)")


def write_default_png_masks(samples: list, folder: Path) -> list[Path]:
    """The masks again as OpenCV writes a PNG by default, as a dataset from another tool might hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / sample.mask.name for sample in samples]
    for sample, path in zip(samples, paths, strict=True):
        cv2.imwrite(str(path), cv2.imread(str(sample.mask), cv2.IMREAD_UNCHANGED))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="1920x1080 source images (48)")
    parser.add_argument("--crop", type=int, default=256, help="training crop and base size (256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=24, help="batches timed per pipeline (24)")
    parser.add_argument(
        "--stage-crops", default="512,256", help="crop sizes of the per-stage costs (512,256; empty: none)"
    )
    parser.add_argument("--stage-images", type=int, default=16, help="sources timed per stage (16)")
    parser.add_argument("--stage-draws", type=int, default=4, help="random crops per source (4)")
    parser.add_argument("--stages-only", action="store_true", help="per-stage costs only, no loaders")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 images, 6 batches")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batches, args.stage_images, args.stage_draws = 16, 6, 4, 2
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    print(f"machine: {describe()}")
    print(
        f"settings: {args.images} JPEG sources 1920x1080, crop {args.crop}, batch {args.batch_size}, "
        f"{args.workers} workers, {args.batches} batches timed after one warm-up epoch"
    )
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sideformer-pipeline-") as tmp:
        started = time.perf_counter()
        data = write_large_dataset(Path(tmp) / "data", args.images, (1080, 1920))
        sizes = [p.stat().st_size for p in (data / "images").iterdir()]
        print(
            f"wrote the sources in {time.perf_counter() - started:.0f}s, "
            f"mean JPEG {np.mean(sizes) / 1e6:.2f} MB"
        )
        meta = load_metadata(data)
        samples = meta.split("train")

        stage_samples = samples[: args.stage_images]
        old_masks = write_default_png_masks(stage_samples, Path(tmp) / "default-png-masks")
        stages = {}
        for crop in [int(c) for c in args.stage_crops.split(",") if c]:
            stages[crop] = stage_costs(stage_samples, old_masks, crop, args.stage_draws)
            print_stage_costs(stages[crop], crop)
        if args.stages_only:
            if args.json:
                write_json(args.json, args, stage_ms=stages)
            return

        short = args.crop * 2
        started = time.perf_counter()
        copies = preresize_samples(samples, short, Path(tmp) / "cache", meta.palette)
        build = time.perf_counter() - started
        started = time.perf_counter()
        preresize_samples(samples, short, Path(tmp) / "cache", meta.palette)
        reuse = time.perf_counter() - started
        print(
            f"data.preresize={short}: copies written in {build:.1f}s ({len(samples) / build:.0f} img/s, "
            f"all cores), found again in {reuse * 1000:.0f} ms"
        )

        pipelines = {
            "ref": lambda: loader(HFDocsDataset(meta, (args.crop, args.crop)), args),
            "sf-orig": lambda: loader(
                sideformer_dataset(samples, meta, args.crop),
                args,
                pad_collate(meta.ignore_index),
                worker_init,
            ),
            "sf-cache": lambda: loader(
                sideformer_dataset(copies, meta, args.crop), args, pad_collate(meta.ignore_index), worker_init
            ),
        }
        for name, make in pipelines.items():
            batches = make()
            rates[name] = loader_rate(batches, len(batches), args.batches)
            del batches
            gc.collect()  # persistent workers end with their loader
            print(f"  [{name}] {rates[name]:7.1f} img/s ({rates[name] / rates['ref']:.1f}x the reference)")

    print(f"  peak RSS of the main process {peak_rss_mib():.0f} MiB")
    print(
        f"summary: data pipeline on 1920x1080 JPEGs, {args.workers} workers: SideFormer "
        f"{rates['sf-cache']:.0f} img/s with data.preresize={short} "
        f"({rates['sf-cache'] / rates['ref']:.1f}x), "
        f"{rates['sf-orig']:.0f} img/s on the originals ({rates['sf-orig'] / rates['ref']:.1f}x) vs the HF "
        f"docs' loader {rates['ref']:.0f} img/s; copies written once in {build:.0f}s"
    )
    if args.json:
        write_json(args.json, args, images_per_second=rates, cache_build_s=build, stage_ms=stages)


if __name__ == "__main__":
    main()
