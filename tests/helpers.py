"""Helpers that write small datasets by hand."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


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
