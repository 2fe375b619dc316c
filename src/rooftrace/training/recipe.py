"""The recipe ``rooftrace finetune`` adapts a model with: a frozen dataclass read from the packaged
``recipes/finetune.yaml`` (found with :mod:`importlib.resources`, so an installed wheel finds it), a user's
YAML of some keys on top, unknown keys refused. How the values were chosen: MODEL_CARD.md, "Adapting to a new
area", and ``benchmarks/finetune_areas.py ablation``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rooftrace.config import AugmentConfig
from rooftrace.core.errors import RooftraceError


@dataclass(frozen=True)
class Recipe:
    """How a model is adapted (the packaged ``recipes/finetune.yaml`` holds the measured defaults)."""

    lr: float = 3e-4  #: peak learning rate of the decoder and head
    encoder_lr: float = 0.3  #: the encoder's learning rate as a share of ``lr``
    warmup: float = 0.05  #: share of the steps warming up
    steps: int = 600  #: the most steps
    batch_size: int = 8
    crop_size: int = 256
    freeze_encoder: float = 0.3  #: share of the steps with the encoder frozen
    freeze_bn: bool = True  #: the encoder's BatchNorm statistics stay frozen throughout
    eval_every: int = 25  #: steps between scores on the tuning blocks
    patience: int = 6  #: scores without a better F1 before stopping (0: never)
    unlabelled_weight: float = 0.2  #: loss weight of confident pixels outside the labels (1: the plain loss)
    confident: float = 0.8
    augment: dict = field(default_factory=dict)  #: overrides of the starting model's augmentation

    def check(self) -> Recipe:
        for key in ("lr", "steps", "batch_size", "eval_every"):
            if not getattr(self, key) > 0:
                raise RooftraceError(f"recipe {key} {getattr(self, key)}: must be greater than 0")
        for key in ("encoder_lr", "warmup", "freeze_encoder", "unlabelled_weight", "confident"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise RooftraceError(f"recipe {key} {getattr(self, key)}: must be between 0 and 1")
        if self.crop_size < 32 or self.crop_size % 32:
            raise RooftraceError(f"recipe crop_size {self.crop_size}: must be a positive multiple of 32")
        names = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(self.augment) - names)
        if unknown:
            raise RooftraceError(f"recipe augment: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return self


def load_recipe(path: str | Path | None = None, **changes: Any) -> Recipe:
    """The packaged recipe (found with :mod:`importlib.resources`, so it works from an installed wheel),
    then the keys of ``path`` (a YAML file), then ``changes``.

    Raises:
        RooftraceError: An unreadable file, an unknown key or a bad value.
    """
    from importlib.resources import files

    data = yaml.safe_load((files("rooftrace.training") / "recipes" / "finetune.yaml").read_text())
    if path is not None:
        path = Path(path)
        try:
            extra = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise RooftraceError(f"{path}: no such recipe file") from None
        except yaml.YAMLError as exc:
            raise RooftraceError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(extra, dict):
            raise RooftraceError(f"{path}: a recipe is a mapping of keys (see rooftrace/training/recipes/finetune.yaml)")
        data.update(extra)
    data.update({k: v for k, v in changes.items() if v is not None})
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RooftraceError(f"{path or 'recipe'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    types = {f.name: f.type for f in dataclasses.fields(Recipe)}
    try:
        values = {k: (float(v) if types[k] == "float" else int(v) if types[k] == "int" else v) for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise RooftraceError(f"{path or 'recipe'}: {exc}") from None
    return Recipe(**values).check()


__all__ = ["Recipe", "load_recipe"]
