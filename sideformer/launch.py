"""`--nproc-per-node`: re-run the same command under torchrun, so one command uses every local GPU."""

from __future__ import annotations

import os
import sys

from sideformer.errors import UserError

ELASTIC_ENV = "SIDEFORMER_ELASTIC_MAX_RESTARTS"


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
    pods; the process count is --nproc-per-node or else the operator's PET_NPROC_PER_NODE. With several
    pods, this process stays as torchrun's supervisor instead (`rejoin`), and SIDEFORMER_ELASTIC_MAX_RESTARTS
    turns a static rendezvous into an elastic one (`elastic_rendezvous`). Elsewhere, torchrun runs
    standalone on this machine, and only when more than one process is asked for.
    """
    if "LOCAL_RANK" in os.environ:
        return  # already a torchrun child
    operator = "PET_NNODES" in os.environ
    if value is None and not operator:
        return
    nproc = resolve_nproc(value or os.environ.get("PET_NPROC_PER_NODE", "1"))
    if nproc == 1 and not operator:
        return
    rendezvous = elastic_rendezvous() if operator else ["--standalone"]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={nproc}",
        "-m",
        "sideformer",
        *_without_flag(argv, "--nproc-per-node"),
    ]
    if os.environ.get("PET_RDZV_BACKEND", "static") != "static" or "--rdzv-backend=c10d" in rendezvous:
        # An elastic rendezvous: by default torchrun's agents share their rendezvous store with the
        # workers, and an agent that stays rank 0 across a re-rendezvous never publishes the workers'
        # store address for the new round, so a restarted peer waits for it until the timeout. Without
        # sharing, rank 0 publishes it in every round.
        os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    sys.stdout.flush()
    if operator and _several_nodes():
        # Several pods: stay as this pod's supervisor, to rejoin the group when a peer pod restarts.
        from sideformer.rejoin import rejoin_limit, supervise

        raise SystemExit(supervise(command, rejoin_limit()))
    os.execv(sys.executable, command)


def elastic_rendezvous() -> list[str]:
    """torchrun's elastic agents where the platform gives a static rendezvous but asks for elastic
    restarts through SIDEFORMER_ELASTIC_MAX_RESTARTS (Trainer v2.3's torch plugin has no elastic policy):
    a c10d rendezvous hosted by node 0 at the master address. Then, as under a PyTorchJob's
    elasticPolicy, the agents restart their workers when a restarted pod rejoins, instead of waiting for
    the backend (NCCL) to notice that a peer died."""
    restarts = os.environ.get(ELASTIC_ENV)
    if restarts is None or os.environ.get("PET_RDZV_BACKEND", "static") != "static" or not _several_nodes():
        return []
    if not restarts.isdigit():
        raise UserError(f"{ELASTIC_ENV}={restarts!r}: expected a whole number of restarts (>= 0).")
    endpoint = f"{os.environ['PET_MASTER_ADDR']}:{os.environ['PET_MASTER_PORT']}"
    is_host = os.environ.get("PET_NODE_RANK", "0") == "0"
    return [
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={os.environ['PET_MASTER_ADDR']}",  # the same on every node of a job, unique per job
        f"--rdzv-conf=is_host={str(is_host).lower()}",
        f"--max-restarts={restarts}",
    ]


def _several_nodes() -> bool:
    """The operator's PET_NNODES ("N", or "min:max" under an elastic policy) allows more than one pod."""
    return os.environ.get("PET_NNODES", "1").split(":")[-1] != "1"


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
