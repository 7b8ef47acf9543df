"""The SideGuide / AI-Hub Surface Masking vocabulary: 22 classes, their order and RGB palette.

Converted datasets and synthetic scenes use this order, so a model trained on one reads the other.
"""

from __future__ import annotations

SIDEGUIDE_CLASSES: list[tuple[str, tuple[int, int, int]]] = [
    ("background", (0, 0, 0)),
    ("sidewalk_blocks", (0, 0, 255)),
    ("sidewalk_cement", (217, 217, 217)),
    ("sidewalk_urethane", (198, 89, 17)),
    ("sidewalk_asphalt", (128, 128, 128)),
    ("sidewalk_soil_stone", (255, 230, 153)),
    ("sidewalk_damaged", (55, 86, 35)),
    ("sidewalk_other", (110, 168, 70)),
    ("braille_guide_blocks_normal", (255, 255, 0)),
    ("braille_guide_blocks_damaged", (128, 96, 0)),
    ("roadway_normal", (255, 128, 255)),
    ("roadway_crosswalk", (255, 0, 255)),
    ("alley_normal", (230, 170, 255)),
    ("alley_crosswalk", (208, 88, 255)),
    ("alley_speed_bump", (138, 60, 200)),
    ("alley_damaged", (88, 38, 128)),
    ("bike_lane", (255, 155, 155)),
    ("caution_zone_stairs", (255, 192, 0)),
    ("caution_zone_manhole", (255, 0, 0)),
    ("caution_zone_tree_zone", (0, 255, 0)),
    ("caution_zone_grating", (255, 128, 0)),
    ("caution_zone_repair_zone", (105, 105, 255)),
]

CLASS_NAMES: list[str] = [name for name, _ in SIDEGUIDE_CLASSES]
PALETTE: list[tuple[int, int, int]] = [rgb for _, rgb in SIDEGUIDE_CLASSES]
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
IGNORE_INDEX = 255
