"""Tests of rooftrace.models.tuned_file: the settings beside a model file, and where a new search starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rooftrace.core.errors import RooftraceError
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.metadata import shipped_model
from rooftrace.models.tuned_file import read_tuned, search_starts, tuned_settings_path, written_by_training


def _write(model: Path, method: str, **settings) -> PostprocessSettings:
    s = PostprocessSettings(**settings)
    tuned_settings_path(model).write_text(json.dumps({"method": method, "settings": s.to_dict()}))
    return s


def test_a_search_starts_from_the_models_own_settings_then_the_shipped_models(tmp_path: Path) -> None:
    shipped = read_tuned(shipped_model())
    assert shipped is not None  # the package carries the shipped model's tuned settings
    model = tmp_path / "m.safetensors"
    own = _write(model, "watershed", footprint_threshold=0.35, min_area=32)
    assert search_starts(model, "watershed") == [own, shipped.settings]
    assert read_tuned(model).by is None and not written_by_training(tuned_settings_path(model))  # tune's, not a run's
    # Settings tuned for another method are no start for this one; no model file: the shipped model's alone.
    assert shipped.method == "watershed" and search_starts(model, "seed") == []
    assert search_starts(None, "watershed") == [shipped.settings]
    # The shipped model's own file is one start, not two.
    assert search_starts(shipped_model(), "watershed") == [shipped.settings]


def test_an_unreadable_settings_file_is_no_start_but_still_an_error_to_read(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    tuned_settings_path(model).write_text("{not json")
    with pytest.raises(RooftraceError, match=r"m\.postprocess\.json"):
        read_tuned(model)
    assert search_starts(model, "watershed") == search_starts(None, "watershed")


def test_validation_starts_beside_init_from_then_at_the_shipped_settings(tmp_path: Path) -> None:
    from rooftrace.models.tuned_file import validation_start

    shipped = read_tuned(shipped_model())
    assert shipped is not None
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")  # only the settings beside it are read
    # No settings beside the model the run continues (or none continued): the shipped model's.
    assert validation_start("start", model)[0] == shipped.settings
    assert validation_start("start", None) == (shipped.settings, "the shipped model's tuned settings")
    own = _write(model, "watershed", footprint_threshold=0.35, min_area=32)
    settings, where = validation_start("start", model)
    assert settings == own and "m.postprocess.json" in where
    # Settings for the seed recipe beside it are passed over; broken ones too.
    _write(model, "seed", footprint_threshold=0.4)
    assert validation_start("start", model)[0] == shipped.settings
    tuned_settings_path(model).write_text("{not json")
    assert validation_start("start", model)[0] == shipped.settings
    assert validation_start("defaults", model) == (PostprocessSettings(), "the default settings")


def test_validation_settings_named_by_path_are_read_or_refused_by_name(tmp_path: Path) -> None:
    from rooftrace.models.tuned_file import validation_start

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"")
    with pytest.raises(RooftraceError, match=r"m\.postprocess\.json.*rooftrace tune"):
        validation_start(str(model), None)  # a model without tuned settings
    with pytest.raises(RooftraceError, match=r"nothere\.safetensors: no such file"):
        validation_start(str(tmp_path / "nothere.safetensors"), None)
    own = _write(model, "watershed", seed_contact=0.2)
    assert validation_start(str(model), None)[0] == own
    assert validation_start(str(tuned_settings_path(model)), None)[0] == own  # the settings file itself
    with pytest.raises(RooftraceError, match=r"other\.postprocess\.json: no such post-processing settings file"):
        validation_start(str(tmp_path / "other.postprocess.json"), None)
    _write(model, "seed", footprint_threshold=0.4)
    with pytest.raises(RooftraceError, match="seed method"):
        validation_start(str(model), None)
