"""The training loop's parts that decide things, without training: early stopping, the optimizer's
parameter groups, where a run starts, and the checkpoint's round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sideformer.config import ModelConfig, load_config
from sideformer.errors import UserError
from sideformer.model import build_model
from sideformer.rundir import RunDir
from sideformer.train import build_optimizer
from sideformer.train_state import EarlyStopping, EpochMetrics, Start, TrainState, choose_start


def epoch(number: int, val_loss: float = 1.0, val_miou: float = 0.0) -> EpochMetrics:
    return EpochMetrics(number, 1.0, val_loss, val_miou, 0.5, {}, 1e-3, 10.0, 1.0)


# --- early stopping -----------------------------------------------------------------------------------


def test_early_stopping_minimises_loss_and_stops_after_patience() -> None:
    early = EarlyStopping("val_loss", patience=2, min_delta=0.0)
    for number, loss in enumerate([1.0, 0.8, 0.9, 0.85], 1):
        early.update(epoch(number, val_loss=loss))
    assert early.best_epoch == 2 and early.bad_epochs == 2 and early.should_stop


def test_early_stopping_maximises_miou_and_needs_min_delta() -> None:
    early = EarlyStopping("val_miou", patience=3, min_delta=0.05)
    early.update(epoch(1, val_miou=0.30))
    early.update(epoch(2, val_miou=0.34))  # better, but by less than min_delta
    assert early.best_epoch == 1 and early.bad_epochs == 1
    early.update(epoch(3, val_miou=0.40))
    assert early.best_epoch == 3 and early.bad_epochs == 0 and not early.should_stop


def test_early_stopping_patience_zero_never_stops_and_first_epoch_is_best_even_if_nan() -> None:
    early = EarlyStopping("val_loss", patience=0, min_delta=0.0)
    early.update(epoch(1, val_loss=math.nan))
    assert early.best_epoch == 1
    for number in range(2, 10):
        early.update(epoch(number, val_loss=5.0))
    assert not early.should_stop


def test_early_stopping_state_round_trips() -> None:
    early = EarlyStopping("val_loss", patience=2, min_delta=0.0)
    early.update(epoch(1, val_loss=1.0))
    early.update(epoch(2, val_loss=2.0))
    restored = EarlyStopping("val_loss", patience=2, min_delta=0.0)
    restored.load_state_dict(early.state_dict())
    restored.update(epoch(3, val_loss=3.0))
    assert restored.should_stop and restored.best_epoch == 1


# --- optimizer ----------------------------------------------------------------------------------------


def test_optimizer_groups_head_lr_and_no_decay_on_norms_and_biases() -> None:
    config = load_config(overrides=["optim.lr=0.001", "optim.head_lr_mult=10", "optim.weight_decay=0.01"])
    model = build_model(ModelConfig(variant="b0"), {0: "a", 1: "b"})
    optimizer = build_optimizer(model, config)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(0.01 if name.startswith("decode_head.") else 0.001), name
        assert group["weight_decay"] == (0.0 if param.ndim <= 1 else 0.01), name
    assert len(group_of) == sum(1 for _ in model.parameters())  # every parameter, once
    assert len(optimizer.param_groups) == 4


# --- where a run starts -------------------------------------------------------------------------------


def test_fresh_folder_starts_fresh_with_or_without_resume(tmp_path: Path) -> None:
    assert choose_start(RunDir(tmp_path / "new"), resume=False) is Start.FRESH
    assert choose_start(RunDir(tmp_path / "new"), resume=True) is Start.FRESH


def test_unfinished_run_resumes_only_when_asked(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.temp.mkdir()
    run.last.write_bytes(b"")
    assert choose_start(run, resume=True) is Start.RESUME
    with pytest.raises(UserError, match="holds an unfinished run"):
        choose_start(run, resume=False)


def test_finished_run_is_finished_on_resume_and_refused_otherwise(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.final.mkdir()
    run.metrics.write_text("{}")
    assert choose_start(run, resume=True) is Start.FINISHED
    with pytest.raises(UserError, match="already holds a finished run"):
        choose_start(run, resume=False)


def test_train_state_round_trips_through_its_state_dict() -> None:
    config = load_config()
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="b0"), {0: "a", 1: "b"})
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    state = TrainState(model, optimizer, scheduler, EarlyStopping("val_loss", 3, 0.0), [epoch(1)])
    model(pixel_values=torch.randn(1, 3, 64, 64)).logits.sum().backward()
    optimizer.step()
    scheduler.step()
    saved = state.state_dict()
    expected_next = torch.rand(3)

    torch.manual_seed(1)
    other_model = build_model(ModelConfig(variant="b0"), {0: "a", 1: "b"})
    other_optimizer = build_optimizer(other_model, config)
    other_scheduler = torch.optim.lr_scheduler.LambdaLR(other_optimizer, lambda step: 1.0 / (step + 1))
    restored = TrainState(other_model, other_optimizer, other_scheduler, EarlyStopping("val_loss", 3, 0.0))
    restored.load_state_dict(saved)
    assert restored.epochs_done == 1 and restored.history[0] == epoch(1)
    assert other_scheduler.get_last_lr() == scheduler.get_last_lr()
    for a, b in zip(model.state_dict().values(), other_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)  # the RNG continues where the checkpoint left it
