"""Search efficiency: wall time to a target validation mIoU, SideFormer's search vs the original tool's, in
one run on one machine.

  [a] SideFormer: 2 `sideformer search` worker processes sharing one study, TPE + median pruning;
  [b] the original tool's way: one sequential `sideformer search` process, no pruning (search.pruner=none).

Both get the same trial budget, search space, epochs per trial, synthetic data and config, and the whole
machine: the two workers of [a] run with OMP_NUM_THREADS=1 each, the single process of [b] with
OMP_NUM_THREADS=2 (for 2 cores; --threads sets it). Each strategy's study is created before its clock starts,
as `sideformer study create` does in a deployment. The time to target is the moment (a trial's
datetime_complete, from the start of the strategy's processes) at which the study's best value first reached
the target: by default 90% of the best mIoU either strategy found, computed after both ran, so both are
judged by the same bar. [a]'s wall time includes up to 5 s (sideformer.tune.WAIT_SECONDS) in which a worker
whose last trials run elsewhere polls before it notices the budget is met, and any trial refused as surplus
(two workers racing for the last slot) shows as FAIL with no epochs. A single run of 8 trials depends on
what the sampler happens to propose (two workers draw from two seeds, one process from one): compare several
runs (--seed) before reading much into a small difference.

    .venv/bin/python benchmarks/search_efficiency.py [--quick] [--target 0.3] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from machine import busy_cores, describe, machine_info, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.study import create_study, open_storage, redact

# The low end of lr learns nothing in a few epochs: a region a pruner should cut short.
SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"type": "float", "low": 1e-6, "high": 3e-3, "log": True},
    "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
}
BATCH_SIZE = 8
# Distributed/torchrun variables from the calling shell would turn a worker into a rank of someone's job.
DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Strategy:
    key: str
    label: str
    workers: int
    pruner: str
    threads: int


@dataclass
class TrialRow:
    number: int
    state: str
    finished_at: float | None
    """Seconds from the strategy's start to the trial's datetime_complete."""
    duration: float | None
    """Seconds from the trial's datetime_start to its datetime_complete."""
    value: float | None
    epochs: int
    params: dict[str, Any]


def search_config(args: argparse.Namespace) -> dict[str, Any]:
    """The tiny config both strategies run; only search.pruner differs (set on [b]'s command line)."""
    return {
        "model": {"variant": "b0"},  # random init: nothing to download
        "data": {"crop_size": [args.size, args.size], "num_workers": 0, "check": False},
        "train": {"batch_size": BATCH_SIZE, "device": "cpu"},
        # One epoch of warm-up: the default 1500 steps is longer than a whole trial here.
        "optim": {"warmup_steps": max(1, args.images // BATCH_SIZE)},
        "wandb": {"enabled": False},
        "search": {
            "n_trials": args.trials,
            "objective": "val_miou",
            "epochs": args.epochs,
            "data_fraction": 1.0,  # the data set is already tiny; both train on all of it
            "pruner": "median",
            "space": SPACE,
        },
    }


def run_strategy(
    strategy: Strategy, args: argparse.Namespace, data: Path, config_file: Path, root: Path
) -> dict[str, Any]:
    """Create the study, start the workers, wait for them; return what the study holds afterwards."""
    output = root / strategy.key
    storage_url = args.storage or f"sqlite:///{output / 'study.db'}"
    study_name = f"efficiency-{strategy.key}-{os.getpid()}-{int(time.time())}"  # unique on a shared server
    overrides = [f"search.pruner={strategy.pruner}"]
    config = load_config(config_file, overrides)
    storage = open_storage(storage_url, config.search)
    create_study(storage, study_name, config.search)

    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env |= {"OMP_NUM_THREADS": str(strategy.threads), "MKL_NUM_THREADS": str(strategy.threads)}
    logs = [output / f"worker{i}.log" for i in range(strategy.workers)]
    output.mkdir(parents=True, exist_ok=True)
    load = busy_cores()
    print(
        f"\n{strategy.label}: {strategy.workers} process(es), OMP_NUM_THREADS={strategy.threads} each; "
        f"{load:.1f} cores busy with other work at start"
    )
    if load > 0.3:
        # Beside another busy process, torch's OpenMP threads wait on each other: on a shared 2-core machine
        # one 2-thread process ran a training step 10-30x slower than with 1 thread.
        print("  warning: the machine is busy; these timings mix in other work (the 2-thread run the most)")
    started, clock = datetime.datetime.now(), time.perf_counter()
    procs = []
    for i, log in enumerate(logs):
        cmd = [sys.executable, "-m", "sideformer", "search", "--data", str(data), "--output", str(output),
               "--config", str(config_file), "--storage", storage_url, "--study", study_name,
               "--seed", str(args.seed + i)]  # fmt: skip
        for item in overrides:
            cmd += ["--set", item]
        with log.open("w") as out:  # distinct seeds: same seeds would propose the same trials
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise SystemExit(f"{strategy.label}: no result within {args.timeout} s; see {log}") from None
        if proc.returncode:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{strategy.label}: worker exited with {proc.returncode}:\n{tail}")
    wall = time.perf_counter() - clock

    study = optuna.load_study(study_name=study_name, storage=storage)
    rows = [
        TrialRow(
            number=t.number,
            state=t.state.name,
            finished_at=(t.datetime_complete - started).total_seconds() if t.datetime_complete else None,
            duration=(t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None,
            value=t.value,
            epochs=len(t.intermediate_values),
            params=t.params,
        )
        for t in study.get_trials(deepcopy=False)
    ]
    rows.sort(key=lambda r: (r.finished_at is None, r.finished_at or 0.0))
    for row in rows:
        value = "-" if row.value is None else f"{row.value:.4f}"
        at = "-" if row.finished_at is None else f"{row.finished_at:6.1f}"
        took = "-" if row.duration is None else f"{row.duration:5.1f}"
        lr, wd = row.params.get("optim.lr"), row.params.get("optim.weight_decay")
        params = f"lr {lr:.2e} wd {wd:.2e}" if lr is not None and wd is not None else "(no parameters)"
        print(
            f"  trial {row.number:>2} {row.state:<8} done at {at} s (took {took} s)  mIoU {value:<6}  "
            f"{row.epochs} epoch(s)  {params}"
        )
    complete = [r for r in rows if r.state == "COMPLETE"]
    return {
        "label": strategy.label,
        "workers": strategy.workers,
        "pruner": strategy.pruner,
        "omp_num_threads": strategy.threads,
        "wall_seconds": wall,
        "busy_cores_at_start": load,
        "budget_done_seconds": max((r.finished_at for r in rows if r.finished_at is not None), default=None),
        "complete": len(complete),
        "pruned": sum(r.state == "PRUNED" for r in rows),
        # Trials refused before training: a surplus over the budget, or a duplicate of another's parameters.
        "failed": sum(r.state == "FAIL" for r in rows),
        "epochs_trained": sum(r.epochs for r in rows),
        "best_miou": max((r.value for r in complete if r.value is not None), default=None),
        "trials": [vars(r) for r in rows],
        "storage": "sqlite" if args.storage is None else args.storage.split("://", 1)[0],
    }


def time_to_target(result: dict[str, Any], target: float) -> float | None:
    """When the study's best value first reached `target` (seconds from start); None if it never did."""
    for trial in result["trials"]:  # sorted by completion time
        if trial["state"] == "COMPLETE" and trial["value"] is not None and trial["value"] >= target:
            return trial["finished_at"]
    return None


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trial budget of each strategy (8)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (4)")
    parser.add_argument("--images", type=int, default=48, help="training images; a third as many valid (48)")
    parser.add_argument("--size", type=int, default=64, help="square image and crop size (64)")
    parser.add_argument("--target", type=float, help="target mIoU (default: 90%% of the best either found)")
    parser.add_argument("--threads", type=int, default=2, help="cores to use: [b]'s OMP threads (2)")
    parser.add_argument("--seed", type=int, default=1, help="sampler seed of [b] and [a]'s first worker (1)")
    parser.add_argument("--storage", help="study storage URL for both (default: a SQLite file per strategy)")
    parser.add_argument("--timeout", type=int, default=7200, help="seconds a strategy may take (7200)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 trials, 2 epochs, 24 images")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.images = 4, 2, 24
    if min(args.trials, args.epochs, args.images, args.threads) < 1 or args.size < 32:
        parser.error("--trials, --epochs, --images, --threads must be >= 1 and --size >= 32")
    workers = 2
    strategies = [
        Strategy("parallel", "[a] SideFormer: 2 workers, TPE + median pruning", workers, "median",
                 max(1, args.threads // workers)),
        Strategy("sequential", "[b] original: 1 sequential worker, no pruning", 1, "none", args.threads),
    ]  # fmt: skip

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
    info = machine_info()
    print(f"machine: {describe(info)}")
    defaults = load_config().search
    valid = max(8, args.images // 3)
    print(
        f"settings: budget {args.trials} trials x {args.epochs} epochs, b0 random init, "
        f"{args.images} train / {valid} valid images {args.size}x{args.size}, batch {BATCH_SIZE}, CPU; "
        f"TPE (first {defaults.sampler_startup_trials} trials random); median pruner after "
        f"{defaults.pruner_startup_trials} finished trials, from epoch {defaults.pruner_warmup_epochs}"
    )
    print(
        f"threads: both use the whole machine: [a] 2 processes x OMP_NUM_THREADS={strategies[0].threads}, "
        f"[b] 1 process x OMP_NUM_THREADS={strategies[1].threads}"
    )

    with tempfile.TemporaryDirectory(prefix="sideformer-search-bench-") as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(
            root / "data", train=args.images, valid=valid, size=(args.size, args.size)
        )
        config_file = root / "search.yaml"
        config_file.write_text(yaml.safe_dump(search_config(args), sort_keys=False))
        results = {s.key: run_strategy(s, args, data, config_file, root) for s in strategies}

    parallel, sequential = results["parallel"], results["sequential"]
    bests = [r["best_miou"] for r in results.values() if r["best_miou"] is not None]
    target = args.target if args.target is not None else 0.9 * max(bests, default=0.0)
    how = "given" if args.target is not None else "90% of the best either found"
    for result in results.values():
        result["time_to_target_seconds"] = time_to_target(result, target)

    print(f"\nresults (target mIoU {target:.4f}, {how})")
    for result in results.values():
        best = "-" if result["best_miou"] is None else f"{result['best_miou']:.4f}"
        done = seconds(result["budget_done_seconds"])
        print(
            f"  {result['label']}\n"
            f"    wall {result['wall_seconds']:.1f} s (last trial finished at {done}), "
            f"{result['complete']} complete / {result['pruned']} pruned / {result['failed']} failed, "
            f"{result['epochs_trained']} epochs trained, best mIoU {best}, "
            f"target {'reached at ' if result['time_to_target_seconds'] is not None else ''}"
            f"{seconds(result['time_to_target_seconds'])}"
        )
    reached_a, reached_b = parallel["time_to_target_seconds"], sequential["time_to_target_seconds"]
    speedup = f" ({reached_b / reached_a:.1f}x)" if reached_a and reached_b else ""
    print(
        f"summary: 2 workers + pruning reached mIoU {target:.3f} in {seconds(reached_a)} vs sequential "
        f"without pruning {seconds(reached_b)}{speedup}; {parallel['pruned']}/{args.trials} trials pruned; "
        f"whole budget {parallel['wall_seconds']:.0f} s vs {sequential['wall_seconds']:.0f} s"
    )
    if args.json:
        storage = redact(args.storage) if args.storage else None  # no password in the file
        write_json(
            args.json,
            args,
            machine=info,
            settings={"storage": storage},
            target=target,
            target_rule=how,
            results=results,
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
