"""How a training run scores its validation tiles' buildings (``train.val_settings``, ``train.val_search``).

The figure that decides which model file ships is its F1 on the validation split once ``rooftrace tune`` has
searched its post-processing settings. A run's F1 at the default settings follows that figure poorly: over
twelve model files of the default recipe its rank agreement with the tuned F1 was 0.41 (Spearman;
``benchmarks/validation_proxy.py``, MODEL_CARD.md, session 10), against 0.66 after one round of the same
coordinate search from the shipped model's settings, which lands 0.004 below the full search on average (at most
0.012) for about 40 post-processing passes over the tiles instead of about 190. So each validation keeps every
tile's probabilities, climbs from :func:`rooftrace.models.tuned_file.validation_start`'s settings, and reports the
best F1 it found as ``object_f1`` (which picks ``best.safetensors`` and drives early stopping), with the F1 at the
default settings beside it.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np

from rooftrace.config import Config, resolve_path
from rooftrace.evaluation.metrics import Score
from rooftrace.evaluation.tuning import search_settings
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.records import LabelSet
from rooftrace.models.tuned_file import WRITTEN_BY_TRAINING, validation_start


def validation_settings(cfg: Config) -> tuple[PostprocessSettings, str]:
    """The settings ``cfg``'s validation climbs from, and where they came from in words (``train.val_settings``
    resolved: a path is expanded as ``train.init_from`` is)."""
    spec = cfg.train.val_settings
    if spec not in ("start", "defaults"):
        spec = str(resolve_path(spec))
    return validation_start(spec, resolve_path(cfg.train.init_from) if cfg.train.init_from else None)


def search_validation(probs: Sequence[np.ndarray], gt: LabelSet, start: PostprocessSettings,
                      rounds: int) -> tuple[PostprocessSettings, Score, Score]:
    """``(settings found, their score, the defaults' score)``: ``rounds`` rounds of the coordinate search from
    ``start`` only (0: ``start`` scored as it is). ``probs[i]`` belongs to the i-th image of ``gt``; they may be
    kept as float16 and are read back as float32 one tile at a time."""
    if len(probs) != len(gt):
        raise ValueError(f"search_validation: {len(probs)} tiles' probabilities for {len(gt)} labelled tiles")
    found, score, at_defaults, _ = search_settings(_AsFloat32(probs), gt, "watershed", rounds=rounds, starts=[start],
                                                   from_defaults=False)
    return found, score, at_defaults


def validation_record(settings: PostprocessSettings, row: dict[str, Any], epoch: int, start_from: str, rounds: int,
                      split: Sequence[str]) -> dict[str, Any]:
    """The settings file a run saves beside ``best.safetensors`` (read by predict as ``rooftrace tune``'s is):
    the settings an epoch's validation found, its scores, and where the search started."""
    return {"method": "watershed", "settings": settings.to_dict(), "object_f1": row["object_f1"],
            "object_f1_defaults": row["object_f1_defaults"], "precision": row["object_precision"],
            "recall": row["object_recall"], "split": list(split), "tta": False, "by": WRITTEN_BY_TRAINING, "epoch": epoch,
            "search": f"{rounds} round(s) from {start_from}"}


class _AsFloat32(Sequence[np.ndarray]):
    """A list of probability arrays read back as float32, one tile at a time."""

    def __init__(self, probs: Sequence[np.ndarray]):
        self.probs = probs

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, i):  # noqa: ANN001 (Sequence's signature: an index; slices are not used)
        return np.asarray(self.probs[i], dtype=np.float32)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (np.asarray(p, dtype=np.float32) for p in self.probs)


__all__ = ["search_validation", "validation_record", "validation_settings"]
