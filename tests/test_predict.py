"""`rooftrace predict` and `rooftrace tune` with a real (small, untrained) model file."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from rooftrace.cli import main
from rooftrace.config import load_config
from rooftrace.formats import read_labels
from rooftrace.models import build_model
from rooftrace.weights import save_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A three-channel baseline U-Net with random weights, as rooftrace writes model files."""
    import torch

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8", "data.channels=[footprint, boundary, contact]",
                                                                  "loss.channel_weights=[1, 0.5, 0.5]"])
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    return save_model(path, build_model(cfg.model, 3).eval(), cfg)


def test_predict_writes_every_output_with_a_row_per_tile(sample, model_file, tmp_path, capsys):
    images = tmp_path / "images"
    shutil.copytree(sample / "test" / "image", images)
    (images / "0010.tif").write_bytes(b"")  # an unreadable tile: reported, skipped, still a row
    out = tmp_path / "out"
    rc = main(["predict", "--images", str(images), "--out", str(out), "--model", str(model_file), "--workers", "0", "--batch-size", "4"])
    assert rc == 1  # something was skipped
    text = capsys.readouterr().out
    assert "1 unreadable tile(s) skipped" in text and "0010.tif: the file is empty" in text
    with open(out / "submission.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageID", "Coordinates"]
    assert [int(r[0]) for r in rows[1:]] == list(range(11))
    assert rows[-1][1] == "[]"
    assert len(list((out / "masks").glob("*.png"))) == 10 and len(list((out / "overlays").glob("*.png"))) == 10
    geo = read_labels(out / "predictions.geojson")
    csv_back = read_labels(out / "submission.csv")
    coco = read_labels(out / "predictions.coco.json")
    for key in range(10):
        assert len(geo[key].footprints) == len(csv_back[key].footprints) == len(coco.images.get(key, geo[key]).footprints)
    # Nothing is overwritten without --force.
    assert main(["predict", "--images", str(images), "--out", str(out), "--model", str(model_file), "--workers", "0"]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_predict_with_tta_and_explicit_postprocessing(sample, model_file, tmp_path):
    out = tmp_path / "tta"
    assert main(["predict", "--images", str(sample / "test" / "image"), "--out", str(out), "--model", str(model_file),
                 "--workers", "0", "--tta", "--postprocess", "seed", "--no-overlays", "--no-masks"]) == 0
    assert (out / "submission.csv").exists() and not (out / "overlays").exists()


def test_tune_saves_settings_that_predict_picks_up(sample, model_file, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    shutil.copy(model_file, model)
    shutil.copy(str(model_file) + ".sha256", str(model) + ".sha256")
    assert main(["tune", "--model", str(model), "--split", str(sample / "val")]) == 0
    saved = json.loads((tmp_path / "m.postprocess.json").read_text())
    assert saved["method"] == "watershed" and saved["object_f1"] >= saved["object_f1_defaults"]
    assert main(["tune", "--model", str(model), "--split", str(sample / "val")]) == 2  # no silent replacement
    # predict uses the tuned settings: make them extreme and see their effect.
    saved["settings"]["min_area"] = 10**6
    (tmp_path / "m.postprocess.json").write_text(json.dumps(saved))
    out = tmp_path / "p"
    assert main(["predict", "--images", str(sample / "test" / "image"), "--out", str(out), "--model", str(model), "--workers", "0"]) == 0
    assert read_labels(out / "submission.csv").n_footprints == 0


def test_predict_refuses_pickle_models(sample, tmp_path, capsys):
    (tmp_path / "m.pth").write_bytes(b"\x80\x04")
    assert main(["predict", "--images", str(sample / "test" / "image"), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "m.pth")]) == 2
    assert "pickle checkpoint" in capsys.readouterr().err
