"""Validation: loss and confusion-matrix metrics over one split, sharded across ranks without padding.

Each rank evaluates every world_size-th sample and the sums are all-reduced, so the numbers equal a
single-process evaluation of the same weights (DistributedSampler would repeat samples to even out).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from sideformer.data.dataset import SegmentationDataset, pad_collate, worker_init
from sideformer.data.metadata import DatasetMeta
from sideformer.data.transforms import EvalTransform
from sideformer.distributed import DistEnv, all_reduce_sum
from sideformer.metrics import ConfusionMatrix, SegMetrics
from sideformer.model import training_loss


@dataclass(frozen=True)
class EvalResult:
    loss: float
    metrics: SegMetrics
    confusion: torch.Tensor | None = None
    """The summed confusion matrix (rows labels, columns predictions), on the CPU."""


BatchHook = Callable[[torch.Tensor, torch.Tensor], None]
"""Called with each batch's (predictions, labels), both N x H x W on the device."""


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every sample exactly once across ranks."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(
    meta: DatasetMeta, split: str, base_size: int, batch_size: int, num_workers: int, env: DistEnv
) -> DataLoader:
    dataset = SegmentationDataset(meta.split(split), meta.palette, EvalTransform(base_size))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), env.rank, env.world_size),
        num_workers=num_workers,
        collate_fn=pad_collate(meta.ignore_index),
        pin_memory=env.device.type == "cuda",
        worker_init_fn=worker_init,
        persistent_workers=num_workers > 0,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    ignore_index: int,
    env: DistEnv,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    on_batch: BatchHook | None = None,
) -> EvalResult:
    """`model` is the bare module (not the DDP wrapper): ranks may hold different numbers of batches.
    `loader` is an `eval_loader` (or one wrapped in a progress bar)."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index, env.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    pixel_count = torch.zeros((), dtype=torch.float64, device=env.device)
    for images, masks in loader:
        images = images.to(env.device, non_blocking=True)
        masks = masks.to(env.device, non_blocking=True).long()
        batch_loss, logits = training_loss(
            model, images, masks, ignore_index, autocast_dtype, channels_last, reduction="sum"
        )
        loss_sum += batch_loss
        pixel_count += (masks != ignore_index).sum()
        predictions = logits.argmax(1)
        confusion.update(predictions, masks)
        if on_batch is not None:
            on_batch(predictions, masks)
    all_reduce_sum(confusion.matrix, env)
    all_reduce_sum(loss_sum, env)
    all_reduce_sum(pixel_count, env)
    model.train(was_training)
    loss = float(loss_sum / pixel_count) if pixel_count > 0 else math.nan
    return EvalResult(loss=loss, metrics=confusion.compute(), confusion=confusion.matrix.cpu())
