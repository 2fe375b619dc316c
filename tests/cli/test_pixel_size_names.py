"""One name per pixel size: ``--input-gsd`` (the input's) and ``--model-gsd`` (the model's, the target of
prepare-chips and finetune), with ``--gsd`` kept as an alias of its old meaning in each command; and the older
``gsd=`` keyword of the Python API, still taken."""

from __future__ import annotations

import numpy as np
import pytest

import rooftrace
from rooftrace.cli import build_parser, main
from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.resample import gsd_alias

# command -> (where the parsed value goes, the option's new name, the other arguments the command needs)
COMMANDS = {
    "predict": ("input_gsd", "--input-gsd", ["TILES", "--out", "OUT"]),
    "predict-scene": ("input_gsd", "--input-gsd", ["SCENE.tif", "--out", "OUT.gpkg"]),
    "prepare-chips": ("model_gsd", "--model-gsd", ["CHIPS", "--labels", "labels.geojson", "--out", "OUT"]),
    "finetune": ("model_gsd", "--model-gsd", ["CHIPS", "--labels", "labels.geojson", "--out", "adapted.safetensors"]),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_the_new_option_and_its_gsd_alias_parse_to_the_same_value(command):
    dest, option, rest = COMMANDS[command]
    parser = build_parser()
    new = vars(parser.parse_args([command, *rest, option, "0.25"]))
    old = vars(parser.parse_args([command, *rest, "--gsd", "0.25"]))
    assert new == old and new[dest] == 0.25 and "gsd" not in new
    assert vars(parser.parse_args([command, *rest]))[dest] is None
    sub = next(a for a in parser._actions if a.dest == "command")
    assert f"--gsd is an alias of {option}" in " ".join(sub.choices[command].format_help().split())


class Called(Exception):
    """Raised by a stand-in for the library function a command calls, once it has seen its arguments."""


def _stand_in(monkeypatch, module, name: str) -> dict:
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise Called

    monkeypatch.setattr(module, name, fake)
    return seen


def _run(argv: list[str]) -> None:
    with pytest.raises(Called):
        main(argv)


@pytest.mark.parametrize("option", ["--input-gsd", "--gsd"])
def test_predict_and_predict_scene_hand_the_input_pixel_size_on(option, monkeypatch, tmp_path):
    import rooftrace.inference.predict as predict_mod
    import rooftrace.scenes.predict as scene_mod

    seen = _stand_in(monkeypatch, predict_mod, "predict_folder")
    _run(["predict", str(tmp_path / "tiles"), "--out", str(tmp_path / "out"), option, "0.25"])
    assert seen["args"][3].input_gsd == 0.25  # the PredictOptions
    seen = _stand_in(monkeypatch, scene_mod, "predict_scene")
    _run(["predict-scene", str(tmp_path / "scene.tif"), "--out", str(tmp_path / "out.gpkg"), option, "0.25"])
    assert seen["input_gsd"] == 0.25 and "gsd" not in seen


@pytest.mark.parametrize("option", ["--model-gsd", "--gsd"])
def test_prepare_chips_and_finetune_hand_the_target_pixel_size_on(option, monkeypatch, tmp_path):
    import rooftrace.prepare.chips as chips_mod
    import rooftrace.training.finetune as finetune_mod

    chips, labels = tmp_path / "chips", tmp_path / "labels.geojson"
    chips.mkdir()
    labels.write_text('{"type": "FeatureCollection", "features": []}')
    seen = _stand_in(monkeypatch, chips_mod, "prepare_chips")
    _run(["prepare-chips", str(chips), "--labels", str(labels), "--out", str(tmp_path / "out"), option, "0.3"])
    assert seen["model_gsd"] == 0.3 and "gsd" not in seen
    seen = _stand_in(monkeypatch, finetune_mod, "finetune")
    _run(["finetune", str(chips), "--labels", str(labels), "--out", str(tmp_path / "m.safetensors"), option, "0.3"])
    assert seen["model_gsd"] == 0.3 and "gsd" not in seen


def test_gsd_alias_takes_either_name_and_refuses_two_different_values():
    assert gsd_alias(0.3, None, "input_gsd") == gsd_alias(None, 0.3, "input_gsd") == gsd_alias(0.3, 0.3, "input_gsd") == 0.3
    assert gsd_alias(None, None, "model_gsd") is None
    with pytest.raises(RooftraceError, match="model_gsd=0.3 and gsd=0.5: give one"):
        gsd_alias(0.3, 0.5, "model_gsd")


def test_the_api_takes_input_gsd_and_its_older_keyword_gsd_alike():
    model = rooftrace.load_model(device="cpu")
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:40, 20:48] = 200
    new, old = model.footprints(rgb, input_gsd=0.6), model.footprints(rgb, gsd=0.6)
    assert new.input_gsd == old.input_gsd == old.gsd == 0.6
    assert [p.wkt for p in new.polygons] == [p.wkt for p in old.polygons] and new.scores == old.scores
    a, b = model.predict(rgb, input_gsd=0.6), model.predict(rgb, gsd=0.6)
    assert a.equals(b) and a.attrs["gsd"] == b.attrs["gsd"] == 0.6  # the attrs key is unchanged
    assert model.model_gsd == model.gsd
    with pytest.raises(RooftraceError, match="give one"):
        model.predict(rgb, input_gsd=0.3, gsd=0.6)
