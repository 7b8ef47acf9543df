"""convert-aihub on CVAT XML 1.1 fixtures written here: masks match hand-built ids pixel for pixel,
scenes are split whole and reproducibly, and bad input is one clear error naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sideformer.cli import main
from sideformer.data.aihub import convert_aihub, split_scenes
from sideformer.data.check import check_dataset
from sideformer.data.classes import CLASS_ID, CLASS_NAMES, PALETTE
from sideformer.data.images import read_mask
from sideformer.data.metadata import load_metadata
from sideformer.errors import UserError

W, H = 40, 30

LABELS = """
  <meta><task><labels>
    <label><name>sidewalk</name><attributes><attribute>
      <name>attribute</name><mutable>False</mutable><input_type>radio</input_type>
      <default_value>blocks</default_value>
      <values>blocks
cement
urethane
asphalt
soil_stone
damaged
other</values></attribute></attributes></label>
    <label><name>roadway</name><attributes><attribute>
      <name>attribute</name><input_type>radio</input_type><default_value>normal</default_value>
      <values>normal
crosswalk</values></attribute></attributes></label>
    <label><name>alley</name><attributes><attribute>
      <name>attribute</name><input_type>radio</input_type><default_value>normal</default_value>
      <values>normal
crosswalk
speed_bump
damaged</values></attribute></attributes></label>
    <label><name>braille_guide_blocks</name><attributes><attribute>
      <name>attribute</name><input_type>radio</input_type><default_value>normal</default_value>
      <values>normal
damaged</values></attribute></attributes></label>
    <label><name>caution_zone</name><attributes><attribute>
      <name>attribute</name><input_type>radio</input_type><default_value>stairs</default_value>
      <values>stairs
manhole
tree_zone
grating
repair_zone</values></attribute></attributes></label>
    <label><name>bike_lane</name><attributes></attributes></label>
  </labels></task></meta>"""


def rect(x0: float, y0: float, x1: float, y1: float) -> str:
    return f"{x0:.2f},{y0:.2f};{x1:.2f},{y0:.2f};{x1:.2f},{y1:.2f};{x0:.2f},{y1:.2f}"


def shape(kind: str, label: str, points: str, z: int, attribute: str | None = None) -> str:
    attr = f'<attribute name="attribute">{attribute}</attribute>' if attribute else ""
    head = f'<{kind} label="{label}" occluded="0" source="manual" points="{points}" z_order="{z}">'
    return f"{head}{attr}</{kind}>"


# Listed out of z order on purpose: the converter must sort by z_order, document order breaking ties.
SHAPES = [
    shape("polygon", "caution_zone", rect(5, 5, 9, 9), 3, "manhole"),
    shape("polygon", "roadway", rect(0, 15, 39, 29), 0, "crosswalk"),
    shape("polygon", "sidewalk", rect(0, 0, 19, 14), 1),  # no attribute: default_value "blocks"
    shape("polygon", "sidewalk", rect(15, 0, 24, 5), 1, "cement"),  # same z, later: drawn on top
    shape("polygon", "braille_guide_blocks", rect(2, 2, 12, 12), 2, "normal"),
    shape("polyline", "bike_lane", "25,2;35,2;35,10;25,10", 1),  # no attribute declared: its own class
    shape("polygon", "alley", rect(30, 20, 35, 25), 5, "speed_bump"),
    '<box label="roadway" xtl="1" ytl="1" xbr="3" ybr="3" z_order="9" occluded="0"></box>',
]


def expected_mask(polylines: str = "fill") -> np.ndarray:
    """The same scene painted by hand with numpy slices (rectangles include both edges)."""
    m = np.zeros((H, W), np.uint8)
    m[15:30, 0:40] = CLASS_ID["roadway_crosswalk"]  # z 0
    m[0:15, 0:20] = CLASS_ID["sidewalk_blocks"]  # z 1, in document order
    m[0:6, 15:25] = CLASS_ID["sidewalk_cement"]
    if polylines == "fill":
        m[2:11, 25:36] = CLASS_ID["bike_lane"]
    else:  # an open 1-pixel line: top, right side, bottom; the left side stays open
        m[2, 25:36] = m[2:11, 35] = m[10, 25:36] = CLASS_ID["bike_lane"]
    m[2:13, 2:13] = CLASS_ID["braille_guide_blocks_normal"]  # z 2
    m[5:10, 5:10] = CLASS_ID["caution_zone_manhole"]  # z 3
    m[20:26, 30:36] = CLASS_ID["alley_speed_bump"]  # z 5
    return m


def write_xml(path: Path, images: list[tuple[str, list[str]]], labels: str = LABELS) -> None:
    body = "".join(
        f'<image id="{i}" name="{name}" width="{W}" height="{H}">{"".join(shapes)}</image>'
        for i, (name, shapes) in enumerate(images)
    )
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f"<annotations><version>1.1</version>{labels}{body}</annotations>"
    )


def write_scene(
    src: Path, scene: str, frames: int = 2, shapes: list[str] = SHAPES, masks: bool = False
) -> Path:
    folder = src / "Surface_1" / scene
    folder.mkdir(parents=True)
    names = [f"MP_SEL_SUR_{scene[-3:]}{i:03d}.jpg" for i in range(frames)]
    for name in names:
        cv2.imwrite(str(folder / name), np.full((H, W, 3), 90, np.uint8))
        if masks:
            (folder / "MASK").mkdir(exist_ok=True)
            rgb = np.asarray(PALETTE, np.uint8)[expected_mask()]
            cv2.imwrite(
                str(folder / "MASK" / name.replace(".jpg", ".png")), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            )
    write_xml(folder / f"{scene}.xml", [(name, shapes) for name in names])
    return folder


def make_source(root: Path, scenes: int = 5, masks: bool = False) -> Path:
    src = root / "src"
    for i in range(1, scenes + 1):
        write_scene(src, f"Surface_{i:03d}", masks=masks)
    return src


def all_masks(out: Path) -> dict[str, np.ndarray]:
    meta = load_metadata(out)
    return {s.mask.name: read_mask(s.mask, meta.palette) for split in meta.splits.values() for s in split}


def test_polygons_become_the_expected_ids_pixel_for_pixel(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    summary = convert_aihub(src, tmp_path / "out", valid=0.2, test=0.2, seed=1)
    masks = all_masks(tmp_path / "out")
    assert len(masks) == 10
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, expected_mask(), err_msg=name)
    meta = load_metadata(tmp_path / "out")
    assert meta.classes == CLASS_NAMES and meta.palette == PALETTE and meta.ignore_index == 255
    assert check_dataset(meta, required_splits=("train", "valid", "test")).ok
    assert summary.shapes_per_class["sidewalk_blocks"] == 10 and summary.shapes_per_class["bike_lane"] == 10
    assert sum("<box>" in what for what in summary.skipped) == 1
    # The image files are the source's, byte for byte.
    first = meta.split("train")[0].image
    scene, frame = first.stem.split("__")[-2:]
    assert first.read_bytes() == (src / "Surface_1" / scene / f"{frame}.jpg").read_bytes()


def test_polylines_can_be_drawn_as_lines_or_left_out(tmp_path: Path) -> None:
    src = make_source(tmp_path, scenes=1)
    convert_aihub(src, tmp_path / "line", valid=0, test=0, polylines="line", line_width=1)
    for mask in all_masks(tmp_path / "line").values():
        np.testing.assert_array_equal(mask, expected_mask(polylines="line"))
    convert_aihub(src, tmp_path / "skip", valid=0, test=0, polylines="skip")
    for mask in all_masks(tmp_path / "skip").values():
        assert CLASS_ID["bike_lane"] not in mask


def test_scenes_are_split_whole_and_reproducibly(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    convert_aihub(src, tmp_path / "a", valid=0.2, test=0.2, seed=7)
    convert_aihub(src, tmp_path / "b", valid=0.2, test=0.2, seed=7)
    doc_a = json.loads((tmp_path / "a/metadata.json").read_text())
    assert doc_a["splits"] == json.loads((tmp_path / "b/metadata.json").read_text())["splits"]
    scenes_of = {
        split: {e["image"].split("/")[-1].split("__")[1] for e in entries}
        for split, entries in doc_a["splits"].items()
    }
    assert [len(scenes_of[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert not (scenes_of["train"] & scenes_of["valid"]) and not (scenes_of["train"] & scenes_of["test"])
    assert all(len(entries) % 2 == 0 for entries in doc_a["splits"].values())  # both frames of a scene
    conversion = json.loads((tmp_path / "a/conversion.json").read_text())
    assert conversion["seed"] == 7 and sorted(s for v in conversion["scenes"].values() for s in v) == [
        f"Surface_1/Surface_{i:03d}" for i in range(1, 6)
    ]


def test_split_scenes_keeps_a_training_scene() -> None:
    assert split_scenes(["a"], 0.1, 0.1, 0) == {"train": ["a"], "valid": [], "test": []}
    two = split_scenes(["a", "b"], 0.1, 0.1, 0)
    assert len(two["train"]) == 1 and len(two["valid"]) == 1 and two["test"] == []
    many = split_scenes([f"s{i}" for i in range(100)], 0.1, 0.2, 3)
    assert [len(many[s]) for s in ("train", "valid", "test")] == [70, 10, 20]
    assert many == split_scenes([f"s{i}" for i in reversed(range(100))], 0.1, 0.2, 3)
    assert many != split_scenes([f"s{i}" for i in range(100)], 0.1, 0.2, 4)


def test_colour_masks_beside_the_xml_can_be_used_instead(tmp_path: Path) -> None:
    src = make_source(tmp_path, scenes=2, masks=True)
    # Polygons that disagree with the shipped masks: the masks must win.
    (src / "Surface_1/Surface_001/Surface_001.xml").unlink()
    lava = shape("polygon", "sidewalk", rect(0, 0, 3, 3), 9, "lava")  # unknown, but no shape is drawn
    write_xml(
        src / "Surface_1/Surface_001/Surface_001.xml",
        [(f"MP_SEL_SUR_001{i:03d}.jpg", [lava]) for i in range(2)],
    )
    convert_aihub(src, tmp_path / "out", source="masks", valid=0, test=0)
    for mask in all_masks(tmp_path / "out").values():
        np.testing.assert_array_equal(mask, expected_mask())

    bad = np.zeros((H, W, 3), np.uint8)
    bad[0, 0] = (1, 2, 3)
    cv2.imwrite(str(src / "Surface_1/Surface_002/MASK/MP_SEL_SUR_002000.png"), bad)
    with pytest.raises(UserError, match=r"MP_SEL_SUR_002000\.png: colour \(3, 2, 1\)"):
        convert_aihub(src, tmp_path / "bad", source="masks", valid=0, test=0)
    assert not (tmp_path / "bad").exists()  # a failed conversion leaves no half-written dataset
    (src / "Surface_1/Surface_002/MASK/MP_SEL_SUR_002000.png").unlink()
    with pytest.raises(
        UserError, match=r"Surface_002\.xml: no colour mask for image 'MP_SEL_SUR_002000\.jpg'"
    ):
        convert_aihub(src, tmp_path / "missing", source="masks", valid=0, test=0)


def test_malformed_xml_names_the_file(tmp_path: Path) -> None:
    src = make_source(tmp_path, scenes=2)
    xml = src / "Surface_1/Surface_002/Surface_002.xml"
    xml.write_text(xml.read_text()[:-40])  # truncated mid-element
    with pytest.raises(UserError, match=rf"{xml}: malformed XML \(.*line \d+, column \d+\)"):
        convert_aihub(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before everything parsed

    xml.write_text("<dataset><image/></dataset>")
    with pytest.raises(UserError, match=rf"{xml}: not a CVAT XML 1.1 annotation file"):
        convert_aihub(src, tmp_path / "out")

    write_xml(xml, [("MP_SEL_SUR_002000.jpg", [shape("polygon", "sidewalk", "1,2;3", 1)])])
    with pytest.raises(UserError, match=r"image 'MP_SEL_SUR_002000.jpg', polygon #1: bad points"):
        convert_aihub(src, tmp_path / "out")


def test_unknown_label_fails_or_becomes_ignore(tmp_path: Path, capsys) -> None:
    src = make_source(tmp_path, scenes=1)
    xml = src / "Surface_1/Surface_001/Surface_001.xml"
    lava = shape("polygon", "sidewalk", rect(0, 0, 3, 3), 9, "lava")
    write_xml(xml, [("MP_SEL_SUR_001000.jpg", [*SHAPES, lava]), ("MP_SEL_SUR_001001.jpg", SHAPES)])
    with pytest.raises(
        UserError, match=rf"{xml}: image 'MP_SEL_SUR_001000.jpg', polygon #9: .*'sidewalk_lava'"
    ):
        convert_aihub(src, tmp_path / "out")

    # Through the CLI: one line on stderr, exit 2, no traceback.
    assert main(["convert-aihub", "--src", str(src), "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sideformer: error: ") and str(xml) in err and "Traceback" not in err

    convert_aihub(src, tmp_path / "ignored", valid=0, test=0, unknown="ignore")
    masks = all_masks(tmp_path / "ignored")
    expected = expected_mask()
    np.testing.assert_array_equal(masks["Surface_1__Surface_001__MP_SEL_SUR_001001.png"], expected)
    expected[0:4, 0:4] = 255
    np.testing.assert_array_equal(masks["Surface_1__Surface_001__MP_SEL_SUR_001000.png"], expected)


def test_missing_image_names_the_file_or_is_skipped(tmp_path: Path) -> None:
    src = make_source(tmp_path, scenes=2)
    (src / "Surface_1/Surface_002/MP_SEL_SUR_002001.jpg").unlink()
    with pytest.raises(
        UserError,
        match=r"Surface_002\.xml: image 'MP_SEL_SUR_002001\.jpg' is missing on disk .*--skip-missing",
    ):
        convert_aihub(src, tmp_path / "out")
    summary = convert_aihub(src, tmp_path / "out", valid=0, test=0, skip_missing=True)
    assert summary.images == {"train": 3, "valid": 0, "test": 0}
    assert summary.skipped["frames whose image is missing"] == 1


def test_output_folder_must_be_new(tmp_path: Path) -> None:
    src = make_source(tmp_path, scenes=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        convert_aihub(src, tmp_path / "out")
    with pytest.raises(UserError, match=r"no CVAT \.xml files"):
        convert_aihub(tmp_path / "out", tmp_path / "other")
