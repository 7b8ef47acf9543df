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

    .venv/bin/python benchmarks/data_pipeline.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import tempfile
import time
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
from sideformer.data.metadata import DatasetMeta, load_metadata, write_metadata
from sideformer.data.preresize import preresize_samples
from sideformer.data.synth import draw_scene
from sideformer.data.transforms import TrainTransform


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
    cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48, help="1920x1080 source images (48)")
    parser.add_argument("--crop", type=int, default=256, help="training crop and base size (256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=24, help="batches timed per pipeline (24)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 images, 6 batches")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.images, args.batches = 16, 6
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
        write_json(args.json, args, images_per_second=rates, cache_build_s=build)


if __name__ == "__main__":
    main()
