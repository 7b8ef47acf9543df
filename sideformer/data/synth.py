"""Deterministic synthetic street scenes in the SideGuide 22-class vocabulary (`sideformer synth`).

A scene is a pedestrian's view along a street or an alley: a pinhole camera at eye height over a flat
ground plane. Every ground pixel knows its ground coordinates (u: metres across, z: metres ahead), so
surfaces are bands, rectangles and discs in (u, z) — trapezoids and ellipses narrowing to the vanishing
point — and textures (block grids, stripes, dots) shrink with distance as real ones do. Each region is
painted into the image and the mask through the same boolean array, so the two align exactly.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from sideformer.atomic import atomic_write_bytes
from sideformer.data.classes import CLASS_ID, CLASS_NAMES, IGNORE_INDEX, PALETTE
from sideformer.data.images import encode_mask
from sideformer.data.metadata import METADATA_FILE, write_metadata
from sideformer.errors import UserError

NAME = "synthetic-street"
SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}  # part of each sample's seed: never renumber
Z_FAR = 60.0  # metres; the street ends in a building there instead of shrinking into noise
F32 = np.float32
Rng = np.random.Generator
RGB = tuple[int, int, int]


class _Px(NamedTuple):
    """The pixels one texture paints: texture coordinates (metres) and image coordinates."""

    u: np.ndarray
    z: np.ndarray
    x: np.ndarray
    y: np.ndarray


Texture = Callable[[Rng, _Px], np.ndarray]  # -> (n, 3) float RGB
Pattern = Callable[[Rng, _Px], np.ndarray]  # -> (n,) bool: where a texture's second tone goes
Box = tuple[float, float, float, float, RGB]  # upright occluder: u, z, width, height, colour


def _colour(rng: Rng, rgb: RGB, spread: float = 0.12) -> np.ndarray:
    """This scene's shade of a material: brightness and hue jitter, so a class is not a colour lookup."""
    return np.asarray(rgb, F32) * rng.uniform(1 - spread, 1 + spread) + rng.uniform(-8, 8, 3).astype(F32)


def _cells(a: np.ndarray, b: np.ndarray, size_a: float, size_b: float, salt: int) -> np.ndarray:
    """A fixed random value in [0, 1) per (size_a x size_b) cell: per-block shade, stones, gaps."""
    i = np.floor(a / size_a).astype(np.int64).view(np.uint64)
    j = np.floor(b / size_b).astype(np.int64).view(np.uint64)
    h = (i * np.uint64(0x9E3779B97F4A7C15)) ^ (j * np.uint64(0xC2B2AE3D27D4EB4F)) ^ np.uint64(salt)
    h = (h ^ (h >> np.uint64(31))) * np.uint64(0xBF58476D1CE4E5B9)
    return ((h ^ (h >> np.uint64(29))) >> np.uint64(40)).astype(F32) / F32(1 << 24)


def _frac(v: np.ndarray, period: float) -> np.ndarray:
    t = v * (1.0 / period)
    return t - np.floor(t)  # np.mod is several times slower on floats


def _speckle(rng: Rng, n: int, amp: float) -> np.ndarray:
    return (rng.random((n, 1), dtype=F32) - 0.5) * amp


def _where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.where(cond[:, None], a, b)


def _salt(rng: Rng) -> int:
    return int(rng.integers(1 << 62))


# --- Materials: each class has its own colours and pattern (grid, stripes, dots, stones, speckle).


def _two_tone(
    base: RGB, alt: RGB, pattern: Pattern, amp: float = 16, blotch: float = 0, cell: tuple = (0.5, 0.5)
) -> Texture:
    """`alt` where `pattern` holds, else `base`; plus per-cell shading (`blotch`) and per-pixel speckle."""

    def tex(rng: Rng, p: _Px) -> np.ndarray:
        out = _where(pattern(rng, p), _colour(rng, alt), _colour(rng, base))
        if blotch:
            out += (_cells(p.u, p.z, *cell, _salt(rng))[:, None] - 0.5) * blotch
        return out + _speckle(rng, len(p.u), amp)

    return tex


def _flat(rgb: RGB, amp: float, blotch: float = 0, cell: float = 0.5) -> Texture:
    return _two_tone(rgb, rgb, lambda rng, p: np.zeros(len(p.u), bool), amp, blotch, (cell, cell))


def _stripes(coord: Callable[[_Px], np.ndarray], period: float, duty: float = 0.5) -> Pattern:
    return lambda rng, p: _frac(coord(p) + rng.uniform(0, period), period) < duty


def _dots(share: float) -> Pattern:  # granules, leaves: a random share of the pixels
    return lambda rng, p: rng.random(len(p.u)) < share


def _blocks(rng: Rng, p: _Px) -> np.ndarray:
    """Paving blocks: a grid of dark joints, each block shaded a little differently."""
    bu, bz = ((0.3, 0.3), (0.2, 0.4), (0.4, 0.4))[rng.integers(3)]
    rgb = ((165, 160, 150), (178, 132, 118), (150, 152, 162))[rng.integers(3)]

    def joint(rng: Rng, p: _Px) -> np.ndarray:
        return (_frac(p.u, bu) < 0.1) | (_frac(p.z, bz) < 0.1)

    return _two_tone(rgb, (82, 80, 76), joint, 12, 40, (bu, bz))(rng, p)


def _braille(dots: bool, damaged: bool = False) -> Texture:
    """Yellow tactile blocks: ridges along the walking direction, or a dot grid where one must stop."""

    def tex(rng: Rng, p: _Px) -> np.ndarray:
        base = _colour(rng, (165, 140, 75) if damaged else (228, 190, 35), 0.08)
        du, dz = _frac(p.u, 0.075) - 0.5, _frac(p.z, 0.075) - 0.5
        bump = du * du + dz * dz < 0.09 if dots else np.abs(du + 0.1) < 0.2
        out = base + bump[:, None] * F32(35 if damaged else 45) + _speckle(rng, len(p.u), 14)
        out = _where((_frac(p.u, 0.3) < 0.05) | (_frac(p.z, 0.3) < 0.05), base * 0.6, out)
        if damaged:  # faded, with whole blocks missing
            missing = _cells(p.u, p.z, 0.3, 0.3, _salt(rng)) < 0.45
            out = _where(missing, _flat((98, 95, 90), 25)(rng, p), out)
        return out

    return tex


def _facade(rng: Rng, p: _Px) -> np.ndarray:  # here u = height above ground, z = metres along the wall
    wall = _colour(rng, (170, 160, 145), 0.25) + (_cells(p.z, p.z, 9.0, 9.0, _salt(rng))[:, None] - 0.5) * 80
    window = (_frac(p.z, 3.5) > 0.3) & (_frac(p.z, 3.5) < 0.8) & (_frac(p.u, 3.0) > 0.35) & (p.u > 3.0)
    glass = _colour(rng, (60, 72, 88)) + p.u[:, None] * F32(3)
    shop = (p.u < 2.6) & (_frac(p.z, 6.0) < 0.7)
    return _where(window | shop, glass, wall) + _speckle(rng, len(p.u), 10)


ACROSS, ALONG = (lambda p: p.u), (lambda p: p.z)
ROAD, ALLEY, WHITE = (84, 85, 90), (138, 130, 118), (228, 228, 222)
TEXTURES: dict[str, Texture] = {
    "sidewalk_blocks": _blocks,
    "sidewalk_cement": _two_tone((195, 192, 185), (110, 108, 104), _stripes(ALONG, 1.6, 0.02), 10, 14),
    "sidewalk_urethane": _two_tone((185, 80, 55), (228, 125, 100), _dots(0.1), 40),
    "sidewalk_asphalt": _two_tone(
        (106, 105, 104), (165, 160, 152), lambda rng, p: _cells(p.u, p.z, 0.04, 0.04, _salt(rng)) > 0.7, 24
    ),
    "sidewalk_soil_stone": _two_tone(
        (160, 128, 88), (140, 138, 132), lambda rng, p: _cells(p.u, p.z, 0.12, 0.12, _salt(rng)) > 0.55, 25
    ),
    "sidewalk_damaged": _two_tone(
        (120, 110, 96), (45, 42, 38), lambda rng, p: _frac(p.u + 0.15 * np.sin(p.z * 9), 0.25) < 0.12, 30, 80
    ),
    "sidewalk_other": _two_tone(
        (152, 106, 66), (60, 42, 30), _stripes(ACROSS, 0.15, 0.12), 12, 40, (0.15, 1e4)
    ),
    "braille_guide_blocks_normal": _braille(dots=False),
    "braille_guide_blocks_damaged": _braille(dots=False, damaged=True),
    "roadway_normal": _flat(ROAD, 26),
    "roadway_crosswalk": _two_tone(ROAD, WHITE, _stripes(ACROSS, 1.0), 18),
    "alley_normal": _flat(ALLEY, 20, 36, 1.0),
    "alley_crosswalk": _two_tone(ALLEY, WHITE, _stripes(ACROSS, 0.7, 0.4), 18),
    "alley_speed_bump": _two_tone((40, 40, 42), (232, 190, 30), _stripes(lambda p: p.u + 0.8 * p.z, 0.6), 18),
    "alley_damaged": _flat((78, 68, 58), 45, 60, 0.08),
    "bike_lane": _flat((72, 135, 96), 16, 10),
    "caution_zone_stairs": _two_tone(  # steps lit step by step, each with a yellow anti-slip nosing
        (140, 132, 122), (225, 180, 35), _stripes(ALONG, 0.45, 0.3), 14, 50, (1e4, 0.45)
    ),
    "caution_zone_manhole": _two_tone(
        (62, 50, 44), (112, 88, 68), lambda rng, p: (np.floor(p.u / 0.07) + np.floor(p.z / 0.07)) % 2 == 0, 14
    ),
    "caution_zone_tree_zone": _two_tone((82, 60, 40), (62, 112, 42), _dots(0.3), 30),
    "caution_zone_grating": _two_tone((28, 28, 30), (135, 135, 130), _stripes(ACROSS, 0.08, 0.4), 18),
    "caution_zone_repair_zone": _two_tone(
        (226, 226, 216), (238, 122, 30), _stripes(lambda p: p.u - p.z, 0.8)
    ),
}
SIDEWALKS = ["sidewalk_blocks", "sidewalk_cement", "sidewalk_urethane", "sidewalk_asphalt"]
SIDEWALKS += ["sidewalk_soil_stone", "sidewalk_other"]
SIDEWALK_P = [0.28, 0.2, 0.15, 0.17, 0.12, 0.08]


class _Canvas:
    """Camera geometry, the image and mask being painted, and region helpers in ground metres."""

    def __init__(self, rng: Rng, height: int, width: int) -> None:
        self.rng = rng
        self.horizon = height * rng.uniform(0.3, 0.45)
        self.vx = width * rng.uniform(0.35, 0.65)
        self.f = width * rng.uniform(0.55, 0.85)  # a phone's wide-ish field of view
        self.cam = rng.uniform(1.3, 1.7)  # eye height, metres
        self.y, self.x = np.mgrid[0:height, 0:width].astype(F32) + F32(0.5)
        d = np.maximum(self.y - self.horizon, 1e-3)
        self.u, self.z = (self.x - self.vx) * self.cam / d, self.f * self.cam / d
        self.ground = (self.y > self.horizon) & (self.z < Z_FAR)
        # Sky everywhere first (a blue or overcast gradient down to the horizon); the rest paints over it.
        clear = rng.random() < 0.7
        top, low = ((95, 145, 215), (195, 212, 232)) if clear else ((165, 170, 178), (210, 210, 212))
        t = np.clip((np.arange(height, dtype=F32) + 0.5) / self.horizon, 0, 1)[:, None, None]
        self.image = np.repeat(_colour(rng, top, 0.08) * (1 - t) + _colour(rng, low, 0.05) * t, width, axis=1)
        self.mask = np.zeros((height, width), np.uint8)

    def paint(self, region: np.ndarray, cls: str, tex: Texture | None = None, uz: tuple = ()) -> None:
        """Give `region` class `cls` in the mask and its texture in the image (at coordinates `uz`)."""
        idx = np.flatnonzero(region)  # flat indices: several times faster than boolean indexing
        if len(idx):
            u, z = uz or (self.u, self.z)
            px = _Px(u.ravel()[idx], z.ravel()[idx], self.x.ravel()[idx], self.y.ravel()[idx])
            self.image.reshape(-1, 3)[idx] = (tex or TEXTURES[cls])(self.rng, px)
            self.mask.ravel()[idx] = CLASS_ID[cls]

    def band(self, u0: float, u1: float, z0: float = 0.0, z1: float = Z_FAR) -> np.ndarray:
        u0, u1 = min(u0, u1), max(u0, u1)
        return self.ground & (self.u >= u0) & (self.u < u1) & (self.z >= z0) & (self.z < z1)

    def disc(self, cu: float, cz: float, r: float) -> np.ndarray:
        return self.ground & ((self.u - cu) ** 2 + (self.z - cz) ** 2 < r * r)

    def blob(self, cu: float, cz: float, r: float) -> np.ndarray:
        """An irregular patch (damage, potholes): a random polygon on the ground, filled with cv2."""
        angles, radii = np.sort(self.rng.uniform(0, 2 * np.pi, 9)), r * self.rng.uniform(0.55, 1.0, 9)
        u, z = cu + radii * np.cos(angles), cz + radii * np.sin(angles) * 0.9
        pts = np.stack([self.vx + self.f * u / z, self.horizon + self.f * self.cam / z], 1)
        out = np.zeros(self.mask.shape, np.uint8)
        cv2.fillPoly(out, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
        return self.ground & out.astype(bool)

    def wall(self, ub: float, max_height: float) -> None:
        """A row of building fronts standing on the line u = ub, with a skyline that varies."""
        # Each image column sees the wall at one distance zw, so work per column, not per pixel.
        dx = self.x[0] - self.vx
        zw = self.f * ub / np.where(np.abs(dx) < 1e-3, F32(1e-3), dx)
        zw = np.where(zw > 0, zw, F32(1e6))  # columns on the other side never see this wall
        top = 3.0 + _cells(zw, zw, 10.0, 10.0, _salt(self.rng)) * (max_height - 3.0)
        y_base, y_top = self.horizon + self.f * self.cam / zw, self.horizon + self.f * (self.cam - top) / zw
        region = (self.y >= y_top) & (self.y < y_base) & (zw < Z_FAR)
        hgt = self.cam - (self.y - self.horizon) * (zw / self.f)
        self.paint(region, "background", _facade, (hgt, np.broadcast_to(zw, hgt.shape)))

    def box(self, u: float, z: float, width: float, height: float, rgb: RGB) -> None:
        """An upright occluder facing the camera (car, pole, trunk): background in the mask, like the sky."""
        x0, x1 = self.vx + self.f * (u - width / 2) / z, self.vx + self.f * (u + width / 2) / z
        y0, y1 = self.horizon + self.f * (self.cam - height) / z, self.horizon + self.f * self.cam / z
        region = (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)
        self.paint(region, "background", _flat(rgb, 14))
        if height < 2.5:  # a car: darker glass in the upper part
            inset = (self.x > x0 + 0.1 * (x1 - x0)) & (self.x < x1 - 0.1 * (x1 - x0))
            glass = region & inset & (self.y < y0 + 0.4 * (y1 - y0))
            self.paint(glass, "background", _flat((45, 52, 60), 10))


def _sidewalk(rng: Rng) -> str:
    return str(rng.choice(SIDEWALKS, p=SIDEWALK_P))


def _street(c: _Canvas) -> tuple[float, float, list[Box]]:
    """Walker on a sidewalk beside a road (on either side); returns the building lines and occluders."""
    rng, boxes = c.rng, []
    # The road usually lies on the side of the vanishing point with more image, so it is well in view.
    side = 1.0 if (c.vx < c.x.shape[1] / 2) == (rng.random() < 0.8) else -1.0
    back, curb, road = rng.uniform(0.8, 3.0), rng.uniform(0.7, 2.5), rng.uniform(6.0, 11.0)
    far = rng.uniform(2.0, 4.0) if rng.random() < 0.75 else 0.0

    def band(s0: float, s1: float, z0: float = 0.0, z1: float = Z_FAR) -> np.ndarray:
        return c.band(side * s0, side * s1, z0, z1)  # s: metres from the walker towards the road

    c.paint(band(-back, curb), _sidewalk(rng))
    c.paint(band(curb, curb + road), "roadway_normal")
    if far:
        c.paint(band(curb + road, curb + road + far), _sidewalk(rng))
    line, mid = _flat((235, 190, 40) if rng.random() < 0.6 else WHITE, 10), curb + road / 2
    c.paint(band(mid - 0.08, mid + 0.08), "roadway_normal", line)  # markings are part of the roadway
    if rng.random() < 0.5:  # dashed lane lines: 3 m of paint every 8 m
        for s in (curb + road / 4, curb + 3 * road / 4):
            c.paint(band(s - 0.08, s + 0.08) & (_frac(c.z, 8.0) < 0.375), "roadway_normal", line)
    if rng.random() < 0.35:
        lane, on_walk = rng.uniform(1.2, 1.8), curb + back > 3.0 and rng.random() < 0.5
        c.paint(band(curb - lane, curb) if on_walk else band(curb, curb + lane), "bike_lane")
    for _ in range(rng.integers(0, 3)):  # broken patches, clipped to the sidewalk
        blob = c.blob(side * rng.uniform(-back, curb), rng.uniform(2.5, 6.0), rng.uniform(0.7, 1.3))
        c.paint(blob & band(-back, curb), "sidewalk_damaged")
    if rng.random() < 0.8:  # guide blocks along the sidewalk, perhaps with a worn stretch
        s, width = rng.uniform(-back + 0.3, curb - 0.7), rng.choice([0.3, 0.4])
        c.paint(band(s, s + width), "braille_guide_blocks_normal")
        if rng.random() < 0.4:
            z = rng.uniform(2.0, 5.0)
            c.paint(band(s, s + width, z, z + rng.uniform(3.0, 6.0)), "braille_guide_blocks_damaged")
    if rng.random() < 0.55:  # zebra crossing, with warning dots on the kerb where it starts
        z, length = rng.uniform(4.0, 9.0), rng.uniform(3.0, 4.5)
        c.paint(band(curb, curb + road, z, z + length), "roadway_crosswalk")
        c.paint(band(curb - 0.6, curb, z, z + length), "braille_guide_blocks_normal", _braille(dots=True))
    for _ in range(rng.integers(0, 3)):  # gutter gratings at the kerb
        z = rng.uniform(2.5, 9.0)
        c.paint(band(curb + 0.05, curb + 0.55, z, z + rng.uniform(0.8, 1.3)), "caution_zone_grating")
    for _ in range(rng.integers(0, 3)):
        s = rng.uniform(curb + 0.8, curb + road - 0.8) if rng.random() < 0.6 else rng.uniform(-back, curb)
        c.paint(c.disc(side * s, rng.uniform(2.2, 6.0), rng.uniform(0.45, 0.65)), "caution_zone_manhole")
    if rng.random() < 0.45 and curb + back > 2.0:  # tree pits along the kerb every 6-9 m, trunks in them
        size, z = rng.uniform(1.0, 1.5), rng.uniform(2.2, 4.5)
        for _ in range(3):
            c.paint(band(curb - 0.15 - size, curb - 0.15, z, z + size), "caution_zone_tree_zone")
            boxes.append((side * (curb - 0.15 - size / 2), z + size / 2, 0.3, 4.0, (92, 70, 50)))
            z += rng.uniform(6.0, 9.0)
    if rng.random() < 0.3:  # entrance steps against the buildings
        z, depth = rng.uniform(2.2, 5.0), rng.uniform(2.0, 3.5)
        c.paint(band(-back, -back + rng.uniform(1.2, 2.0), z, z + depth), "caution_zone_stairs")
    if rng.random() < 0.2:
        s, z = rng.uniform(-back, curb + road - 3.0), rng.uniform(2.5, 7.0)
        c.paint(band(s, s + rng.uniform(2.0, 3.5), z, z + rng.uniform(2.5, 4.5)), "caution_zone_repair_zone")
    for _ in range(rng.integers(0, 4)):  # cars
        r, g, b = (int(v) for v in rng.integers(30, 220, 3))
        u = side * rng.uniform(curb + 1.2, curb + road - 1.2)
        boxes.append((u, rng.uniform(8.0, 35.0), 1.8, 1.5, (r, g, b)))
    if rng.random() < 0.5:  # a lamp post on the kerb
        boxes.append((side * (curb - 0.3), rng.uniform(3.0, 12.0), 0.25, 6.0, (125, 125, 128)))
    return side * -back, side * (curb + road + far), boxes


def _alley(c: _Canvas) -> tuple[float, float, list[Box]]:
    """Walker in a narrow alley between walls, perhaps with a thin sidewalk; returns the wall lines."""
    rng, width = c.rng, c.rng.uniform(3.0, 6.0)
    left = -rng.uniform(0.8, width - 0.8)
    right = left + width
    c.paint(c.band(left, right), "alley_normal")
    if rng.random() < 0.3:
        strip = rng.uniform(0.8, 1.3)
        c.paint(
            c.band(left, left + strip) if rng.random() < 0.5 else c.band(right - strip, right), _sidewalk(rng)
        )
    for _ in range(rng.integers(0, 3)):
        u, z, r = rng.uniform(left + 0.5, right - 0.5), rng.uniform(2.5, 6.0), rng.uniform(0.7, 1.3)
        c.paint(c.blob(u, z, r), "alley_damaged")
    z = rng.uniform(3.0, 6.5)
    if rng.random() < 0.45:
        length = rng.uniform(1.0, 1.8)
        c.paint(c.band(left, right, z, z + length), "alley_speed_bump")
        z += length + rng.uniform(1.5, 4.0)
    if rng.random() < 0.3:
        c.paint(c.band(left, right, z, z + rng.uniform(2.5, 4.0)), "alley_crosswalk")
    if rng.random() < 0.35:  # a drain across the alley
        z = rng.uniform(2.5, 8.0)
        c.paint(c.band(left, right, z, z + rng.uniform(0.4, 0.6)), "caution_zone_grating")
    if rng.random() < 0.6:
        u, z, r = rng.uniform(left + 0.6, right - 0.6), rng.uniform(2.2, 6.0), rng.uniform(0.45, 0.65)
        c.paint(c.disc(u, z, r), "caution_zone_manhole")
    if rng.random() < 0.12:
        z, length = rng.uniform(2.5, 6.0), rng.uniform(2.0, 3.5)
        c.paint(c.band(left, left + rng.uniform(1.5, 3.0), z, z + length), "caution_zone_repair_zone")
    return left, right, []


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (image RGB uint8 HxWx3, mask uint8 HxW of class ids from classes.CLASS_NAMES)."""
    c = _Canvas(rng, height, width)
    left, right, boxes = _alley(c) if rng.random() < 0.3 else _street(c)
    # The street ends in a building at Z_FAR; nearer buildings along both sides hide everything beyond.
    x0, x1 = sorted((c.vx + c.f * left / Z_FAR, c.vx + c.f * right / Z_FAR))
    base, top = c.horizon + c.f * c.cam / Z_FAR, c.horizon + c.f * (c.cam - rng.uniform(8.0, 25.0)) / Z_FAR
    end = (c.y[:, :1] >= top) & (c.y[:, :1] <= base + 1) & (c.x[:1] >= x0) & (c.x[:1] < x1)
    c.paint(end, "background", _facade, (np.broadcast_to(base - c.y[:, :1], c.y.shape), c.x * 0.3))
    for ub in (left, right):
        c.wall(ub, rng.uniform(4.0, 25.0))
    for box in sorted(boxes, key=lambda b: -b[1]):  # far to near, so nearer ones hide farther ones
        c.box(*box)
    # Lighting that no class owns: a gradient, sometimes a building's shadow across the ground, and noise.
    gx, gy = rng.uniform(-0.15, 0.15, 2).tolist()
    light = 1 + gx * (c.x[:1] / width - 0.5) + gy * (c.y[:, :1] / height - 0.5)
    if rng.random() < 0.35:
        edge = rng.uniform(-3.0, 3.0) + rng.uniform(-0.5, 0.5) * c.z
        shadow = c.ground & (c.u * float(rng.choice([-1, 1])) > edge)
        light = np.where(shadow, light * rng.uniform(0.55, 0.75), light)
    noise = rng.standard_normal(c.image.shape, dtype=F32) * rng.uniform(2.0, 6.0)
    return (np.clip(c.image * light[..., None] + noise, 0, 255) + 0.5).astype(np.uint8), c.mask


def write_synthetic_dataset(
    out: str | Path,
    train: int = 200,
    valid: int = 40,
    test: int = 0,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Write out/{train,valid,test}/images/NNNNN.jpg + masks/NNNNN.png + metadata.json; return out.

    `size` is (height, width). Sample i of a split is drawn from default_rng([seed, split, i]), so the
    same arguments give byte-identical files and changing one split's count leaves the others alone.
    An existing dataset folder (one with metadata.json) is overwritten; any other non-empty folder is refused.
    """
    counts = {"train": train, "valid": valid, "test": test}
    for name, n in counts.items():
        least = 0 if name == "test" else 1
        if not _is_int(n) or n < least:
            raise UserError(f"synthetic dataset: {name} count must be an integer >= {least}, got {n!r}.")
    if not isinstance(size, tuple | list) or len(size) != 2 or not all(_is_int(s) and s >= 32 for s in size):
        raise UserError(f"synthetic dataset: size must be (height, width), each >= 32 pixels; got {size!r}.")
    if not _is_int(seed) or seed < 0:
        raise UserError(f"synthetic dataset: seed must be an integer >= 0, got {seed!r}.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another output folder.")
    if out.is_dir() and any(out.iterdir()) and not (out / METADATA_FILE).is_file():
        raise UserError(
            f"{out}: folder is not empty and holds no {METADATA_FILE}, so it is not a dataset; refusing to "
            f"write into it. Choose an empty or new output folder."
        )

    rerun = _dataset_name(out) == NAME
    height, width = int(size[0]), int(size[1])
    splits: dict[str, list[tuple[str, str]]] = {}
    for name, n in counts.items():
        if name == "test" and n == 0:
            continue
        splits[name] = []
        for i in range(n):
            image, mask = draw_scene(np.random.default_rng([seed, SPLIT_IDS[name], i]), height, width)
            jpg, png = f"{name}/images/{i:05d}.jpg", f"{name}/masks/{i:05d}.png"
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
            atomic_write_bytes(
                out / jpg, cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            )
            atomic_write_bytes(out / png, encode_mask(mask))
            splits[name].append((jpg, png))
    if rerun:  # never delete from a dataset some other tool wrote, even one with numbered files
        _remove_stale(out, {path for pairs in splits.values() for pair in pairs for path in pair})
    write_metadata(out, NAME, CLASS_NAMES, PALETTE, splits, ignore_index=IGNORE_INDEX)
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _dataset_name(out: Path) -> str | None:
    try:
        return json.loads((out / METADATA_FILE).read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Drop samples an earlier, larger run left behind (only files named like ours, in our folders)."""
    for split in SPLIT_IDS:
        for sub in ("images", "masks"):
            for path in sorted((out / split / sub).glob("*")):
                ours = re.fullmatch(r"\d{5,}\.(jpg|png)", path.name)
                if ours and path.relative_to(out).as_posix() not in keep:
                    path.unlink()
