"""The data side of training: the dataset checked on rank 0, the training subset (and its pre-resized
copies), the training loader (augmented, shuffled, sharded) and the validation loader."""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sideformer import distributed
from sideformer.config import Config
from sideformer.data.check import check_dataset, format_check
from sideformer.data.dataset import (
    EncodedDataset,
    EpochSampler,
    SegmentationDataset,
    default_workers,
    pad_collate,
    worker_init,
)
from sideformer.data.device_augment import collate_encoded, gpu_decoder_problem
from sideformer.data.metadata import DatasetMeta, Sample, load_metadata
from sideformer.data.preresize import default_cache_dir, preresize_samples
from sideformer.data.transforms import TrainTransform
from sideformer.distributed import DistEnv
from sideformer.errors import UserError
from sideformer.trial_slots import slots_sharing
from sideformer.validation import eval_loader

log = logging.getLogger(__name__)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    meta: DatasetMeta
    base_size: int
    """Short side validation and test images are resized to."""


def build_loaders(config: Config, meta: DatasetMeta, env: DistEnv) -> Loaders:
    """The training loader (augmented, shuffled, sharded by DistributedSampler) and the validation one."""
    samples = _train_subset(meta, config)
    if config.data.preresize:
        samples = _preresized(samples, meta, config, env)
    base_size = config.data.base_size or min(config.data.crop_size)
    val = eval_loader(
        meta,
        config.data.eval_split,
        base_size,
        config.train.eval_batch_size or config.train.batch_size,
        loader_workers(config),
        env,
    )
    return Loaders(train_loader(samples, meta, config, env), val, meta, base_size)


def loader_workers(config: Config) -> int:
    """data.num_workers, or when null the machine's share for each of its training processes."""
    if config.data.num_workers is not None:
        return config.data.num_workers
    # Search slots sharing this GPU (trial_slots) share its machine's cores as local processes do.
    return default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * slots_sharing())


def decode_on_device(config: Config, env: DistEnv) -> bool:
    """data.decode resolved: True decodes and augments training images on the training device."""
    setting = config.data.decode
    problem = None if setting != "auto" else gpu_decoder_problem(env.device)
    on_device = setting == "device" or (setting == "auto" and problem is None)
    if env.is_main and (on_device or env.device.type == "cuda"):
        decoder = "nvJPEG" if env.device.type == "cuda" else "OpenCV in this process"
        where = f"on {env.device.type} ({decoder}, torch ops)"
        where = where if on_device else "in the loader workers (OpenCV)"
        log.info("training images decoded and augmented %s%s", where, f": {problem}" if problem else "")
    return on_device


def train_loader(samples: list[Sample], meta: DatasetMeta, config: Config, env: DistEnv) -> DataLoader:
    """`samples` augmented by TrainTransform, shuffled with train.seed, in batches of train.batch_size;
    decoded and augmented in the loader's workers, or (data.decode) on the training device."""
    data = config.data
    workers = loader_workers(config)
    crop_size = (data.crop_size[0], data.crop_size[1])
    transform = TrainTransform(
        crop_size=crop_size,
        base_size=data.base_size or min(data.crop_size),
        scale_range=(data.scale_range[0], data.scale_range[1]),
        hflip=data.hflip,
        color_jitter=data.color_jitter,
        ignore_index=meta.ignore_index,
    )
    on_device = decode_on_device(config, env)
    dataset = (EncodedDataset if on_device else SegmentationDataset)(samples, meta.palette, transform)
    return DataLoader(
        dataset,
        batch_size=config.train.batch_size,
        sampler=EpochSampler(len(dataset), config.train.seed, env.rank, env.world_size),
        # Its own generator: starting an epoch's iterator then leaves the global RNG (dropout) alone,
        # so a run resumed inside an epoch draws the same random numbers as one that was never stopped.
        generator=torch.Generator().manual_seed(config.train.seed),
        num_workers=workers,
        collate_fn=collate_encoded(crop_size) if on_device else pad_collate(meta.ignore_index),
        pin_memory=env.device.type == "cuda",
        drop_last=len(dataset) > config.train.batch_size * env.world_size,  # no size-1 BatchNorm batches
        worker_init_fn=worker_init,
        persistent_workers=workers > 0,
    )


def load_checked_dataset(config: Config) -> DatasetMeta:
    if not config.data.path:
        raise UserError("no dataset given: pass --data PATH (a folder with metadata.json).")
    meta = load_metadata(config.data.path, classes=config.data.classes)
    if config.data.check:
        required = tuple(dict.fromkeys([*config.data.train_splits, config.data.eval_split]))
        problems = check_dataset(meta, required_splits=required)
        if not problems.ok:
            raise UserError(
                "the dataset has problems; fix them and run `sideformer check-data` again:\n"
                + format_check(meta, problems)
            )
    else:
        for split in (*config.data.train_splits, config.data.eval_split):
            if not meta.split(split):
                raise UserError(f"{meta.root / 'metadata.json'}: split '{split}' is empty.")
    return meta


def _train_subset(meta: DatasetMeta, config: Config) -> list[Sample]:
    samples = [s for split in config.data.train_splits for s in meta.split(split)]
    if config.data.train_fraction >= 1.0:
        return samples
    keep = max(1, round(len(samples) * config.data.train_fraction))
    # A fixed subset for a given seed, so every trial of a search sees the same images.
    indices = sorted(random.Random(config.train.seed).sample(range(len(samples)), keep))
    return [samples[i] for i in indices]


def _preresized(samples: list[Sample], meta: DatasetMeta, config: Config, env: DistEnv) -> list[Sample]:
    """The training samples' resized copies (data.preresize): rank 0 writes the missing ones while the
    other ranks wait, then every rank checks it can read them all."""
    short = config.data.preresize
    assert short is not None
    cache_dir = Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir(meta.root)
    needed = round((config.data.base_size or min(config.data.crop_size)) * config.data.scale_range[1])
    if env.is_main and short < needed:
        log.warning(
            "data.preresize=%d is below base_size x the largest scale (%d): large-scale crops will be "
            "upsampled from the smaller copies",
            short,
            needed,
        )
    copies = distributed.on_main(env, lambda: preresize_samples(samples, short, cache_dir, meta.palette))
    missing = torch.tensor([sum(not c.image.is_file() for c in copies)], device=env.device)
    if int(distributed.all_reduce_sum(missing, env)) > 0:
        raise UserError(
            f"data.preresize: {int(missing)} resized copies written by rank 0 under {cache_dir} are not "
            f"visible to every process; set data.cache_dir to a folder all nodes share."
        )
    return copies
