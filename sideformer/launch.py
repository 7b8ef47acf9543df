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


def relaunch_under_torchrun(value: str | None, argv: list[str]) -> None:
    """Replace this process with torchrun running `argv` minus --nproc-per-node; return if not needed.

    Under the Kubeflow Training Operator (PET_NNODES set), every pod goes through torchrun, which reads
    the operator's PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT to join the other
    pods; the process count is --nproc-per-node or else the operator's PET_NPROC_PER_NODE. Elsewhere,
    torchrun runs standalone on this machine, and only when more than one process is asked for.
    """
    if "LOCAL_RANK" in os.environ:
        return  # already a torchrun child
    operator = "PET_NNODES" in os.environ
    if value is None and not operator:
        return
    nproc = resolve_nproc(value or os.environ.get("PET_NPROC_PER_NODE", "1"))
    if nproc == 1 and not operator:
        return
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *([] if operator else ["--standalone"]),
        f"--nproc-per-node={nproc}",
        "-m",
        "sideformer",
        *_without_flag(argv, "--nproc-per-node"),
    ]
    if os.environ.get("PET_RDZV_BACKEND", "static") != "static":
        # An elastic rendezvous (the PyTorchJob's elasticPolicy): by default torchrun's agents share their
        # rendezvous store with the workers, and an agent that stays rank 0 across a re-rendezvous never
        # publishes the workers' store address for the new round, so a restarted peer waits for it until
        # the timeout. Without sharing, rank 0 publishes it in every round.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
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
