"""Pictures for people: the per-epoch visual check and the training curves, as PNG bytes."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

from rooftrace.geometry.shapes import Footprint

PANEL = 256
#: Tiles up to this size are drawn at twice their size, so one-pixel outlines do not hide the roofs.
UPSCALE_BELOW = 400


def _rings(fp: Footprint) -> list[np.ndarray]:
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
            for ring in _rings(fp):
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
