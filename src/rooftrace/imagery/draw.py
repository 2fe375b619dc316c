"""Pictures for people: the per-epoch visual check and the training curves, as PNG bytes."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

from rooftrace.geometry.shapes import Footprint

PANEL = 256
#: Tiles up to this size are drawn at twice their size, so one-pixel outlines do not hide the roofs.
UPSCALE_BELOW = 400


def footprint_rings(fp: Footprint) -> list[np.ndarray]:
    """Every ring (exteriors and holes) of a footprint as ``(n, 2)`` arrays."""
    out = []
    for part in shapely.get_parts(fp):
        out.append(np.asarray(part.exterior.coords))
        out.extend(np.asarray(r.coords) for r in part.interiors)
    return out


def draw_outlines(rgb: np.ndarray, groups: Sequence[tuple[Sequence[Footprint], tuple[int, int, int]]],
                  tint: np.ndarray | None = None, tint_rgb: tuple[int, int, int] = (255, 0, 255), width: int = 1) -> np.ndarray:
    """The image with each group of footprints outlined in its colour (later groups on top).

    Small tiles are drawn at twice their size. Outlines follow the pixel-edge convention: polygon point
    ``(x, y)`` is drawn at ``(s * x - 0.5, s * y - 0.5)`` because PIL puts pixel centres on integers.
    ``tint`` (a boolean mask) is blended half-way towards ``tint_rgb`` first.

    Returns:
        ``(H', W', 3)`` uint8.
    """
    base = rgb.copy()
    if tint is not None and tint.any():
        sel = tint.astype(bool)
        base[sel] = (base[sel].astype(np.uint16) + np.array(tint_rgb, np.uint16)) // 2
    h, w = base.shape[:2]
    scale = 2 if max(h, w) <= UPSCALE_BELOW else 1
    img = Image.fromarray(base)
    if scale != 1:
        img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for footprints, color in groups:
        for fp in footprints:
            for ring in footprint_rings(fp):
                pts = [(float(x) * scale - 0.5, float(y) * scale - 0.5) for x, y in ring]
                if len(pts) >= 2:
                    draw.line(pts, fill=color, width=width)
    return np.asarray(img)


#: Outline colour in previews: yellow shows on roofs, roads, vegetation and shadow alike.
OUTLINE_RGB = (255, 255, 0)


#: Tint of contact pixels in previews, so the gaps the network will learn can be checked by eye.
CONTACT_RGB = (255, 0, 255)


def render_preview(rgb: np.ndarray, footprints: Sequence[Footprint], contact: np.ndarray | None = None) -> np.ndarray:
    """The image with each footprint outlined in yellow and contact pixels tinted magenta.

    Returns:
        ``(H', W', 3)`` uint8 (small tiles at twice their size; see :func:`visualize.draw_outlines`).
    """
    return draw_outlines(rgb, [(footprints, OUTLINE_RGB)], tint=contact, tint_rgb=CONTACT_RGB)


# --- scores and legends -------------------------------------------------------------------------

#: Score labels are drawn in this colour with a black edge, so they read on any roof.
SCORE_RGB = (255, 255, 255)
#: Height (px) of the legend strip added below an overlay.
LEGEND_HEIGHT = 18


#: Fonts are loaded once and shared (:func:`_font`); a FreeType face is not safe to draw with from two threads at
#: once (predict's post-processing threads), so drawing text holds this lock.
_FONT_LOCK = threading.RLock()


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_scores(pic: np.ndarray, footprints: Sequence[Footprint], scores: Sequence[float] | None, scale: float = 1.0,
                rgb: tuple[int, int, int] = SCORE_RGB) -> np.ndarray:
    """``pic`` with each footprint's score (two decimals, e.g. ``.87``) written at a point inside it.

    ``scale`` maps footprint coordinates to ``pic``'s pixels (2 for a tile :func:`draw_outlines` drew at
    twice its size). Footprints without a score (``scores`` ``None`` or NaN) are left bare."""
    if scores is None or not len(footprints):
        return pic
    img = Image.fromarray(np.ascontiguousarray(pic))
    _write_scores(img, footprints, scores, scale, rgb)
    return np.asarray(img)


def _write_scores(img: Image.Image, footprints: Sequence[Footprint], scores: Sequence[float], scale: float,
                  rgb: tuple[int, int, int] = SCORE_RGB) -> None:
    """Write each footprint's score at a point inside it (see :func:`draw_scores`), centred there."""
    size = 10 if scale < 2 else 12
    points = shapely.point_on_surface(np.asarray(list(footprints), dtype=object))
    for pt, s in zip(points, scores):
        if s is None or not np.isfinite(s):
            continue
        text = f"{s:.2f}".lstrip("0") if 0 <= s < 1 else f"{s:.2f}"
        label, dx, dy = _label(text, size, rgb)
        img.paste(label, (int(round(pt.x * scale)) + dx, int(round(pt.y * scale)) + dy), label)


@functools.lru_cache(maxsize=1024)
def _label(text: str, size: int, rgb: tuple[int, int, int]) -> tuple[Image.Image, int, int]:
    """A score drawn once (text with a black stroke, on transparent), and its offset from the point it is centred
    on. Scores have two decimals, so a run draws a few hundred labels at most and pastes them: Pillow's text
    with a stroke cost about 2 ms a 512 x 512 tile, drawn afresh for each building."""
    with _FONT_LOCK:
        font = _font(size)
        left, top, right, bottom = font.getbbox(text, anchor="mm", stroke_width=1)
        label = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
        ImageDraw.Draw(label).text((-left, -top), text, fill=rgb, font=font, anchor="mm", stroke_width=1, stroke_fill=(0, 0, 0))
    return label, left, top


def add_legend(pic: np.ndarray, entries: Sequence[tuple[str, tuple[int, int, int]]], note: str = "") -> np.ndarray:
    """``pic`` with a dark strip of :data:`LEGEND_HEIGHT` px added below it: a colour swatch and a name
    per entry, then ``note``; no pixel of the picture is covered."""
    h, w = pic.shape[:2]
    img = Image.new("RGB", (w, h + LEGEND_HEIGHT), LEGEND_RGB)
    img.paste(Image.fromarray(np.ascontiguousarray(pic)), (0, 0))
    _write_legend(ImageDraw.Draw(img), h, entries, note)
    return np.asarray(img)


#: Colour of the legend strip.
LEGEND_RGB = (32, 32, 32)


def _write_legend(draw: ImageDraw.ImageDraw, top: int, entries: Sequence[tuple[str, tuple[int, int, int]]], note: str) -> None:
    """Write the legend (a swatch and a name per entry, then ``note``) in the strip that starts at row ``top``."""
    with _FONT_LOCK:
        font = _font(11)
        x, y = 4, top + LEGEND_HEIGHT // 2
        for name, color in entries:
            draw.rectangle((x, y - 4, x + 14, y + 4), outline=color, width=2)
            x += 18
            draw.text((x, y), name, fill=(240, 240, 240), font=font, anchor="lm")
            x += int(draw.textlength(name, font=font)) + 10
        if note:
            draw.text((x, y), note, fill=(240, 240, 240), font=font, anchor="lm")


def render_overlay(rgb: np.ndarray, footprints: Sequence[Footprint], scores: Sequence[float] | None = None) -> np.ndarray:
    """``rooftrace predict``'s overlay: the tile with each building outlined in yellow, its score written
    inside it (``.87``), and a legend strip below the tile (see :func:`add_legend`).

    The same pixels as :func:`draw_outlines`, then :func:`draw_scores`, then :func:`add_legend`, drawn on
    one picture instead of three (a third of the time).

    Returns:
        ``(H' + LEGEND_HEIGHT, W', 3)`` uint8 (small tiles at twice their size, as :func:`draw_outlines`)."""
    h, w = rgb.shape[:2]
    scale = 2 if max(h, w) <= UPSCALE_BELOW else 1
    tile = Image.fromarray(np.ascontiguousarray(rgb))
    if scale != 1:
        tile = tile.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    width, height = w * scale, h * scale
    img = Image.new("RGB", (width, height + LEGEND_HEIGHT), LEGEND_RGB)
    img.paste(tile, (0, 0))
    draw = ImageDraw.Draw(img)
    for fp in footprints:
        for ring in footprint_rings(fp):
            if len(ring) >= 2:
                draw.line((ring[:, :2] * scale - 0.5).ravel().tolist(), fill=OUTLINE_RGB, width=1)
    if scores is not None and len(footprints):
        _write_scores(img, footprints, scores, scale)
    # What was drawn over the tile's bottom edge is not part of the tile: the strip is drawn afresh.
    draw.rectangle((0, height, width - 1, height + LEGEND_HEIGHT - 1), fill=LEGEND_RGB)
    note = f"{len(footprints)} found" + (", number = score" if scores is not None and len(footprints) else "")
    _write_legend(draw, height, [("building", OUTLINE_RGB)], note)
    return np.asarray(img)
