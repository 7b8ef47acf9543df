"""Does progress inside an epoch slow training? Two measurements in one run on one machine:

1. The cost of what the loop adds per batch, `bar.update(n)` (and a `set_postfix` every log_every
   steps), timed over many calls for each setting: progress off, the default without a terminal (a line
   every train.progress_seconds=30), a line after every batch (the worst case), and the terminal bar
   (tqdm drawing into a pseudo-terminal). Compared with the time of one training step.
2. `sideformer.train` end to end with progress off, at the default and at a line after every batch, in
   alternating rounds: images/s of the training epochs after a warm-up epoch (loading included,
   validation excluded, as train_log.jsonl reports it). On a shared machine this ratio carries the noise
   of other work; the first measurement is the one that resolves a difference.

Progress lines are formatted and written to a log file, as in a pod.

    .venv/bin/python benchmarks/progress_overhead.py [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import logging
import os
import pty
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.progress import progress
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


def update_cost(seconds: float, calls: int, terminal: bool = False) -> float:
    """Microseconds per `update()` (with a `set_postfix` every 20 calls, as train.log_every does)."""
    saved = sys.stderr
    if terminal:  # a pseudo-terminal on stderr: tqdm draws its bar as on a user's screen
        leader, follower = pty.openpty()
        sys.stderr = os.fdopen(follower, "w")
    try:
        bar = progress(total=calls * 8, desc="bench", unit="img", seconds=seconds)
        started = time.perf_counter()
        with bar:
            for i in range(calls):
                bar.update(8)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{1.0 / (i + 1):.4f}", lr="6.00e-05", refresh=False)
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        if terminal:
            sys.stderr.close()
            sys.stderr = saved
            os.close(leader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs per run (after one warm-up)")
    parser.add_argument("--calls", type=int, default=20000, help="update() calls timed per setting")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
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
        costs = {name: update_cost(seconds, args.calls) for name, seconds in SETTINGS.items()}
        costs["terminal bar"] = update_cost(30.0, args.calls, terminal=True)
        for name, cost in costs.items():
            print(f"update() with progress {name}: {cost:.2f} µs per batch", flush=True)
        data = write_synthetic_dataset(root / "data", args.images, 8, 0, (args.size, args.size), seed=0)
        rates: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for round_ in range(args.rounds):
            for name, seconds in SETTINGS.items():
                rates[name] += measure(data, root / f"run-{round_}-{seconds}", seconds, args)
                print(f"round {round_ + 1}: {name}: {rates[name][-args.epochs :]}", flush=True)
        lines = sum(1 for _ in (root / "progress.log").open())

    off = statistics.median(rates["off"])
    seconds_per_step = args.batch_size / off
    print(f"\nprogress lines written: {lines}; one training step takes {seconds_per_step * 1e3:.0f} ms here")
    print("| progress | µs per batch | share of a step |")
    print("|---|---|---|")
    for name, cost in costs.items():
        print(f"| {name} | {cost:.2f} | {cost * 1e-6 / seconds_per_step:.1e} |")
    print()
    print("| progress | images/s per measured epoch | median | vs off |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {shown} | {median:.2f} | {median / off:.3f}× |")
    if args.json:
        write_json(args.json, args, rates=rates, update_microseconds=costs, progress_lines=lines)


if __name__ == "__main__":
    sys.exit(main())
