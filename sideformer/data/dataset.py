"""The torch Dataset: decoded, augmented uint8 tensors. Normalisation happens on the device, where it is
cheap, so workers ship 1 byte per pixel instead of 4."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from sideformer.data.device_augment import EncodedImage, encode_sample
from sideformer.data.images import read_mask
from sideformer.data.metadata import Sample
from sideformer.data.transforms import EvalTransform, TrainTransform

Transform = TrainTransform | EvalTransform


class SegmentationDataset(Dataset):
    def __init__(
        self, samples: Sequence[Sample], palette: Sequence[Sequence[int]] | None, transform: Transform
    ) -> None:
        self.samples = list(samples)
        self.palette = palette
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`item`: an index, or (index, augmentation seed) from an EpochSampler."""
        sample, rng = self._sample(item)
        mask = read_mask(sample.mask, self.palette)
        image, mask = self.transform.from_file(sample.image, mask, rng)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)

    def _sample(self, item: int | tuple[int, int]) -> tuple[Sample, np.random.Generator]:
        if isinstance(item, tuple):
            index, seed = item
        else:  # torch seeds each loader worker differently every epoch: draw the seed from it
            index, seed = item, int(torch.randint(0, 2**62, ()).item())
        return self.samples[index], np.random.default_rng(seed)


class EncodedDataset(SegmentationDataset):
    """Training samples for data.decode=device: the image's bytes and its augmentation draws, decoded and
    augmented later on the training device (sideformer.data.device_augment); the mask finished here."""

    transform: TrainTransform

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[EncodedImage, torch.Tensor]:  # type: ignore[override]
        sample, rng = self._sample(item)
        encoded, mask = encode_sample(sample.image, read_mask(sample.mask, self.palette), self.transform, rng)
        return encoded, torch.from_numpy(mask)


class EpochSampler(Sampler[tuple[int, int]]):
    """One epoch's training order as (sample index, augmentation seed) pairs.

    The order is a permutation drawn from (seed, epoch), split across ranks as DistributedSampler splits
    it; each sample's augmentation seed is a function of (seed, epoch, index). So an epoch is the same
    whatever the loader's worker count, and a run resumed inside an epoch (`skip`: samples this rank has
    already trained on) sees exactly the batches and augmentations the interrupted run would have."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.order = DistributedSampler(range(size), world_size, rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.order.set_epoch(self.epoch)
        for position, index in enumerate(self.order):
            if position >= self.skip:
                seed = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
                yield index, int(seed)

    def __len__(self) -> int:
        return len(self.order) - self.skip


def pad_collate(
    ignore_index: int,
) -> Callable[[list[tuple[torch.Tensor, torch.Tensor]]], tuple[torch.Tensor, ...]]:
    """Stack a batch, padding images with 0 and masks with `ignore_index` up to the largest size in it."""

    def collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        height = max(mask.shape[0] for _, mask in batch)
        width = max(mask.shape[1] for _, mask in batch)
        images = torch.zeros(len(batch), 3, height, width, dtype=torch.uint8)
        masks = torch.full((len(batch), height, width), ignore_index, dtype=torch.uint8)
        for i, (image, mask) in enumerate(batch):
            images[i, :, : image.shape[1], : image.shape[2]] = image
            masks[i, : mask.shape[0], : mask.shape[1]] = mask
        return images, masks

    return collate


def default_workers(local_processes: int = 1) -> int:
    """Loader workers per training process when data.num_workers is null: half of this machine's cores,
    shared among its training processes, between 2 and 16. The other half is for the training processes,
    which launch the GPU's kernels: on 16 cores feeding one H200, 8 workers delivered 115 img/s, 15
    workers 99 and 2 workers 48 (BENCHMARKS.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(2, min(16, cores // (2 * max(1, local_processes))))


def worker_init(_: int) -> None:
    # Each loader worker is one process; OpenCV's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)
