"""Accuracy with the speed-ups on and off: the same short training, the same seed, then a second seed.

Three runs of `sideformer.train.train` on one synthetic dataset (b0 from random weights, CPU or GPU):
  [off]    transformers' decode head, per-tensor AdamW, the original images   (model.fold_decode_head=false,
           optim.fused=false)
  [on]     the folded decode head, fused AdamW, data.preresize copies, plus on a GPU bf16 autocast
           (train.precision=auto) and --channels-last / --compile when given
  [off-2]  as [off] with another seed: the noise yardstick
The speed-ups keep accuracy when |on - off| is within about |off-2 - off|. The runs differ in rounding from
the first step on (and dropout masks follow memory layout), so equal numbers are not expected.

    .venv/bin/python benchmarks/accuracy.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from machine import describe, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.train import train


def run(args: argparse.Namespace, data: Path, output: Path, seed: int, fast: bool) -> dict[str, float]:
    crop = args.crop
    config = load_config(
        base={
            "output": str(output),
            "data": {
                "path": str(data),
                "crop_size": [crop, crop],
                "num_workers": args.workers,
                "preresize": 2 * crop if fast else None,
                "cache_dir": str(data.parent / "cache"),
            },
            "model": {
                "variant": "b0",
                "fold_decode_head": fast,
                "channels_last": fast and args.channels_last,
            },
            "optim": {"lr": 1e-3, "warmup_steps": 10, "fused": fast},
            "train": {
                "epochs": args.epochs,
                "batch_size": 8,
                "seed": seed,
                "precision": "auto" if fast else "fp32",
                "compile": fast and args.compile,
            },
            "early_stop": {"patience": 0},
            "checkpoint": {"select": "last"},
            "wandb": {"enabled": False},
        }
    )
    started = time.perf_counter()
    result = train(config)
    last = result.history[-1]
    return {
        "val_miou": last.val_miou,
        "val_loss": last.val_loss,
        "best_val_miou": max(h.val_miou for h in result.history),
        "train_images_per_second": sum(h.images_per_second for h in result.history[1:])
        / max(1, len(result.history) - 1),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96, help="training images (96; validation: a third)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--crop", type=int, default=128, help="crop and base size (128)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke test: 24 images, 2 epochs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.images, args.epochs = 24, 2
    args.source = (3 * args.crop, 4 * args.crop)  # larger than the copies, so data.preresize really resizes
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {describe()}")
    print(
        f"settings: b0 random init, {args.images} train / {max(8, args.images // 3)} valid synthetic images "
        f"{args.source[0]}x{args.source[1]}, crop {args.crop}, batch 8, {args.epochs} epochs, lr 1e-3, "
        f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="sideformer-accuracy-") as tmp:
        data = write_synthetic_dataset(
            Path(tmp) / "data", train=args.images, valid=max(8, args.images // 3), size=args.source, seed=5
        )
        for name, seed, fast in (("off", 0, False), ("on", 0, True), ("off-2", 1, False)):
            results[name] = run(args, data, Path(tmp) / name, seed, fast)
            r = results[name]
            print(
                f"  [{name:<5}] seed {seed}: val mIoU {r['val_miou']:.4f} (best {r['best_val_miou']:.4f}), "
                f"val loss {r['val_loss']:.4f}, {r['train_images_per_second']:.1f} img/s, {r['seconds']:.0f}s"
            )
    effect = results["on"]["val_miou"] - results["off"]["val_miou"]
    noise = results["off-2"]["val_miou"] - results["off"]["val_miou"]
    tolerance = max(abs(noise), 0.01)
    if abs(effect) <= tolerance:
        verdict = "within seed noise"
    elif effect > 0:
        verdict = "better than off by more than this seed difference (no regression)"
    else:
        verdict = "WORSE than off by more than seed noise"
    print(
        f"summary: val mIoU after {args.epochs} epochs: speed-ups on {results['on']['val_miou']:.4f} vs off "
        f"{results['off']['val_miou']:.4f} (difference {effect:+.4f}); another seed differs by {noise:+.4f}: "
        f"{verdict}"
    )
    if args.json:
        write_json(args.json, args, runs=results)


if __name__ == "__main__":
    main()
