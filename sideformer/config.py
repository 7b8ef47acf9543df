"""One typed configuration: dataclass defaults, then a YAML file, then `--set a.b=c` overrides.

Unknown keys and ill-typed values are rejected before anything runs, naming the key, the source and the
valid choices. `Config.to_dict()` is what gets saved beside a run and sent to W&B.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sideformer.errors import UserError

VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5")
SPLITS = ("train", "valid", "test")


@dataclass
class DataConfig:
    path: str = ""
    """Dataset folder holding metadata.json (the CLI's --data)."""
    classes: list[str] | None = None
    """Class names for the legacy metadata form that lists none."""
    crop_size: list[int] = field(default_factory=lambda: [256, 256])
    """Training crop [height, width]."""
    base_size: int | None = None
    """Short side an image is resized to before random scaling and for validation; default min(crop_size)."""
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: bool = True
    color_jitter: float = 0.2
    """Strength of brightness/contrast/saturation jitter; 0 turns it off."""
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    """Splits trained on; the final run after a search uses ["train", "valid"]."""
    eval_split: str = "valid"
    """Split validated on every epoch (early stopping and best checkpoint follow it)."""
    train_fraction: float = 1.0
    """Fraction of the training split used (a fixed random subset); hyperparameter search uses < 1."""
    num_workers: int | None = None
    """Loader worker processes per training process; null: half the CPU cores, shared among this node's
    training processes (between 2 and 16; the other half launches the GPU's kernels)."""
    preresize: int | None = None
    """Train on copies resized once so the shorter side is this many pixels (for large sources such as
    AI-Hub's 1920x1080 frames); null reads the originals. Keep it >= base_size x scale_range[1]."""
    cache_dir: str | None = None
    """Where data.preresize keeps its copies; default <dataset>/.sideformer-cache/preresize. Reused by
    every run and trial; must be shared by all processes of a multi-node run."""
    check: bool = True
    """Validate every file before training (sideformer check-data); off only for data already checked."""
    decode: Literal["auto", "loader", "device"] = "auto"
    """Where training images are decoded and augmented. loader: OpenCV in the loader's worker processes;
    device: the loader workers only read the JPEG's bytes, the training process decodes them on its device
    (nvJPEG through torchvision on a GPU) and applies the same random scale, crop, flip and jitter there as
    torch ops (masks stay exact: cut in the workers, nearest neighbour). auto: device on a GPU where
    torchvision's nvJPEG decoder works, else loader."""


@dataclass
class ModelConfig:
    pretrained: str | None = None
    """Hub id (nvidia/mit-b0 … mit-b5) or a local directory; None: `variant` with random weights."""
    variant: str = "b0"
    channels_last: bool = False
    """Activations and weights in NHWC memory order (opt-in: measure it on your hardware)."""
    fold_decode_head: bool = True
    """Evaluate the decode head in an equivalent, cheaper order (model.FoldedDecodeHead): same weights and
    outputs up to float rounding; false runs transformers' own code."""


@dataclass
class OptimConfig:
    lr: float = 6e-5
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 1500
    poly_power: float = 1.0
    grad_clip: float | None = None
    fused: bool = True
    """AdamW's fused kernel: one pass over all parameters (CPU and CUDA) instead of a loop over tensors."""


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 8
    """Per process (per GPU)."""
    eval_batch_size: int | None = None
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on GPU, fp32 on CPU (fp16 makes SegFormer's loss NaN, so it is not offered)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    log_every: int = 20
    """Optimizer steps between loss read-outs (each one is a host sync)."""
    progress_seconds: float = 30.0
    """Without a terminal (a pipe, a pod's log): one progress line (images, images/s, ETA) inside an epoch
    this often; 0: none. On a terminal a live bar shows instead."""
    compile: Literal["auto", True, False] = "auto"
    """torch.compile the training forward. auto: on for one CUDA process without gradient accumulation
    (CUDA graphs made b0's step 2.46x on an H200), off elsewhere: on CPU it did not pay off, and CUDA
    graphs under DDP or with grad_accum > 1 were never measured (sideformer.compile_choice)."""
    compile_mode: Literal["auto", "default", "reduce-overhead", "max-autotune"] = "auto"
    """torch.compile's mode; reduce-overhead replays the step's kernels as CUDA graphs, for GPUs whose
    steps are short enough that launching kernels from Python sets the pace. auto: reduce-overhead on
    CUDA, default elsewhere."""


@dataclass
class EarlyStopConfig:
    monitor: Literal["val_loss", "val_miou"] = "val_loss"
    patience: int = 10
    """Epochs without improvement before stopping; 0 turns early stopping off."""
    min_delta: float = 0.0


@dataclass
class CheckpointConfig:
    keep_temp: bool = False
    """Keep temp_ckpts/ (last.pth, best.pth) after a run finishes."""
    select: Literal["best", "last"] = "best"
    """Which epoch becomes final_ckpts/: the best by early_stop.monitor, or the last (final runs)."""
    every_minutes: float | None = None
    """Also save inside an epoch this often (temp_ckpts/last.pth), so a killed run (SIGKILL, a lost node)
    loses at most this much; null: at epoch ends, and on SIGTERM (always)."""


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: Literal["auto", "offline", "online"] = "auto"
    """auto: online when WANDB_API_KEY is set, offline otherwise."""
    project: str = "sideformer"
    entity: str | None = None
    group: str | None = None
    name: str | None = None


def default_search_space() -> dict[str, dict[str, Any]]:
    """Keys are dotted config keys; each value is an Optuna distribution (float, int or categorical).

    The bounds leave out what cannot learn within a search trial's budget (search.epochs on
    search.data_fraction of the data), so no trial is spent finding that out."""
    return {
        # Below 1e-5 a pretrained encoder barely moves in 10 epochs; above 5e-4 (8x the recipe's 6e-5)
        # AdamW tends to wreck what the transformer encoder learnt in pretraining.
        "optim.lr": {"type": "float", "low": 1e-5, "high": 5e-4, "log": True},
        "optim.weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "optim.head_lr_mult": {"type": "categorical", "choices": [1.0, 10.0]},
        # The recipe's 1500 steps is the ceiling: a longer warm-up reaches the peak lr too late for the
        # first pruning rungs (one and three epochs) to see what the trial can do.
        "optim.warmup_steps": {"type": "int", "low": 0, "high": 1500, "step": 100},
        "train.batch_size": {"type": "categorical", "choices": [4, 8]},
    }


@dataclass
class SearchConfig:
    n_trials: int = 20
    """Global budget: finished (complete or pruned) trials in the study, counted over every worker."""
    objective: Literal["val_miou", "val_loss"] = "val_miou"
    """Maximise validation mIoU, or minimise validation loss (the original tool's objective)."""
    epochs: int = 10
    """Epochs per trial (the final run trains for the best trial's best epoch count)."""
    data_fraction: float = 0.5
    """Fraction of the training split a trial trains on."""
    pruner: Literal["asha", "hyperband", "median", "percentile", "none"] = "asha"
    """asha: successive halving with epoch rungs (first rung at pruner_warmup_epochs, at least 1; reduction
    factor 3: a trial continues past epochs 3, 9, 27, ... only while it is in the top third of the trials
    that reached that epoch), as Ray Tune's ASHA and Katib's Hyperband do. median/percentile: stop a trial
    below the median (25th percentile) of the others at the same epoch. hyperband: Optuna's
    HyperbandPruner."""
    pruner_warmup_epochs: int = 3
    """Epochs a trial runs before it can be pruned (asha's first rung: at least 1). 3, not 1: a first
    epoch ranks trials no better than chance (rank correlation with the final mIoU -0.01 in
    benchmarks/search_strategies.py, 0.49 at epoch 3, 0.75 at 4), and with a first rung at 3 epochs the
    search reached the target in 5 of 5 seeds there (median 46 s), against 3 of 5 (91 s) with it at 1
    (BENCHMARKS.md)."""
    pruner_startup_trials: int = 3
    """Finished trials before the median/percentile pruner starts (asha needs none)."""
    timeout: float | None = None
    """Wall-clock budget in seconds beside n_trials (the CLI's --timeout): no trial starts after it, running
    trials finish. Stored in the study as an absolute deadline when it starts, shared by every worker."""
    start_from_config: bool = True
    """The study's first trial trains the configuration's own values of the searched keys (by default the
    SegFormer recipe: AdamW, lr 6e-5, weight decay 0.01, head x10, poly decay), so a search never starts
    from nothing. Enqueued once, when the study is created."""
    sampler_startup_trials: int = 5
    """Random trials before TPE takes over."""
    heartbeat_interval: int = 30
    """Seconds between a running trial's heartbeats (RDB storage)."""
    grace_period: int = 120
    """Seconds without a heartbeat after which a trial is failed and retried."""
    max_retry: int = 2
    """Retries of a trial whose worker died; each resumes from the trial's last checkpoint."""
    trials_per_gpu: int = 1
    """Trials run side by side on one GPU (`sideformer search --trials-per-gpu`): that many worker
    processes, each with 1/N of the GPU's memory, its own sampler seed and worker id. For small variants,
    whose step leaves a large GPU mostly idle; one trial per process (no --nproc-per-node)."""
    space: dict[str, dict[str, Any]] = field(default_factory=default_search_space)


@dataclass
class Config:
    output: str = ""
    """Run folder (the CLI's --output)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    search: SearchConfig = field(default_factory=SearchConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """Defaults ← `base` ← YAML file ← `key=value` overrides (values parsed as YAML), then validated."""
    config = Config()
    if base:
        _merge(config, base, source="built-in settings")
    if path is not None:
        _merge(config, _read_yaml(Path(path)), source=str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
        value = yaml.safe_load(raw) if raw.strip() else None
        nested: dict[str, Any] = {}
        cursor = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[leaf] = value
        _merge(config, nested, source=f"--set {item}")
    validate(config)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: config file not found.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; a config is UTF-8 YAML text.") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping of sections (data:, model:, train:, ...) at the top.")
    return doc


def _merge(target: Any, values: dict[str, Any], source: str, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            suggestion = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean '{prefix}{suggestion[0]}'?" if suggestion else ""
            raise UserError(
                f"{source}: unknown key '{dotted}'.{hint} Valid keys here: {', '.join(sorted(fields))}."
            )
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{dotted}' is a section; give it a mapping of keys.")
            _merge(current, value, source, prefix=f"{dotted}.")
        else:
            setattr(target, key, _coerce(value, hints[key], dotted, source))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against a field's type; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):  # 1 is not True
            raise UserError(f"{source}: '{key}' must be one of {list(args)}, got {value!r}.")
        return value
    if hint is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{key}' must be a mapping, got {value!r}.")
        _, value_type = args
        return {str(k): _coerce(v, value_type, f"{key}.{k}", source) for k, v in value.items()}
    if origin is list:
        (item_type,) = args
        if not isinstance(value, list):
            raise UserError(f"{source}: '{key}' must be a list, e.g. [256, 256], got {value!r}.")
        return [_coerce(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # PyYAML (YAML 1.1) reads 6e-5 as a string; accept it as the number it plainly is
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (bool, str) and isinstance(value, hint):
        return value
    raise UserError(f"{source}: '{key}' must be {getattr(hint, '__name__', hint)}, got {value!r}.")


Rule = tuple[str, Any, bool, str]  # key, value, whether it holds, the rule in words


def validate(config: Config) -> None:
    """Range checks the types cannot express. Each message names the key, its value and the rule."""
    rules = [
        *_data_rules(config.data),
        *_model_and_optim_rules(config.model, config.optim),
        *_training_rules(config),
        *_search_rules(config.search),
    ]
    errors = [f"{key} = {value!r}: must be {rule}" for key, value, ok, rule in rules if not ok]
    if errors:
        raise UserError("invalid configuration:\n  " + "\n  ".join(errors))


def _data_rules(data: DataConfig) -> list[Rule]:
    return [
        (
            "data.crop_size",
            data.crop_size,
            len(data.crop_size) == 2 and min(data.crop_size) >= 32,
            "[h, w], each >= 32",
        ),
        ("data.base_size", data.base_size, data.base_size is None or data.base_size >= 32, ">= 32 or null"),
        (
            "data.scale_range",
            data.scale_range,
            len(data.scale_range) == 2 and 0 < data.scale_range[0] <= data.scale_range[1],
            "[low, high] with 0 < low <= high",
        ),
        ("data.color_jitter", data.color_jitter, 0.0 <= data.color_jitter <= 1.0, "in [0, 1]"),
        ("data.train_fraction", data.train_fraction, 0.0 < data.train_fraction <= 1.0, "in (0, 1]"),
        (
            "data.num_workers",
            data.num_workers,
            data.num_workers is None or data.num_workers >= 0,
            ">= 0 or null",
        ),
        ("data.preresize", data.preresize, data.preresize is None or data.preresize >= 32, ">= 32 or null"),
        (
            "data.train_splits",
            data.train_splits,
            bool(data.train_splits) and set(data.train_splits) <= set(SPLITS),
            f"a non-empty list drawn from {list(SPLITS)}",
        ),
        ("data.eval_split", data.eval_split, data.eval_split in SPLITS, f"one of {list(SPLITS)}"),
    ]


def _model_and_optim_rules(model: ModelConfig, optim: OptimConfig) -> list[Rule]:
    return [
        ("model.variant", model.variant, model.variant in VARIANTS, f"one of {list(VARIANTS)}"),
        ("optim.lr", optim.lr, optim.lr > 0, "> 0"),
        ("optim.weight_decay", optim.weight_decay, optim.weight_decay >= 0, ">= 0"),
        ("optim.head_lr_mult", optim.head_lr_mult, optim.head_lr_mult > 0, "> 0"),
        (
            "optim.betas",
            optim.betas,
            len(optim.betas) == 2 and all(0 <= beta < 1 for beta in optim.betas),
            "[b1, b2] in [0, 1)",
        ),
        ("optim.warmup_steps", optim.warmup_steps, optim.warmup_steps >= 0, ">= 0"),
        ("optim.poly_power", optim.poly_power, optim.poly_power > 0, "> 0"),
        ("optim.grad_clip", optim.grad_clip, optim.grad_clip is None or optim.grad_clip > 0, "> 0 or null"),
    ]


def _training_rules(config: Config) -> list[Rule]:
    train, early_stop = config.train, config.early_stop
    return [
        ("train.epochs", train.epochs, train.epochs >= 1, ">= 1"),
        ("train.batch_size", train.batch_size, train.batch_size >= 1, ">= 1"),
        (
            "train.eval_batch_size",
            train.eval_batch_size,
            train.eval_batch_size is None or train.eval_batch_size >= 1,
            ">= 1",
        ),
        ("train.grad_accum", train.grad_accum, train.grad_accum >= 1, ">= 1"),
        ("train.log_every", train.log_every, train.log_every >= 1, ">= 1"),
        ("train.progress_seconds", train.progress_seconds, train.progress_seconds >= 0, ">= 0"),
        (
            "checkpoint.every_minutes",
            config.checkpoint.every_minutes,
            config.checkpoint.every_minutes is None or config.checkpoint.every_minutes > 0,
            "> 0 or null",
        ),
        (
            "early_stop.patience",
            early_stop.patience,
            early_stop.patience >= 0,
            ">= 0 (0 turns early stopping off)",
        ),
        ("early_stop.min_delta", early_stop.min_delta, early_stop.min_delta >= 0, ">= 0"),
    ]


def _search_rules(search: SearchConfig) -> list[Rule]:
    return [
        ("search.n_trials", search.n_trials, search.n_trials >= 1, ">= 1"),
        ("search.epochs", search.epochs, search.epochs >= 1, ">= 1"),
        ("search.data_fraction", search.data_fraction, 0.0 < search.data_fraction <= 1.0, "in (0, 1]"),
        (
            "search.pruner_warmup_epochs",
            search.pruner_warmup_epochs,
            search.pruner_warmup_epochs >= 0,
            ">= 0",
        ),
        (
            "search.pruner_startup_trials",
            search.pruner_startup_trials,
            search.pruner_startup_trials >= 0,
            ">= 0",
        ),
        (
            "search.sampler_startup_trials",
            search.sampler_startup_trials,
            search.sampler_startup_trials >= 0,
            ">= 0",
        ),
        ("search.heartbeat_interval", search.heartbeat_interval, search.heartbeat_interval >= 1, ">= 1"),
        (
            "search.grace_period",
            search.grace_period,
            search.grace_period > search.heartbeat_interval,
            f"> search.heartbeat_interval ({search.heartbeat_interval})",
        ),
        ("search.max_retry", search.max_retry, search.max_retry >= 0, ">= 0"),
        ("search.trials_per_gpu", search.trials_per_gpu, search.trials_per_gpu >= 1, ">= 1"),
        (
            "search.timeout",
            search.timeout,
            search.timeout is None or search.timeout > 0,
            "> 0 seconds or null",
        ),
    ]
