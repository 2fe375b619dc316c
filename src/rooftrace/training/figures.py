"""Pictures of a training run: the target check image and the loss and score curves (matplotlib)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from rooftrace.imagery.draw import PANEL


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
    axes[1].plot(ep, [h["object_f1"] for h in history], "o-", label="object F1 (IoU 0.5), settings searched")
    if any("object_f1_defaults" in h for h in history):  # runs begun before validation searched have none
        axes[1].plot(ep, [h.get("object_f1_defaults", float("nan")) for h in history], "o--",
                     label="object F1 at the default settings")
    axes[1].set_xlabel("epoch"); axes[1].set_ylim(0, 1); axes[1].legend(); axes[1].grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
