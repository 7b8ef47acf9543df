"""AI-Hub "Surface Masking" (CVAT XML 1.1) -> the metadata.json layout (`sideformer convert-aihub`).

The archives unpack into one folder per scene (a walk filmed as consecutive frames)::

    SRC/.../Surface_001/MP_SEL_SUR_000001.jpg
    SRC/.../Surface_001/<annotations>.xml        CVAT for images 1.1: polygons and polylines
    SRC/.../Surface_001/MASK/MP_SEL_SUR_000001.png   the same annotations rendered in the palette

A shape's class is `<label>_<value>`, the value being its `attribute` (a radio attribute declared under
the XML's `<labels>`); a shape without the attribute takes the label's `default_value`; a label that
declares no attribute (`bike_lane`) is its own class. Shapes are filled in ascending `z_order` (document
order breaks ties), so a manhole drawn over a sidewalk stays a manhole; unlabelled pixels are background.
Scenes, never frames, are split into train/valid/test (consecutive frames are near-duplicates), by a
seeded shuffle of the sorted scene names: the same source and seed give the same split.

Everything is parsed and checked before anything is written: a malformed XML, a label outside the
22-class vocabulary or an image missing on disk is one error naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm.auto import tqdm

from sideformer.atomic import atomic_path, atomic_write_bytes, atomic_write_json
from sideformer.data.classes import CLASS_ID, CLASS_NAMES, IGNORE_INDEX, PALETTE
from sideformer.data.images import decode_palette, encode_mask
from sideformer.data.metadata import write_metadata
from sideformer.errors import UserError

log = logging.getLogger(__name__)

DATASET_NAME = "aihub-surface"
CLASS_ATTRIBUTE = "attribute"
"""The name AI-Hub gives the radio attribute that refines a label (sidewalk -> blocks, cement, ...)."""
ALIASES = {"bike_lane_normal": "bike_lane"}
"""Class names some releases spell differently from the 22-class vocabulary."""
MASK_DIRS = ("MASK", "mask", "Mask")
SUBPIXEL_BITS = 4  # CVAT points are floats: rasterise at 1/16 pixel instead of truncating them

MaskSource = Literal["polygons", "masks"]
PolylineMode = Literal["fill", "line", "skip"]
UnknownMode = Literal["error", "ignore"]
LinkMode = Literal["copy", "hardlink", "symlink"]


@dataclass(frozen=True)
class LabelSpec:
    """One `<label>` of the XML's `<labels>`: which attribute refines it, and its default value."""

    name: str
    attribute: str | None
    default: str | None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shape:
    kind: Literal["polygon", "polyline"]
    class_name: str
    class_id: int
    """Index in CLASS_NAMES, or IGNORE_INDEX for an unknown class kept as ignore."""
    points: np.ndarray
    """(n, 2) float pixel coordinates (x, y)."""
    z_order: int
    order: int
    """Position in the XML: breaks z_order ties the way CVAT draws them."""


@dataclass(frozen=True)
class Frame:
    xml: Path
    name: str
    """The image's name as the XML gives it."""
    image: Path
    width: int
    height: int
    shapes: tuple[Shape, ...]


@dataclass
class ConversionSummary:
    out: Path
    scenes: dict[str, list[str]]
    images: dict[str, int]
    shapes_per_class: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    """What was left out and why: degenerate shapes, other shape kinds, missing images, ..."""


# --- parsing ----------------------------------------------------------------------------------------


def parse_labels(root: ET.Element, xml: Path) -> dict[str, LabelSpec]:
    """The `<meta>/.../<labels>` declarations (task, job or project export)."""
    specs: dict[str, LabelSpec] = {}
    for label in root.findall("./meta//labels/label"):
        name = (label.findtext("name") or "").strip()
        if not name:
            raise UserError(f"{xml}: a <label> in <labels> has no <name>. Re-export the task from CVAT.")
        attributes = label.findall("./attributes/attribute")
        chosen = next(
            (a for a in attributes if (a.findtext("name") or "").strip() == CLASS_ATTRIBUTE),
            attributes[0] if len(attributes) == 1 else None,
        )
        if chosen is None:
            specs[name] = LabelSpec(name, None, None)
            continue
        values = tuple(v.strip() for v in (chosen.findtext("values") or "").splitlines() if v.strip())
        default = (chosen.findtext("default_value") or "").strip() or (values[0] if values else None)
        specs[name] = LabelSpec(name, (chosen.findtext("name") or "").strip(), default, values)
    return specs


def parse_points(text: str | None) -> np.ndarray:
    """CVAT's "x1,y1;x2,y2;..." -> (n, 2) float array; ValueError on anything else."""
    if not text or not text.strip():
        raise ValueError("no points")
    pairs = [p.split(",") for p in text.strip().strip(";").split(";")]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"expected 'x,y;x,y;...', got {text[:60]!r}")
    points = np.asarray(pairs, dtype=np.float64)  # ValueError on non-numbers
    if not np.isfinite(points).all():
        raise ValueError("non-finite coordinate")
    return points


def parse_cvat_xml(
    xml: Path, unknown: UnknownMode = "error", skipped: Counter | None = None
) -> list[tuple[ET.Element, str, int, int, list[Shape]]]:
    """Every `<image>` of one CVAT XML 1.1 file: (element, name, width, height, shapes)."""
    skipped = skipped if skipped is not None else Counter()
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise UserError(
            f"{xml}: malformed XML ({exc}). Fix the file or export the annotations again from CVAT as "
            f"'CVAT for images 1.1'."
        ) from None
    except OSError as exc:
        raise UserError(f"{xml}: cannot read ({exc.strerror}).") from None
    if root.tag != "annotations":
        raise UserError(
            f"{xml}: not a CVAT XML 1.1 annotation file (root element <{root.tag}>, expected "
            f"<annotations>). Export the task as 'CVAT for images 1.1', or move this file out of --src."
        )
    version = (root.findtext("version") or "").strip()
    if version and version != "1.1":
        log.warning("%s: CVAT XML version %s; this converter reads 1.1 and may misread it", xml, version)
    specs = parse_labels(root, xml)

    images = []
    for element in root.iter("image"):
        name = element.get("name")
        try:
            width, height = int(element.get("width", "")), int(element.get("height", ""))
        except ValueError:
            width = height = 0
        if not name or width <= 0 or height <= 0:
            raise UserError(
                f"{xml}: an <image> (id={element.get('id')!r}, name={name!r}) lacks a name or a positive "
                f"width/height. Fix that element or export the task again."
            )
        shapes = []
        for order, child in enumerate(element):
            if child.tag not in ("polygon", "polyline"):
                skipped[f"<{child.tag}> shapes (only polygons and polylines are drawn)"] += 1
                continue
            where = f"{xml}: image {name!r}, {child.tag} #{order + 1}"
            try:
                points = parse_points(child.get("points"))
            except ValueError as exc:
                raise UserError(f"{where}: bad points ({exc}). Fix the 'points' attribute.") from None
            if len(points) < (3 if child.tag == "polygon" else 2):
                skipped[f"{child.tag}s with too few points"] += 1
                continue
            try:
                z_order = int(child.get("z_order", "0"))
            except ValueError:
                raise UserError(f"{where}: z_order {child.get('z_order')!r} is not an integer.") from None
            class_name = _class_name(child, specs, where)
            class_id = CLASS_ID.get(class_name)
            if class_id is None:
                if unknown == "error":
                    raise UserError(
                        f"{where}: label {child.get('label')!r} gives class {class_name!r}, which is not one "
                        f"of the AI-Hub classes ({', '.join(CLASS_NAMES[1:])}). Fix the label or its "
                        f"attribute in the XML, or pass --unknown ignore to mark such shapes ignore "
                        f"({IGNORE_INDEX})."
                    )
                class_id = IGNORE_INDEX
            shapes.append(Shape(child.tag, class_name, class_id, points, z_order, order))  # type: ignore[arg-type]
        images.append((element, name, width, height, shapes))
    if not images:  # a scene would vanish from the dataset without a word
        raise UserError(
            f"{xml}: annotates no images (no <image> elements). Export the task again as 'CVAT for images "
            f"1.1', or move this file out of --src."
        )
    return images


def _class_name(shape: ET.Element, specs: dict[str, LabelSpec], where: str) -> str:
    label = shape.get("label")
    if not label:
        raise UserError(f"{where}: shape without a label. Give it one in CVAT and export again.")
    values = {a.get("name"): (a.text or "").strip() for a in shape.findall("attribute")}
    spec = specs.get(label)
    if spec is None:  # undeclared label: use the attribute if the shape has one
        value = values.get(CLASS_ATTRIBUTE) or None
    elif spec.attribute is None:
        value = None
    else:
        value = values.get(spec.attribute) or spec.default
        if value is None:
            raise UserError(
                f"{where}: label {label!r} has no {spec.attribute!r} value and <labels> gives no "
                f"default_value for it. Set the attribute on the shape."
            )
    name = f"{label}_{value}" if value else label
    return ALIASES.get(name, name)


# --- rasterising -----------------------------------------------------------------------------------


def render_mask(
    shapes: Iterable[Shape],
    height: int,
    width: int,
    polylines: PolylineMode = "fill",
    line_width: int = 3,
) -> np.ndarray:
    """Class ids (uint8 HxW): background 0, shapes painted in ascending z_order.

    A polyline is closed and filled (`fill`, the default: annotators outline surfaces with them), drawn as
    a `line_width`-pixel line (`line`; also a fill-mode polyline of two points), or left out (`skip`).
    """
    mask = np.zeros((height, width), np.uint8)
    for shape in sorted(shapes, key=lambda s: (s.z_order, s.order)):
        points = np.round(shape.points * (1 << SUBPIXEL_BITS)).astype(np.int32).reshape(-1, 1, 2)
        if shape.kind == "polyline" and polylines == "skip":
            continue
        if shape.kind == "polygon" or (polylines == "fill" and len(shape.points) >= 3):
            cv2.fillPoly(mask, [points], int(shape.class_id), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
        else:
            cv2.polylines(
                mask, [points], False, int(shape.class_id), thickness=line_width, shift=SUBPIXEL_BITS
            )
    return mask


# --- the whole conversion --------------------------------------------------------------------------


def split_scenes(scenes: Iterable[str], valid: float, test: float, seed: int) -> dict[str, list[str]]:
    """Seeded shuffle of the sorted scene names, then test, valid, train. Train always keeps one scene;
    valid and test get at least one when their fraction is > 0 and there are scenes to spare."""
    order = sorted(set(scenes))
    random.Random(seed).shuffle(order)
    n = len(order)
    n_valid = max(1, round(n * valid)) if valid > 0 and n >= 2 else 0
    n_test = max(1, round(n * test)) if test > 0 and n >= 3 else 0
    while n_valid + n_test >= n and (n_valid or n_test):
        if n_test >= n_valid and n_test:
            n_test -= 1
        else:
            n_valid -= 1
    return {
        "train": sorted(order[n_test + n_valid :]),
        "valid": sorted(order[n_test : n_test + n_valid]),
        "test": sorted(order[:n_test]),
    }


def convert_aihub(
    src: str | Path,
    out: str | Path,
    *,
    source: MaskSource = "polygons",
    valid: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    polylines: PolylineMode = "fill",
    line_width: int = 3,
    unknown: UnknownMode = "error",
    skip_missing: bool = False,
    link: LinkMode = "copy",
    workers: int | None = None,
) -> ConversionSummary:
    """Convert every scene under `src` into a dataset at `out` (which must be new or empty)."""
    src, out = Path(src), Path(out)
    _check_folders(src, out, valid, test)

    # Parse and check everything first: nothing is written for a conversion that would fail.
    skipped: Counter = Counter()
    # With --from masks the shapes are not drawn, so their labels cannot stop the conversion.
    frames = _read_frames(src, "ignore" if source == "masks" else unknown, skip_missing, skipped)
    if source == "masks":
        _check_colour_masks(frames)
    if not frames:
        raise UserError(f"--src {src}: the XML files list no image found on disk; nothing to convert.")

    assignment = split_scenes(frames, valid, test, seed)
    jobs = [
        (split, scene, frame)
        for split, names in assignment.items()
        for scene in names
        for frame in frames[scene]
    ]

    def write(job: tuple[str, str, Frame]) -> tuple[str, str]:
        split, scene, frame = job
        stem = _output_stem(scene, frame.name)
        image_rel = f"{split}/images/{stem}{frame.image.suffix.lower()}"
        mask_rel = f"{split}/masks/{stem}.png"
        if source == "polygons":
            mask = render_mask(frame.shapes, frame.height, frame.width, polylines, line_width)
        else:
            mask = _read_colour_mask(frame)
        atomic_write_bytes(out / mask_rel, encode_mask(mask))
        _place(frame.image, out / image_rel, link)
        return image_rel, mask_rel

    out.mkdir(parents=True, exist_ok=True)
    pairs = _write_all(jobs, write, list(assignment), out, workers)
    shapes_per_class = Counter(
        shape.class_name
        for scene_frames in frames.values()
        for f in scene_frames
        for shape in f.shapes
        if source == "polygons"
    )
    summary = ConversionSummary(
        out=out,
        scenes=assignment,
        images={split: len(p) for split, p in pairs.items()},
        shapes_per_class=shapes_per_class,
        skipped=skipped,
    )
    _write_conversion_record(summary, src, source, seed, valid, test, polylines)
    # metadata.json last: a dataset folder with it is a finished conversion.
    write_metadata(out, DATASET_NAME, CLASS_NAMES, PALETTE, pairs, ignore_index=IGNORE_INDEX)
    return summary


def _write_conversion_record(
    summary: ConversionSummary,
    src: Path,
    source: MaskSource,
    seed: int,
    valid: float,
    test: float,
    polylines: PolylineMode,
) -> None:
    """conversion.json: how the dataset was made, enough to make it again."""
    atomic_write_json(
        summary.out / "conversion.json",
        {
            "source": str(src.resolve()),
            "masks_from": source,
            "seed": seed,
            "valid_fraction": valid,
            "test_fraction": test,
            "polylines": polylines,
            "scenes": summary.scenes,
            "images": summary.images,
            "shapes_per_class": dict(sorted(summary.shapes_per_class.items())),
            "skipped": dict(summary.skipped),
        },
    )


def _check_folders(src: Path, out: Path, valid: float, test: float) -> None:
    if not src.is_dir():
        raise UserError(f"--src {src}: no such folder. Point it at the unpacked Surface Masking archives.")
    if not 0 <= valid < 1 or not 0 <= test < 1 or valid + test >= 1:
        raise UserError(f"--valid {valid} / --test {test}: fractions must be in [0, 1) and sum to < 1.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not empty; remove it or choose a new folder.")
    if out.resolve().is_relative_to(src.resolve()):
        raise UserError(f"--out {out}: is inside --src {src}; choose a folder outside the source data.")


def _read_frames(
    src: Path, unknown: UnknownMode, skip_missing: bool, skipped: Counter
) -> dict[str, list[Frame]]:
    """Every annotated frame whose image is on disk, by scene (the XML's folder under `src`)."""
    xml_files = sorted(
        p for p in src.rglob("*.xml") if not set(p.relative_to(src).parts[:-1]) & set(MASK_DIRS)
    )
    if not xml_files:
        raise UserError(f"--src {src}: no CVAT .xml files found. Point it at the unpacked archives.")
    frames: dict[str, list[Frame]] = {}
    seen: dict[tuple[str, str], Path] = {}
    for xml in tqdm(xml_files, desc="reading XML", unit="file", leave=False, disable=None):
        scene = xml.parent.relative_to(src).as_posix()
        for _, name, width, height, shapes in parse_cvat_xml(xml, unknown, skipped):
            if (scene, name) in seen:
                raise UserError(
                    f"{xml}: image {name!r} is also annotated in {seen[scene, name]}; keep one of the two."
                )
            seen[scene, name] = xml
            image = _find_image(xml.parent, name)
            if image is None:
                if not skip_missing:
                    raise UserError(
                        f"{xml}: image {name!r} is missing on disk (expected {xml.parent / name}). Restore "
                        f"it, or pass --skip-missing to leave such frames out."
                    )
                skipped["frames whose image is missing"] += 1
                continue
            frames.setdefault(scene, []).append(Frame(xml, name, image, width, height, tuple(shapes)))
    return frames


def _check_colour_masks(frames: dict[str, list[Frame]]) -> None:
    for scene_frames in frames.values():
        for frame in scene_frames:
            if _find_mask(frame) is None:
                raise UserError(
                    f"{frame.xml}: no colour mask for image {frame.name!r} (expected "
                    f"{frame.xml.parent / MASK_DIRS[0] / (Path(frame.name).stem + '.png')}). "
                    f"Restore the MASK folder, or convert from the polygons (--from polygons)."
                )


def _write_all(
    jobs: list[tuple[str, str, Frame]],
    write: Callable[[tuple[str, str, Frame]], tuple[str, str]],
    splits: list[str],
    out: Path,
    workers: int | None,
) -> dict[str, list[tuple[str, str]]]:
    """Run `write` over the jobs in threads; (image, mask) paths per split, in job order. On any failure
    `out` (new or empty before) is removed: no half-written dataset is left behind."""
    pairs: dict[str, list[tuple[str, str]]] = {split: [] for split in splits}
    try:
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(write, jobs)
            for (split, _, _), pair in tqdm(
                zip(jobs, results, strict=True), total=len(jobs), desc="converting", unit="img", disable=None
            ):
                pairs[split].append(pair)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return pairs


def format_summary(summary: ConversionSummary) -> str:
    lines = [f"wrote {summary.out / 'metadata.json'}"]
    for split, scenes in summary.scenes.items():
        lines.append(f"  {split:<5} {len(scenes):>4} scene(s) {summary.images.get(split, 0):>7} image(s)")
    if summary.shapes_per_class:
        lines.append("shapes per class:")
        lines += [f"  {name:<30} {n}" for name, n in sorted(summary.shapes_per_class.items())]
    if summary.skipped:
        lines.append("left out:")
        lines += [f"  {n} {what}" for what, n in sorted(summary.skipped.items())]
    if not summary.scenes.get("valid"):
        lines.append("note: no validation scenes (too few scenes); training needs a 'valid' split.")
    return "\n".join(lines)


def _find_image(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / Path(name).name):
        if candidate.is_file():
            return candidate
    return None


def _find_mask(frame: Frame) -> Path | None:
    stem = Path(frame.name).stem
    for mask_dir in MASK_DIRS:
        candidate = frame.xml.parent / mask_dir / f"{stem}.png"
        if candidate.is_file():
            return candidate
    return None


def _read_colour_mask(frame: Frame) -> np.ndarray:
    path = _find_mask(frame)
    assert path is not None  # checked before writing started
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{path}: cannot read the colour mask (empty or not an image).")
    if bgr.shape[:2] != (frame.height, frame.width):
        raise UserError(
            f"{path}: mask is {bgr.shape[1]}x{bgr.shape[0]} but {frame.xml} gives {frame.width}x"
            f"{frame.height} for {frame.name!r}; convert from the polygons instead (--from polygons)."
        )
    return decode_palette(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), PALETTE, path)


def _output_stem(scene: str, name: str) -> str:
    """Scene folder + frame name, flattened: frame names repeat across scenes and archives."""
    parts = [p for p in Path(scene).parts if p not in ("", ".")] + list(Path(name).with_suffix("").parts)
    return "__".join(parts)


def _place(source: Path, target: Path, link: LinkMode) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "symlink":
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source.resolve())
        os.replace(tmp, target)
        return
    if link == "hardlink":
        try:
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.unlink(missing_ok=True)
            os.link(source, tmp)
            os.replace(tmp, target)
            return
        except OSError:  # another filesystem: copy instead
            pass
    with atomic_path(target) as tmp_path:
        shutil.copyfile(source, tmp_path)
