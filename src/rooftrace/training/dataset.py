"""Tiles and their targets as tensors, for training and validation.

A :class:`TileDataset` reads one or more BEGC-style splits through the core readers
(:func:`read_coco`; :func:`select_tiles` keeps the area groups or file names a config asks for),
decodes each tile (:func:`read_rgb`), resamples it to the model's pixel size (``data.gsd``) and
rasterises its targets (:func:`make_targets`), then cuts random crops at a random pixel size and
applies albumentations for training, or gives whole tiles for validation (padded to a multiple of 32
by :func:`collate_pad`, on the bottom and right so pixel coordinates do not move).

Every sample's augmentation is seeded from ``(seed, epoch, draw, tile)``, where the draw is the sample's position
in the epoch (:class:`Draws`; several processes' ``DistributedSampler`` draws each tile once an epoch, seeded by
``(seed, epoch, index)``), so a run gives the same batches whatever the number of workers, a resumed run gives
the batches the uninterrupted run would have, and a tile drawn several times in one epoch (sampling with
replacement) is a crop and an augmentation of its own each time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from shapely import affinity
from torch.utils.data import Dataset, Sampler

from rooftrace.config import AugmentConfig, DataConfig, SplitSpec
from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.normalize import Normalization
from rooftrace.imagery.read import read_rgb
from rooftrace.imagery.resample import GSD_TOLERANCE, resize_image
from rooftrace.labels.records import ImageKey, ImageLabels, LabelSet, LoadReport
from rooftrace.prepare.targets import TargetSettings, make_targets
from rooftrace.training.augment import train_transform
from rooftrace.training.sampling import TileStats, focus_window, tile_stats


def random_scaled_crop(rgb: np.ndarray, target: np.ndarray, crop: int, scale: float,
                       rng: np.random.Generator, focus: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop x crop`` sample showing the ground at ``scale`` times the tile's pixel size.

    A window of ``crop / scale`` pixels is cut at a random place (zero-padded on the bottom and
    right where the tile is smaller) and resized to ``crop``: ``scale`` > 1 shows the buildings
    larger (finer pixels), < 1 smaller. Targets are resized with nearest neighbours. With ``focus``
    (a point ``(x, y)`` in the tile's pixels), the window is placed so that it holds the point at a
    random place (:func:`rooftrace.training.sampling.focus_window`).
    """
    win = max(1, int(round(crop / scale)))
    h, w = rgb.shape[:2]
    if focus is not None:
        y0, x0 = focus_window(focus, win, (h, w), rng)
    else:
        y0 = int(rng.integers(0, max(h - win, 0) + 1))
        x0 = int(rng.integers(0, max(w - win, 0) + 1))
    img = np.zeros((win, win, rgb.shape[2]), rgb.dtype)
    tgt = np.zeros((win, win, target.shape[2]), target.dtype)
    part = rgb[y0:y0 + win, x0:x0 + win]
    img[:part.shape[0], :part.shape[1]] = part
    tgt[:part.shape[0], :part.shape[1]] = target[y0:y0 + win, x0:x0 + win]
    if win != crop:
        img = resize_image(img, (crop, crop))
        tgt = cv2.resize(tgt, (crop, crop), interpolation=cv2.INTER_NEAREST)
        if tgt.ndim == 2:
            tgt = tgt[:, :, None]
    return img, tgt


@dataclass
class TileRef:
    """One tile of a dataset: its split's labels, its record, its pixel size and a unique key."""

    labels: LabelSet
    image: ImageLabels
    gsd: float | None  #: metres a pixel of the file (record, else the split's ``gsd``), if known
    key: ImageKey  #: unique across the dataset's splits (the split's own key when that is unique)
    source: int = 0  #: index of the split spec it came from (a source, for balanced sampling)

    @property
    def path(self) -> Path:
        return self.labels.image_path(self.image)


def select_tiles(specs: tuple[SplitSpec, ...] | list[SplitSpec], splits: list[LabelSet]) -> list[TileRef]:
    """The tiles each split spec keeps (groups, file-name patterns), with their pixel sizes.

    Raises:
        RooftraceError: A spec that keeps no readable tile, or a bad regular expression.
    """
    out: list[TileRef] = []
    seen: set = set()
    for n, (spec, labels) in enumerate(zip(specs, splits)):
        try:
            keep = re.compile(spec.match) if spec.match else None
            drop = re.compile(spec.exclude) if spec.exclude else None
        except re.error as exc:
            raise RooftraceError(f"split {spec.path}: bad match/exclude pattern ({exc})") from None
        kept = 0
        for img in labels:
            path = labels.image_path(img)
            if path is None or not path.exists():
                continue
            name = img.file_name or str(img.key)
            if spec.groups and img.group not in spec.groups:
                continue
            if img.group is not None and img.group in spec.exclude_groups:
                continue
            if (keep and not keep.search(name)) or (drop and drop.search(name)):
                continue
            key = img.key if len(specs) == 1 else f"{n}:{img.key}"
            if key in seen:
                continue
            seen.add(key)
            out.append(TileRef(labels, img, img.gsd or spec.gsd or None, key, source=n))
            kept += 1
        if not kept:
            raise RooftraceError(f"split {spec.describe()}: no readable tile is left by its filters")
    return out


class Draws(Sampler):
    """A sampler of tile indices, numbered: yields ``(draw, index)``, each draw's position in the epoch with the
    tile it drew, for :meth:`TileDataset.__getitem__` to seed the sample's crop and augmentation by the draw.

    Training draws tiles with replacement (the balanced sampler of a 226-tile recipe draws 1,200 an epoch, its
    most weighted tile about 20 times). Seeded by the tile alone, every draw of a tile in an epoch was the same
    crop with the same augmentation: 209 distinct samples among 1,200 in an epoch of the default recipe, until
    session 7 (2026-12-06)."""

    def __init__(self, sampler: Sampler | Any):
        self.sampler = sampler

    def __iter__(self):
        return iter(enumerate(self.sampler))

    def __len__(self) -> int:
        return len(self.sampler)


class TileDataset(Dataset):
    """Tiles of one or more splits with their footprint/boundary/contact targets.

    When ``data.gsd`` is set, every tile whose pixel size is known is first resampled to it, image
    and footprints together (the footprints exactly, then rasterised), so that a building is as
    many pixels wide whichever source it comes from. Training samples are then cut at a random
    pixel size around it (``augment.pixel_scale``), so that the model also copes when a user's
    pixel size is off.

    Args:
        tiles: The tiles (:func:`select_tiles`).
        data: Channels, target widths, crop size, normalisation, pixel size.
        aug: Augmentation settings; ``None`` for validation (whole tiles, no augmentation).
        seed: Base seed of the augmentation.
    """

    def __init__(self, tiles: list[TileRef], data: DataConfig, aug: AugmentConfig | None = None, seed: int = 0, max_tiles: int = 0):
        self.items = list(tiles)
        if max_tiles:
            self.items = self.items[:max_tiles]
        if not self.items:
            raise RooftraceError("no readable tiles in the given splits")
        self.channels = [("footprint", "boundary", "contact").index(c) for c in data.channels]
        self.settings = TargetSettings(boundary_width=data.boundary_width, contact_width=data.contact_width)
        self.norm = Normalization(tuple(data.mean), tuple(data.std))
        self.model_gsd = data.gsd or None  # the pixel size the model trains at (each TileRef's gsd is its tile's)
        self.crop = data.crop_size
        self.aug = aug
        self.transform = train_transform(aug) if aug is not None else None
        self.seed = seed
        self.epoch = 0
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if data.cache else None
        self._stats: dict[int, TileStats] = {}

    def __len__(self) -> int:
        return len(self.items)

    def factor(self, i: int) -> float:
        """How much tile ``i`` is resized to reach ``data.gsd`` (1: not at all)."""
        g = self.items[i].gsd
        if self.model_gsd is None or g is None or abs(g / self.model_gsd - 1) <= GSD_TOLERANCE:  # as resample_factor decides at inference
            return 1.0
        return g / self.model_gsd

    def footprints(self, i: int, size: tuple[int, int] | None = None) -> list:
        """Tile ``i``'s footprints in the pixels of its resampled image (of ``size`` = (h, w))."""
        img = self.items[i].image
        f = self.factor(i)
        if f == 1.0:
            return list(img.footprints)
        if size is None:
            size = self.load(i)[0].shape[:2]
        h0, w0 = img.height, img.width
        if not h0 or not w0:
            h0, w0 = read_rgb(self.items[i].path).shape[:2]
        sx, sy = size[1] / w0, size[0] / h0
        return [affinity.scale(fp, sx, sy, origin=(0, 0)) for fp in img.footprints]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` (resampled to ``data.gsd``) as ``(H, W, 3)`` uint8 and its targets as ``(H, W, C)`` uint8 0/1."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        ref = self.items[i]
        rgb = read_rgb(ref.path)
        h, w = rgb.shape[:2]
        f = self.factor(i)
        if f != 1.0:
            h, w = max(1, int(round(h * f))), max(1, int(round(w * f)))
            rgb = resize_image(rgb, (h, w))
        fps = self.footprints(i, (h, w)) if f != 1.0 else list(ref.image.footprints)
        t = make_targets(fps, (h, w), self.settings).stack()[self.channels]
        out = (rgb, np.ascontiguousarray(t.transpose(1, 2, 0)))
        if self.cache is not None:
            self.cache[i] = out
        return out

    def stats(self, i: int) -> TileStats:
        """Tile ``i``'s buildings (centroids and areas in its resampled pixels) and vegetation share."""
        if i not in self._stats:
            rgb, target = self.load(i)
            self._stats[i] = tile_stats(rgb, target[:, :, 0], self.footprints(i, rgb.shape[:2]))
        return self._stats[i]

    def drop_unreadable(self, report: LoadReport) -> list[Path]:
        """Decode every tile once and leave out those that cannot be read; returns their paths.

        Each one left out is a :meth:`LoadReport.skip` naming the file (under ``--strict`` the first
        one stops the run). With ``data.cache`` the decoded tiles fill the cache, so workers forked
        later share it; without it, they are decoded and dropped (a tile cut short fails here, at the
        start, not in a DataLoader worker an hour later).

        Raises:
            RooftraceError: No readable tile is left, or ``--strict`` and an unreadable one.
        """
        keep: list[TileRef] = []
        dropped: list[Path] = []
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for i, ref in enumerate(self.items):
            try:
                out = self.load(i) if self.cache is not None else read_rgb(ref.path)
            except RooftraceError as exc:
                report.skip(str(exc))
                dropped.append(ref.path)
                continue
            if self.cache is not None:
                cache[len(keep)] = out  # type: ignore[assignment]
            keep.append(ref)
        if dropped:
            self.items = keep
            self._stats = {}
            if self.cache is not None:
                self.cache = cache
            if not keep:
                raise RooftraceError(f"{report.path}: no readable tile is left ({len(dropped)} unreadable)")
        return dropped

    def sample_seed(self, i: int, draw: int | None = None) -> int:
        """The augmentation seed of tile ``i``: by ``(seed, epoch, draw, i)`` for a numbered draw (:class:`Draws`),
        else by ``(seed, epoch, i)``. Reproducible across workers and resumes."""
        if draw is None:
            return int((self.seed * 1_000_003 + self.epoch * 10_007 + i) % (2**31))
        return int(np.random.SeedSequence([self.seed, self.epoch, draw, i]).generate_state(1)[0] % (2**31))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Tile ``key``'s sample, or with ``key = (draw, index)`` (:class:`Draws`) that draw's sample of the tile."""
        draw, i = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (None, key)
        rgb, target = self.load(i)
        if self.transform is not None and self.aug is not None:
            seed = self.sample_seed(i, draw)
            rng = np.random.default_rng(seed)
            scale = 1.0
            if self.aug.pixel_scale and rng.random() < self.aug.pixel_scale:
                scale = float(self.aug.pixel_scale_limit ** rng.uniform(-1.0, 1.0))
            focus = None
            if self.aug.focus and rng.random() < self.aug.focus:
                focus = self.stats(i).pick_building(rng)
            rgb, target = random_scaled_crop(rgb, target, self.crop, scale, rng, focus)
            self.transform.set_random_seed(seed)
            out = self.transform(image=rgb, mask=target)
            rgb, target = out["image"], out["mask"]
        return {
            "image": torch.from_numpy(self.norm.apply(rgb)),
            "target": torch.from_numpy(np.ascontiguousarray(target.transpose(2, 0, 1))).float(),
            "index": i,
            "size": torch.tensor(rgb.shape[:2]),
        }


def same_size_batches(sizes: list[tuple[int, int]], batch_size: int, max_pixels: int | None = None,
                      multiple: int = 32) -> list[list[int]]:
    """Indices of images of ``sizes`` grouped into batches of one padded size (each image padded only to a
    multiple of ``multiple``, as ``predict`` pads a tile), so that no image is run on a canvas another image
    made larger: its outputs are then those ``predict`` gives it, whatever else is validated with it, and no
    time goes into padding. Sizes in increasing order, indices in order within a size; at most ``batch_size``
    images a batch and, with ``max_pixels``, at most that many padded pixels (one image at least)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes):
        groups.setdefault((-(-int(h) // multiple) * multiple, -(-int(w) // multiple) * multiple), []).append(i)
    batches: list[list[int]] = []
    for (H, W), idx in sorted(groups.items()):
        per = max(1, batch_size if not max_pixels else min(batch_size, max_pixels // (H * W)))
        batches += [idx[k : k + per] for k in range(0, len(idx), per)]
    return batches


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


