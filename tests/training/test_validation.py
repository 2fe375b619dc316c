"""How a training run scores validation: a search of the post-processing settings from a start
(rooftrace.training.validation), its columns in metrics.csv, and a resumed older run kept on its measure."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from rooftrace.cli import main
from rooftrace.evaluation.tuning import score_settings
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.tuned_file import read_tuned
from rooftrace.training.validation import search_validation
from tests.evaluation.test_tuning import _tiles
from tests.training.test_train import REPO, _overrides


def test_the_search_climbs_from_its_start_on_probabilities_kept_in_half_precision() -> None:
    probs, gt = _tiles()  # perfect buildings plus a faint blob that only the score filter removes
    half = [p.astype(np.float16) for p in probs]
    at_start = score_settings(probs, gt, "watershed", PostprocessSettings())
    found, score, at_defaults = search_validation(half, gt, PostprocessSettings(), rounds=1)
    assert at_defaults.f1 == pytest.approx(at_start.f1) and at_start.f1 < 0.9
    assert score.f1 == 1.0 and found.min_score > 0.87
    kept, kept_score, _ = search_validation(half, gt, PostprocessSettings(), rounds=0)
    assert kept == PostprocessSettings() and kept_score.f1 == pytest.approx(at_start.f1)
    with pytest.raises(ValueError, match="2 tiles' probabilities for 3 labelled tiles"):
        search_validation(half[:2], gt, PostprocessSettings(), rounds=1)


def test_a_run_validates_from_its_start_and_saves_the_settings_found_beside_its_best_weights(mini_split, tmp_path,
                                                                                              capsys) -> None:
    sets = _overrides(mini_split, tmp_path / "runs", "train.epochs=1", "model.base_channels=16",
                      "train.val_settings=defaults", "train.val_search=1")
    assert main(["train", "--config", str(REPO / "configs" / "baseline-unet.yaml"), *[a for s in sets for a in ("--set", s)]]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    out = capsys.readouterr().out
    assert f"run folder {run}" in out and f"predict uses {run / 'best.safetensors'} with the settings" in out
    (row,) = list(csv.DictReader((run / "metrics.csv").open()))
    # Climbed from the defaults, the F1 it keeps is never below theirs.
    assert float(row["object_f1"]) >= float(row["object_f1_defaults"]) >= 0.0
    log = (run / "train.log").read_text()
    assert "post-processing with the default settings, 1 round(s) of the settings search" in log
    assert "at the default settings)" in log and "the best epoch's validation settings, saved beside it" in log
    # The settings found are saved beside the best weights, where predict reads tuned settings.
    saved = json.loads((run / "best.postprocess.json").read_text())
    assert saved["by"] == "rooftrace train" and saved["epoch"] == 1 and saved["method"] == "watershed"
    assert saved["object_f1"] == pytest.approx(float(row["object_f1"]), abs=1e-5)
    tuned = read_tuned(run / "best.safetensors")
    assert tuned is not None and tuned.settings == PostprocessSettings.from_dict(saved["settings"])
    # tune does not replace them silently; with --force it searches further from them and writes its own.
    args = ["tune", "--model", str(run / "best.safetensors"), "--split", str(mini_split / "val"), "--device", "cpu"]
    assert main(args) == 2
    assert "the settings rooftrace train's validation found" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    retuned = json.loads((run / "best.postprocess.json").read_text())
    assert "by" not in retuned and retuned["split"] == str(mini_split / "val")


def test_a_resumed_run_begun_before_the_search_goes_on_at_the_defaults() -> None:
    from rooftrace.training.loop import validate_as_begun

    start = PostprocessSettings(min_score=0.88)
    old = SimpleNamespace(history=[{"epoch": 1, "object_f1": 0.5}], val_start=start, val_rounds=1, val_start_from="x")
    validate_as_begun(old)
    assert (old.val_start, old.val_rounds) == (PostprocessSettings(), 0) and "began before" in old.val_start_from
    new = SimpleNamespace(history=[{"epoch": 1, "object_f1": 0.5, "object_f1_defaults": 0.4}], val_start=start,
                          val_rounds=1, val_start_from="x")
    validate_as_begun(new)
    assert (new.val_start, new.val_rounds) == (start, 1)
