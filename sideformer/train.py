"""The training loop: `train(config, report=...)` -> TrainResult.

One process or many (torchrun / the Training Operator set the environment). Rank 0 alone touches the
output folder; whatever it reads (checkpoints, data check results) it broadcasts to the other ranks.
Output layout under `config.output`:

    config.yaml              the resolved configuration
    train_log.jsonl          one JSON object per epoch
    temp_ckpts/last.pth      everything needed to resume (removed at the end unless kept)
    temp_ckpts/best.pth      the best weights so far
    final_ckpts/best_model.pth   plain state_dict of the best epoch
    final_ckpts/model/       save_pretrained() of the best epoch, with id2label
    metrics.json             best epoch, its metrics and per-class IoU

`report(epoch_metrics) -> bool` is called on rank 0 after every validation; True stops the run
(hyperparameter search prunes through it). Training itself knows nothing of Optuna.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm.auto import tqdm
from transformers import get_polynomial_decay_schedule_with_warmup

from sideformer import distributed
from sideformer.atomic import atomic_write_json, atomic_write_text
from sideformer.checkpoint import load_checkpoint, save_checkpoint
from sideformer.config import Config
from sideformer.data.check import check_dataset, format_report
from sideformer.data.dataset import SegmentationDataset, pad_collate, worker_init
from sideformer.data.metadata import DatasetMeta, Sample, load_metadata
from sideformer.data.preresize import default_cache_dir, preresize_samples
from sideformer.data.transforms import TrainTransform
from sideformer.distributed import DistEnv
from sideformer.errors import UserError
from sideformer.model import autocast_dtype as model_autocast_dtype
from sideformer.model import build_model, normalize, upsample_logits
from sideformer.tracking import JsonLinesLog, WandbRun
from sideformer.trained_model import save_trained_model
from sideformer.validation import EvalResult, eval_loader, evaluate

log = logging.getLogger(__name__)

LAST, BEST = "temp_ckpts/last.pth", "temp_ckpts/best.pth"


@dataclass
class EpochMetrics:
    epoch: int  # 1-based: the number of epochs completed
    train_loss: float
    val_loss: float
    val_miou: float
    val_pixel_accuracy: float
    val_per_class_iou: dict[str, float]
    lr: float
    images_per_second: float
    """Training images per second over all ranks, data loading included, validation excluded."""
    seconds: float
    """Wall time of the epoch, validation included."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    output: Path
    best: EpochMetrics
    history: list[EpochMetrics] = field(default_factory=list)
    stop_reason: Literal["completed", "early_stopped", "reported"] = "completed"
    model: torch.nn.Module | None = None
    """The module as training left it (last epoch; identical on every rank). The best weights are on disk."""


Report = Callable[[EpochMetrics], bool]


class EarlyStopping:
    """Counts epochs without an improvement of at least `min_delta`; patience 0 never stops."""

    def __init__(self, monitor: str, patience: int, min_delta: float) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.sign = 1.0 if monitor == "val_miou" else -1.0  # maximise mIoU, minimise loss
        self.best = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, metrics: EpochMetrics) -> bool:
        """Record an epoch; True when it is the best so far."""
        value = self.sign * getattr(metrics, self.monitor)
        if value > self.best + self.min_delta or self.best_epoch == 0:
            self.best, self.best_epoch, self.bad_epochs = value, metrics.epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


def train(
    config: Config, report: Report | None = None, resume: bool = False, env: DistEnv | None = None
) -> TrainResult:
    """Train, validate every epoch, keep the best weights. Joins (and leaves) the process group itself
    unless the caller passes an `env` it set up."""
    own_group = env is None
    env = env or distributed.setup(config.train.device)
    try:
        return _train(config, env, report, resume)
    finally:
        if own_group:
            distributed.cleanup()


def _train(config: Config, env: DistEnv, report: Report | None, resume: bool) -> TrainResult:
    output = Path(config.output)
    torch.manual_seed(config.train.seed)
    random.seed(config.train.seed)
    np.random.seed(config.train.seed)

    # --- data: checked on rank 0 before anything else starts -------------------------------------
    meta = distributed.on_main(env, lambda: _load_checked_dataset(config))
    base_size = config.data.base_size or min(config.data.crop_size)
    train_samples = _train_subset(meta, config)
    if config.data.preresize:
        train_samples = _preresized(train_samples, meta, config, env)
    train_set = SegmentationDataset(
        train_samples,
        meta.palette,
        TrainTransform(
            crop_size=(config.data.crop_size[0], config.data.crop_size[1]),
            base_size=base_size,
            scale_range=(config.data.scale_range[0], config.data.scale_range[1]),
            hflip=config.data.hflip,
            color_jitter=config.data.color_jitter,
            ignore_index=meta.ignore_index,
        ),
    )
    sampler = (
        DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=config.train.seed)
        if env.is_distributed
        else RandomSampler(train_set, generator=torch.Generator().manual_seed(config.train.seed))
    )
    train_loader = DataLoader(
        train_set,
        batch_size=config.train.batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=pad_collate(meta.ignore_index),
        pin_memory=env.device.type == "cuda",
        drop_last=len(train_set) > config.train.batch_size * env.world_size,  # no size-1 BatchNorm batches
        worker_init_fn=worker_init,
        persistent_workers=config.data.num_workers > 0,
    )
    val_loader = eval_loader(
        meta,
        config.data.eval_split,
        base_size,
        config.train.eval_batch_size or config.train.batch_size,
        config.data.num_workers,
        env,
    )

    # --- model, optimizer, schedule -------------------------------------------------------------------
    model = build_model(config.model, meta.id2label, meta.ignore_index).to(env.device)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if env.is_distributed and env.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the decode head's BatchNorm
    # The CPU depthwise-conv backward returns channels-last grads for the MixFFN weights; DDP copies
    # them into its buckets and warns every step. The copy is a few KB per block: not worth the noise.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp_model = (
        DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        if env.is_distributed
        else model
    )
    # fused AdamW: one kernel over all parameters; on CPU too (about 4x cheaper than the per-tensor loop).
    optimizer = _build_optimizer(
        model, config, fused=config.optim.fused and env.device.type in ("cuda", "cpu")
    )
    # Compiled for the training forward only: validation runs the bare module at other image sizes.
    forward = torch.compile(ddp_model) if config.train.compile else ddp_model
    steps_per_epoch = math.ceil(len(train_loader) / config.train.grad_accum)
    total_steps = steps_per_epoch * config.train.epochs
    warmup_steps = min(config.optim.warmup_steps, total_steps - 1)  # the schedule needs one decay step
    if warmup_steps < config.optim.warmup_steps and env.is_main:
        log.warning(
            "optim.warmup_steps=%d is longer than the run (%d optimizer steps); warming up for %d instead",
            config.optim.warmup_steps,
            total_steps,
            warmup_steps,
        )
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, warmup_steps, total_steps, lr_end=0.0, power=config.optim.poly_power
    )
    autocast_dtype = model_autocast_dtype(config.train.precision, env.device)
    if autocast_dtype is not None and env.device.type == "cpu" and env.is_main and not _native_cpu_bf16():
        log.warning(
            "train.precision=bf16 on a CPU without native bf16 (AVX512-BF16/AMX): expect a slower step than "
            "fp32 (about 4x for b0 on an AVX2 CPU); train.precision=auto keeps CPUs at fp32"
        )
    early = EarlyStopping(config.early_stop.monitor, config.early_stop.patience, config.early_stop.min_delta)

    # --- resume ---------------------------------------------------------------------------------------
    history: list[EpochMetrics] = []
    checkpoint = distributed.on_main(env, lambda: _resume_state(output, resume))
    if checkpoint == "finished":
        return _finished_result(output)
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
        except RuntimeError:
            raise UserError(
                f"{output / LAST} was saved by a different model (was model.* or the dataset's classes "
                f"changed?); resume with the run's own config.yaml, or choose another --output."
            ) from None
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        early.load_state_dict(checkpoint["early_stopping"])
        history = [EpochMetrics(**h) for h in checkpoint["history"]]
        torch.set_rng_state(checkpoint["rng"])
        log.info("resuming from %s after epoch %d", output / LAST, len(history))
    start_epoch = len(history)

    jsonl = JsonLinesLog(output / "train_log.jsonl")
    wandb = WandbRun(config.wandb, config.to_dict(), output) if env.is_main else None
    if env.is_main:
        atomic_write_text(output / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        jsonl.rewrite([h.to_dict() for h in history])
        log.info(
            "training %s on %d image(s), validating on %d, %d process(es) on %s, %s%s, %d step(s)/epoch",
            config.model.pretrained or f"SegFormer-{config.model.variant} (random init)",
            len(train_set),
            len(meta.split(config.data.eval_split)),
            env.world_size,
            env.device.type,
            "bf16 autocast" if autocast_dtype else "fp32",
            ", torch.compile" if config.train.compile else "",
            steps_per_epoch,
        )

    # --- the loop -------------------------------------------------------------------------------------
    stop_reason: Literal["completed", "early_stopped", "reported"] = "completed"
    for epoch in range(start_epoch, config.train.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        ddp_model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=env.device)
        images_seen = 0
        batches = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{config.train.epochs}",
            disable=not env.is_main or None,  # None: only on a terminal
            leave=False,
            dynamic_ncols=True,
        )
        for step, (images, masks) in enumerate(batches):
            images = normalize(images.to(env.device, non_blocking=True))
            if config.model.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(env.device, non_blocking=True).long()
            is_update_step = (step + 1) % config.train.grad_accum == 0 or step + 1 == len(train_loader)
            # Gradients are all-reduced only on the micro-batch that updates the weights.
            sync = nullcontext() if is_update_step or not env.is_distributed else ddp_model.no_sync()
            with sync:
                with torch.autocast(
                    env.device.type, dtype=autocast_dtype or torch.float32, enabled=bool(autocast_dtype)
                ):
                    logits = forward(pixel_values=images).logits
                loss = torch.nn.functional.cross_entropy(
                    upsample_logits(logits.float(), masks.shape[-2:]), masks, ignore_index=meta.ignore_index
                )
                (loss / config.train.grad_accum).backward()
            if is_update_step:
                if config.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            images_seen += images.shape[0]
            if env.is_main and (step + 1) % config.train.log_every == 0:
                batches.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")

        if env.device.type == "cuda":
            torch.cuda.synchronize()  # count queued kernels in this epoch's time
        train_seconds = time.perf_counter() - started
        distributed.sync_buffers(model, env)  # BatchNorm running stats: validate what rank 0 will save
        val = evaluate(
            model,
            val_loader,
            meta.num_classes,
            meta.ignore_index,
            env,
            autocast_dtype,
            config.model.channels_last,
        )
        stats = distributed.all_reduce_sum(
            torch.tensor(
                [float(loss_sum), len(train_loader), images_seen], device=env.device, dtype=torch.float64
            ),
            env,
        )
        seconds = time.perf_counter() - started
        metrics = EpochMetrics(
            epoch=epoch + 1,
            train_loss=float(stats[0] / stats[1]),
            val_loss=val.loss,
            val_miou=val.metrics.miou,
            val_pixel_accuracy=val.metrics.pixel_accuracy,
            val_per_class_iou=dict(zip(meta.classes, val.metrics.per_class_iou, strict=True)),
            lr=scheduler.get_last_lr()[0],
            images_per_second=float(stats[2]) / train_seconds,
            seconds=seconds,
        )
        history.append(metrics)
        is_best = early.step(metrics)  # same all-reduced numbers on every rank -> same decision
        if config.checkpoint.select == "last":
            is_best = True

        if env.is_main:
            if is_best:
                save_checkpoint(output / BEST, {"model": model.state_dict(), "epoch": metrics.epoch})
            save_checkpoint(
                output / LAST,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "early_stopping": early.state_dict(),
                    "history": [h.to_dict() for h in history],
                    "rng": torch.get_rng_state(),
                },
            )
            jsonl.append(metrics.to_dict())
            assert wandb is not None
            wandb.log(
                {k: v for k, v in metrics.to_dict().items() if k != "val_per_class_iou"}
                | {f"val_iou/{k}": v for k, v in metrics.val_per_class_iou.items()},
                step=metrics.epoch,
            )
            log.info(_epoch_line(metrics, config.train.epochs, is_best))

        stop_requested = bool(report(metrics)) if (report is not None and env.is_main) else False
        if distributed.broadcast_object(stop_requested, env):
            stop_reason = "reported"
            break
        if early.should_stop:
            stop_reason = "early_stopped"
            if env.is_main:
                log.info("early stopping: %s has not improved for %d epoch(s)", early.monitor, early.patience)
            break

    # --- final outputs --------------------------------------------------------------------------------
    best = history[-1] if config.checkpoint.select == "last" else history[early.best_epoch - 1]
    if env.is_main:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(load_checkpoint(output / BEST)["model"])
        test = None
        if meta.split("test") and config.data.eval_split != "test":
            # Rank 0 alone: the other ranks only wait at the barrier below.
            alone = DistEnv(rank=0, world_size=1, local_rank=env.local_rank, device=env.device)
            loader = eval_loader(meta, "test", base_size, val_loader.batch_size or 1, 0, alone)
            test = evaluate(best_model, loader, meta.num_classes, meta.ignore_index, alone, autocast_dtype)
            log.info(
                "test split: mIoU %.4f, pixel accuracy %.4f", test.metrics.miou, test.metrics.pixel_accuracy
            )
        _write_final_outputs(output, best_model, meta, best, history, stop_reason, config, test)
        assert wandb is not None
        wandb.summary(
            {"best_epoch": best.epoch, "best_val_miou": best.val_miou, "best_val_loss": best.val_loss}
        )
        wandb.finish()
    distributed.barrier(env)
    return TrainResult(output=output, best=best, history=history, stop_reason=stop_reason, model=model)


def _load_checked_dataset(config: Config) -> DatasetMeta:
    if not config.data.path:
        raise UserError("no dataset given: pass --data PATH (a folder with metadata.json).")
    meta = load_metadata(config.data.path, classes=config.data.classes)
    if config.data.check:
        required = tuple(dict.fromkeys([*config.data.train_splits, config.data.eval_split]))
        report = check_dataset(meta, required_splits=required)
        if not report.ok:
            raise UserError(
                "the dataset has problems; fix them and run `sideformer check-data` again:\n"
                + format_report(meta, report)
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


def _native_cpu_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers: assume the best rather than warn wrongly
        return True


def _build_optimizer(model: torch.nn.Module, config: Config, fused: bool) -> torch.optim.AdamW:
    """AdamW; the decode head learns head_lr_mult times faster; norms and biases get no weight decay."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("decode_head."), param.ndim <= 1), []).append(param)
    o = config.optim
    param_groups = [
        {
            "params": params,
            "lr": o.lr * (o.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else o.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), fused=fused or None)


def _resume_state(output: Path, resume: bool) -> dict[str, Any] | str | None:
    """The checkpoint to continue from, "finished" for a completed run, or None for a fresh start."""
    last = output / LAST
    if not resume:
        if last.exists():
            raise UserError(
                f"{output} holds an unfinished run ({last}); pass --resume to continue it, "
                f"or choose another --output."
            )
        if (output / "final_ckpts").exists():
            raise UserError(f"{output} already holds a finished run (final_ckpts/); choose another --output.")
        return None
    if last.exists():
        return load_checkpoint(last)
    if (output / "metrics.json").exists() and (output / "final_ckpts").exists():
        log.info("%s already finished; nothing to resume", output)
        return "finished"
    log.info("--resume: no checkpoint in %s, starting from epoch 1", output / "temp_ckpts")
    return None


def _finished_result(output: Path) -> TrainResult:
    summary = json.loads((output / "metrics.json").read_text())
    history = [EpochMetrics(**h) for h in summary["history"]]
    return TrainResult(output, history[summary["best_epoch"] - 1], history, summary["stop_reason"])


def _write_final_outputs(
    output: Path,
    best_model: torch.nn.Module,
    meta: DatasetMeta,
    best: EpochMetrics,
    history: list[EpochMetrics],
    stop_reason: str,
    config: Config,
    test: EvalResult | None,
) -> None:
    final = output / "final_ckpts"
    save_checkpoint(final / "best_model.pth", best_model.state_dict())
    # How validation saw the images, so `sideformer evaluate` and `predict` default to the same.
    inference = {
        "base_size": config.data.base_size or min(config.data.crop_size),
        "eval_batch_size": config.train.eval_batch_size or config.train.batch_size,
    }
    save_trained_model(best_model, final / "model", meta, inference)
    atomic_write_json(
        output / "metrics.json",
        {
            "best_epoch": best.epoch,
            "monitor": config.early_stop.monitor,
            "stop_reason": stop_reason,
            "epochs_run": len(history),
            "dataset": meta.name,
            "classes": meta.classes,
            "best": best.to_dict(),
            "test": None
            if test is None
            else {
                "loss": test.loss,
                "miou": test.metrics.miou,
                "pixel_accuracy": test.metrics.pixel_accuracy,
                "per_class_iou": dict(zip(meta.classes, test.metrics.per_class_iou, strict=True)),
            },
            "history": [h.to_dict() for h in history],
        },
    )
    if not config.checkpoint.keep_temp:
        shutil.rmtree(output / "temp_ckpts", ignore_errors=True)
    log.info("best epoch %d: val mIoU %.4f, val loss %.4f", best.epoch, best.val_miou, best.val_loss)


def _epoch_line(m: EpochMetrics, epochs: int, is_best: bool) -> str:
    return (
        f"epoch {m.epoch}/{epochs}  train_loss {m.train_loss:.4f}  val_loss {m.val_loss:.4f}  "
        f"mIoU {m.val_miou:.4f}  acc {m.val_pixel_accuracy:.4f}  lr {m.lr:.2e}  "
        f"{m.images_per_second:.1f} img/s  {m.seconds:.0f}s{'  *best' if is_best else ''}"
    )
