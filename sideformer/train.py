"""The training loop: `train(config, on_epoch=...)` -> TrainResult.

One process or many (torchrun / the Training Operator set the environment; the command that calls
`train` owns the process group and passes its `DistEnv`). Rank 0 alone touches the run folder
(`rundir.RunDir`); whatever it reads (checkpoints, data check results) it broadcasts to the other ranks.

`train` reads top to bottom: build the loaders (`train_data`), build the model and optimizer, resume
(`train_state`), then one `run_epoch` + `save_epoch` per epoch, then `finish` (test split,
final_ckpts/, metrics.json).

`on_epoch(epoch_metrics) -> bool` is called on rank 0 after every validation; True stops the run
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
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from transformers import get_polynomial_decay_schedule_with_warmup

from sideformer import distributed
from sideformer.atomic import atomic_write_json, atomic_write_text
from sideformer.checkpoint import load_checkpoint, save_checkpoint
from sideformer.compile_choice import CompileChoice, choose_compile
from sideformer.config import Config
from sideformer.data.metadata import DatasetMeta
from sideformer.distributed import DistEnv
from sideformer.errors import Stopped, UserError
from sideformer.model import autocast_dtype as model_autocast_dtype
from sideformer.model import build_model, training_loss
from sideformer.output_lock import output_lock
from sideformer.progress import progress as show_progress
from sideformer.rundir import RunDir
from sideformer.step_checkpoints import StepCheckpoints
from sideformer.tracking import JsonLinesLog, WandbRun
from sideformer.train_data import Loaders, build_loaders, load_checked_dataset
from sideformer.train_state import EarlyStopping, EpochMetrics, EpochProgress, Start, TrainState, choose_start
from sideformer.trained_model import save_trained_model
from sideformer.validation import EvalResult, eval_loader, evaluate

log = logging.getLogger(__name__)

StopReason = Literal["completed", "early_stopped", "reported"]


@dataclass
class TrainResult:
    output: Path
    best: EpochMetrics
    history: list[EpochMetrics] = field(default_factory=list)
    stop_reason: StopReason = "completed"
    model: torch.nn.Module | None = None
    """The module as training left it (last epoch; identical on every rank). The best weights are on disk."""


EpochCallback = Callable[[EpochMetrics], bool]
"""Called on rank 0 after each validation; True stops the run (stop_reason "reported")."""


@dataclass
class ModelAndOptimizer:
    model: torch.nn.Module
    """The bare module: what is saved, validated and returned."""
    ddp_model: torch.nn.Module
    """DistributedDataParallel around `model` when several processes train, else `model` itself."""
    forward: Callable[..., Any]
    """What the training step calls: `ddp_model`, compiled when `compiled` says so."""
    compiled: CompileChoice
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast_dtype: torch.dtype | None
    steps_per_epoch: int


# --- the loop ---------------------------------------------------------------------------------------


def train(
    config: Config, on_epoch: EpochCallback | None = None, resume: bool = False, env: DistEnv | None = None
) -> TrainResult:
    """Train, validate every epoch, keep the best weights. `env` comes from the caller's
    `distributed.process_group()`; without one, this process trains alone. Rank 0 holds the output
    folder's lock (`output_lock`) throughout: a second run into the same folder refuses to start."""
    env = env or distributed.single_process(config.train.device)
    # A retried trial may find its folder still locked by the worker that died with it, where the lock
    # outlives the process for a while (NFS drops a dead client's locks when its lease runs out).
    wait = config.search.grace_period if RunDir(config.output).is_trial else 0.0
    with ExitStack() as held:
        distributed.on_main(
            env, lambda: held.enter_context(output_lock(config.output, wait_seconds=wait)) and None
        )
        return _train(config, on_epoch, resume, env)


def _train(config: Config, on_epoch: EpochCallback | None, resume: bool, env: DistEnv) -> TrainResult:
    run = RunDir(config.output)
    seed_everything(config.train.seed)
    meta = distributed.on_main(env, lambda: load_checked_dataset(config))
    start = distributed.on_main(env, lambda: choose_start(run, resume))
    if start is Start.FINISHED:
        distributed.on_main(env, lambda: _check_epochs_of_finished_run(run, config))
        return _finished_result(run)
    loaders = build_loaders(config, meta, env)
    parts = build_model_and_optimizer(config, meta, loaders.train, env)
    state = TrainState(
        parts.model,
        parts.optimizer,
        parts.scheduler,
        EarlyStopping(config.early_stop.monitor, config.early_stop.patience, config.early_stop.min_delta),
    )
    if start is Start.RESUME:
        _resume(state, run, distributed.on_main(env, lambda: load_checkpoint(run.last)))
        distributed.on_main(env, lambda: _check_epochs_on_resume(run, config, state.epochs_done))

    jsonl = JsonLinesLog(run.train_log)
    wandb_run = WandbRun(config.wandb, config.to_dict(), run.root) if env.is_main else None
    if env.is_main:
        atomic_write_text(run.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
        jsonl.rewrite([h.to_dict() for h in state.history])
        log.info(_start_line(config, loaders, parts, env))

    stop_reason: StopReason = "completed"
    # Agreeing on a step checkpoint costs the ranks a host sync: once per log_every steps, not each step.
    step_checkpoints = StepCheckpoints(
        config.checkpoint.every_minutes, env, config.train.log_every if env.is_distributed else 1
    )
    # The CPU depthwise-conv backward returns channels-last grads for the MixFFN weights; DDP copies
    # them into its buckets and warns every step. The copy is a few KB per block: not worth the noise.
    with warnings.catch_warnings(), step_checkpoints:
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        for epoch in range(state.epochs_done, config.train.epochs):
            metrics = run_epoch(epoch, config, loaders, parts, env, state, step_checkpoints, run)
            state.history.append(metrics)
            state.early.update(metrics)  # same all-reduced numbers on every rank -> same decision
            is_best = config.checkpoint.select == "last" or state.early.best_epoch == metrics.epoch
            if env.is_main:
                assert wandb_run is not None
                save_epoch(run, state, metrics, is_best, jsonl, wandb_run, config.train.epochs)
            if step_checkpoints.epoch_saved():  # SIGTERM after the epoch's last step
                distributed.barrier(env)
                raise _stopped(f"after epoch {metrics.epoch}", run)
            stop = _stop_reason(metrics, state.early, on_epoch, env)
            if stop is not None:
                stop_reason = stop
                break

    best = state.best_metrics(config.checkpoint.select)
    if env.is_main:
        assert wandb_run is not None
        finish(run, config, loaders, parts, state, stop_reason, env, wandb_run)
    distributed.barrier(env)
    return TrainResult(run.root, best, state.history, stop_reason, model=parts.model)


def _stop_reason(
    metrics: EpochMetrics, early: EarlyStopping, on_epoch: EpochCallback | None, env: DistEnv
) -> StopReason | None:
    """Why the run stops after this epoch, or None; the same answer on every rank."""
    stop_requested = bool(on_epoch(metrics)) if (on_epoch is not None and env.is_main) else False
    if distributed.broadcast_object(stop_requested, env):
        return "reported"
    if early.should_stop:
        if env.is_main:
            log.info("early stopping: %s has not improved for %d epoch(s)", early.monitor, early.patience)
        return "early_stopped"
    return None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# --- build the model and optimizer --------------------------------------------------------------------


def build_model_and_optimizer(
    config: Config, meta: DatasetMeta, loader: DataLoader, env: DistEnv
) -> ModelAndOptimizer:
    model = build_model(config.model, meta.id2label, meta.ignore_index).to(env.device)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if env.is_distributed and env.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the decode head's BatchNorm
    ddp_model = (
        DistributedDataParallel(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
        if env.is_distributed
        else model
    )
    # fused AdamW: one kernel over all parameters; on CPU too (about 4x cheaper than the per-tensor loop).
    optimizer = build_optimizer(
        model, config, fused=config.optim.fused and env.device.type in ("cuda", "cpu")
    )
    steps_per_epoch = math.ceil(len(loader) / config.train.grad_accum)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch * config.train.epochs, env)
    autocast_dtype = model_autocast_dtype(config.train.precision, env.device)
    if autocast_dtype is not None and env.device.type == "cpu" and env.is_main and not _native_cpu_bf16():
        log.warning(
            "train.precision=bf16 on a CPU without native bf16 (AVX512-BF16/AMX): expect a slower step than "
            "fp32 (about 4x for b0 on an AVX2 CPU); train.precision=auto keeps CPUs at fp32"
        )
    # Compiled for the training forward only: validation runs the bare module at other image sizes.
    compiled = choose_compile(config.train, env.device.type, env.world_size)
    forward = torch.compile(ddp_model, mode=compiled.mode) if compiled.enabled else ddp_model
    return ModelAndOptimizer(
        model, ddp_model, forward, compiled, optimizer, scheduler, autocast_dtype, steps_per_epoch
    )


def build_optimizer(model: torch.nn.Module, config: Config, fused: bool = False) -> torch.optim.AdamW:
    """AdamW; the decode head learns head_lr_mult times faster; norms and biases get no weight decay."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("decode_head."), param.ndim <= 1), []).append(param)
    optim = config.optim
    param_groups = [
        {
            "params": params,
            "lr": optim.lr * (optim.head_lr_mult if is_head else 1.0),
            "weight_decay": 0.0 if no_decay else optim.weight_decay,
        }
        for (is_head, no_decay), params in sorted(groups.items())
    ]
    betas = (optim.betas[0], optim.betas[1])
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=betas, fused=fused or None)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: Config, total_steps: int, env: DistEnv
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup, then polynomial decay to 0 over the run's optimizer steps."""
    warmup_steps = min(config.optim.warmup_steps, total_steps - 1)  # the schedule needs one decay step
    if warmup_steps < config.optim.warmup_steps and env.is_main:
        log.warning(
            "optim.warmup_steps=%d is longer than the run (%d optimizer steps); warming up for %d instead",
            config.optim.warmup_steps,
            total_steps,
            warmup_steps,
        )
    return get_polynomial_decay_schedule_with_warmup(
        optimizer, warmup_steps, total_steps, lr_end=0.0, power=config.optim.poly_power
    )


def _native_cpu_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers: assume the best rather than warn wrongly
        return True


# --- resume -----------------------------------------------------------------------------------------


def _resume(state: TrainState, run: RunDir, checkpoint: dict[str, Any]) -> None:
    try:
        state.load_state_dict(checkpoint)
    except RuntimeError:
        raise UserError(
            f"{run.last} was saved by a different model (was model.* or the dataset's classes "
            f"changed?); resume with the run's own config.yaml, or choose another --output."
        ) from None
    log.info("resuming from %s after epoch %d", run.last, state.epochs_done)


def _planned_epochs(run: RunDir) -> int | None:
    """train.epochs of the run as it was started (its config.yaml), or None if unknown."""
    try:
        return int(yaml.safe_load(run.config.read_text())["train"]["epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _check_epochs_on_resume(run: RunDir, config: Config, done: int) -> None:
    """A changed train.epochs on --resume: train on to the new count, or refuse when it is already past."""
    planned, epochs = _planned_epochs(run), config.train.epochs
    if epochs < done:
        raise UserError(
            f"--resume: {run.last} already holds {done} epoch(s), more than train.epochs={epochs}; "
            f"resume with --set train.epochs={planned or done} (or more)."
        )
    if planned is not None and planned != epochs:
        log.info(
            "--resume: train.epochs changed from %d to %d: training on to epoch %d, with the warmup and "
            "poly decay rebuilt over %d epochs (the learning rate from epoch %d on follows that schedule)",
            planned,
            epochs,
            epochs,
            epochs,
            done + 1,
        )


def _check_epochs_of_finished_run(run: RunDir, config: Config) -> None:
    """A finished run keeps no resume checkpoint: more epochs than it was started with cannot be added."""
    planned, epochs = _planned_epochs(run), config.train.epochs
    if planned is None or planned == epochs:
        return
    if epochs > planned:
        raise UserError(
            f"--resume: {run.root} already finished (train.epochs={planned}) and its resume checkpoint was "
            f"removed, so it cannot train on to train.epochs={epochs}. Start a new run instead: sideformer "
            f"train --data {config.data.path} --output NEW_FOLDER --set train.epochs={epochs} (with "
            "--set checkpoint.keep_temp=true a finished run keeps what it needs to be extended later)."
        )
    log.info(
        "--resume: %s already finished (train.epochs=%d); train.epochs=%d is not applied",
        run.root,
        planned,
        epochs,
    )


def _finished_result(run: RunDir) -> TrainResult:
    summary = json.loads(run.metrics.read_text())
    history = [EpochMetrics(**h) for h in summary["history"]]
    return TrainResult(run.root, history[summary["best_epoch"] - 1], history, summary["stop_reason"])


# --- run one epoch ----------------------------------------------------------------------------------


def run_epoch(
    epoch: int,
    config: Config,
    loaders: Loaders,
    parts: ModelAndOptimizer,
    env: DistEnv,
    state: TrainState,
    step_checkpoints: StepCheckpoints,
    run: RunDir,
) -> EpochMetrics:
    """Train on every batch once (or on the rest, after a step checkpoint), validate, and return the
    epoch's numbers (identical on every rank)."""
    resumed = state.progress is not None and state.progress.epoch == epoch
    progress = state.progress if resumed else EpochProgress(epoch)
    assert progress is not None
    if resumed and env.is_main:
        log.info(
            "resuming epoch %d after %d of its %d batches", epoch + 1, progress.batches, _batches(loaders)
        )
    loaders.train.sampler.set_epoch(epoch, skip=progress.batches * config.train.batch_size)  # type: ignore[attr-defined]
    started = time.perf_counter() - progress.seconds

    def save_step(loss_sum: torch.Tensor, images_seen: int) -> None:
        if step_checkpoints.due(progress.optimizer_steps):
            totals = distributed.gather_objects((float(loss_sum), images_seen), env)
            progress.loss_sums, progress.images = [t[0] for t in totals], [t[1] for t in totals]
            progress.seconds = time.perf_counter() - started
            _save_step(state, progress, run, env, step_checkpoints.stop_requested)

    loss_sum, images_seen = _train_steps(config, loaders, parts, env, progress, save_step)
    if env.device.type == "cuda":
        torch.cuda.synchronize()  # count queued kernels in this epoch's time
    train_seconds = time.perf_counter() - started
    state.progress = None
    distributed.sync_buffers(parts.model, env)  # BatchNorm running stats: validate what rank 0 will save
    meta = loaders.meta
    val = evaluate(
        parts.model,
        loaders.val,
        meta.num_classes,
        meta.ignore_index,
        env,
        parts.autocast_dtype,
        config.model.channels_last,
    )
    totals = torch.tensor(
        [float(loss_sum), progress.batches, images_seen], device=env.device, dtype=torch.float64
    )
    loss_total, batches, images = distributed.all_reduce_sum(totals, env).tolist()
    return EpochMetrics(
        epoch=epoch + 1,
        train_loss=loss_total / batches,
        val_loss=val.loss,
        val_miou=val.metrics.miou,
        val_pixel_accuracy=val.metrics.pixel_accuracy,
        val_per_class_iou=dict(zip(meta.classes, val.metrics.per_class_iou, strict=True)),
        lr=parts.scheduler.get_last_lr()[0],
        images_per_second=images / train_seconds,
        seconds=time.perf_counter() - started,
    )


def _train_steps(
    config: Config,
    loaders: Loaders,
    parts: ModelAndOptimizer,
    env: DistEnv,
    progress: EpochProgress,
    save_step: Callable[[torch.Tensor, int], None],
) -> tuple[torch.Tensor, int]:
    """This epoch's batches from `progress` on: (summed loss on the device, images seen) on this rank.
    `progress` follows along; `save_step(loss_sum, images_seen)` runs after each optimizer step but the
    epoch's last (it saves when a step checkpoint is due)."""
    parts.ddp_model.train()
    carried_loss, images_seen = progress.rank_totals(env.rank, env.world_size)
    loss_sum = torch.tensor(float(carried_loss), device=env.device)
    first, last_step = progress.batches, progress.batches + len(loaders.train) - 1
    sampler = loaders.train.sampler
    # Counted in images of all ranks (this rank's times world_size): images/s and ETA as users think of them.
    bar = show_progress(
        total=len(sampler) + sampler.skip,  # type: ignore[arg-type,attr-defined]
        initial=sampler.skip,  # type: ignore[attr-defined]
        desc=f"epoch {progress.epoch + 1}/{config.train.epochs}",
        unit="img",
        unit_scale=env.world_size if env.world_size > 1 else False,
        enabled=env.is_main,
        seconds=config.train.progress_seconds,
    )
    cuda_graphs = parts.compiled.cuda_graphs
    with bar:
        for step, (images, masks) in enumerate(loaders.train, start=first):
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are consumed
            images = images.to(env.device, non_blocking=True)
            masks = masks.to(env.device, non_blocking=True).long()
            is_update_step = (step + 1) % config.train.grad_accum == 0 or step == last_step
            # Gradients are all-reduced only on the micro-batch that updates the weights.
            sync = nullcontext() if is_update_step or not env.is_distributed else parts.ddp_model.no_sync()
            with sync:
                loss, _ = training_loss(
                    parts.forward,
                    images,
                    masks,
                    loaders.meta.ignore_index,
                    parts.autocast_dtype,
                    config.model.channels_last,
                )
                (loss / config.train.grad_accum).backward()
            loss_sum += loss.detach()
            images_seen += images.shape[0]
            bar.update(images.shape[0])
            if is_update_step:
                if config.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(parts.model.parameters(), config.optim.grad_clip)
                parts.optimizer.step()
                parts.scheduler.step()
                parts.optimizer.zero_grad(set_to_none=True)
                progress.batches, progress.optimizer_steps = step + 1, progress.optimizer_steps + 1
                if step < last_step:  # the epoch's end saves a checkpoint of its own
                    save_step(loss_sum, images_seen)
            if env.is_main and (step + 1) % config.train.log_every == 0:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}", lr=f"{parts.scheduler.get_last_lr()[0]:.2e}", refresh=False
                )
    return loss_sum, images_seen


def _batches(loaders: Loaders) -> int:
    """Batches in a whole epoch on this rank (the loader's own length shrinks when an epoch resumes)."""
    sampler = loaders.train.sampler
    samples = len(sampler) + sampler.skip  # type: ignore[arg-type,attr-defined]
    batch = loaders.train.batch_size or 1
    return samples // batch if loaders.train.drop_last else -(-samples // batch)


# --- save -------------------------------------------------------------------------------------------


def _save_step(state: TrainState, progress: EpochProgress, run: RunDir, env: DistEnv, stop: bool) -> None:
    """A step checkpoint (rank 0 writes, every rank waits for it); after a SIGTERM, stop."""
    state.progress = progress
    if env.is_main:
        save_checkpoint(run.last, state.state_dict())
        log.info("saved epoch %d after %d batch(es) to %s", progress.epoch + 1, progress.batches, run.last)
    distributed.barrier(env)
    if stop:
        raise _stopped(f"in epoch {progress.epoch + 1} after {progress.batches} batch(es)", run)


def _stopped(where: str, run: RunDir) -> Stopped:
    return Stopped(
        f"stopped by SIGTERM {where}, saved in {run.last}; run the same command with --resume to continue "
        f"from there."
    )


def save_epoch(
    run: RunDir,
    state: TrainState,
    metrics: EpochMetrics,
    is_best: bool,
    jsonl: JsonLinesLog,
    wandb_run: WandbRun,
    epochs: int,
) -> None:
    """Rank 0, after each epoch: the best weights if they are, the resume checkpoint, the logs."""
    if is_best:
        save_checkpoint(run.best, {"model": state.model.state_dict(), "epoch": metrics.epoch})
    save_checkpoint(run.last, state.state_dict())
    jsonl.append(metrics.to_dict())
    wandb_run.log(
        {k: v for k, v in metrics.to_dict().items() if k != "val_per_class_iou"}
        | {f"val_iou/{k}": v for k, v in metrics.val_per_class_iou.items()},
        step=metrics.epoch,
    )
    log.info(_epoch_line(metrics, epochs, is_best))


# --- finish -----------------------------------------------------------------------------------------


def finish(
    run: RunDir,
    config: Config,
    loaders: Loaders,
    parts: ModelAndOptimizer,
    state: TrainState,
    stop_reason: StopReason,
    env: DistEnv,
    wandb_run: WandbRun,
) -> None:
    """Rank 0, after the loop: the best weights on the test split, final_ckpts/, metrics.json, W&B summary."""
    best = state.best_metrics(config.checkpoint.select)
    best_model = copy.deepcopy(parts.model)
    best_model.load_state_dict(load_checkpoint(run.best)["model"])
    test = _evaluate_test_split(best_model, config, loaders, parts, env)
    _write_final_outputs(run, best_model, loaders.meta, best, state.history, stop_reason, config, test)
    wandb_run.summary(
        {"best_epoch": best.epoch, "best_val_miou": best.val_miou, "best_val_loss": best.val_loss}
    )
    wandb_run.finish()


def _evaluate_test_split(
    model: torch.nn.Module, config: Config, loaders: Loaders, parts: ModelAndOptimizer, env: DistEnv
) -> EvalResult | None:
    meta = loaders.meta
    if not meta.split("test") or config.data.eval_split == "test":
        return None
    # Rank 0 alone: the other ranks only wait at the barrier after `finish`.
    alone = DistEnv(rank=0, world_size=1, local_rank=env.local_rank, device=env.device)
    loader = eval_loader(meta, "test", loaders.base_size, loaders.val.batch_size or 1, 0, alone)
    test = evaluate(model, loader, meta.num_classes, meta.ignore_index, alone, parts.autocast_dtype)
    log.info("test split: mIoU %.4f, pixel accuracy %.4f", test.metrics.miou, test.metrics.pixel_accuracy)
    return test


def _write_final_outputs(
    run: RunDir,
    best_model: torch.nn.Module,
    meta: DatasetMeta,
    best: EpochMetrics,
    history: list[EpochMetrics],
    stop_reason: str,
    config: Config,
    test: EvalResult | None,
) -> None:
    # CPU tensors: a plain torch.load on a machine without the training GPU must work.
    save_checkpoint(run.best_state_dict, {k: v.cpu() for k, v in best_model.state_dict().items()})
    # How validation saw the images, so `sideformer evaluate` and `predict` default to the same.
    inference = {
        "base_size": config.data.base_size or min(config.data.crop_size),
        "eval_batch_size": config.train.eval_batch_size or config.train.batch_size,
    }
    save_trained_model(best_model, run.model, meta, inference)
    atomic_write_json(
        run.metrics,
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
        shutil.rmtree(run.temp, ignore_errors=True)
    log.info("best epoch %d: val mIoU %.4f, val loss %.4f", best.epoch, best.val_miou, best.val_loss)


# --- log lines --------------------------------------------------------------------------------------


def _start_line(config: Config, loaders: Loaders, parts: ModelAndOptimizer, env: DistEnv) -> str:
    return (
        f"training {config.model.pretrained or f'SegFormer-{config.model.variant} (random init)'} on "
        f"{len(loaders.train.dataset)} image(s), validating on "  # type: ignore[arg-type]
        f"{len(loaders.meta.split(config.data.eval_split))}, {env.world_size} process(es) on "
        f"{env.device.type}, {'bf16 autocast' if parts.autocast_dtype else 'fp32'}"
        f"{f', {parts.compiled.describe()}' if parts.compiled.enabled else ''}, "
        f"{parts.steps_per_epoch} step(s)/epoch"
    )


def _epoch_line(m: EpochMetrics, epochs: int, is_best: bool) -> str:
    return (
        f"epoch {m.epoch}/{epochs}  train_loss {m.train_loss:.4f}  val_loss {m.val_loss:.4f}  "
        f"mIoU {m.val_miou:.4f}  acc {m.val_pixel_accuracy:.4f}  lr {m.lr:.2e}  "
        f"{m.images_per_second:.1f} img/s  {m.seconds:.0f}s{'  *best' if is_best else ''}"
    )
