"""Training augmentation: the albumentations pipeline, and a panchromatic sensor simulated from RGB.

A panchromatic band (WorldView, SpaceNet Atlanta, most 0.3-0.5 m satellite products) integrates
light from about 450 to 800-900 nm, so it includes red-edge and near-infrared light, which green
vegetation reflects strongly (about 40-50 %, against 5-15 % in the visible). Tree crowns are
therefore as bright as roofs in a pan image, where they are dark in RGB. Plain grayscale of RGB does
not imitate that, so a model trained on it learns "bright and textured = roof" and outlines trees on
pan input. :func:`simulate_panchromatic` brightens vegetation first, found by the green-red
vegetation index ``(G - R) / (G + R)`` (the excess-green index ``(2G - R - B) / (R + G + B)``
misses trees under the bluish haze of many satellite scenes, as the sample pack's are), then mixes
the result into one band and replicates it to the three channels the network takes.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from rooftrace.config import AugmentConfig


def excess_green(rgb: np.ndarray) -> np.ndarray:
    """The normalised excess-green index ``(2G - R - B) / (R + G + B)`` of an ``(H, W, 3)`` image, float32.

    About 0 on grey roofs and roads, below 0 on red or brown roofs, 0.1-0.4 on trees and grass.
    """
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (2 * g - r - b) / (r + g + b + 1.0)


def green_red_index(rgb: np.ndarray) -> np.ndarray:
    """The green-red vegetation index ``(G - R) / (G + R)`` of an ``(H, W, 3)`` image, float32.

    About 0 on grey roofs, roads and bare soil, below 0 on red and brown roofs, 0.05-0.3 on trees
    and grass, even under a bluish haze (blue does not enter it).
    """
    f = rgb.astype(np.float32)
    return (f[..., 1] - f[..., 0]) / (f[..., 1] + f[..., 0] + 1.0)


def simulate_panchromatic(rgb: np.ndarray, nir_weight: float = 0.6, veg_brightness: float = 0.55,
                          threshold: float = 0.045, softness: float = 0.08) -> np.ndarray:
    """A panchromatic-looking ``(H, W, 3)`` uint8 image from an RGB uint8 one.

    A near-infrared band is estimated as the visible brightness plus ``veg_brightness`` (in 0-1
    reflectance) where the green-red index says vegetation (a soft ramp from ``threshold`` over
    ``softness``; shadowed vegetation is lifted as well, as NIR is scattered into shadows). The pan
    band is ``(1 - nir_weight) * visible + nir_weight * nir``, contrast-stretched to the 1st-99th
    percentile as satellite products are, and replicated to three channels.

    Args:
        rgb: ``(H, W, 3)`` uint8.
        nir_weight: Share of near-infrared in the band (WorldView-2/3 pan: about 0.4-0.6).
        veg_brightness: Reflectance added to full vegetation in the NIR estimate.
        threshold: Excess-green index where vegetation starts.
        softness: Width of the ramp from no to full vegetation.
    """
    f = rgb.astype(np.float32) / 255.0
    visible = 0.25 * f[..., 0] + 0.45 * f[..., 1] + 0.30 * f[..., 2]
    # The index is smoothed first: JPEG stores colour at half resolution in 8 x 8 blocks, and a
    # ramp on the raw index draws those blocks on roads and roofs.
    index = cv2.GaussianBlur(green_red_index(rgb), (0, 0), 1.5)
    veg = np.clip((index - threshold) / max(softness, 1e-6), 0.0, 1.0)
    nir = visible + veg * veg_brightness
    pan = (1.0 - nir_weight) * visible + nir_weight * nir
    lo, hi = np.percentile(pan, (1, 99))
    pan = np.clip((pan - lo) / max(hi - lo, 1e-3), 0.0, 1.0)
    band = (pan * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(band[:, :, None], 3, axis=2)


class Panchromatic(A.ImageOnlyTransform):
    """:func:`simulate_panchromatic` as an albumentations transform, its mixing drawn per sample."""

    def __init__(self, nir_weight: tuple[float, float] = (0.45, 0.75), veg_brightness: tuple[float, float] = (0.35, 0.75),
                 p: float = 0.5):
        super().__init__(p=p)
        self.nir_weight = nir_weight
        self.veg_brightness = veg_brightness

    def get_params(self) -> dict[str, Any]:
        return {"nir_weight": self.py_random.uniform(*self.nir_weight),
                "veg_brightness": self.py_random.uniform(*self.veg_brightness)}

    def apply(self, img: np.ndarray, nir_weight: float = 0.6, veg_brightness: float = 0.55, **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return img
        return simulate_panchromatic(img, nir_weight=nir_weight, veg_brightness=veg_brightness)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("nir_weight", "veg_brightness")


def add_fog_local(img: np.ndarray, intensity: float, alpha_coef: float, positions: list[tuple[int, int]],
                  radiuses: list[int]) -> np.ndarray:
    """albumentations' ``add_fog`` (``RandomFog``), each fog particle blended over its own bounding box.

    ``add_fog`` blends a copy of the whole image, with one white disc drawn on it, into the image once per
    particle: thousands of full-image copies and blends for one 256 x 256 sample (76 ms, most of the data
    pipeline's time; ``benchmarks/train_profile.py``). Outside its disc a particle's copy equals the image,
    so the blend leaves those pixels as they are; blending the disc's bounding box alone gives the same
    image (``tests/training/test_augment.py`` compares them pixel for pixel) at a small part of the cost.
    """
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"add_fog_local: expected an (H, W, C) uint8 image, got {img.dtype} {img.shape}")
    result = img.copy()
    h, w = result.shape[:2]
    alpha = alpha_coef * intensity
    white = (255,) * result.shape[2]
    for (x, y), r in zip(positions, radiuses):
        x, y, r = int(x), int(y), int(r)
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        box = result[y0:y1, x0:x1]
        overlay = box.copy()
        cv2.circle(overlay, center=(x - x0, y - y0), radius=r, color=white, thickness=-1)
        cv2.addWeighted(overlay, alpha, box, 1 - alpha, 0, dst=box)
    blur = max(3, int(min(h, w) // 30))
    blur += 1 - blur % 2
    return cv2.GaussianBlur(result, (blur, blur), 0)


class QuickFog(A.RandomFog):
    """``A.RandomFog`` with the same parameters and draws, applied by :func:`add_fog_local`."""

    def apply(self, img: np.ndarray, particle_positions: list[tuple[int, int]], radiuses: list[int], intensity: float,
              **params: Any) -> np.ndarray:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            return super().apply(img, particle_positions=particle_positions, radiuses=radiuses, intensity=intensity, **params)
        return add_fog_local(img, intensity, self.alpha_coef, particle_positions, radiuses)


def train_transform(aug: AugmentConfig) -> A.Compose:
    """Augmentation after the crop; geometric transforms move every target channel (nearest).

    Beyond flips, rotations and colour jitter, it imitates what users' imagery does differently:
    panchromatic input (vegetation brightened as near-infrared does, ``augment.pan``) and plain
    grayscale (``augment.gray``), haze and low-resolution sensors, other colour balances.
    """
    pan = [Panchromatic(p=aug.pan)] if aug.pan else []  # absent at 0, so older configs draw the same samples
    return A.Compose([
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rot90),
        A.Affine(rotate=(-aug.rotate_limit, aug.rotate_limit), scale=(1 - aug.scale_limit, 1 + aug.scale_limit),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=aug.rotate),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=aug.brightness_contrast),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=aug.hue_saturation),
        A.OneOf([A.RandomGamma(gamma_limit=(70, 150)), A.RGBShift(r_shift_limit=20, g_shift_limit=20, b_shift_limit=20),
                 A.PlanckianJitter()], p=aug.gamma),
        A.OneOf([QuickFog(fog_coef_range=(0.1, 0.4), alpha_coef=0.08),
                 A.Downscale(scale_range=(0.35, 0.7), interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR})],
                p=aug.haze),
        # Panchromatic before plain grayscale: a sample gets one or the other look, rarely both.
        *pan,
        A.ToGray(method="weighted_average", p=aug.gray),
        A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))],
                p=aug.blur_noise),
    ], seed=0)
