"""What every benchmark prints about the machine it ran on (shared by the scripts in this folder)."""

from __future__ import annotations

import os
import time
from pathlib import Path


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
