"""Searching post-processing settings on probabilities already computed: the part of ``rooftrace tune`` that
needs no model, shared with ``rooftrace finetune`` (which holds its network's probabilities itself).

A coordinate search tries each setting's candidate values in turn (:data:`SEARCH_SPACE`), keeping whatever
raises the mean object F1 (one-to-one, IoU 0.5), for a few rounds until nothing improves; it runs from the
defaults and from settings tuned before (the model's own, the shipped model's), and the best wins. Post-processing
takes a few milliseconds a tile, so hundreds of trials cost seconds.

This module does not import torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from rooftrace.core.threads import ordered_map
from rooftrace.evaluation.metrics import Score, evaluate_labels
from rooftrace.instances.postprocess import Candidates, PostprocessSettings, postprocess, watershed_candidates
from rooftrace.labels.records import LabelSet

#: Candidate values per setting (the search starts from the defaults). The ranges reach past where
#: tuned models have landed: the shipped model's first search stopped at the edge of narrower ones
#: (``footprint_threshold`` 0.65, ``min_area`` 64, ``seed_contact`` 0.2, all at their ends).
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "footprint_threshold": (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75),
    "seed_footprint": (0.5, 0.6, 0.7, 0.8, 0.9),
    "seed_boundary": (0.3, 0.4, 0.5, 0.6, 0.7, 1.01),
    "seed_contact": (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 1.01),
    "merge_contact": (0.0, 0.15, 0.3, 0.45),
    "min_area": (4, 8, 16, 32, 64, 96, 128),
    "min_score": (0.0, 0.8, 0.85, 0.88, 0.9, 0.92),
}


#: Sets of a split's candidate regions :func:`score_settings` keeps at once (the newest); a coordinate search
#: tries the filters right after the setting they filter, so the newest is the one reused.
CANDIDATE_SETS = 2
#: The ``min_area`` candidates are kept at: the search's smallest (specks below it are not traced for nothing).
CANDIDATE_MIN_AREA = min(SEARCH_SPACE["min_area"])
#: Instance maps per image whose candidates a search keeps (the newest), so that a trial that leaves an image's
#: map as an earlier trial found it does not trace it again (:func:`rooftrace.instances.postprocess.watershed_candidates`).
#: A map's candidates are its polygons and two arrays per region: for a 512 x 512 tile of 50 buildings some tens of
#: kilobytes, against 1.5-3 MB for the tile's probabilities the search holds anyway.
MAP_MEMO = 8


@dataclass
class SearchMemo:
    """What a settings search keeps between its trials on one set of probabilities (:func:`score_settings`).

    Attributes:
        sets: ``watershed``'s candidate regions of every image, per setting of the others than ``min_area`` and
            ``min_score`` (the :data:`CANDIDATE_SETS` newest).
        maps: Per image, the candidates of the instance maps found in it (the :data:`MAP_MEMO` newest).
    """

    sets: dict[PostprocessSettings, list[Candidates]] = field(default_factory=dict)
    maps: list[dict] = field(default_factory=list)


def search_threads() -> int:
    """Threads that post-process a trial's images at once: the cores, at most 4 (post-processing releases the
    GIL in OpenCV and scikit-image; ``benchmarks/search_speed.py``)."""
    return max(1, min(4, os.cpu_count() or 1))


def score_settings(probs: Sequence[np.ndarray], gt: LabelSet, method: str, settings: PostprocessSettings,
                   threads: int | None = None, memo: SearchMemo | None = None) -> Score:
    """Post-process each image's probabilities (``probs[i]`` belongs to the i-th image of ``gt``) and score
    the buildings against ``gt`` (object F1, one-to-one, IoU 0.5). The images are post-processed in
    ``threads`` threads (None: :func:`search_threads`); the score does not depend on how many.

    ``memo``: kept across calls on the same ``probs`` (a search's). ``watershed``'s regions before its ``min_area``
    and ``min_score`` filters are kept per setting of the others
    (:func:`rooftrace.instances.postprocess.watershed_candidates`), so that settings differing only in those
    filters are scored without post-processing again (the :data:`CANDIDATE_SETS` newest sets are kept); and an
    image whose instance map a trial finds as an earlier one did is not traced again. The buildings are the same
    (tested)."""
    pred = LabelSet()
    workers = search_threads() if threads is None else threads
    if memo is not None and method == "watershed" and settings.min_area >= CANDIDATE_MIN_AREA:
        key = replace(settings, min_area=CANDIDATE_MIN_AREA, min_score=0.0)
        if key in memo.sets:
            memo.sets[key] = memo.sets.pop(key)  # the newest
        else:
            if len(memo.maps) != len(probs):
                memo.maps = [{} for _ in probs]

            def candidates(i: int) -> Candidates:
                known = memo.maps[i]
                found = watershed_candidates(probs[i], key, known)
                while len(known) > MAP_MEMO:  # the oldest go
                    known.pop(next(iter(known)))
                return found

            memo.sets[key] = list(ordered_map(candidates, range(len(probs)), workers, name="rooftrace-search"))
            while len(memo.sets) > CANDIDATE_SETS:  # memory bounded on a large split: the oldest go
                memo.sets.pop(next(iter(memo.sets)))
        found = (c.footprints(settings) for c in memo.sets[key])
    else:
        found = ordered_map(lambda p: postprocess(p, method=method, settings=settings).footprints, probs, workers,
                            name="rooftrace-search")
    for fp, img in zip(found, gt):
        pimg = pred.get_or_add(img.key)
        pimg.footprints = fp
        pimg.width, pimg.height = img.width, img.height
    return evaluate_labels(gt, pred, pixel=False, threads=workers)


def search_settings(probs: Sequence[np.ndarray], gt: LabelSet, method: str = "watershed", rounds: int = 3,
                    starts: Sequence[PostprocessSettings | None] = (), from_defaults: bool = True,
                    threads: int | None = None) -> tuple[PostprocessSettings, Score, Score, int]:
    """The settings that maximise mean object F1 on ``gt``: ``(settings, their score, the defaults' score, trials)``
    (each :class:`~rooftrace.evaluation.metrics.Score` with its precision and recall).

    A coordinate search runs from the defaults, then from each of ``starts`` (settings tuned before: the
    model's own, the shipped model's; ``None`` entries and repeats are skipped), and the best setting any of
    them reaches wins; ties keep the earlier. One start is not enough: the search is local, and on the
    shipped model's validation split it climbed from the defaults to 0.5869 while its own tuned settings,
    searched from, reach 0.6043. No setting is scored twice (``trials`` counts the distinct ones), so a
    start that walks into ground already covered costs little.

    With ``from_defaults=False`` the search climbs from ``starts`` only (the defaults are still scored once, for
    the third element): what a training run's validation does, one round from the start model's settings
    (``train.val_search``), at about a third of the cost of a full search. Each trial post-processes the
    images in ``threads`` threads (:func:`score_settings`)."""
    if method == "seed":  # a fixed recipe: its threshold is the one setting it reads
        space = {k: v for k, v in SEARCH_SPACE.items() if k == "footprint_threshold"}
    elif probs[0].shape[0] == 1:  # a footprint-only model: no seeds from boundary or contact
        space = {k: v for k, v in SEARCH_SPACE.items() if k in ("footprint_threshold", "min_area", "min_score")}
    else:
        space = SEARCH_SPACE
    seen: dict[PostprocessSettings, Score] = {}
    memo = SearchMemo()  # watershed's regions and traced maps, kept between trials (score_settings)

    def scored(settings: PostprocessSettings) -> Score:
        if settings not in seen:
            seen[settings] = score_settings(probs, gt, method, settings, threads, memo)
        return seen[settings]

    default = scored(PostprocessSettings())
    origins = ([PostprocessSettings()] if from_defaults else []) + [s for s in starts if s is not None]
    if not origins:
        raise ValueError("search_settings: from_defaults=False needs at least one start")
    best, best_score = origins[0], scored(origins[0])
    for i, origin in enumerate(origins):
        if origin in origins[:i]:
            continue
        here, here_score = origin, scored(origin)
        for _ in range(rounds):
            improved = False
            for key, values in space.items():
                for v in values:
                    cand = replace(here, **{key: v})
                    if cand == here:
                        continue
                    score = scored(cand)
                    if score.f1 > here_score.f1 + 1e-9:
                        here, here_score, improved = cand, score, True
            if not improved:
                break
        if here_score.f1 > best_score.f1 + 1e-9:
            best, best_score = here, here_score
    return best, best_score, default, len(seen)

__all__ = ["SEARCH_SPACE", "SearchMemo", "score_settings", "search_settings", "search_threads"]
