"""Search strategies over several seeds: how soon each one reaches a good model, in wall time.

Every strategy gets the same task, search space and time budget (--budget seconds; trials of up to --epochs
epochs, as many as fit, unless --trials also caps their number), on the same machine:

  sequential    the original tool's search: TPE, no pruning, 1 process, every trial to the end
  today         SideFormer's previous default: 2 worker processes, TPE + median pruner
  new           SideFormer's default: 2 workers, TPE + ASHA (epoch rungs 3, 9), the recipe trial first
  workers       ablation: 2 workers, no pruning, no recipe trial
  pruner        ablation: 1 process, ASHA (rungs 3, 9), no recipe trial
  recipe        ablation: 1 process, no pruning, the recipe trial first (the default's warm start)
  rung1         variant (only when named in --strategies): the new default with ASHA's rungs at 1, 3, 9
                (the default until 2026-12-05, Ray Tune's grace period of 1)
  warm          variant (only when named): the new default with --warm-start from the team's earlier study,
                a run of the new default on other scenes of the same 22 classes (the data before the new
                images arrived), run per seed just before and not counted in this run's time

Each run is real: `sideformer search` processes sharing a SQLite study, created (with its first trials and
deadline, as `sideformer study create` does) just before the clock starts. Every process runs one torch
thread (--threads): on a machine shared with other jobs, a 2-thread process waits on its own threads (one
ran at 3.2 img/s beside 6 busy processes, against ~70 img/s for one thread alone), which would make the
1-process strategies look far worse than they are. So a 1-process strategy uses one core and a 2-worker
one two: the workers' gain measured here is what a second core buys, an upper bound on what 2 workers
gain over one 2-thread process on an idle 2-core machine. Within a seed the strategies run one after
another in an order rotated from seed to seed, so the load of a shared machine falls on all of them alike;
the load at each run's start is recorded.

Time is measured on a CPU clock: the CPU seconds of the busiest worker process since the workers started
(imports included), sampled from /proc every 0.25 s. That is the wall time the run would take on an
otherwise idle machine with a core per worker, and it does not move when other jobs load a shared machine
(this one ran at a load of 6-9 on 2 cores). When a run's clock reaches --budget, the benchmark moves the
study's deadline (the user attribute `--timeout` sets) to now: no worker starts another trial, trials in
flight finish but only those done within the budget count. Wall times are recorded too.

For every run the best-so-far validation mIoU (of completed trials) against that clock is recorded. The
target is --target-share (0.95) of the best mIoU any run reached; the summary gives, per strategy, the
median and the range over seeds of the time to reach it and of the final best mIoU, and a PNG of the
median best-so-far curves with the min-max range as a band.

    .venv/bin/python benchmarks/search_strategies.py [--seeds 5] [--json FILE] [--png FILE]
    .venv/bin/python benchmarks/search_strategies.py --quick         # smoke test, about a minute
    .venv/bin/python benchmarks/search_strategies.py --analyze FILE  # summary and PNG from a JSON file
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from machine import busy_cores, describe, machine_info, write_json  # benchmarks/machine.py

from sideformer.config import load_config
from sideformer.data.synth import write_synthetic_dataset
from sideformer.demo import DEMO_SETTINGS
from sideformer.study import open_storage
from sideformer.tune import open_study, parse_space

# The task: random-init b0 (nothing to download) on 22-class synthetic street scenes at 64x64, where the
# small classes are a few pixels. The learning rate decides most: its low end learns nothing in a trial.
SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optim.head_lr_mult": {"type": "categorical", "choices": [1.0, 10.0]},
    "train.batch_size": {"type": "categorical", "choices": [4, 8]},
}
DIST_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Strategy:
    key: str
    label: str
    workers: int
    pruner: str
    recipe_first: bool
    warmup_epochs: int = 3  # the pruner's first rung (median: its warm-up); the previous default was 2
    warm_start: bool = False  # --warm-start from an earlier study of this strategy without it, on other data


STRATEGIES = [
    Strategy("sequential", "original: 1 process, TPE, no pruning", 1, "none", False),
    Strategy("today", "previous default: 2 workers, median pruner", 2, "median", False, warmup_epochs=2),
    Strategy("new", "new default: 2 workers, ASHA, recipe first", 2, "asha", True),
    Strategy("workers", "ablation: 2 workers alone", 2, "none", False),
    Strategy("pruner", "ablation: ASHA alone", 1, "asha", False),
    Strategy("recipe", "ablation: recipe trial first alone", 1, "none", True),
]
# Variants outside the default list (--strategies KEY ...), for questions a run raised.
VARIANTS = [
    Strategy("rung1", "variant: the new default, first rung at 1 epoch", 2, "asha", True, warmup_epochs=1),
    Strategy(
        "warm",
        "variant: the new default, --warm-start from an earlier study",
        2,
        "asha",
        True,
        warm_start=True,
    ),
]
# Where the strategies with warm_start find the data of the team's earlier study: other scenes, same classes.
EARLIER_DATA = "earlier-data"


def task_config(args: argparse.Namespace) -> dict[str, Any]:
    """What every strategy runs; the strategy's own settings come as --set overrides.

    The configuration's own values (the recipe trial of the strategies that enqueue it) are the recipe
    this project already gives random weights: `sideformer demo`'s (lr 1e-3, head x1, batch 8), chosen for
    the demo long before this benchmark, not tuned on it. With --fine-tune-recipe they are the published
    SegFormer recipe instead (lr 6e-5, head x10), which is meant for a pretrained encoder."""
    demo = DEMO_SETTINGS["optim"]
    optim = {} if args.fine_tune_recipe else {"lr": demo["lr"], "head_lr_mult": demo["head_lr_mult"]}
    # The recipes' warm-ups (50 and 1500 steps) are longer than a whole trial here: one epoch instead.
    optim["warmup_steps"] = max(1, args.images // DEMO_SETTINGS["train"]["batch_size"])
    return {
        "model": {"variant": "b0"},
        "data": {"crop_size": [args.size, args.size], "num_workers": 0, "check": False},
        "train": {"batch_size": DEMO_SETTINGS["train"]["batch_size"], "device": "cpu"},
        "optim": optim,
        "wandb": {"enabled": False},
        "search": {
            # The budget is time (--budget): no trial count stops a run unless --trials asks for one.
            "n_trials": args.trials or 100_000,
            "epochs": args.epochs,
            "data_fraction": 1.0,
            "objective": "val_miou",
            "space": SPACE,
        },
    }


def overrides(strategy: Strategy) -> list[str]:
    return [
        f"search.pruner={strategy.pruner}",
        f"search.pruner_warmup_epochs={strategy.warmup_epochs}",
        f"search.start_from_config={str(strategy.recipe_first).lower()}",
    ]


def run_once(
    strategy: Strategy, seed: int, args: argparse.Namespace, data: Path, config_file: Path, root: Path
) -> dict[str, Any]:
    output = root / f"{strategy.key}-{seed}"
    output.mkdir(parents=True)
    url, name = f"sqlite:///{output / 'study.db'}", f"{strategy.key}-{seed}"
    config = load_config(config_file, overrides(strategy))
    warm_start, earlier = None, None
    if strategy.warm_start:
        past = replace(strategy, warm_start=False)
        earlier = run_once(past, seed, args, root / EARLIER_DATA, config_file, root / "earlier")
        warm_start = f"{earlier['storage']}#{earlier['study']}"
    load = busy_cores()
    threads = args.threads
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARIABLES}
    env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # Created with its first trials and deadline before the clock starts, as `sideformer study create` does.
    started = datetime.datetime.now(datetime.timezone.utc)
    created = time.perf_counter()
    study = open_study(config, parse_space(config.search.space), url, name, warm_start)
    clock = time.perf_counter()
    procs: list[subprocess.Popen] = []
    logs = []
    for i in range(strategy.workers):
        cmd = [sys.executable, "-m", "sideformer", "search", "--data", str(data), "--output", str(output),
               "--config", str(config_file), "--storage", url, "--study", name,
               "--seed", str(1000 * seed + i)]  # fmt: skip
        for item in overrides(strategy):
            cmd += ["--set", item]
        logs.append(output / f"worker{i}.log")
        with logs[-1].open("w") as out:
            procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    samples = [(0.0, 0.0)]  # (wall seconds, CPU clock seconds)
    cpu = dict.fromkeys([p.pid for p in procs], 0.0)
    stopped = False
    while any(p.poll() is None for p in procs):
        for p in procs:
            cpu[p.pid] = cpu_seconds(p.pid) or cpu[p.pid]  # keep the last reading once it exits
        samples.append((time.perf_counter() - clock, max(cpu.values())))
        if not stopped and samples[-1][1] >= args.budget:
            study.set_user_attr("deadline", datetime.datetime.now(datetime.timezone.utc).isoformat())
            stopped = True
        if samples[-1][0] > 20 * args.budget + 600:
            for other in procs:
                other.kill()
            raise SystemExit(f"{strategy.key} seed {seed}: workers did not stop; see {logs[0]}")
        time.sleep(0.25)
    for proc, log in zip(procs, logs, strict=True):
        if proc.returncode not in (0, 2):  # 2: the budget ended before any trial completed (a result)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{strategy.key} seed {seed}: worker exited {proc.returncode}:\n{tail}")
    wall = time.perf_counter() - clock

    def since(moment: datetime.datetime | None) -> float | None:
        if moment is None:
            return None
        return (moment.astimezone(datetime.timezone.utc) - started).total_seconds() - (clock - created)

    def on_cpu_clock(wall: float | None) -> float | None:
        if wall is None:
            return None
        return float(np.interp(wall, [w for w, _ in samples], [c for _, c in samples]))

    trials = []
    for t in optuna.load_study(study_name=name, storage=open_storage(url, config.search)).trials:
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "started_wall": since(t.datetime_start),
                "finished_wall": since(t.datetime_complete),
                "started": on_cpu_clock(since(t.datetime_start)),
                "finished": on_cpu_clock(since(t.datetime_complete)),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "params": t.params,
                "enqueued": "fixed_params" in t.system_attrs,
            }
        )
    del study
    # Every trial leaves checkpoints (~60 MB at b0); a run of 100+ trials is gigabytes, and 30 runs filled
    # the disk before the benchmark could end. What the summary needs is in the records above; the study
    # stays for a warm start from it.
    for child in output.iterdir():
        if child.name != "study.db":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return {
        "strategy": strategy.key,
        "seed": seed,
        "storage": url,
        "study": name,
        "earlier": earlier
        and {"best": final_best(earlier), "cpu_clock_seconds": earlier["cpu_clock_seconds"]},
        "wall_seconds": wall,
        "cpu_clock_seconds": samples[-1][1],
        "busy_cores_at_start": load,
        "omp_threads_per_process": threads,
        "curve": best_so_far(trials, args.budget),
        "epochs_trained": sum(t["epochs"] for t in trials),
        "trials": trials,
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process, from /proc (None once it has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def best_so_far(trials: list[dict[str, Any]], budget: float) -> list[list[float]]:
    """[seconds, best mIoU so far] at each completed trial that finished within the budget."""
    curve, best = [], -math.inf
    done = [t for t in trials if t["state"] == "COMPLETE" and t["finished"] is not None]
    for t in sorted(done, key=lambda t: t["finished"]):
        if t["finished"] <= budget and t["value"] > best:
            best = t["value"]
            curve.append([t["finished"], best])
    return curve


def time_to(curve: list[list[float]], target: float) -> float | None:
    return next((t for t, value in curve if value >= target), None)


def spread(values: list[float | None]) -> tuple[float | None, float | None, float | None]:
    """Median, min, max; None (not reached) counts as later than anything, so it can be the median."""
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    finite = [v for v in ranked if v is not None]
    middle = ranked[(len(ranked) - 1) // 2 : len(ranked) // 2 + 1]
    median = None if any(v is None for v in middle) else statistics.mean(middle)
    return median, (finite[0] if finite else None), (ranked[-1] if ranked else None)


def final_best(run: dict[str, Any]) -> float | None:
    """The best validation mIoU a run reached within its budget (None: no trial completed in time)."""
    return run["curve"][-1][1] if run["curve"] else None


def summarise(runs: list[dict[str, Any]], share: float, fixed: float | None = None) -> dict[str, Any]:
    """Per strategy over seeds; the target is `share` of the best any run reached, or `fixed`."""
    finals = [best for r in runs if (best := final_best(r)) is not None]
    target = fixed if fixed is not None else share * max(finals, default=0.0)
    rows = {}
    for key in dict.fromkeys(r["strategy"] for r in runs):
        mine = [r for r in runs if r["strategy"] == key]
        times = [time_to(r["curve"], target) for r in mine]
        best = [final_best(r) or 0.0 for r in mine]
        rows[key] = {
            "seeds": len(mine),
            "time_to_target": spread(times),
            "reached": sum(t is not None for t in times),
            "final_best": (statistics.median(best), min(best), max(best)),
            "epochs_trained_median": statistics.median(r["epochs_trained"] for r in mine),
            "pruned_median": statistics.median(
                sum(t["state"] == "PRUNED" for t in r["trials"]) for r in mine
            ),
            "complete_median": statistics.median(
                sum(t["state"] == "COMPLETE" for t in r["trials"]) for r in mine
            ),
        }
    return {"target": target, "target_share": None if fixed is not None else share, "strategies": rows}


def seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def print_summary(summary: dict[str, Any], budget: float) -> None:
    labels = {s.key: s.label for s in STRATEGIES + VARIANTS}
    rows = summary["strategies"]
    base = rows.get("sequential", {}).get("time_to_target", (None,))[0]
    print(
        f"\ntarget: val mIoU {summary['target']:.4f} ("
        + (f"{share:.0%} of the best any run reached" if (share := summary["target_share"]) else "given")
        + f"); budget {budget:.0f} s per run on the CPU clock"
    )
    print("| strategy | time to target, median (min-max) | reached | speed-up vs original (median) | "
          "final best mIoU, median (min-max) | epochs trained | complete / pruned |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for key, row in rows.items():
        median, low, high = row["time_to_target"]
        if median is not None and base is not None:
            speedup = f"{base / median:.1f}x"
        elif median is not None and "sequential" in rows:
            speedup = f"> {budget / median:.1f}x (original: not reached by its median seed)"
        else:
            speedup = "-"
        best = row["final_best"]
        print(
            f"| {labels.get(key, key)} | {seconds(median)} ({seconds(low)} - {seconds(high)}) | "
            f"{row['reached']}/{row['seeds']} | {speedup} | {best[0]:.4f} ({best[1]:.4f} - {best[2]:.4f}) | "
            f"{row['epochs_trained_median']:.0f} | "
            f"{row['complete_median']:.0f} / {row['pruned_median']:.0f} |"
        )


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], budget: float, path: Path) -> None:
    """Median best-so-far curves with the min-max band over seeds (0 before a run's first model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, 400)
    figure, axes = plt.subplots(figsize=(10, 6))
    labels = {s.key: s.label for s in STRATEGIES + VARIANTS}
    for key in summary["strategies"]:
        curves = []
        for run in (r for r in runs if r["strategy"] == key):
            values = np.zeros_like(grid)
            for moment, best in run["curve"]:
                values[grid >= moment] = best
            curves.append(values)
        stack = np.stack(curves)
        (line,) = axes.plot(grid, np.median(stack, axis=0), label=labels.get(key, key), linewidth=2)
        axes.fill_between(grid, stack.min(axis=0), stack.max(axis=0), color=line.get_color(), alpha=0.12)
    axes.axhline(summary["target"], color="black", linestyle="--", linewidth=1, label="target")
    axes.set_xlabel("CPU clock: CPU seconds of the busiest worker since the workers started")
    axes.set_ylabel("best validation mIoU so far")
    seeds = max(row["seeds"] for row in summary["strategies"].values())
    axes.set_title(f"Search strategies: median over {seeds} seeds, band = min-max")
    axes.legend(loc="lower right", fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per strategy (5)")
    parser.add_argument("--first-seed", type=int, default=1, help="(1)")
    parser.add_argument(
        "--trials", type=int, default=0,
        help="finished trials that end a run (0: none, the run ends with its --budget)",
    )  # fmt: skip
    parser.add_argument(
        "--fine-tune-recipe", action="store_true",
        help="the configuration's values are the published fine-tuning recipe, not the demo's random-init",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=9, help="epochs of a trial that is not pruned (9)")
    parser.add_argument("--budget", type=float, default=120, help="CPU-clock budget of a run, seconds (120)")
    parser.add_argument("--images", type=int, default=32, help="training images (32)")
    parser.add_argument("--valid", type=int, default=0, help="validation images (0: max(16, images / 2))")
    parser.add_argument("--size", type=int, default=64, help="image and crop size (64)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    parser.add_argument("--target-share", type=float, default=0.95, help="target: share of the best (0.95)")
    parser.add_argument(
        "--target-value", type=float,
        help="a fixed target mIoU instead of --target-share (to read runs of another budget against it)",
    )  # fmt: skip
    parser.add_argument("--strategies", nargs="+", default=[s.key for s in STRATEGIES], metavar="KEY")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time (1); the CPU clock is per run, so more "
        "runs at once take a larger share of a machine that other jobs load, without changing the result",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 seed, sequential vs new, tiny")
    parser.add_argument("--json", type=Path, help="write every run here (rewritten after each run)")
    parser.add_argument("--png", type=Path, help="write the median curves here")
    parser.add_argument(
        "--analyze", type=Path, nargs="+", metavar="FILE",
        help="summarise the JSON files of earlier runs (e.g. seeds run as separate commands); run nothing",
    )  # fmt: skip
    args = parser.parse_args()
    if args.analyze:
        docs = [json.loads(path.read_text()) for path in args.analyze]
        budgets = {doc["settings"]["budget"] for doc in docs}
        if len(budgets) != 1:
            parser.error(f"--analyze: the files have different budgets {sorted(budgets)}")
        runs = [run for doc in docs for run in doc["runs"]]
        summary = summarise(runs, args.target_share, args.target_value)
        for doc in docs:
            print(f"machine: {describe(doc['machine'])}")
        print_summary(summary, budgets.pop())
        if args.json:
            write_json(args.json, args, machine=docs[0]["machine"], settings={"analyze": [
                str(p) for p in args.analyze], "png": str(args.png)}, runs=runs, summary=summary)  # fmt: skip
        if args.png:
            plot(runs, summary, docs[0]["settings"]["budget"], args.png)
            print(f"wrote {args.png}")
        return 0
    if args.quick:
        args.seeds, args.trials, args.epochs, args.budget, args.images = 1, 3, 3, 20, 16
        args.strategies = ["sequential", "new"]
    chosen = [s for s in STRATEGIES + VARIANTS if s.key in args.strategies]
    if len(chosen) != len(set(args.strategies)):
        parser.error(f"--strategies: choose from {', '.join(s.key for s in STRATEGIES + VARIANTS)}")
    args.valid = args.valid or max(16, args.images // 2)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    info = machine_info()
    print(f"machine: {describe(info)}")
    print(
        f"task: b0 random init, synthetic 22-class scenes {args.size}x{args.size}, {args.images} train / "
        f"{args.valid} valid; {args.trials or 'unlimited'} trials x {args.epochs} epochs, "
        f"budget {args.budget:.0f} CPU-clock s per run; {args.seeds} seed(s) x {len(chosen)} strategies"
    )
    runs: list[dict[str, Any]] = []
    paths = {"png": str(args.png) if args.png else None, "analyze": None, "json": None}
    with tempfile.TemporaryDirectory(prefix="sideformer-strategies-") as tmp:
        root = Path(tmp)
        data = write_synthetic_dataset(
            root / "data", train=args.images, valid=args.valid, size=(args.size, args.size)
        )
        if any(s.warm_start for s in chosen):
            write_synthetic_dataset(
                root / EARLIER_DATA, train=args.images, valid=args.valid, size=(args.size, args.size), seed=1
            )
        config_file = root / "task.yaml"
        config_file.write_text(yaml.safe_dump(task_config(args), sort_keys=False))
        jobs = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            shift = (seed - args.first_seed) % len(chosen)
            jobs += [(s, seed) for s in chosen[shift:] + chosen[:shift]]  # rotated: drifting load hits all
        lock = threading.Lock()

        def one(job: tuple[Strategy, int]) -> None:
            strategy, seed = job
            run = run_once(strategy, seed, args, data, config_file, root)
            best = final_best(run)
            with lock:
                runs.append(run)
                print(
                    f"seed {seed} {strategy.key:<10} wall {run['wall_seconds']:5.0f} s  CPU clock "
                    f"{run['cpu_clock_seconds']:4.0f} s  best "
                    f"{'-' if best is None else f'{best:.4f}'}  first model at "
                    f"{seconds(run['curve'][0][0] if run['curve'] else None)}  "
                    f"{run['epochs_trained']} epochs  load {run['busy_cores_at_start']:.1f}",
                    flush=True,
                )
                if args.json:
                    write_json(args.json, args, machine=info, settings=paths, runs=runs)

        # Runs side by side only change the wall time: the CPU clock counts each run's own processes.
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            for future in [pool.submit(one, job) for job in jobs]:
                future.result()
    summary = summarise(runs, args.target_share, args.target_value)
    print_summary(summary, args.budget)
    if args.json:
        write_json(args.json, args, machine=info, settings=paths, runs=runs, summary=summary)
        print(f"wrote {args.json}")
    if args.png:
        plot(runs, summary, args.budget, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
