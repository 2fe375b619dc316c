"""Training configuration: frozen dataclasses read from YAML, unknown keys rejected, flags override.

A run is described by one YAML file (``configs/*.yaml``) whose sections mirror the dataclasses
below. ``--set section.key=value`` overrides any entry (the value is parsed as YAML, so
``--set train.epochs=2`` gives an int and ``--set data.channels=[footprint]`` a list). The fully
resolved configuration is written into the run folder, so a run can always be repeated.

Paths may use ``${ROOFTRACE_SAMPLE_DIR}``, ``${ROOFTRACE_EXTRA_DIR}`` and ``${ROOFTRACE_OSM_DIR}``; when
unset they mean the data packs at ``../shared/data/buildings-sample``, ``buildings-extra`` and ``osm-oam``
(relative to the working directory, the repository root).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rooftrace.core.errors import RooftraceError

CHANNELS = ("footprint", "boundary", "contact")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SAMPLE_DIR = "../shared/data/buildings-sample"
#: Where ``${NAME}`` in a config path points when the variable is not set (relative to the repository root).
DEFAULT_DIRS = {
    "ROOFTRACE_SAMPLE_DIR": DEFAULT_SAMPLE_DIR,
    "ROOFTRACE_EXTRA_DIR": "../shared/data/buildings-extra",
    "ROOFTRACE_OSM_DIR": "../shared/data/osm-oam",
}


#: Devices rooftrace can run on, as torch names them.
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if torch would take it (auto, cpu, cuda, cuda:N, mps), else a clear error naming ``option``."""
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device.strip()):
        raise RooftraceError(f"{option} {device}: not a device; use cpu, cuda, cuda:N (the N-th GPU) or auto "
                             "(a GPU when there is one)")
    return device.strip()


@dataclass(frozen=True)
class SplitSpec:
    """One split folder (``SPLIT/<split>.json`` + images), or part of it, as a training or validation source.

    Written in YAML as a plain path, or as a mapping to take part of a split or to give its pixel size::

        train:
          - ${ROOFTRACE_SAMPLE_DIR}/train
          - {path: ../shared/data/buildings-extra/train, exclude_groups: [dubai tile 5], gsd: 0.5}
    """

    path: str
    groups: tuple[str, ...] = ()  #: keep only images of these ``area_group`` values (empty: all)
    exclude_groups: tuple[str, ...] = ()  #: leave out images of these ``area_group`` values
    match: str = ""  #: keep only images whose file name matches this regular expression
    exclude: str = ""  #: leave out images whose file name matches this regular expression
    gsd: float = 0.0  #: metres a pixel of images whose record gives none (0: unknown, used as they are)
    weight: float = 1.0  #: with ``data.sampling: balanced``, a multiplier on this source's share of the batches

    def describe(self) -> str:
        parts = [self.path] + [f"{k}={v!r}" for k, v in (("groups", list(self.groups)), ("exclude_groups", list(self.exclude_groups)),
                                                           ("match", self.match), ("exclude", self.exclude), ("gsd", self.gsd)) if v]
        return " ".join(parts)


@dataclass(frozen=True)
class DataConfig:
    """Where the tiles are and how they become tensors."""

    train: tuple[SplitSpec, ...] = (SplitSpec("${ROOFTRACE_SAMPLE_DIR}/train"),)  #: one or more splits, used together
    val: tuple[SplitSpec, ...] = (SplitSpec("${ROOFTRACE_SAMPLE_DIR}/val"),)
    crop_size: int = 256  #: random crops for training; validation uses whole tiles padded to 32
    batch_size: int = 8
    workers: int = 2
    cache: bool = True  #: keep decoded tiles and targets in memory (the sample pack is small)
    channels: tuple[str, ...] = CHANNELS  #: targets to learn, in order; ("footprint",) = the original
    boundary_width: int = 2
    contact_width: int = 3
    mean: tuple[float, float, float] = IMAGENET_MEAN  #: saved with the model
    std: tuple[float, float, float] = IMAGENET_STD
    gsd: float = 0.0  #: metres a pixel the model trains at; every tile is resampled to it (0 = as they are); saved with the model
    max_train_tiles: int = 0  #: use only the first N training tiles (0 = all); for quick checks
    max_val_tiles: int = 0
    sampling: str = "uniform"  #: uniform (every tile alike) | balanced (by source, density, small buildings, vegetation: rooftrace.training.sampling)


@dataclass(frozen=True)
class AugmentConfig:
    """Albumentations probabilities; geometric ones move every target channel with the image."""

    hflip: float = 0.5
    vflip: float = 0.5
    rot90: float = 0.5
    rotate: float = 0.5
    rotate_limit: float = 12.0
    scale_limit: float = 0.1
    brightness_contrast: float = 0.5
    hue_saturation: float = 0.3
    blur_noise: float = 0.25
    pixel_scale: float = 0.0  #: probability of sampling at another pixel size, log-uniform within pixel_scale_limit
    pixel_scale_limit: float = 2.0  #: up to this factor finer or coarser than data.gsd
    gray: float = 0.0  #: probability of a grayscale (panchromatic-like) sample
    haze: float = 0.0  #: probability of haze (fog) or a low-resolution sensor (downscale and back)
    gamma: float = 0.0  #: probability of a gamma / colour-balance shift (other sensors)
    pan: float = 0.0  #: probability of a simulated panchromatic sample (vegetation brightened as near-infrared does)
    focus: float = 0.0  #: probability that a crop is placed on a building (small ones more often)


@dataclass(frozen=True)
class ModelConfig:
    """The network: ``baseline-unet`` (the original first attempt) or any smp architecture."""

    arch: str = "unet"  #: baseline-unet | unet | unetplusplus | fpn | ... (smp names, lower case)
    encoder: str = "resnet34"
    encoder_weights: str | None = None  #: None, "imagenet" (downloads), or a local .safetensors file
    encoder_weights_sha256: str | None = None  #: checked before a local file is loaded
    base_channels: int = 32  #: baseline-unet only


@dataclass(frozen=True)
class LossConfig:
    """Weighted BCE + Dice per channel (the original: 0.3 BCE, 0.7 Dice); focal optional."""

    bce: float = 0.3
    dice: float = 0.7
    focal: float = 0.0
    focal_gamma: float = 2.0
    channel_weights: tuple[float, ...] = (1.0, 0.5, 0.5)
    distill: float = 0.0  #: weight of the teachers' soft targets (train.teachers) against the labels' (0 = off): rooftrace.training.distill


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a one-cycle schedule, as the original final pipeline."""

    lr: float = 1e-3  #: the one-cycle peak
    weight_decay: float = 1e-5
    pct_start: float = 0.3
    div_factor: float = 10.0
    final_div_factor: float = 100.0
    grad_clip: float = 1.0  #: max gradient norm (0 = off)
    fused: bool = False  #: one fused AdamW kernel per tensor (measured in benchmarks/train_profile.py; off: a resumed run did not reproduce the uninterrupted one with it)


@dataclass(frozen=True)
class TrainConfig:
    """The loop: length, stopping, precision, device, outputs."""

    epochs: int = 40
    patience: int = 7  #: epochs without a better object F1 before stopping (0 = never)
    seed: int = 0
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    amp: str = "auto"  #: auto | bf16 | fp16 | off: see rooftrace.models.autocast (auto: bf16 on GPUs and CPUs that have it, fp16 + grad scaler on older GPUs, else fp32)
    channels_last: bool = True
    compile: bool = False
    runs_dir: str = "runs"
    vis_tiles: int = 4  #: validation tiles in each epoch's visual check
    steps_per_epoch: int = 0  #: 0 = one pass over the training tiles
    init_from: str = ""  #: start from the weights of this rooftrace model file (fine-tuning); "" = from model.encoder_weights
    val_every: int = 1  #: validate every N epochs (and always after the last); the others only checkpoint
    transposed_upsampling: bool = True  #: each U-Net decoder block's upsampling and first convolution as one transposed convolution (the same function, faster: rooftrace.models.upsample_conv)
    depthwise_fp32: bool | str = False  #: depthwise convolutions computed in fp32 under bf16 autocast: slow (those bf16 trains slower on CPUs: larger than 3 x 3 or strided) | all (= true) | false: rooftrace.models.autocast.depthwise_in_fp32, benchmarks/train_profile.py
    freeze_encoder: int = 0  #: keep the encoder layers at 1/2 .. 1/2^N of the input's size as they start (weights and BatchNorm statistics; N >= the encoder's depth: all of it): rooftrace.training.freezing
    teachers: tuple[str, ...] = ()  #: rooftrace model files whose mean probabilities are a second, soft target (loss.distill): rooftrace.training.distill
    val_settings: str = "start"  #: post-processing settings validation starts from: start (beside init_from, else the shipped model's) | defaults | a model or .postprocess.json file: rooftrace.models.tuned_file.validation_start
    val_search: int = 1  #: rounds of the settings search from val_settings at each validation (0 = score them as they are); object_f1 is the best found
    ema: float = 0.0  #: decay of an exponential moving average of the weights (BatchNorm statistics included) that is validated and saved; 0 = off


@dataclass(frozen=True)
class Config:
    """A whole training run."""

    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "Config":
        """Check values that types cannot; raise :class:`RooftraceError` naming the key."""
        bad = [c for c in self.data.channels if c not in CHANNELS]
        if bad or not self.data.channels or self.data.channels[0] != "footprint":
            raise RooftraceError(f"data.channels {list(self.data.channels)}: must start with 'footprint' and use only {list(CHANNELS)}")
        if len(self.loss.channel_weights) < len(self.data.channels):
            raise RooftraceError(f"loss.channel_weights has {len(self.loss.channel_weights)} values for {len(self.data.channels)} channels")
        bad_number = next(((k, v) for k, v in _numbers(self.to_dict()) if not math.isfinite(v)), None)
        if bad_number is not None:
            raise RooftraceError(f"{bad_number[0]} {bad_number[1]}: must be a finite number")
        if self.data.crop_size < 32 or self.data.crop_size % 32:
            raise RooftraceError(f"data.crop_size {self.data.crop_size}: must be a positive multiple of 32, such as 256")
        for key, v in (("train.epochs", self.train.epochs), ("data.batch_size", self.data.batch_size)):
            if v < 1:
                raise RooftraceError(f"{key} {v}: must be at least 1")
        for key, v, what in (("optim.lr", self.optim.lr, "greater than 0, such as 1e-3"),
                             ("optim.div_factor", self.optim.div_factor, "greater than 0"),
                             ("optim.final_div_factor", self.optim.final_div_factor, "greater than 0")):
            if not v > 0:
                raise RooftraceError(f"{key} {v}: must be {what}")
        if not 0.0 < self.optim.pct_start < 1.0:
            raise RooftraceError(f"optim.pct_start {self.optim.pct_start}: must be between 0 and 1")
        for key, v in (("data.workers", self.data.workers), ("train.steps_per_epoch", self.train.steps_per_epoch),
                       ("train.patience", self.train.patience), ("train.val_search", self.train.val_search), ("train.vis_tiles", self.train.vis_tiles),
                       ("data.max_train_tiles", self.data.max_train_tiles), ("data.max_val_tiles", self.data.max_val_tiles),
                       ("data.boundary_width", self.data.boundary_width), ("data.contact_width", self.data.contact_width),
                       ("optim.weight_decay", self.optim.weight_decay), ("optim.grad_clip", self.optim.grad_clip),
                       ("loss.bce", self.loss.bce), ("loss.dice", self.loss.dice), ("loss.focal", self.loss.focal)):
            if v < 0:
                raise RooftraceError(f"{key} {v}: must be 0 or more")
        if not all(v > 0 for v in self.data.std):
            raise RooftraceError(f"data.std {list(self.data.std)}: every value must be greater than 0 (inputs are divided by it)")
        check_device(self.train.device, "train.device")
        if self.data.gsd < 0:
            raise RooftraceError(f"data.gsd {self.data.gsd}: must be a pixel size in metres (0 = use tiles as they are)")
        for key, specs in (("data.train", self.data.train), ("data.val", self.data.val)):
            if not specs:
                raise RooftraceError(f"{key}: give at least one split folder")
            for spec in specs:
                if spec.gsd < 0:
                    raise RooftraceError(f"{key} {spec.path}: gsd {spec.gsd} must be metres a pixel (0 = unknown)")
        if self.data.sampling not in ("uniform", "balanced"):
            raise RooftraceError(f"data.sampling {self.data.sampling!r}: must be uniform or balanced")
        if not 0.0 <= self.train.ema < 1.0:
            raise RooftraceError(f"train.ema {self.train.ema}: must be 0 (off) or a decay in (0, 1), such as 0.998")
        if not 0.0 <= self.loss.distill < 1.0:
            raise RooftraceError(f"loss.distill {self.loss.distill}: must be 0 (off) or a weight in (0, 1), such as 0.5")
        if bool(self.train.teachers) != (self.loss.distill > 0):
            raise RooftraceError(f"train.teachers ({len(self.train.teachers)} files) and loss.distill ({self.loss.distill}) go "
                                 "together: give teacher model files and a distillation weight above 0, or neither")
        if self.train.freeze_encoder < 0:
            raise RooftraceError(f"train.freeze_encoder {self.train.freeze_encoder}: must be 0 (train every layer) or more")
        if self.train.val_every < 1:
            raise RooftraceError(f"train.val_every {self.train.val_every}: must be at least 1")
        for key, v in (("augment.pan", self.augment.pan), ("augment.focus", self.augment.focus)):
            if not 0.0 <= v <= 1.0:
                raise RooftraceError(f"{key} {v}: must be a probability between 0 and 1")
        for key, specs in (("data.train", self.data.train),):
            for spec in specs:
                if not spec.weight > 0:
                    raise RooftraceError(f"{key} {spec.path}: weight {spec.weight} must be greater than 0")
        if not 1.0 <= self.augment.pixel_scale_limit <= 8.0:
            raise RooftraceError(f"augment.pixel_scale_limit {self.augment.pixel_scale_limit}: must be between 1 and 8")
        depthwise_mode(self.train.depthwise_fp32)  # a clear error for anything but slow, all, true or false
        if self.train.amp not in ("auto", "bf16", "fp16", "off", "fp32"):
            raise RooftraceError(f"train.amp {self.train.amp!r}: must be one of auto, bf16, fp16, off")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for YAML and JSON."""
        return _plain(dataclasses.asdict(self))


#: What ``train.depthwise_fp32`` may say (true and false read as all and none): which depthwise convolutions
#: :func:`rooftrace.models.autocast.depthwise_in_fp32` computes in fp32.
DEPTHWISE_FP32_MODES = ("none", "slow", "all")


def depthwise_mode(value: bool | str) -> str:
    """``train.depthwise_fp32`` as one of ``none``, ``slow`` or ``all`` (``true`` = ``all``, ``false`` = ``none``).

    ``true`` kept its meaning from before ``slow`` existed (every depthwise convolution), so that a run's saved
    configuration trains as it did when it is resumed or repeated."""
    if value is True:
        return "all"
    if value is False:
        return "none"
    v = str(value).lower()
    if v not in DEPTHWISE_FP32_MODES:
        raise RooftraceError(f"train.depthwise_fp32 {value!r}: must be slow (the 5 x 5 and strided depthwise convolutions), "
                             "all, true (= all) or false")
    return v


def _numbers(v: Any, key: str = "") -> typing.Iterator[tuple[str, float]]:
    """Every float in plain config data, with its dotted key."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _numbers(x, f"{key}.{k}" if key else k)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _numbers(x, f"{key}[{i}]")
    elif isinstance(v, float):
        yield key, v


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise naming the key."""
    origin = typing.get_origin(tp)
    if tp is SplitSpec and isinstance(value, str):
        return SplitSpec(path=value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RooftraceError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except RooftraceError:
                continue
        raise RooftraceError(f"{key}: {value!r} is not one of {args}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if inner is None and args and len(args) != len(value):
            raise RooftraceError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(inner or args[i], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise RooftraceError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise RooftraceError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-3" as a string
            except ValueError:
                pass
        raise RooftraceError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise RooftraceError(f"{key}: expected a string, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RooftraceError(f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; known: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(hints[k], v, prefix + k) for k, v in data.items()})


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.epochs=2", "data.channels=[footprint]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise RooftraceError(f"--set {item!r}: expected key=value, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            if raw.strip()[:1] in "[{":  # meant as a list or mapping: never a path by accident
                raise RooftraceError(f"--set {item}: not a valid YAML list or mapping ({str(exc).splitlines()[0]}); "
                                     "quote values that hold '{', '}' or ',' (\"${ROOFTRACE_SAMPLE_DIR}/train\")") from None
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults), apply ``--set`` overrides, and validate.

    Raises:
        RooftraceError: Missing or malformed file, unknown key, wrong type, bad value.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise RooftraceError(f"{path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise RooftraceError(f"{path}: not valid YAML ({exc})") from None
        if data is None:
            raise RooftraceError(f"{path}: the config file is empty (no sections); copy one of configs/*.yaml, or give "
                                 "no --config for the defaults")
        if not isinstance(data, dict):
            raise RooftraceError(f"{path}: a config is a mapping of sections, got {type(data).__name__}")
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return _build(Config, data).validate()
    except RooftraceError as exc:
        raise RooftraceError(f"{path or 'config'}: {exc}") from None


def config_from_dict(data: dict) -> Config:
    """A Config from plain data (as saved in a run folder or beside a model)."""
    return _build(Config, data).validate()


def resolve_path(p: str) -> Path:
    """Expand ``${ROOFTRACE_SAMPLE_DIR}`` (default: the sample pack beside the repository) and ``~``."""
    env = dict(os.environ)
    for k, v in DEFAULT_DIRS.items():
        env.setdefault(k, v)
    for k, v in env.items():
        p = p.replace("${" + k + "}", v)
    return Path(os.path.expanduser(p))


def dump_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
