"""What every benchmark prints about the machine it ran on (shared by the scripts in this folder)."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

# The instruction-set extensions that decide CPU training speed (bf16 needs avx512_bf16 or AMX to pay off).
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def busy_cores(window: float = 1.0) -> float:
    """Cores busy over `window` seconds, from /proc/stat: other people's work when none of ours runs."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait (in clock ticks)

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0  # not Linux
    return cores() * (1 - (idle1 - idle0) / max(1, total1 - total0))


def cpu_flags() -> list[str]:
    """The INTERESTING_FLAGS this CPU has, from /proc/cpuinfo."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return [flag for flag in INTERESTING_FLAGS if flag in flags]


def machine_info() -> dict[str, Any]:
    """The machine as JSON: CPU model, cores, flags, memory, torch and its threads, GPU."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "cpu_flags": cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe(info: dict[str, Any] | None = None) -> str:
    """One line: CPU model, cores, flags, memory, torch, GPU (of `info`, else of machine_info())."""
    m = info or machine_info()
    return (
        f"{m['cpu']}, {m['cores']} cores ({' '.join(m['cpu_flags']) or 'no AVX2'}), {m['memory_gib']} GiB, "
        f"torch {m['torch']} ({m['torch_threads']} threads), GPU {m['gpu'] or 'none'}"
    )


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far: VmHWM (ru_maxrss would count a spawning parent's
    memory too, since Linux carries it across fork + exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json(
    path: Path,
    args: object,
    *,
    machine: object = None,
    settings: dict[str, object] | None = None,
    **results: object,
) -> None:
    """Every number of a benchmark run, written atomically: the machine (machine_info() unless given), the
    command-line settings without --json, updated with `settings` (to add or redact values), and `results`."""
    from sideformer.atomic import atomic_write_json

    recorded = {k: v for k, v in vars(args).items() if k != "json"} | (settings or {})
    atomic_write_json(path, {"machine": machine or machine_info(), "settings": recorded, **results})
