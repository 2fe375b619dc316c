"""How a training run scores its validation tiles' buildings (``train.val_settings``, ``train.val_search``).

The figure that decides which model file ships is its F1 on the validation split once ``rooftrace tune`` has
searched its post-processing settings. A run's F1 at the default settings follows that figure poorly: over
thirteen model files of the default recipe (MODEL_CARD.md, session 10) its rank agreement with the tuned F1 was
0.08 (Spearman), so the epoch a run kept as its best was close to a guess. One round of the same coordinate
search from the start model's tuned settings follows it closely (within 0.001-0.005 of the full search for the
shipped file and runs 22-26) for about 40 post-processing passes over the tiles. So each validation keeps every
tile's probabilities, climbs from :func:`rooftrace.models.tuned_file.validation_start`'s settings, and reports the
best F1 it found as ``object_f1`` (which picks ``best.safetensors`` and drives early stopping), with the F1 at the
default settings beside it.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from rooftrace.config import Config, resolve_path
from rooftrace.evaluation.metrics import Score
from rooftrace.evaluation.tuning import search_settings
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.records import LabelSet
from rooftrace.models.tuned_file import validation_start


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


__all__ = ["search_validation", "validation_settings"]
