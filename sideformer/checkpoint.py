"""Checkpoints: written atomically (temp file + rename), read with `weights_only=True`.

A crash while saving leaves the previous checkpoint intact; a checkpoint never unpickles code.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from sideformer.atomic import atomic_write_with
from sideformer.errors import UserError, first_line


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write_with(path, lambda tmp: _save(state, tmp))


def _save(state: dict[str, Any], tmp: Path) -> None:
    # Through a Python file: a full disk is then an OSError (ENOSPC) rather than torch's C++ writer's
    # "unexpected pos" RuntimeError.
    with open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found.") from None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # truncated or foreign
        raise UserError(f"{path}: not a readable checkpoint ({first_line(exc)}).") from None
