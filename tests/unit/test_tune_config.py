"""The search space in the config: parsed into Optuna distributions, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

import sideformer
from sideformer.config import Config, load_config
from sideformer.errors import UserError
from sideformer.study import resolve_storage_url
from sideformer.tune import apply_params, parse_space, read_hyperparams, space_size

CONFIGS = Path(sideformer.__file__).parent / "configs"


@pytest.mark.parametrize("name", ["finetune-b2.yaml", "search.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(CONFIGS / name)
    parse_space(config.search.space)


def test_default_space_parses() -> None:
    params = {p.key: p.distribution for p in parse_space(Config().search.space)}
    assert params["optim.lr"] == FloatDistribution(1e-5, 5e-4, log=True)
    assert isinstance(params["optim.warmup_steps"], IntDistribution)
    assert isinstance(params["train.batch_size"], CategoricalDistribution)


def test_list_choices_travel_as_text_and_come_back_as_lists() -> None:
    (param,) = parse_space({"data.crop_size": {"type": "categorical", "choices": [[256, 256], [512, 512]]}})
    assert param.distribution.choices == ("[256, 256]", "[512, 512]")
    assert param.labels["[512, 512]"] == [512, 512]
    assert apply_params(Config(), {"data.crop_size": [512, 512]}).data.crop_size == [512, 512]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"optim.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "unknown key 'optim.learning_rate'",
        ),
        (
            {"optim.lr": {"type": "uniform", "low": 1e-5, "high": 1e-3}},
            "type must be float, int or categorical",
        ),
        ({"optim.lr": {"type": "float", "low": 1e-5}}, "missing 'high'"),
        ({"optim.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, r"search.space.optim.lr"),
        ({"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, r"search.space.optim.lr"),
        ({"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "scale": 2}}, "unknown field"),
        ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty list"),
        ({"train.batch_size": {"type": "categorical", "choices": ["big"]}}, "'train.batch_size' must be int"),
        ({"output": {"type": "categorical", "choices": ["a"]}}, "cannot be searched"),
    ],
)
def test_bad_spaces_are_rejected(space: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_space(space)


def test_space_size() -> None:
    space = {
        "train.batch_size": {"type": "categorical", "choices": [4, 8]},
        "optim.warmup_steps": {"type": "int", "low": 0, "high": 200, "step": 100},
    }
    finite = parse_space(space)
    assert space_size(finite) == 6
    assert space_size(parse_space(Config().search.space)) == float("inf")


def test_storage_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    assert resolve_storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg2://u:p@db/optuna")
    assert resolve_storage_url(None, tmp_path) == "postgresql+psycopg2://u:p@db/optuna"
    assert resolve_storage_url("sqlite:///x.db", tmp_path) == "sqlite:///x.db"
    with pytest.raises(UserError, match="unknown URL scheme"):
        resolve_storage_url("redis://u:secret@db", tmp_path)


def test_hyperparameter_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "best_hyperparams.json"
    path.write_text('{"params": {"optim.lr": 0.0003, "data.crop_size": [512, 512]}, "best_epoch": 7}')
    doc = read_hyperparams(path)
    assert doc["best_epoch"] == 7
    assert apply_params(Config(), doc["params"]).optim.lr == 0.0003
