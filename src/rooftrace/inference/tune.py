"""Threshold search: the post-processing settings that maximise object-wise F1 on a validation split.

The model runs once over the split (optionally with flip TTA), on tiles resampled to the model's pixel
size as ``predict`` resamples them (a tile's pixel size is its COCO record's ``gsd``, else its
georeference's), and its probabilities stay in memory;
then :func:`rooftrace.evaluation.tuning.search_settings` tries each setting's candidate values in turn, keeping whatever raises the
mean object F1 (one-to-one, IoU 0.5), for a few rounds until nothing improves, from the defaults, from the
settings already beside the model (a retune with ``--force``) and from the shipped model's; the best wins. Post-processing takes
a few milliseconds a tile, so hundreds of trials cost seconds. The result is written beside the
model (``<model>.postprocess.json``), where ``rooftrace predict`` picks it up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_text, probe_writable
from rooftrace.core.locks import OutputLock
from rooftrace.core.paths import check_distinct
from rooftrace.evaluation.tuning import search_settings
from rooftrace.imagery.read import read_rgb
from rooftrace.imagery.resample import (
    footprints_to_grid,
    place_tile,
    resample_rgb,
)
from rooftrace.inference.runtime import ModelRuntime, load_runtime
from rooftrace.inference.tuned import search_starts, tuned_settings_path
from rooftrace.models.tuned_file import written_by_training
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.labels.records import LabelSet
from rooftrace.labels.splits import open_split

@dataclass
class TuneResult:
    """The best settings found and how they score against the defaults."""

    method: str
    settings: PostprocessSettings
    f1: float
    f1_default: float
    trials: int
    path: Path | None
    #: Precision and recall (pooled over the split's buildings) with the tuned settings and with the defaults:
    #: what the search traded for its F1 (a score filter buys precision with recall).
    precision: float = float("nan")
    recall: float = float("nan")
    precision_default: float = float("nan")
    recall_default: float = float("nan")
    #: How many distinct settings the search climbed from (the defaults, the model's own, the shipped model's).
    starts: int = 1

    def summary(self) -> str:
        changed = {k: v for k, v in self.settings.to_dict().items() if PostprocessSettings().to_dict().get(k) != v}
        return (f"object F1 {self.f1:.4f} with tuned settings (defaults: {self.f1_default:.4f}) after {self.trials} trials from {self.starts} "
                f"start{'s' if self.starts != 1 else ''}; "
                f"precision {self.precision_default:.3f} -> {self.precision:.3f}, recall {self.recall_default:.3f} -> "
                f"{self.recall:.3f}\n"
                f"changed from the defaults: {json.dumps(changed) if changed else 'nothing'}"
                + (f"\nsaved to {self.path}" if self.path else ""))


def tune(model: str | Path, split: str | Path, *, method: str = "watershed", tta: bool = False, device: str = "auto",
         precision: str = "auto", rounds: int = 3, save: bool = True, force: bool = False, progress: bool = True) -> TuneResult:
    """Search post-processing settings for ``model`` on ``split`` and save them beside the model."""
    model = Path(model)
    out = tuned_settings_path(model)
    if not save:
        return _tune(model, split, method, tta, device, precision, rounds, None, progress)
    check_distinct({"--model": model, "--split": split}, {"the tuned settings": out})
    if out.is_dir():
        raise RooftraceError(f"{out}: a folder where the tuned settings go (beside the model); move it away; nothing was tuned")
    if out.exists() and not force:
        if written_by_training(out):
            raise RooftraceError(f"{out}: already exists, the settings rooftrace train's validation found for this file; "
                                 "pass --force to search further from them and replace them")
        raise RooftraceError(f"{out}: already exists; pass --force to replace the tuned settings")
    probe_writable(out.parent, out, "; nothing was tuned")  # before the model runs: not after minutes of search
    # One tune at a time writes a model's settings: a second stops here, before its search.
    with OutputLock(out, what="--model (its tuned settings)"):
        return _tune(model, split, method, tta, device, precision, rounds, out, progress)


def _tune(model: Path, split: str | Path, method: str, tta: bool, device: str, precision: str, rounds: int, out: Path | None,
          progress: bool) -> TuneResult:
    """:func:`tune` once its output is checked (and locked); ``out`` ``None``: not saved."""
    labels = open_split(split)
    if not any(img.footprints for img in labels):
        raise RooftraceError(f"{split}: its labels hold no buildings, so every setting that finds nothing would score "
                             "F1 1.0; tune on a split with labelled buildings (the validation split)")
    runtime = load_runtime(model, device=device, tta=tta, precision=precision)
    gt, probs = split_probabilities(runtime, labels, progress)
    if not probs:
        raise RooftraceError(f"{split}: no readable tiles to tune on")
    starts = search_starts(model, method)
    best, tuned, default, trials = search_settings(probs, gt, method, rounds, starts=starts)
    n_starts = len({PostprocessSettings(), *starts})
    path = None
    if out is not None:
        payload = {"method": method, "settings": best.to_dict(), "object_f1": tuned.f1, "object_f1_defaults": default.f1,
                   "precision": tuned.precision, "recall": tuned.recall, "precision_defaults": default.precision,
                   "recall_defaults": default.recall, "split": str(split), "tta": tta, "trials": trials, "starts": n_starts}
        path = atomic_write_text(out, json.dumps(payload, indent=2), force=True)
    return TuneResult(method, best, tuned.f1, default.f1, trials, path, tuned.precision, tuned.recall, default.precision,
                      default.recall, n_starts)


def split_probabilities(runtime: ModelRuntime, labels: LabelSet, progress: bool = False) -> tuple[LabelSet, list[np.ndarray]]:
    """``runtime``'s probabilities for each readable image of the split ``labels`` (``(C, h, w)`` float32), and the
    labels on the same grid: each tile resampled to the model's pixel size by predict's rule (the split's
    recorded pixel size standing for ``--gsd``), its buildings scaled with it, since thresholds such as
    ``min_area`` are in the model's pixels. Images whose file is missing are left out of both."""
    loaded = runtime.net
    gt, probs = LabelSet(), []
    for img in tqdm(list(labels), desc="tune: predict", disable=not progress, leave=False):
        path = labels.image_path(img)
        if path is None or not path.exists():
            continue
        rgb = read_rgb(path)
        h0, w0 = rgb.shape[:2]
        factor = place_tile(path, w0, h0, input_gsd=img.gsd or None, model_gsd=loaded.gsd).factor if loaded.gsd else 1.0
        rgb = resample_rgb(rgb, factor)
        h, w = rgb.shape[:2]
        probs.append(runtime.probabilities(rgb)[0])
        g = gt.get_or_add(img.key)
        g.footprints = footprints_to_grid(img.footprints, [0.0] * len(img.footprints), (h0, w0), (h, w))[0]
        g.width, g.height, g.source = w, h, img.source
    return gt, probs
