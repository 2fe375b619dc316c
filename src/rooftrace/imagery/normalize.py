"""Per-channel normalisation that travels with a model's weights (mean and std on [0, 1] pixel values)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Normalization:
    """Per-channel mean and std on [0, 1] pixel values; travels with the model's weights."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 normalised."""
        x = rgb.astype(np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))
