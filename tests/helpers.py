"""Helpers: small datasets written by hand, and waiting for something to happen."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

T = TypeVar("T")


def write_pair(
    root: Path, stem: str, mask: np.ndarray, image: np.ndarray | None = None, split: str = "train"
) -> dict:
    """Write an image/mask pair under root/split and return its metadata entry."""
    h, w = mask.shape[:2]
    if image is None:
        image = np.full((h, w, 3), 127, np.uint8)
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / split / "images" / f"{stem}.png"), image)
    cv2.imwrite(str(root / split / "masks" / f"{stem}.png"), mask)
    return {"image": f"{split}/images/{stem}.png", "mask": f"{split}/masks/{stem}.png"}


def write_metadata_json(root: Path, doc: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text(json.dumps(doc))
    return root


def wait_until(
    condition: Callable[[], T], timeout: float, message: str | Callable[[], str], interval: float = 0.05
) -> T:
    """Poll `condition` until it returns something truthy, and return that. After `timeout` seconds, fail
    with `message` (a callable is called then, e.g. to read a log). `condition` may raise itself, e.g.
    an AssertionError when the process it waits on has exited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f} s: {detail}")
        time.sleep(interval)


def resize(folder: Path, size: str) -> None:
    """Grow (or shrink) a `small_disk` (tests/conftest.py) in place: the files on it stay."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
