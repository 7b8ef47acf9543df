"""Storage overhead of the shared study: ask/tell round trips per second against a real PostgreSQL server.

A throwaway PostgreSQL (tests/pg: its own cluster on 127.0.0.1) holds one fresh study per concurrency
level, created once beforehand with `sideformer.study.create_study`. N worker processes then each open the
storage exactly as a SideFormer search worker does (`sideformer.study.open_storage(url, SearchConfig())`:
heartbeats on, pool_pre_ping), load the study with SideFormer's sampler (TPE, constant liar, a distinct seed
per worker) and pruner (median), and for a fixed time repeat the storage traffic of one trial:

    fail_stale_trials, ask(3 distributions), record_heartbeat,
    (report(value, epoch) + should_prune()) x --reports, tell(value or PRUNED)

`study.optimize`, which SideFormer runs one trial at a time, makes the same fail_stale_trials and heartbeat
calls around a trial; called outside it, ask/tell make neither, so the script makes them itself. Training is
replaced by nothing, so the rates are the ceiling the storage puts on a search, in trials per second; a
real trial takes minutes. The workers are started through a forkserver that imported sideformer.tune once:
fresh processes with their own connections, without 32 imports of torch (~6 s of CPU each) first.

    .venv/bin/python benchmarks/storage_overhead.py [--workers 1,8,32] [--seconds 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import queue
import random
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from machine import busy_cores, cores, cpu_model, write_json  # benchmarks/machine.py

REPO = Path(__file__).resolve().parents[1]

# A small, realistic space: two log-uniform floats and one categorical, parsed like search.space.
SPACE: dict[str, dict[str, Any]] = {
    "optim.lr": {"type": "float", "low": 1e-6, "high": 3e-3, "log": True},
    "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [4, 8, 16]},
}
STARTUP_TIMEOUT = 300.0  # seconds for all workers to connect; 32 processes on 2 shared cores are slow


@dataclass
class WorkerResult:
    index: int
    cycles: int = 0
    pruned: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0
    """CPU seconds of this worker while measured: the client's share of a round trip."""
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def machine() -> dict[str, Any]:
    import optuna
    import psycopg2
    import sqlalchemy

    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "optuna": optuna.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "psycopg2": psycopg2.__version__.split()[0],
    }


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def worker(
    index: int, url: str, study_name: str, seconds: float, reports: int, sampler: str, ready: Barrier,
    results: Any,
) -> None:  # fmt: skip
    """One search worker's storage traffic, for `seconds` after every worker has connected."""
    import optuna
    from optuna.trial import TrialState

    from sideformer.config import SearchConfig
    from sideformer.study import open_storage
    from sideformer.tune import parse_space

    # ask() outside study.optimize warns that heartbeats expect optimize; we make optimize's calls ourselves.
    warnings.filterwarnings("ignore", message="Heartbeat of storage")
    result = WorkerResult(index)
    rng = random.Random(index)

    def one_trial(study: optuna.Study, storage: Any, distributions: dict[str, Any]) -> None:
        optuna.storages.fail_stale_trials(study)
        trial = study.ask(distributions)
        storage.record_heartbeat(trial._trial_id)  # what optimize's heartbeat thread does on start
        final = rng.random()
        for epoch in range(1, reports + 1):  # SideFormer reports once per epoch, then asks the pruner
            trial.report(final * epoch / reports, step=epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                result.pruned += 1
                return
        study.tell(trial, final)

    try:
        search = SearchConfig()
        storage = open_storage(url, search)
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            sampler=optuna.samplers.TPESampler(
                seed=index, constant_liar=True, n_startup_trials=search.sampler_startup_trials
            )
            if sampler == "tpe"
            else optuna.samplers.RandomSampler(seed=index),
            pruner=optuna.pruners.MedianPruner(search.pruner_startup_trials, search.pruner_warmup_epochs),
        )
        distributions = {p.key: p.distribution for p in parse_space(SPACE)}
        one_trial(study, storage, distributions)  # warm-up, not timed: connects the pool, fills caches
        result.pruned = 0
    except Exception as exc:
        result.errors.append(f"startup: {describe(exc)}")
        ready.abort()  # nobody waits for a worker that cannot start
        results.put(result)
        return

    try:
        ready.wait()
    except threading.BrokenBarrierError:
        result.errors.append("startup: another worker failed to start, or all took too long to connect")
        results.put(result)
        return
    start, cpu_start = time.perf_counter(), time.process_time()
    deadline = start + seconds
    while (began := time.perf_counter()) < deadline:
        try:
            one_trial(study, storage, distributions)
            result.latencies.append(time.perf_counter() - began)
            result.cycles += 1
        except Exception as exc:
            result.errors.append(describe(exc))
            time.sleep(0.1)  # a database that is down fails at once: no hot loop
    result.elapsed, result.cpu = time.perf_counter() - start, time.process_time() - cpu_start
    results.put(result)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def run_level(ctx: Any, url: str, workers: int, seconds: float, reports: int, sampler: str) -> dict[str, Any]:
    """Start `workers` processes on a fresh study, release them together, collect their results."""
    import optuna
    from optuna.trial import TrialState

    from sideformer.config import SearchConfig
    from sideformer.study import create_study, open_storage

    study_name = f"bench-{workers}-workers"
    storage = open_storage(url, SearchConfig())
    create_study(storage, study_name, SearchConfig())
    ready, results = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(i, url, study_name, seconds, reports, sampler, ready, results))
        for i in range(workers)
    ]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    # Broken when a worker could not start (its result says why) or they were all too slow.
    with contextlib.suppress(threading.BrokenBarrierError):
        ready.wait(timeout=STARTUP_TIMEOUT)
    connect_s = time.perf_counter() - started
    collected: list[WorkerResult] = []
    for _ in procs:
        try:
            collected.append(results.get(timeout=STARTUP_TIMEOUT + seconds + 120))
        except queue.Empty:
            collected.append(WorkerResult(-1, errors=["a worker died without a result"]))
            break
    for proc in procs:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()

    latencies = [x for r in collected for x in r.latencies]
    errors = [e for r in collected for e in r.errors]
    cycles = sum(r.cycles for r in collected)
    rates = [r.cycles / r.elapsed for r in collected if r.elapsed > 0]
    # Integrity: every finished round trip (plus one warm-up per worker) is a finished trial in the study.
    finished = len(
        optuna.load_study(study_name=study_name, storage=storage).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
        )
    )
    if not errors and finished != cycles + workers:
        errors.append(f"the study holds {finished} finished trials, expected {cycles + workers}")
    return {
        "workers": workers,
        "round_trips": cycles,
        "pruned": sum(r.pruned for r in collected),
        "round_trips_per_second": sum(rates),
        "per_worker_per_second": statistics.mean(rates) if rates else 0.0,
        "latency_p50_ms": 1000 * percentile(latencies, 0.50),
        "latency_p95_ms": 1000 * percentile(latencies, 0.95),
        "client_cpu_ms_per_round_trip": 1000 * sum(r.cpu for r in collected) / max(1, cycles),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "connect_seconds": connect_s,
        "trials_in_study": finished,
    }


def server_info(server: Any) -> dict[str, str]:
    import psycopg2

    conn = psycopg2.connect(**server.dsn)
    try:
        with conn.cursor() as cur:
            info = {}
            for key, query in (
                ("version", "SHOW server_version"),
                ("max_connections", "SHOW max_connections"),
                ("fsync", "SHOW fsync"),
            ):
                cur.execute(query)
                info[key] = str(cur.fetchone()[0])
            return info
    finally:
        conn.close()


def parse_workers(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list such as 1,8,32, got {text!r}"
        ) from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1, got {text!r}")
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=parse_workers, default=[1, 8, 32], help="concurrency levels (1,8,32)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level (10)")
    parser.add_argument("--reports", type=int, default=3, help="intermediate reports per trial (3)")
    parser.add_argument(
        "--sampler",
        choices=["tpe", "random"],
        default="tpe",
        help="tpe: SideFormer's (its cost grows with the study); random: storage cost alone",
    )
    parser.add_argument(
        "--fsync", action="store_true", help="durable commits (fsync on); the test server's default is off"
    )
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    if args.seconds <= 0 or args.reports < 1:
        parser.error("--seconds must be > 0 and --reports >= 1")

    sys.path.insert(0, str(REPO))  # tests.pg: the throwaway server the integration tests use
    import optuna

    from tests.pg import PostgresServer

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one "A new study created" line per level

    info = machine()
    info["busy_cores_at_start"] = busy = busy_cores()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores ({busy:.1f} busy with other work at start); "
        f"optuna {info['optuna']}, sqlalchemy {info['sqlalchemy']}, psycopg2 {info['psycopg2']}"
    )
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["sideformer.tune", "optuna", "sqlalchemy", "psycopg2"])
    settings = {"fsync": "on", "full_page_writes": "on"} if args.fsync else {}
    levels: list[dict[str, Any]] = []
    with PostgresServer(settings=settings) as server:
        pg = server_info(server)
        print(
            f"postgresql {pg['version']} on 127.0.0.1 (same machine), "
            f"max_connections {pg['max_connections']}, fsync {pg['fsync']}"
        )
        print(
            f"settings: {args.seconds:g} s per level, {args.reports} report(s) + should_prune per trial, "
            f"sampler {args.sampler}, median pruner; workers are processes sharing the machine's "
            f"{info['cores']} cores with the server"
        )
        print(
            "columns: round trips/s over all workers, per worker; one ask->tell cycle's latency (p50, p95) "
            "and the worker's own CPU time per cycle"
        )
        columns = ("workers", "trips/s", "per worker", "p50 ms", "p95 ms", "cpu ms", "errors")
        print("\n" + " ".join(f"{c:>{w}}" for c, w in zip(columns, (7, 9, 11, 8, 8, 7, 7), strict=True)))
        for workers in args.workers:
            level = run_level(ctx, server.url, workers, args.seconds, args.reports, args.sampler)
            levels.append(level)
            total, each = level["round_trips_per_second"], level["per_worker_per_second"]
            print(
                f"{workers:>7} {total:>9.1f} {each:>11.1f} "
                f"{level['latency_p50_ms']:>8.1f} {level['latency_p95_ms']:>8.1f} "
                f"{level['client_cpu_ms_per_round_trip']:>7.1f} {level['errors']:>7}"
                f"   ({level['round_trips']} trips, {level['pruned']} pruned, connected in "
                f"{level['connect_seconds']:.1f} s)"
            )
            for sample in level["error_samples"]:
                print(f"          error: {sample}")

    errors = sum(level["errors"] for level in levels)
    rates = ", ".join(
        f"{lv['workers']} worker{'s' if lv['workers'] > 1 else ''} {lv['round_trips_per_second']:.0f}/s"
        for lv in levels
    )
    print(f"summary: {rates}, {errors} errors")
    if args.json:
        write_json(args.json, args, machine=info, postgresql=pg, levels=levels)
        print(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
