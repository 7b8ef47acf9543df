"""`--nproc-per-node`: re-run the same command under torchrun, so one command uses every local GPU."""

from __future__ import annotations

import os
import sys

from sideformer.errors import UserError


def resolve_nproc(value: str) -> int:
    """'auto': one process per GPU, or 1 without GPUs (torchrun's 'auto' starts one per CPU core)."""
    if value == "auto":
        import torch

        return max(1, torch.cuda.device_count())
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"--nproc-per-node {value!r}: expected a positive integer or 'auto'.")
    return n


def relaunch_under_torchrun(value: str, argv: list[str]) -> None:
    """Replace this process with torchrun running `argv` minus --nproc-per-node; return if not needed."""
    nproc = resolve_nproc(value)
    if "LOCAL_RANK" in os.environ or nproc == 1:
        return  # already a torchrun child, or one process is all that was asked for
    args = _without_flag(argv, "--nproc-per-node")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "sideformer",
        *args,
    ]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def _without_flag(argv: list[str], flag: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out
