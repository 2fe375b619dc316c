"""Pictures for people: the per-epoch visual check and the training curves, as PNG bytes."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
import shapely
from PIL import Image, ImageDraw

from .geometry import Footprint

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


def _channels_rgb(t: np.ndarray) -> np.ndarray:
    """Targets or probabilities ``(C, H, W)`` in [0, 1] as a picture: footprint grey, boundary
    yellow, contact magenta (one channel: grey)."""
    h, w = t.shape[1:]
    out = np.repeat((t[0] * 200)[..., None], 3, axis=2)
    if t.shape[0] > 1:
        out[..., 0] = np.maximum(out[..., 0], t[1] * 255)
        out[..., 1] = np.maximum(out[..., 1], t[1] * 230)
    if t.shape[0] > 2:
        out[..., 0] = np.maximum(out[..., 0], t[2] * 255)
        out[..., 2] = np.maximum(out[..., 2], t[2] * 255)
    return np.clip(out, 0, 255).astype(np.uint8)


def visual_check(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> bytes:
    """One row per tile: image | ground truth | prediction, each resized to 256 x 256."""
    if not rows:
        rows = [(np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))]
    sheet = Image.new("RGB", (3 * PANEL + 8, len(rows) * (PANEL + 4) + 18), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for i, title in enumerate(("image", "ground truth", "prediction")):
        draw.text((i * (PANEL + 4) + 4, 3), title, fill=(230, 230, 230))
    for r, (img, gt, pred) in enumerate(rows):
        h, w = gt.shape[1:]
        panels = [img[:h, :w], _channels_rgb(gt), _channels_rgb(pred)]
        for c, arr in enumerate(panels):
            tile = Image.fromarray(arr).resize((PANEL, PANEL), Image.NEAREST)
            sheet.paste(tile, (c * (PANEL + 4), 18 + r * (PANEL + 4)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def plot_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """Loss, pixel IoU and object F1 against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train loss")
    axes[0].plot(ep, [h["val_loss"] for h in history], "o-", label="val loss")
    axes[0].set_xlabel("epoch"); axes[0].legend(); axes[0].grid(alpha=0.3)
    axes[1].plot(ep, [h["pixel_iou"] for h in history], "o-", label="pixel IoU")
    axes[1].plot(ep, [h["object_f1"] for h in history], "o-", label="object F1 (IoU 0.5)")
    axes[1].set_xlabel("epoch"); axes[1].set_ylim(0, 1); axes[1].legend(); axes[1].grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
