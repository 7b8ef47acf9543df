"""Process-group setup from the standard environment (torchrun, the Kubeflow Training Operator).

Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; NCCL on GPU, gloo on CPU. Device
visibility and NCCL tuning stay environment variables: nothing here overrides them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from sideformer.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def environment(device_preference: str = "auto") -> DistEnv:
    """This process's rank, world size and device, from the environment; joins nothing."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
    )


def single_process(device_preference: str = "auto") -> DistEnv:
    """The environment of a process that runs alone; under torchrun, use `process_group` instead."""
    env = environment(device_preference)
    if env.is_distributed:
        raise RuntimeError(
            f"WORLD_SIZE={env.world_size}: enter `distributed.process_group()` and pass its environment"
        )
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    return env


@contextmanager
def process_group(device_preference: str = "auto") -> Iterator[DistEnv]:
    """Join the process group when WORLD_SIZE > 1 and pick this process's device; leave the group on exit.

    Entered once per command (the CLI's train, search, final, tune): everything below takes the
    environment it yields and never sets up or tears down a group itself."""
    env = environment(device_preference)
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    joined = env.is_distributed and not dist.is_initialized()
    if joined:
        timeout = timedelta(seconds=int(os.environ.get("SIDEFORMER_DIST_TIMEOUT", "1800")))
        dist.init_process_group(
            backend="nccl" if env.device.type == "cuda" else "gloo",
            timeout=timeout,
            device_id=env.device if env.device.type == "cuda" else None,
        )
    try:
        yield env
    finally:
        if joined and dist.is_initialized():
            dist.destroy_process_group()


def lost_a_peer(exc: BaseException) -> bool:
    """A collective failed because another process of the group went away: gloo raises a RuntimeError
    from its transport ("Connection closed by peer"), NCCL and the stores raise DistError."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or "gloo/transport" in text or "closed by peer" in text


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """`obj` from every rank, in rank order, on every rank."""
    if not env.is_distributed:
        return [obj]
    box: list[Any] = [None] * env.world_size
    dist.all_gather_object(box, obj)
    return box


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank (checkpoints, stop decisions), so only rank 0 reads the filesystem."""
    if not env.is_distributed:
        return obj
    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0, device=env.device if env.device.type == "cuda" else None)
    return box[0]


def on_main(env: DistEnv, fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 and give every rank its result, or the same UserError on every rank."""
    result: Any = None
    error: str | None = None
    if env.is_main:
        try:
            result = fn()
        except UserError as exc:
            error = str(exc)
    result, error = broadcast_object((result, error), env)
    if error is not None:
        raise UserError(error)
    return result


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def sync_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Copy rank 0's buffers (BatchNorm running stats) to every rank.

    DDP broadcasts them before each forward, but the last training step updates them locally: without
    this, ranks would validate slightly different models.
    """
    if env.is_distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
