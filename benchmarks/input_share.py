"""What share of the training step's time the input path costs: `sideformer.train.train` end to end on
1920x1080 JPEG sources (AI-Hub's frame size) against the same model's step alone on pre-loaded tensors.

  [model]     train.py's step (its precision, model options, fused AdamW, loss) on one batch of random
              uint8 images already on the device, repeated: the rate the input path would have to keep up
              with (benchmarks/train_throughput.py's step_times).
  [e2e]       sideformer.train.train(config) on the JPEGs: decode, augment, collate, copy to the device and
              the same step; images/s of the measured epochs after one warm-up epoch (validation out).
              Run with data.preresize off and on, with the default loader workers (data.num_workers) and
              with more workers when the machine has the cores, and with each data.decode asked for
              (--decode loader,device: OpenCV in the workers, or nvJPEG and torch ops on the GPU).

The share the input path costs is 1 - e2e / model. Written for the GPU check (benchmarks/gpu_check.sh);
on CPU the model is the bottleneck and the share is near zero.

    .venv/bin/python benchmarks/input_share.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from data_pipeline import write_large_dataset  # benchmarks/data_pipeline.py
from machine import describe, machine_info, write_json  # benchmarks/machine.py
from train_throughput import step_times  # benchmarks/train_throughput.py

from sideformer.config import Config, load_config
from sideformer.data.dataset import default_workers
from sideformer.data.metadata import load_metadata
from sideformer.train import train


def config_for(
    args: argparse.Namespace,
    data: Path,
    output: Path,
    workers: int | None,
    preresize: bool,
    decode: str = "loader",
) -> Config:
    base_size = args.crop
    return load_config(
        base={
            "output": str(output),
            "data": {
                "path": str(data),
                "crop_size": [args.crop, args.crop],
                "num_workers": workers,
                # The largest random scale (2.0) of the base size: copies lose nothing the crops can see.
                "preresize": 2 * base_size if preresize else None,
                "cache_dir": str(data.parent / "preresize") if preresize else None,
                "check": False,  # checked once is enough; it is not part of the input path
                "decode": decode,
            },
            "model": {"variant": args.variant},
            "optim": {"warmup_steps": 0},
            "train": {"epochs": 1 + args.epochs, "batch_size": args.batch_size, "precision": args.precision},
            "early_stop": {"patience": 0},
            "wandb": {"enabled": False},
        }
    )


def end_to_end(
    args: argparse.Namespace, data: Path, tmp: Path, workers: int | None, preresize: bool, decode: str
) -> float:
    name = f"{decode}-workers{workers}-{'preresize' if preresize else 'originals'}"
    result = train(config_for(args, data, tmp / name, workers, preresize, decode))
    return statistics.mean(h.images_per_second for h in result.history[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="1920x1080 training images (256)")
    parser.add_argument("--crop", type=int, default=512, help="training crop and base size (512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs after one warm-up epoch")
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="steps timed for [model]")
    parser.add_argument(
        "--workers", default="2,8", help="worker counts tried besides the default (data.num_workers: null)"
    )
    parser.add_argument(
        "--decode",
        default="loader",
        help="data.decode values run with the default workers, comma-separated (loader; loader,device)",
    )
    parser.add_argument("--no-preresize", action="store_true", help="leave out the data.preresize run")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 images, crop 128, 1 epoch")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.images, args.crop, args.epochs, args.steps = 16, 128, 1, 2
    logging.basicConfig(level=logging.WARNING)
    auto = default_workers()
    decodes = [d for d in args.decode.split(",") if d]
    # The default workers with each decode path; preresize on; other worker counts (OpenCV path).
    runs: list[tuple[int | None, bool, str]] = [(None, False, d) for d in decodes]
    runs += [] if args.no_preresize else [(None, True, "loader")]
    runs += [(int(n), False, "loader") for n in args.workers.split(",") if n and int(n) != auto]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {describe()}")
    print(
        f"settings: {args.images} JPEGs 1920x1080, crop {args.crop}, batch {args.batch_size}, "
        f"{args.variant}, "
        f"precision {args.precision}, 1 warm-up + {args.epochs} measured epochs, default workers {auto} "
        f"(data.num_workers null on {len(os.sched_getaffinity(0))} cores), {device}"
    )
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sideformer-input-") as tmp_name:
        tmp = Path(tmp_name)
        started = time.perf_counter()
        data = write_large_dataset(tmp / "data", args.images, (1080, 1920))
        print(f"wrote the sources in {time.perf_counter() - started:.0f}s")

        config = config_for(args, data, tmp / "model-only", None, preresize=False)
        seconds = statistics.median(
            step_times(config, load_metadata(data), torch.device(device), args.steps)["sideformer"]
        )
        results["model"] = args.batch_size / seconds
        print(
            f"  [model] {results['model']:8.1f} img/s ({seconds * 1000:.1f} ms/step, median of {args.steps})"
        )
        for workers, preresize, decode in runs:
            key = (
                f"e2e decode={decode} workers={workers or f'auto({auto})'} "
                f"preresize={'on' if preresize else 'off'}"
            )
            started = time.perf_counter()
            results[key] = end_to_end(args, data, tmp, workers, preresize, decode)
            share = 1 - results[key] / results["model"]
            print(
                f"  [{key}] {results[key]:8.1f} img/s: {100 * results[key] / results['model']:.0f}% "
                f"of the model-only rate, input path costs {100 * share:.0f}% "
                f"(run took {time.perf_counter() - started:.0f}s)",
                flush=True,
            )

    per_decode = "; ".join(
        f"decode={d} {results[k]:.0f} img/s ({100 * results[k] / results['model']:.0f}%)"
        for d in decodes
        for k in [f"e2e decode={d} workers=auto({auto}) preresize=off"]
    )
    best_key = max((k for k in results if k.startswith("e2e")), key=results.__getitem__)
    print(
        f"summary: {args.variant} {args.crop}x{args.crop} on 1920x1080 JPEGs, {device}: model alone "
        f"{results['model']:.0f} img/s; end to end with the default workers: {per_decode}; best "
        f"{best_key.removeprefix('e2e ')} {results[best_key]:.0f} img/s "
        f"({100 * results[best_key] / results['model']:.0f}%)"
    )
    if args.json:
        write_json(args.json, args, machine=machine_info(), images_per_second=results)


if __name__ == "__main__":
    main()
