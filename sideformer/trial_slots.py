"""`sideformer search --trials-per-gpu N`: N search workers side by side on one GPU.

One b0 trial at batch 8 keeps an H200 busy about a third of the time (BENCHMARKS.md): small trials share
a large GPU better as several processes than one after another. Each slot is a whole `sideformer search`
process of its own, so everything a worker does still holds per slot: it joins the same study, draws
with its own sampler seed (--seed S becomes S + slot), and carries its own SIDEFORMER_WORKER_ID (the
supervisor's, or the host's name and its pid, plus "-slot<k>"), so a trial left RUNNING by a killed slot
is failed and queued again as soon as that slot starts again (tune._reclaim_own_trials), and otherwise by
any worker's heartbeat check. Each slot caps its CUDA allocator at 1/N of the GPU's memory and takes 1/N
of the loader workers and (unless OMP_NUM_THREADS is set) of the torch threads one process would get.

This supervisor never touches the GPU. It restarts a slot that was killed by a signal (the OOM killer, a
stray SIGKILL) up to RESTARTS times, forwards SIGTERM and SIGINT to every slot, and exits with the first
failing slot's code once all have ended.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from sideformer.errors import UserError
from sideformer.launch import _without_flag

log = logging.getLogger(__name__)

SLOT_ENV = "SIDEFORMER_TRIAL_SLOT"
"""Set in each slot's environment: "k/N" (slot k of N sharing this GPU)."""
WORKER_ID_ENV = "SIDEFORMER_WORKER_ID"
RESTARTS = 3
# A slot is one process alone: neither torchrun's nor the Training Operator's variables may reach it
# (several slots would race for one rendezvous port).
_GROUP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def slot() -> tuple[int, int] | None:
    """(k, N) in a slot process, else None."""
    value = os.environ.get(SLOT_ENV)
    if not value:
        return None
    k, _, n = value.partition("/")
    return int(k), int(n)


def slots_sharing() -> int:
    """How many processes share this machine's GPU and cores as slots (1 outside a slot)."""
    current = slot()
    return current[1] if current else 1


def limit_memory(device_type: str) -> None:
    """In a slot on a GPU: this process may allocate at most 1/N of the GPU's memory (an allocation
    beyond it fails with an out-of-memory error in this slot only, instead of starving the others)."""
    current = slot()
    if current is None or device_type != "cuda":
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(1.0 / current[1])


def check_can_share(n: int, nproc_per_node: str | None) -> None:
    """Slots are one process per trial: refuse several processes or nodes per trial with them."""
    several = nproc_per_node not in (None, "1") or os.environ.get("PET_NPROC_PER_NODE", "1") != "1"
    if n > 1 and (several or "LOCAL_RANK" in os.environ or os.environ.get("PET_NNODES", "1") != "1"):
        raise UserError(
            f"search.trials_per_gpu={n} runs one trial per process; it cannot be combined with several "
            f"processes or nodes per trial (--nproc-per-node, tune.nodesPerTrial): set one of them to 1."
        )


@dataclass
class _Slot:
    index: int
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    code: int | None = field(default=None)

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)


def slot_commands(n: int, argv: list[str], seed: int | None) -> list[tuple[list[str], dict[str, str]]]:
    """Each slot's command line and environment."""
    base_argv = _without_flag(_without_flag(argv, "--trials-per-gpu"), "--seed")
    base_argv = [a for a in base_argv if a != "--nproc-per-node" and not a.startswith("--nproc-per-node=")]
    worker = os.environ.get(WORKER_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in _GROUP_ENV and not k.startswith("PET_")}
    out = []
    # torch's CPU threads too: N processes each running one per core wait on each other's OpenMP threads.
    threads = env.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // n))
    for k in range(n):
        seeded = [*base_argv, "--seed", str(seed + k)] if seed is not None else base_argv
        slot_env = {
            **env,
            SLOT_ENV: f"{k}/{n}",
            WORKER_ID_ENV: f"{worker}-slot{k}",
            "OMP_NUM_THREADS": threads,
        }
        out.append(([sys.executable, "-m", "sideformer", *seeded], slot_env))
    return out


def run_side_by_side(n: int, argv: list[str], seed: int | None) -> int:
    """Run N slots of this `sideformer search` command until all have ended; their worst exit code."""
    slots = [_Slot(k, command, env) for k, (command, env) in enumerate(slot_commands(n, argv, seed))]
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for s in slots:
            if s.process is not None and s.process.poll() is None:
                s.process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("running %d search workers side by side on this GPU", n)
        for s in slots:
            s.start()
        while any(s.code is None for s in slots):
            time.sleep(0.5)
            for s in slots:
                _reap(s, restart=not stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping:
        return 128 + stopping[0]
    return next((s.code for s in slots if s.code), 0) or 0


def _reap(s: _Slot, restart: bool) -> None:
    assert s.process is not None
    code = s.process.poll()
    if s.code is not None or code is None:
        return
    if code < 0 and restart and s.restarts < RESTARTS:  # killed by a signal: the slot starts again
        s.restarts += 1
        log.warning(
            "search worker slot %d was killed by signal %d; starting it again (%d of %d)",
            s.index,
            -code,
            s.restarts,
            RESTARTS,
        )
        s.start()
        return
    s.code = code if code >= 0 else 128 - code
