"""Search throughput with several trials per GPU: trials per hour of `sideformer search --trials-per-gpu N`
for each N asked (default 1, 2 and 4), in one run on one machine.

Each N gets its own study (same config, storage kind and synthetic data) with a budget of ROUNDS x N
trials, so every slot runs about ROUNDS trials and the tail (slots idle while the last trials finish) weighs
alike. Trials are all run to the end (search.pruner=none) so that pruning luck does not change the work. The
clock runs from starting the supervisor to its exit: process start-up, compiling (train.compile=auto on a
GPU) and validation are in, as a user's search has them. Also reported: each trial's mean duration, which
grows as slots share the GPU; trials/hour grows while the GPU still had idle time.

    .venv/bin/python benchmarks/search_throughput.py [--quick] [--slots 1,2,4] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from machine import describe, machine_info, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.study import create_study, open_storage

DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def write_config(path: Path, args: argparse.Namespace) -> Path:
    config = {
        "model": {"variant": args.variant},
        "data": {"crop_size": [args.crop, args.crop], "check": False},
        "train": {"batch_size": args.batch_size},
        "wandb": {"enabled": False},
        "search": {
            "epochs": args.epochs,
            "data_fraction": 1.0,
            "pruner": "none",
            "space": {"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_slots(n: int, args: argparse.Namespace, data: Path, config_file: Path, root: Path) -> dict[str, Any]:
    """One search with N slots and ROUNDS x N trials: its wall time and its trials' durations."""
    output = root / f"slots{n}"
    output.mkdir(parents=True)
    storage_url = args.storage or f"sqlite:///{output / 'study.db'}"
    study_name = f"throughput-{n}-{os.getpid()}-{int(time.time())}"  # unique on a shared server
    budget = args.rounds * n
    config = load_config(config_file, [f"search.n_trials={budget}", *args.set])
    create_study(open_storage(storage_url, config.search), study_name, config.search)
    command = [sys.executable, "-m", "sideformer", "search", "--data", str(data), "--output", str(output),
               "--config", str(config_file), "--storage", storage_url, "--study", study_name,
               "--n-trials", str(budget), "--seed", "0"]  # fmt: skip
    command += ["--trials-per-gpu", str(n)] if n > 1 else []
    for item in args.set:
        command += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    log = output / "search.log"
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.timeout)
    wall = time.perf_counter() - started
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{n} slot(s): search exited with {proc.returncode}:\n{tail}")
    trials = optuna.load_study(study_name=study_name, storage=storage_url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]  # type: ignore[operator]
    return {
        "slots": n,
        "trials": len(done),
        "wall_seconds": wall,
        "trials_per_hour": len(done) / wall * 3600,
        "trial_seconds_mean": statistics.mean(durations),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default="1,2,4", help="trials per GPU to measure, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="trials per slot (budget = rounds x slots)")
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--images", type=int, default=64, help="synthetic training images")
    parser.add_argument("--size", type=int, default=512, help="synthetic image side")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--set", action="append", default=[], help="config override for every trial")
    parser.add_argument("--storage", help="study storage URL (default: a SQLite file per N)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per search")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 1 and 2 slots, tiny trials")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.slots, args.rounds, args.images, args.size, args.crop, args.epochs = "1,2", 1, 8, 64, 64, 1
        args.batch_size = 4
        args.set += ["data.num_workers=0"]
    slots = [int(n) for n in args.slots.split(",") if n]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {describe()}")
    print(
        f"settings: {args.variant}, {args.images} synthetic images {args.size}x{args.size}, "
        f"crop {args.crop}, batch {args.batch_size}, {args.epochs} epoch(s) per trial, "
        f"{args.rounds} trial(s) per slot, "
        f"no pruning, {device}; overrides {args.set or 'none'}"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="sideformer-slots-") as tmp_name:
        tmp = Path(tmp_name)
        data = write_synthetic_dataset(tmp / "data", train=args.images, valid=8, size=(args.size, args.size))
        config_file = write_config(tmp / "search.yaml", args)
        for n in slots:
            result = run_slots(n, args, data, config_file, tmp)
            results.append(result)
            print(
                f"  [{n} per GPU] {result['trials']} trials in {result['wall_seconds']:.0f} s: "
                f"{result['trials_per_hour']:.0f} trials/h, {result['trial_seconds_mean']:.1f} s per trial",
                flush=True,
            )
    base = results[0]["trials_per_hour"]
    print(
        f"summary: search throughput {args.variant} crop {args.crop} batch {args.batch_size}, {device}: "
        + ", ".join(
            f"{r['slots']} per GPU {r['trials_per_hour']:.0f} trials/h ({r['trials_per_hour'] / base:.2f}x)"
            for r in results
        )
    )
    if args.json:
        write_json(args.json, args, machine=machine_info(), settings={"device": device}, runs=results)


if __name__ == "__main__":
    main()
