"""The network a model file describes, ready to adapt, and the labels checked against what it sees.

:func:`align_chips` is ``prepare-chips --align-labels`` and the first step of ``rooftrace finetune``: the chips
are prepared (:func:`rooftrace.prepare.chips.prepare_chips`), the starting model's footprint probabilities are
cross-correlated with the rasterised labels block by block (:mod:`rooftrace.prepare.shift`, which decides
whether a shift is clear), and with a clear, consistent shift the chips are prepared again with the labels
moved back. Blocks with many confident buildings that no label touches are flagged as incompletely mapped.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rooftrace.config import Config, check_device, config_from_dict
from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.normalize import Normalization
from rooftrace.imagery.read import read_rgb
from rooftrace.imagery.resample import gsd_alias
from rooftrace.labels.records import LabelSet
from rooftrace.labels.splits import open_split
from rooftrace.models.architectures import build_model
from rooftrace.models.autocast import autocast, autocast_dtype
from rooftrace.models.files import read_model_file, shipped_model
from rooftrace.prepare.chips import ChipsResult, prepare_chips
from rooftrace.prepare.shift import AreaShift, Completeness, area_shift, unlabelled_buildings
from rooftrace.prepare.targets import building_mask

#: The pixel size a model is adapted at when neither it nor the user gives one (the shipped model's).
DEFAULT_GSD = 0.3


def resolve_model(model: str | Path | None) -> Path:
    """``None`` or ``"shipped"``: the model inside the package; else the path, which must be a rooftrace
    ``.safetensors`` model file."""
    if model is None or str(model) == "shipped":
        return shipped_model()
    path = Path(model)
    if not path.exists():
        raise RooftraceError(f"{path}: no such model file (or --model shipped for the model that ships with rooftrace)")
    if path.suffix.lower() != ".safetensors":
        raise RooftraceError(f"{path}: fine-tuning starts from a rooftrace .safetensors model file")
    return path


# ------------------------------------------------------------------------------------------- the network


@dataclass
class Network:
    """A network being adapted, with what it needs to see images."""

    model: torch.nn.Module
    config: Config
    channels: tuple[str, ...]
    norm: Normalization
    device: torch.device
    amp: torch.dtype | None

    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray) -> np.ndarray:
        """``(C, H, W)`` probabilities of one ``(H, W, 3)`` uint8 image (padded to 32, cropped back)."""
        was = self.model.training
        self.model.eval()
        h, w = rgb.shape[:2]
        ph, pw = -h % 32, -w % 32
        x = np.pad(self.norm.apply(rgb), ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
        with autocast(self.device, self.amp):
            logits = self.model(torch.from_numpy(x)[None].to(self.device))
        self.model.train(was)
        return torch.sigmoid(logits.float())[0, :, :h, :w].cpu().numpy()


def load_network(path: Path, device: str = "auto") -> Network:
    """A model file's network, built for training (every weight from the file; nothing downloaded)."""
    tensors, meta = read_model_file(path)
    try:
        cfg = config_from_dict(meta["config"])
    except (RooftraceError, KeyError, TypeError) as exc:
        raise RooftraceError(f"{path}: its config cannot be read ({exc})") from None
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_weights=None, encoder_weights_sha256=None))
    channels = tuple(meta["channels"])
    model = build_model(cfg.model, len(channels))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise RooftraceError(f"{path}: its weights do not fit the network it names ({str(exc).splitlines()[0]})") from None
    want = check_device(device)
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(want)
    return Network(model.to(dev).eval(), cfg, channels, Normalization(tuple(meta["mean"]), tuple(meta["std"])), dev,
                   autocast_dtype(cfg.train.amp, dev))


@dataclass
class SplitProbs:
    """A split's labels and the probabilities of one network for each of its images (same order)."""

    labels: LabelSet
    probs: list[np.ndarray]
    blocks: list[str]
    images: list[np.ndarray]  #: the images, ``(H, W, 3)`` uint8, as the network saw them

    def again(self, net: Network) -> SplitProbs:
        """The same images and labels with ``net``'s probabilities."""
        return SplitProbs(self.labels, [net.probabilities(rgb) for rgb in self.images], self.blocks, self.images)

    def pairs_by_block(self) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        out: dict[str, list] = {}
        for img, p, b in zip(self.labels, self.probs, self.blocks):
            out.setdefault(b, []).append((p[0], building_mask(img.footprints, p.shape[1:])))
        return out


def split_probabilities(net: Network, split_dir: Path) -> SplitProbs:
    """Every image of a split, its labels (with width and height) and ``net``'s probabilities."""
    labels = open_split(split_dir)
    gt, probs, blocks, images = LabelSet(root=labels.root, format="memory"), [], [], []
    for img in labels:
        path = labels.image_path(img)
        if path is None or not path.exists():
            continue
        rgb = read_rgb(path)
        images.append(rgb)
        g = gt.get_or_add(img.key)
        g.footprints, g.width, g.height, g.source, g.group = img.footprints, rgb.shape[1], rgb.shape[0], img.source, img.group
        g.file_name = img.file_name
        probs.append(net.probabilities(rgb))
        blocks.append(img.group or "?")
    return SplitProbs(gt, probs, blocks, images)


# ------------------------------------------------------------------------------------------ the labels


@dataclass
class Alignment:
    """What :func:`align_chips` found and did."""

    chips: ChipsResult
    shift: AreaShift
    completeness: Completeness
    probs: dict[str, SplitProbs]  #: split -> the starting model's probabilities (labels after any correction)
    seconds_per_image: float

    def summary(self) -> str:
        return "\n".join([self.shift.summary(), self.completeness.summary()])


def align_chips(chips_dir: str | Path, labels: str | Path, out_dir: str | Path, net: Network | Path | str | None = None, *,
                align: bool = True, max_shift_m: float = 6.0, progress: bool = True, **prepare: Any) -> Alignment:
    """:func:`prepare_chips`, then the labels' shift from the imagery estimated per block with ``net``'s
    probabilities (``None``: the shipped model) and, with ``align`` and when the shift is clear and
    consistent, the chips prepared again with the labels moved back (``rooftrace prepare-chips
    --align-labels``). Also flags blocks whose labels look incomplete.

    Args:
        max_shift_m: Shifts up to this many metres each way are searched.
        prepare: Options of :func:`prepare_chips` (``model_gsd``, or its older name ``gsd``, defaults to the model's pixel size).
    """
    if not isinstance(net, Network):
        net = load_network(resolve_model(net))
    model_gsd = gsd_alias(prepare.pop("model_gsd", None), prepare.pop("gsd", None), "model_gsd")
    model_gsd = model_gsd or net.config.data.gsd or DEFAULT_GSD
    out_dir = Path(out_dir)
    result = prepare_chips(chips_dir, labels, out_dir, model_gsd=model_gsd, progress=progress, **prepare)
    t0 = time.perf_counter()
    probs = {s: split_probabilities(net, p.parent) for s, p in result.splits.items()}
    n = sum(len(p.probs) for p in probs.values())
    per_image = (time.perf_counter() - t0) / max(n, 1)
    by_block: dict[str, list] = {}
    for p in probs.values():
        for b, pairs in p.pairs_by_block().items():
            by_block.setdefault(b, []).extend(pairs)
    max_px = max(2, int(math.ceil(max_shift_m / model_gsd)))
    shift = area_shift(by_block, model_gsd, max_px=max_px)
    if align and shift.correction is not None:
        given = prepare.pop("label_shift", None) or (0.0, 0.0)
        moved = (given[0] + shift.correction[0], given[1] + shift.correction[1])
        result = prepare_chips(chips_dir, labels, out_dir, model_gsd=model_gsd, progress=progress, label_shift=moved,
                               **{**prepare, "force": True})
        probs = {s: _relabel(p, result.splits[s].parent) for s, p in probs.items()}
        by_block = {}
        for p in probs.values():
            for b, pairs in p.pairs_by_block().items():
                by_block.setdefault(b, []).extend(pairs)
    elif shift.correction is not None:
        shift.reason = shift.reason.replace("corrected by", "not corrected (--no-align); would be corrected by")
    completeness = unlabelled_buildings(by_block, min_area_px=max(4, int(round(6.0 / model_gsd ** 2))))
    return Alignment(result, shift, completeness, probs, per_image)


def _relabel(p: SplitProbs, split_dir: Path) -> SplitProbs:
    """The same images and probabilities with the labels of the split prepared again."""
    labels = open_split(split_dir)
    for img in p.labels:
        if img.key in labels:
            img.footprints = labels[img.key].footprints
    return p


__all__ = ["DEFAULT_GSD", "Alignment", "Network", "SplitProbs", "align_chips", "load_network", "resolve_model",
           "split_probabilities"]
