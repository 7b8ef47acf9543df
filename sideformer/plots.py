"""Pictures drawn with OpenCV alone, no plotting library: line charts, a confusion matrix, image grids
and prediction overlays. Every function returns an RGB uint8 array; `write_png` saves one atomically."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from sideformer.atomic import atomic_write_bytes
from sideformer.data.images import colorize

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK, GREY, LIGHT, WHITE = (0, 0, 0), (110, 110, 110), (225, 225, 225), (255, 255, 255)
SERIES_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
RGB = tuple[int, int, int]


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    atomic_write_bytes(path, data.tobytes())
    return Path(path)


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """The image with each class's palette colour blended in; black-palette classes (background) and ids
    outside the palette (ignore) leave the image as it is."""
    colours = colorize(mask, palette)
    blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    keep = ~colours.any(axis=2)
    blended[keep] = image[keep]
    return blended


# --- text ------------------------------------------------------------------------------------------


def _text(
    img: np.ndarray, text: str, x: int, y: int, scale: float = 0.45, colour: RGB = BLACK, align: str = "left"
) -> None:
    """Draw `text` with its baseline at y; align left/centre/right on x."""
    (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    x = x - w // 2 if align == "centre" else x - w if align == "right" else x
    cv2.putText(img, text, (int(x), int(y)), FONT, scale, colour, 1, cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.45) -> int:
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def _vertical_label(text: str, height: int, scale: float = 0.45) -> np.ndarray:
    """`text` reading bottom to top, centred in a (height x line) strip."""
    strip = np.full((20, max(height, _text_width(text, scale) + 4), 3), 255, np.uint8)
    _text(strip, text, strip.shape[1] // 2, 14, scale, align="centre")
    return cv2.rotate(strip, cv2.ROTATE_90_COUNTERCLOCKWISE)[:height]


# --- line charts -----------------------------------------------------------------------------------


def nice_ticks(low: float, high: float, count: int = 6, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps; whole steps when `integer`) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step)) if step != 2.5 else 2
    start = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _format_tick(value: float, step: float) -> str:
    """Enough decimals to tell ticks `step` apart (0.25 steps need two, 0.2 steps one)."""
    exponent = math.floor(math.log10(step))
    decimals = max(0, -exponent + (1 if round(step / 10**exponent, 6) == 2.5 else 0))
    return f"{value:.{decimals}f}"


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (420, 600),
    y_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Lines (with markers when there are few points) on a white canvas of `size` (height, width).
    NaN values leave a gap."""
    height, width = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 50
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot box in pixels
    xs_all = [float(x) for xs, _ in series.values() for x in xs]
    ys_all = [float(y) for _, ys in series.values() for y in ys if y is not None and math.isfinite(y)]
    x_low, x_high = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_range is not None:
        y_low, y_high = y_range
    elif ys_all:
        pad = (max(ys_all) - min(ys_all)) * 0.08 or abs(max(ys_all)) * 0.1 or 1.0
        y_low, y_high = min(ys_all) - pad, max(ys_all) + pad
    else:
        y_low, y_high = 0.0, 1.0

    def px(x: float, y: float) -> tuple[int, int]:
        return (
            round(x0 + (x - x_low) / (x_high - x_low) * (x1 - x0)),
            round(y1 - (y - y_low) / (y_high - y_low) * (y1 - y0)),
        )

    y_ticks = [t for t in nice_ticks(y_low, y_high) if y_low <= t <= y_high]
    x_ticks = [
        t
        for t in nice_ticks(x_low, x_high, count=8, integer=all(float(x).is_integer() for x in xs_all))
        if x_low <= t <= x_high
    ]
    for ticks, axis in ((y_ticks, "y"), (x_ticks, "x")):
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        for t in ticks:
            if axis == "y":
                _, py = px(x_low, t)
                cv2.line(img, (x0, py), (x1, py), LIGHT, 1)
                _text(img, _format_tick(t, step), x0 - 6, py + 5, 0.4, GREY, align="right")
            else:
                qx, _ = px(t, y_low)
                cv2.line(img, (qx, y0), (qx, y1), LIGHT, 1)
                _text(img, _format_tick(t, step), qx, y1 + 18, 0.4, GREY, align="centre")
    cv2.rectangle(img, (x0, y0), (x1, y1), BLACK, 1)

    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        segment: list[tuple[int, int]] = []
        points = [(float(x), y) for x, y in zip(xs, ys, strict=True)]
        for x, y in [*points, (math.nan, None)]:
            if y is None or not math.isfinite(float(y)):
                if len(segment) > 1:
                    cv2.polylines(img, [np.asarray(segment, np.int32)], False, colour, 2, cv2.LINE_AA)
                segment = []
                continue
            segment.append(px(x, float(y)))
            if len(points) <= 40:
                cv2.circle(img, segment[-1], 3, colour, -1, cv2.LINE_AA)
        # legend, top right inside the box
        lx, ly = x1 - 10 - max(_text_width(n, 0.45) for n in series) - 30, y0 + 20 + 20 * i
        cv2.line(img, (lx, ly - 5), (lx + 22, ly - 5), colour, 2, cv2.LINE_AA)
        _text(img, name, lx + 28, ly, 0.45)

    _text(img, title, width // 2, 25, 0.6, align="centre")
    _text(img, xlabel, (x0 + x1) // 2, height - 12, 0.45, align="centre")
    label = _vertical_label(ylabel, y1 - y0)
    img[y0 : y0 + label.shape[0], 8 : 8 + label.shape[1]] = label
    return img


def hstack(images: Sequence[np.ndarray], gap: int = 10) -> np.ndarray:
    height = max(i.shape[0] for i in images)
    parts = []
    for n, image in enumerate(images):
        padded = np.full((height, image.shape[1], 3), 255, np.uint8)
        padded[: image.shape[0]] = image
        parts.append(padded)
        if n < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def vstack(images: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    width = max(i.shape[1] for i in images)
    parts = []
    for n, image in enumerate(images):
        padded = np.full((image.shape[0], width, 3), 255, np.uint8)
        padded[:, : image.shape[1]] = image
        parts.append(padded)
        if gap and n < len(images) - 1:
            parts.append(np.full((gap, width, 3), 255, np.uint8))
    return np.concatenate(parts, axis=0)


# --- confusion matrix ------------------------------------------------------------------------------


def confusion_matrix_image(
    matrix: np.ndarray, classes: Sequence[str], title: str, cell: int = 28
) -> np.ndarray:
    """Rows are true classes, columns predictions. Each row is normalised to the share of that class's
    pixels (its recall on the diagonal), printed in percent; classes absent from the labels are grey."""
    m = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    totals = m.sum(axis=1, keepdims=True)
    shares = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    scale = 0.42
    label_w = max(_text_width(c, scale) for c in classes) + 14
    top = label_w + 40
    left = label_w + 30
    width, height = left + n * cell + 20, top + n * cell + 40
    img = np.full((height, width, 3), 255, np.uint8)

    for r in range(n):
        for c in range(n):
            ya, xa = top + r * cell, left + c * cell
            if totals[r, 0] == 0:
                colour: RGB = (238, 238, 238)
            else:
                v = shares[r, c]  # white -> dark blue
                colour = (round(255 - v * 247), round(255 - v * 207), round(255 - v * 148))
            cv2.rectangle(img, (xa, ya), (xa + cell - 1, ya + cell - 1), colour, -1)
            if totals[r, 0] > 0 and shares[r, c] >= 0.005:
                text = f"{shares[r, c] * 100:.0f}"
                _text(
                    img,
                    text,
                    xa + cell // 2,
                    ya + cell // 2 + 4,
                    0.35,
                    WHITE if shares[r, c] > 0.5 else BLACK,
                    "centre",
                )
        _text(img, classes[r], left - 6, top + r * cell + cell // 2 + 4, scale, align="right")
    grid_end = top + n * cell
    cv2.rectangle(img, (left - 1, top - 1), (left + n * cell, grid_end), GREY, 1)

    header = np.full((n * cell, label_w, 3), 255, np.uint8)  # column labels, drawn as rows, then rotated
    for c, name in enumerate(classes):
        _text(header, name, 6, c * cell + cell // 2 + 4, scale)
    header = cv2.rotate(header, cv2.ROTATE_90_COUNTERCLOCKWISE)
    img[top - label_w - 2 : top - 2, left : left + n * cell] = header

    _text(img, title, width // 2, 22, 0.55, align="centre")
    _text(img, "predicted class", left + n * cell // 2, grid_end + 28, 0.45, GREY, "centre")
    true_label = _vertical_label("true class", n * cell)
    img[top : top + true_label.shape[0], 4 : 4 + true_label.shape[1]] = true_label
    return img


# --- image grids -----------------------------------------------------------------------------------


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_captions: Sequence[str],
    cell_height: int = 180,
) -> np.ndarray:
    """One row per entry (e.g. image | truth | prediction), each picture scaled to `cell_height`."""
    scaled = [
        [
            cv2.resize(
                p,
                (max(1, round(p.shape[1] * cell_height / p.shape[0])), cell_height),
                interpolation=cv2.INTER_NEAREST,
            )
            for p in row
        ]
        for row in rows
    ]
    widths = [max(row[c].shape[1] for row in scaled) for c in range(len(column_titles))]
    gap = 6
    width = sum(widths) + gap * (len(widths) + 1)
    header = np.full((30, width, 3), 255, np.uint8)
    x = gap
    for title, w in zip(column_titles, widths, strict=True):
        _text(header, title, x + w // 2, 21, 0.55, align="centre")
        x += w + gap
    parts = [header]
    for row, caption in zip(scaled, row_captions, strict=True):
        strip = np.full((22, width, 3), 255, np.uint8)
        _text(strip, caption, gap, 16, 0.45, GREY)
        body = np.full((cell_height + gap, width, 3), 255, np.uint8)
        x = gap
        for picture, w in zip(row, widths, strict=True):
            body[:cell_height, x : x + picture.shape[1]] = picture
            x += w + gap
        parts += [strip, body]
    return vstack(parts)


def legend(
    classes: Sequence[str], palette: Sequence[Sequence[int]], ids: Sequence[int], width: int
) -> np.ndarray:
    """Colour swatches with class names, wrapped to `width`."""
    entries = [(classes[i], tuple(int(v) for v in palette[i])) for i in ids if i < len(classes)]
    lines: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    x = 6
    for name, colour in entries:
        w = 22 + _text_width(name, 0.42) + 14
        if x + w > width and lines[-1]:
            lines.append([])
            x = 6
        lines[-1].append((name, colour))
        x += w
    img = np.full((22 * len(lines) + 6, max(width, 1), 3), 255, np.uint8)
    for row, line in enumerate(lines):
        x, y = 6, 6 + row * 22
        for name, colour in line:
            cv2.rectangle(img, (x, y), (x + 15, y + 15), colour, -1)
            cv2.rectangle(img, (x, y), (x + 15, y + 15), GREY, 1)
            _text(img, name, x + 22, y + 13, 0.42)
            x += 22 + _text_width(name, 0.42) + 14
    return img
