"""Does progress inside an epoch slow training? `sideformer.train` with its progress off, at its default
(a line every train.progress_seconds=30 without a terminal) and at the worst case (a line after every
batch), in alternating rounds in one run on one machine.

Each round trains SegFormer-b0 (random init) on the same synthetic images with each setting; the first
epoch of each run is warm-up, the others are measured (images/s of the training epoch, loading included,
validation excluded, as train_log.jsonl reports it). Progress lines are formatted and written to a log
file, as in a pod; the terminal bar (tqdm on a TTY) does the same counting and is not measured apart.

    .venv/bin/python benchmarks/progress_overhead.py [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from machine import describe, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.train import train

SETTINGS = {"off": 0.0, "default (30 s)": 30.0, "every batch": 1e-9}


def measure(data: Path, output: Path, seconds: float, args: argparse.Namespace) -> list[float]:
    config = load_config(
        base={
            "output": str(output),
            "data": {"path": str(data), "crop_size": [args.size, args.size], "num_workers": args.workers},
            "model": {"variant": "b0"},
            "optim": {"warmup_steps": 0},
            "train": {
                "epochs": 1 + args.epochs,
                "batch_size": args.batch_size,
                "device": "cpu",
                "progress_seconds": seconds,
            },
            "early_stop": {"patience": 0},
            "wandb": {"enabled": False},
        }
    )
    result = train(config)
    return [epoch.images_per_second for epoch in result.history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per run (after one warm-up)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(describe(), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # The progress lines go where a pod's log would: a file (not this terminal).
        handler = logging.FileHandler(root / "progress.log")
        logging.getLogger("sideformer.progress").addHandler(handler)
        logging.getLogger("sideformer.progress").setLevel(logging.INFO)
        data = write_synthetic_dataset(root / "data", args.images, 8, 0, (args.size, args.size), seed=0)
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for round_ in range(args.rounds):
            for name, seconds in SETTINGS.items():
                rates[name] += measure(data, root / f"run-{round_}-{seconds}", seconds, args)
                print(f"round {round_ + 1}: {name}: {rates[name][-args.epochs :]}", flush=True)
        lines = sum(1 for _ in (root / "progress.log").open())

    off = statistics.median(rates["off"])
    print(f"\nprogress lines written: {lines}")
    print("| progress | images/s per measured epoch | median | vs off |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {shown} | {median:.2f} | {median / off:.3f}× |")
    if args.json:
        write_json(args.json, args, rates=rates, progress_lines=lines)


if __name__ == "__main__":
    sys.exit(main())
