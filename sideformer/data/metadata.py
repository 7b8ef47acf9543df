"""Read and write a dataset's `metadata.json` (see DESIGN.md, Data).

Current form::

    {"name": ..., "classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255,
     "splits": {"train": [{"image": ..., "mask": ...}], "valid": [...], "test": [...]}}

Legacy form: top-level "train"/"valid"/"test" lists; classes then come from the config
(`data.classes`). Paths are relative to the folder holding metadata.json.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sideformer.atomic import atomic_write_json
from sideformer.config import SPLITS
from sideformer.errors import UserError

METADATA_FILE = "metadata.json"
DEFAULT_IGNORE_INDEX = 255


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path


@dataclass
class DatasetMeta:
    root: Path
    name: str
    classes: list[str]
    palette: list[tuple[int, int, int]] | None
    ignore_index: int
    splits: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    def split(self, name: str) -> list[Sample]:
        return self.splits.get(name, [])


def load_metadata(
    path: str | Path,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> DatasetMeta:
    """Parse a dataset folder (or its metadata.json). `classes`/`palette` fill in for the legacy form."""
    path = Path(path)
    meta_file = path / METADATA_FILE if path.is_dir() else path
    if not meta_file.is_file():
        raise UserError(
            f"{meta_file}: no such file. A dataset is a folder with metadata.json "
            f"(make one with `sideformer synth --out DIR`, or see README 'Dataset layout')."
        )
    try:
        raw = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_file}: not valid JSON ({exc}). Fix the file's syntax.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{meta_file}: expected a JSON object at the top level.")

    root = meta_file.parent
    if "splits" in raw:
        if not isinstance(raw["splits"], dict):
            raise UserError(f"{meta_file}: 'splits' must be an object of split name -> list of samples.")
        split_lists = raw["splits"]
    elif any(s in raw for s in SPLITS):  # legacy: splits at the top level
        split_lists = {s: raw[s] for s in SPLITS if s in raw}
    else:
        raise UserError(f"{meta_file}: no 'splits' (or legacy top-level 'train'/'valid') found.")

    unknown = sorted(set(split_lists) - set(SPLITS))
    if unknown:
        raise UserError(f"{meta_file}: unknown split(s) {unknown}; valid splits are {list(SPLITS)}.")

    class_list = raw.get("classes", classes)
    if class_list is None:
        raise UserError(
            f"{meta_file}: no 'classes' list. Add one to metadata.json, "
            f"or give them in the config as data.classes (legacy layout)."
        )
    if (
        not isinstance(class_list, list)
        or not class_list
        or not all(isinstance(c, str) and c for c in class_list)
    ):
        raise UserError(f"{meta_file}: 'classes' must be a non-empty list of class names.")
    if len(set(class_list)) != len(class_list):
        dupes = sorted({c for c in class_list if class_list.count(c) > 1})
        raise UserError(f"{meta_file}: duplicate class names {dupes}.")

    ignore_index = raw.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255:
        raise UserError(f"{meta_file}: 'ignore_index' must be an integer in 0..255, got {ignore_index!r}.")
    if ignore_index < len(class_list):
        raise UserError(
            f"{meta_file}: ignore_index {ignore_index} collides with class id {ignore_index} "
            f"({class_list[ignore_index]!r}); use 255."
        )
    if len(class_list) > 255:
        raise UserError(f"{meta_file}: at most 255 classes fit in 8-bit masks, got {len(class_list)}.")

    palette_raw = raw.get("palette", palette)
    return DatasetMeta(
        root=root,
        name=str(raw.get("name", root.name)),
        classes=list(class_list),
        palette=_parse_palette(palette_raw, len(class_list), meta_file),
        ignore_index=ignore_index,
        splits={
            name: _parse_samples(entries, root, name, meta_file) for name, entries in split_lists.items()
        },
    )


def _parse_palette(raw: Any, num_classes: int, meta_file: Path) -> list[tuple[int, int, int]] | None:
    if raw is None:
        return None
    ok = isinstance(raw, list) and all(
        isinstance(c, list | tuple) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
        for c in raw
    )
    if not ok:
        raise UserError(f"{meta_file}: 'palette' must be a list of [r, g, b] triples of integers 0..255.")
    if len(raw) != num_classes:
        raise UserError(
            f"{meta_file}: 'palette' has {len(raw)} colours for {num_classes} classes; give one per class."
        )
    colours = [tuple(c) for c in raw]
    if len(set(colours)) != len(colours):
        raise UserError(f"{meta_file}: two classes share a palette colour; colours must be distinct.")
    return colours  # type: ignore[return-value]


def _parse_samples(entries: Any, root: Path, split: str, meta_file: Path) -> list[Sample]:
    if not isinstance(entries, list):
        raise UserError(f"{meta_file}: split '{split}' must be a list of {{'image', 'mask'}} entries.")
    samples = []
    for i, entry in enumerate(entries):
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("image"), str)
            and isinstance(entry.get("mask"), str)
        ):
            image, mask = entry["image"], entry["mask"]
        elif isinstance(entry, list | tuple) and len(entry) == 2 and all(isinstance(p, str) for p in entry):
            image, mask = entry  # legacy [image, mask] pairs
        else:
            raise UserError(
                f'{meta_file}: {split}[{i}] must be {{"image": path, "mask": path}}, got {entry!r}.'
            )
        samples.append(Sample(image=root / image, mask=root / mask))
    return samples


def write_metadata(
    root: str | Path,
    name: str,
    classes: Sequence[str],
    palette: Iterable[Sequence[int]] | None,
    splits: dict[str, list[tuple[str, str]]],
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> Path:
    """Write metadata.json atomically; `splits` maps split -> [(image, mask)] relative to `root`."""
    root = Path(root)
    doc: dict[str, Any] = {"name": name, "classes": list(classes)}
    if palette is not None:
        doc["palette"] = [list(c) for c in palette]
    doc["ignore_index"] = ignore_index
    doc["splits"] = {
        split: [{"image": image, "mask": mask} for image, mask in pairs] for split, pairs in splits.items()
    }
    target = root / METADATA_FILE
    atomic_write_json(target, doc)
    return target
