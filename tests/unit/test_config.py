from __future__ import annotations

from pathlib import Path

import pytest

from sideformer.config import load_config
from sideformer.errors import UserError


def test_defaults_follow_the_segformer_recipe() -> None:
    c = load_config()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.head_lr_mult) == (6e-5, 0.01, 10.0)
    assert (c.optim.warmup_steps, c.optim.poly_power) == (1500, 1.0)
    assert c.early_stop.monitor == "val_loss"


def test_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 4\noptim:\n  lr: 6e-4\nmodel:\n  variant: b2\n")
    c = load_config(path, ["train.epochs=9", "data.crop_size=[128, 96]", "model.pretrained=null"])
    assert c.train.epochs == 9 and c.train.batch_size == 4
    assert c.optim.lr == pytest.approx(6e-4)  # YAML 1.1 reads 6e-4 as text; still a number here
    assert c.model.variant == "b2" and c.model.pretrained is None
    assert c.data.crop_size == [128, 96]


def test_ints_are_accepted_for_floats_but_not_bools() -> None:
    assert load_config(overrides=["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(UserError, match=r"'train\.epochs' must be int"):
        load_config(overrides=["train.epochs=true"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.epoch=3",
            r"unknown key 'train.epoch'. Did you mean 'train.epochs'\? Valid keys here: batch_size",
        ),
        ("trian.epochs=3", r"unknown key 'trian'.*Valid keys here: .*train"),
        ("optim.lr=fast", r"'optim.lr' must be float, got 'fast'"),
        ("train.precision=fp16", r"must be one of \['auto', 'fp32', 'bf16'\]"),
        ("model.variant=b9", r"model.variant = 'b9': must be one of"),
        ("data.crop_size=[16, 16]", r"data.crop_size = \[16, 16\]: must be \[h, w\], each >= 32"),
        ("data.train_fraction=0", r"data.train_fraction = 0.0: must be in \(0, 1\]"),
        ("data=3", "is a section"),
        ("epochs", "expected key=value"),
    ],
)
def test_bad_values_are_rejected_with_the_key_and_fix(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(overrides=[override])


def test_unknown_key_in_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(
        UserError, match=rf"{path}: unknown key 'optim.learning_rate'.*Valid keys here: betas"
    ):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(path)
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_turns_config_errors_into_one_line(tmp_path: Path, capsys) -> None:
    from sideformer.cli import main

    code = main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "train.epoch=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sideformer: error: --set train.epoch=1: unknown key") and "Traceback" not in err
    assert not (tmp_path / "o").exists()
