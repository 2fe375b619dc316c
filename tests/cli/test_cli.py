"""The command line, run in-process on the real sample pack and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

from rooftrace.cli import main


def test_prepare_then_evaluate_on_sample(sample, tmp_path, capsys):
    assert main(["prepare", str(sample / "val"), "--out", str(tmp_path / "val"), "--previews", "2"]) == 0
    out = capsys.readouterr().out
    assert "29 images" in out and (tmp_path / "val" / "summary.json").exists()
    assert len(list((tmp_path / "val" / "targets").glob("*.png"))) == 29
    # The val labels through their own building masks: only buildings whose pixels touch merge.
    rc = main(["evaluate", "--gt", str(sample / "val" / "val.json"), "--pred", str(tmp_path / "val" / "masks"),
               "--images", str(sample / "val" / "image"), "--json", str(tmp_path / "s.json")])
    assert rc == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["pixel"]["iou"] == 1.0
    assert s["fn"] == 303 - 302 and s["fp"] == 0
    assert len(s["per_image"]) == 29


def test_convert_then_evaluate_scores_one_in_every_mode(sample, tmp_path, capsys):
    sub = tmp_path / "submission.csv"
    assert main(["convert", str(sample / "test" / "test.json"), str(sub), "--images", str(sample / "test" / "image")]) == 0
    rows = sub.read_text().splitlines()
    assert rows[0] == "ImageID,Coordinates" and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(10)]
    for mode in ("one-to-one", "any", "spacenet"):
        js = tmp_path / f"{mode}.json"
        assert main(["evaluate", "--gt", str(sample / "test" / "test.json"), "--pred", str(sub), "--matching", mode, "--json", str(js)]) == 0
        s = json.loads(js.read_text())
        assert s["f1"] == 1.0 and s["f1_pooled"] == 1.0 and s["tp"] == 353


def test_evaluate_scene_in_map_coordinates(sample, tmp_path):
    gj = sample / "scenes" / "inria_austin.geojson"
    js = tmp_path / "s.json"
    # Map coordinates against map coordinates, and against pixels through the raster.
    assert main(["evaluate", "--gt", str(gj), "--pred", str(gj), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["tp"] == 134
    px = tmp_path / "px.geojson"
    assert main(["convert", str(gj), str(px), "--raster", str(sample / "scenes" / "inria_austin.tif")]) == 0
    assert main(["evaluate", "--gt", str(gj), "--gt-raster", str(sample / "scenes" / "inria_austin.tif"),
                 "--pred", str(px), "--json", str(js), "--force"]) == 0
    s = json.loads(js.read_text())
    assert s["f1"] == 1.0 and s["pixel"]["iou"] == 1.0


def test_bad_input_gives_a_message_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "gt.json"
    bad.write_text("{oops")
    assert main(["evaluate", "--gt", str(bad), "--pred", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "gt.json: not valid JSON" in err and "Traceback" not in err
    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_outputs_are_not_overwritten_without_force(sample, tmp_path, capsys):
    dst = tmp_path / "a.csv"
    dst.write_text("keep me")
    assert main(["convert", str(sample / "test" / "test.json"), str(dst)]) == 2
    assert "pass --force" in capsys.readouterr().err and dst.read_text() == "keep me"
    assert main(["convert", str(sample / "test" / "test.json"), str(dst), "--force"]) == 0


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "rooftrace", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "evaluate" in r.stdout and "prepare" in r.stdout and "convert" in r.stdout


def test_help_imports_no_gis_or_label_library():
    """`rooftrace --help` (the list of commands) runs before any command: it imports neither the label readers nor
    rasterio, pyproj or torch, so it answers in a fraction of a second (issue 26)."""
    import subprocess
    import sys

    code = ("import sys\nfrom rooftrace.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(*(m in sys.modules for m in ('rooftrace.labels.formats', 'rasterio', 'pyproj', 'torch')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "convert" in r.stdout
    assert r.stderr.split() == ["False", "False", "False", "False"], r.stderr
