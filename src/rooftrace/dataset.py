"""Tiles and their targets as tensors, for training and validation.

A :class:`TileDataset` reads a BEGC-style split through the core readers (:func:`read_coco`),
decodes each tile (:func:`read_rgb`) and rasterises its targets (:func:`make_targets`), then applies
albumentations: random crops and augmentation for training, whole tiles for validation (padded to a
multiple of 32 by :func:`collate_pad`, on the bottom and right so pixel coordinates do not move).

Every sample's augmentation is seeded from ``(seed, epoch, index)``, so a run gives the same batches
whatever the number of workers, and a resumed run gives the batches the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from .config import AugmentConfig, DataConfig, resolve_path
from .imagery import read_rgb
from .labels import ImageLabels, LabelSet, RooftraceError
from .targets import TargetSettings, make_targets


def train_transform(crop: int, aug: AugmentConfig) -> A.Compose:
    """Random crop plus augmentation; geometric transforms move every target channel (nearest)."""
    return A.Compose([
        A.PadIfNeeded(crop, crop, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        A.RandomCrop(crop, crop),
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rot90),
        A.Affine(rotate=(-aug.rotate_limit, aug.rotate_limit), scale=(1 - aug.scale_limit, 1 + aug.scale_limit),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=aug.rotate),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=aug.brightness_contrast),
        A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=15, p=aug.hue_saturation),
        A.OneOf([A.MotionBlur(blur_limit=(3, 5)), A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.08))],
                p=aug.blur_noise),
    ], seed=0)


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


class TileDataset(Dataset):
    """One split's tiles with their footprint/boundary/contact targets.

    Args:
        labels: The split's labels (COCO with image files relative to ``labels.root``).
        data: Channels, target widths, crop size, normalisation.
        aug: Augmentation settings; ``None`` for validation (whole tiles, no augmentation).
        seed: Base seed of the augmentation.
    """

    def __init__(self, labels: LabelSet, data: DataConfig, aug: AugmentConfig | None = None, seed: int = 0, max_tiles: int = 0):
        self.labels = labels
        self.items: list[ImageLabels] = [img for img in labels if labels.image_path(img) is not None and labels.image_path(img).exists()]
        if max_tiles:
            self.items = self.items[:max_tiles]
        if not self.items:
            raise RooftraceError(f"{labels.report.path}: no readable tiles in this split")
        self.channels = [("footprint", "boundary", "contact").index(c) for c in data.channels]
        self.settings = TargetSettings(boundary_width=data.boundary_width, contact_width=data.contact_width)
        self.norm = Normalization(tuple(data.mean), tuple(data.std))
        self.transform = train_transform(data.crop_size, aug) if aug is not None else None
        self.seed = seed
        self.epoch = 0
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if data.cache else None

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` as ``(H, W, 3)`` uint8 and its targets as ``(H, W, C)`` uint8 0/1."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        img = self.items[i]
        rgb = read_rgb(self.labels.image_path(img))
        h, w = rgb.shape[:2]
        t = make_targets(img.footprints, (h, w), self.settings).stack()[self.channels]
        out = (rgb, np.ascontiguousarray(t.transpose(1, 2, 0)))
        if self.cache is not None:
            self.cache[i] = out
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgb, target = self.load(i)
        if self.transform is not None:
            # One seed per (run seed, epoch, sample): reproducible across workers and resumes.
            self.transform.set_random_seed(int((self.seed * 1_000_003 + self.epoch * 10_007 + i) % (2**31)))
            out = self.transform(image=rgb, mask=target)
            rgb, target = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(self.norm.apply(rgb)),
            "target": torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1))).float(),
            "index": i,
            "size": torch.tensor(rgb.shape[:2]),
        }


def collate_pad(batch: list[dict[str, Any]], multiple: int = 32) -> dict[str, Any]:
    """Stack samples, zero-padding each on the bottom and right to a common multiple of 32."""
    h = max(int(s["image"].shape[1]) for s in batch)
    w = max(int(s["image"].shape[2]) for s in batch)
    H, W = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    images = torch.zeros(len(batch), batch[0]["image"].shape[0], H, W)
    targets = torch.zeros(len(batch), batch[0]["target"].shape[0], H, W)
    for n, s in enumerate(batch):
        _, sh, sw = s["image"].shape
        images[n, :, :sh, :sw] = s["image"]
        targets[n, :, :sh, :sw] = s["target"]
    return {
        "image": images,
        "target": targets,
        "index": torch.tensor([s["index"] for s in batch]),
        "size": torch.stack([s["size"] for s in batch]),
    }


def open_split(split: str | Path) -> LabelSet:
    """Read a split folder's COCO labels (``SPLIT/<split>.json``) and print nothing."""
    from .formats import read_coco
    from .prepare import find_annotations

    path = resolve_path(str(split))
    labels = read_coco(find_annotations(path))
    return labels
