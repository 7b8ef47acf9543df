"""The search space: `search.space` parsed into Optuna distributions, and parameters applied to a config.

Keys are dotted config keys. Categorical choices Optuna cannot store (lists such as a crop size) travel
through the study as their JSON text (`Param.labels` maps them back).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sideformer.config import Config, load_config
from sideformer.errors import UserError


@dataclass(frozen=True)
class Param:
    key: str
    distribution: optuna.distributions.BaseDistribution
    labels: dict[str, Any]
    """Categorical choices Optuna cannot store (lists such as a crop size) travel as their JSON text."""


def parse_space(space: dict[str, dict[str, Any]]) -> list[Param]:
    """Validate `search.space` into Optuna distributions; every key must be a config key."""
    params = []
    for key, spec in space.items():
        where = f"search.space.{key}"
        if key.split(".")[0] in ("search", "output") or key == "data.path":
            raise UserError(f"{where}: '{key}' cannot be searched.")
        kind = spec.get("type")
        extra = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if extra:
            raise UserError(
                f"{where}: unknown field(s) {sorted(extra)}; use type, low, high, log, step, choices."
            )
        labels: dict[str, Any] = {}
        try:
            if kind in ("float", "int"):
                low, high = spec["low"], spec["high"]
                cls = FloatDistribution if kind == "float" else IntDistribution
                convert = float if kind == "float" else int
                step = spec.get("step")
                distribution = cls(
                    convert(low), convert(high), log=bool(spec.get("log", False)),
                    step=None if step is None else convert(step),
                )  # fmt: skip
            elif kind == "categorical":
                choices = spec["choices"]
                if not isinstance(choices, list) or not choices:
                    raise ValueError("choices must be a non-empty list")
                stored = []
                for choice in choices:
                    if isinstance(choice, list | dict):
                        labels[json.dumps(choice)] = choice
                        choice = json.dumps(choice)
                    stored.append(choice)
                distribution = CategoricalDistribution(stored)
            else:
                raise ValueError(f"type must be float, int or categorical, got {kind!r}")
        except (KeyError, ValueError, TypeError) as exc:
            detail = f"missing '{exc.args[0]}'" if isinstance(exc, KeyError) else str(exc)
            raise UserError(f"{where}: {detail}.") from None
        params.append(Param(key, distribution, labels))
    # Every key must name a config setting: resolve one sample to find out now, not in trial 7.
    apply_params(Config(), {p.key: _any_value(p) for p in params}, source="search.space")
    return params


def _any_value(param: Param) -> Any:
    d = param.distribution
    value = d.choices[0] if hasattr(d, "choices") else d.low
    return param.labels.get(value, value) if isinstance(value, str) else value


def space_size(params: list[Param]) -> float:
    size = 1.0
    for p in params:
        d = p.distribution
        if hasattr(d, "choices"):
            size *= len(d.choices)
        elif isinstance(d.low, int) and not d.log:
            size *= (d.high - d.low) // d.step + 1
        else:
            return math.inf
    return size


def apply_params(config: Config, params: dict[str, Any], source: str = "hyperparameters") -> Config:
    """A copy of `config` with dotted-key parameters set, validated like --set."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in params.items()]
    try:
        return load_config(base=config.to_dict(), overrides=overrides)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def to_stored(param: Param, value: Any) -> Any:
    """`value` as the study stores it (a list choice as its JSON text); None when the distribution does
    not contain it (outside the bounds, off the step, not a choice)."""
    d = param.distribution
    if isinstance(d, CategoricalDistribution):
        stored = json.dumps(value) if isinstance(value, list | dict) else value
        return stored if stored in d.choices else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(d, IntDistribution) and float(value) != int(value):
        return None
    stored = float(value) if isinstance(d, FloatDistribution) else int(value)
    return stored if d._contains(d.to_internal_repr(stored)) else None


def config_value(config: Config, key: str) -> Any:
    """The value of dotted `key` in `config` (keys were checked by parse_space)."""
    value: Any = config.to_dict()
    for part in key.split("."):
        value = value[part]
    return value


def outside_space(params: dict[str, Any], space: list[Param], source: str) -> dict[str, Any]:
    """`params` in stored form, refused with one line naming the first key or value outside `space`."""
    by_key = {p.key: p for p in space}
    stored = {}
    for key, value in params.items():
        if key not in by_key:
            raise UserError(
                f"{source}: parameter '{key}' is not in today's search.space ({', '.join(by_key)}); "
                f"warm-start from a study of the same space, or add the key to search.space."
            )
        fitted = to_stored(by_key[key], value)
        if fitted is None:
            raise UserError(
                f"{source}: {key}={value!r} is outside today's search.space ({by_key[key].distribution}); "
                f"widen search.space.{key} or warm-start from another study."
            )
        stored[key] = fitted
    return stored


def read_params_json(path: Path, where: str, not_found: str, expected: str) -> dict[str, Any]:
    """A JSON object with a 'params' mapping (a best_hyperparams.json); each failure is one UserError
    starting with `where`: `not_found` and `expected` say what to do for a missing file or another shape."""
    if not path.is_file():
        raise UserError(f"{where}: {not_found}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: not valid JSON ({exc}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise UserError(f"{where}: {expected}")
    return doc
