"""A GIS user's first hour (issue 24): options that mean what they say, inputs outside the model card said
out loud, one result type from the API, overlapping chips merged, and help that gives every default.

Each test here is one trap a new user met; each failed on the code before issue 24."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

import rooftrace
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.cli import build_parser, main
from rooftrace.gis.provenance import read_provenance

SHIPPED_TUNED = Path(rooftrace.__file__).parent / "models" / "shipped" / "rooftrace-unet-lite0.postprocess.json"


def _crop(src: Path, dst: Path, size: int, *, bands: list[int] | None = None, transform: Affine | None = None,
          driver: str = "GTiff", georef: bool = True) -> Path:
    """The top-left ``size`` x ``size`` pixels of ``src`` written to ``dst`` (optionally other bands, pixel size, format)."""
    with rasterio.open(src) as ds:
        bands = bands or list(range(1, ds.count + 1))
        data = ds.read(bands, window=Window(0, 0, size, size))
        profile = {"driver": driver, "width": size, "height": size, "count": len(bands), "dtype": data.dtype}
        if georef:
            profile.update(crs=ds.crs, transform=transform or ds.window_transform(Window(0, 0, size, size)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rasterio: a PNG without a georeference
        with rasterio.open(dst, "w", **profile) as out:
            out.write(data)
    return dst


@pytest.fixture(scope="module")
def tuned() -> dict:
    return json.loads(SHIPPED_TUNED.read_text())["settings"]


# -- --pp changes only the named settings, and every run says what it used ------------------------------


def test_pp_changes_only_the_named_setting_on_top_of_the_tuned_ones(tuned):
    """``--pp regularise=true`` used to start from the defaults (threshold 0.5, min_area 8) and drop the tuned
    0.3 and 64: Austin's F1 fell from 0.578 to 0.535."""
    from rooftrace.cli.options import parse_settings

    model = rooftrace.load_model(device="cpu")
    method, settings = model.runtime.postprocessing(None, parse_settings(["regularise=true"], None))
    assert settings.regularise is True
    for key, value in tuned.items():
        if key != "regularise":
            assert getattr(settings, key) == value, key
    from rooftrace.instances.postprocess import PostprocessSettings

    assert tuned["min_area"] != PostprocessSettings().min_area  # the trap is real


def test_predict_scene_prints_and_records_the_settings_it_used(sample, tmp_path, capsys, tuned):
    scene = _crop(sample / "scenes" / "inria_austin.tif", tmp_path / "austin.tif", 512)
    out = tmp_path / "a.gpkg"
    assert main(["predict-scene", str(scene), "--out", str(out), "--pp", "regularise=true", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    line = next(ln for ln in printed.splitlines() if ln.startswith("post-processing:"))
    assert SHIPPED_TUNED.name in line and "regularise=true changed" in line
    changed = [k for k in ("footprint_threshold", "seed_footprint", "seed_contact") if tuned[k] != getattr(PostprocessSettings(), k)]
    assert changed and all(f"{k}={tuned[k]:g}" in line for k in changed) and f"min_area={tuned['min_area']}" in line
    pp = read_provenance(out)["postprocessing"]
    assert pp["from"] == "tuned" and pp["changed"] == {"regularise": True}
    assert pp["settings"]["footprint_threshold"] == tuned["footprint_threshold"] and pp["settings"]["regularise"] is True


def test_predict_prints_the_post_processing_it_used(sample, tmp_path, capsys):
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    shutil.copy(sorted((sample / "test" / "image").iterdir())[0], tiles)
    assert main(["predict", str(tiles), "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "0",
                 "--no-overlays", "--no-masks"]) == 0  # the folder as a positional argument, as other commands take it
    printed = capsys.readouterr().out
    assert f"post-processing: watershed, the model's tuned settings ({SHIPPED_TUNED.name})" in printed


# -- options that cannot apply are errors ------------------------------------------------------------------


def test_predict_scene_crs_on_one_scene_is_an_error_not_ignored(sample, tmp_path, capsys):
    out = tmp_path / "a.gpkg"
    code = main(["predict-scene", str(sample / "scenes" / "inria_austin.tif"), "--out", str(out), "--crs", "EPSG:4326"])
    err = capsys.readouterr().err
    assert code == 2 and "--crs EPSG:4326" in err and "a.geojson" in err and not out.exists()
    code = main(["predict-scene", str(sample / "scenes" / "inria_austin.tif"), "--out", str(out), "--format", "fgb"])
    assert code == 2 and "--format fgb" in capsys.readouterr().err and not out.exists()


def test_predict_given_one_file_points_to_predict_scene(sample, tmp_path, capsys):
    tif = sample / "scenes" / "inria_austin.tif"
    assert main(["predict", "--images", str(tif), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no such folder" not in err and "is a file" in err and f"predict-scene {tif}" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_predict_scene_on_a_plain_png_warns_that_it_is_in_pixels(sample, tmp_path, capsys):
    png = _crop(sample / "scenes" / "inria_austin.tif", tmp_path / "plain.png", 256, driver="PNG", georef=False)
    out = tmp_path / "plain.gpkg"
    assert main(["predict-scene", str(png), "--out", str(out), "--device", "cpu"]) == 0
    warning = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "no CRS" in warning[0] and "pixel coordinates" in warning[0] and "area_m2 is empty" in warning[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gdf = geopandas.read_file(out)
    assert gdf.crs is None and gdf["area_m2"].isna().all()  # what the warning says is so


def test_evaluate_refuses_labels_that_share_no_ground_with_the_predictions(sample, tmp_path, capsys):
    """Labels in the wrong UTM zone gave F1 0.0000 and exit 0; ``report`` stopped on the same input."""
    labels = sample / "scenes" / "inria_austin.geojson"
    gdf = geopandas.read_file(labels)
    wrong = tmp_path / "wrong-zone.gpkg"
    gdf.to_crs("EPSG:32615").set_crs("EPSG:32614", allow_override=True).to_file(wrong)  # zone 15 numbers, zone 14 declared
    assert main(["evaluate", "--gt", str(wrong), "--pred", str(labels), "--no-pixel"]) == 2
    err = capsys.readouterr().err
    assert f"none of its {len(gdf)} buildings lies on or near any of the {len(gdf)} labels" in err and "--gt-crs" in err
    assert main(["evaluate", "--gt", str(labels), "--pred", str(labels), "--no-pixel"]) == 0  # the same labels, right zone
    assert "object F1 (IoU >= 0.5, one-to-one matching): 1.0000" in capsys.readouterr().out


# -- inputs outside the model card get one warning line ---------------------------------------------------


def test_a_single_band_scene_read_as_rgb_is_outside_the_model_card(sample, tmp_path, capsys):
    pan = _crop(sample / "scenes" / "atlanta_pan.tif", tmp_path / "pan.tif", 256)
    assert main(["predict-scene", str(pan), "--bands", "1,1,1", "--out", str(tmp_path / "pan.gpkg"), "--device", "cpu"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "outside the model card" in ln]
    assert len(lines) == 1 and "bands 1,1,1" in lines[0] and "panchromatic" in lines[0]


def test_a_pixel_size_far_from_the_models_is_outside_the_model_card(sample, tmp_path, capsys):
    src = sample / "scenes" / "inria_austin.tif"
    with rasterio.open(src) as ds:
        t = ds.transform
    coarse = _crop(src, tmp_path / "coarse.tif", 128, transform=Affine(1.5, 0, t.c, 0, -1.5, t.f))  # 1.5 m a pixel
    assert main(["predict-scene", str(coarse), "--out", str(tmp_path / "c.gpkg"), "--device", "cpu"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "outside the model card" in ln]
    assert any("pixel size 1.5 m" in ln and "coarser" in ln for ln in lines)


def test_implausible_building_sizes_are_outside_the_model_card(sample):
    from rooftrace.inference.card import size_warning

    areas = geopandas.read_file(sample / "scenes" / "inria_austin.geojson").area.to_numpy()
    assert size_warning(areas, "austin") is None  # real buildings
    for wrong in (areas * 100.0, areas / 100.0):  # a pixel size 10x too coarse or too fine
        line = size_warning(wrong, "austin")
        assert line is not None and "median area" in line and line.startswith("warning: outside the model card")


def test_the_api_warns_about_a_grey_image(sample):
    from rooftrace.inference.card import ModelCardWarning

    model = rooftrace.load_model(device="cpu")
    with rasterio.open(sample / "scenes" / "atlanta_pan.tif") as ds:
        band = ds.read(1, window=Window(0, 0, 128, 128))
    from rooftrace.imagery.read import stretch_to_uint8

    grey = stretch_to_uint8(band) if band.dtype != np.uint8 else band
    with pytest.warns(ModelCardWarning, match="one band repeated"):
        gdf = model.predict(np.repeat(grey[:, :, None], 3, axis=2))
    assert any("one band repeated" in w for w in gdf.attrs["warnings"])


# -- one result type from the API --------------------------------------------------------------------------


def test_the_api_gives_a_geodataframe_for_every_input_kind(sample, tmp_path):
    model = rooftrace.load_model(device="cpu")
    chip = _crop(sample / "scenes" / "inria_austin.tif", tmp_path / "chip.tif", 256)
    png = _crop(sample / "scenes" / "inria_austin.tif", tmp_path / "chip.png", 256, driver="PNG", georef=False)
    with rasterio.open(chip) as ds:
        from_dataset = model.predict(ds)
        rgb = np.moveaxis(ds.read(), 0, -1)
    results = {"GeoTIFF": model.predict(chip), "PNG": model.predict(png), "array": model.predict(rgb),
               "array with gsd": model.predict(rgb, gsd=0.3), "dataset": from_dataset}
    for kind, gdf in results.items():
        assert isinstance(gdf, geopandas.GeoDataFrame), kind
        assert {"geometry", "score", "area_m2"} <= set(gdf.columns) and len(gdf) > 0, kind
    for kind in ("GeoTIFF", "dataset"):
        assert results[kind].crs is not None and (results[kind]["area_m2"] > 0).all()
    for kind in ("PNG", "array"):
        assert results[kind].crs is None and results[kind].attrs["coordinates"] == "pixel"
        assert results[kind]["area_m2"].isna().all()
    # the pixel size given: areas in m², the georeferenced chip's (which are geodesic: UTM's scale factor differs by < 0.1 %)
    assert results["array with gsd"]["area_m2"].sum() == pytest.approx(results["GeoTIFF"]["area_m2"].sum(), rel=2e-3)
    result = model.predict_scene(chip, tmp_path / "chip.gpkg", progress=False)
    written = result.to_geodataframe()
    assert isinstance(written, geopandas.GeoDataFrame) and len(written) == result.n_buildings


# -- overlapping chips: one footprint per building in map outputs -----------------------------------------


def test_overlapping_chips_give_each_building_once_in_the_map_outputs(sample, tmp_path, capsys):
    """The same ground in two chips (as at several zoom levels) gave every building twice in predictions.gpkg."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    src = sample / "scenes" / "inria_austin.tif"
    _crop(src, tiles / "a.tif", 384)
    _crop(src, tiles / "b.tif", 384)  # the same ground again
    assert main(["predict", str(tiles), "--out", str(tmp_path / "out"), "--device", "cpu", "--workers", "0",
                 "--no-overlays", "--no-masks"]) == 0
    printed = capsys.readouterr().out
    gpkg = geopandas.read_file(tmp_path / "out" / "predictions.gpkg")
    per_tile = geopandas.read_file(tmp_path / "out" / "predictions.geojson")
    coco = json.loads((tmp_path / "out" / "predictions.coco.json").read_text())
    assert len(coco) % 2 == 0
    n_tile = len(coco) // 2  # each tile's own footprints, kept in the COCO results
    assert n_tile > 5 and len(gpkg) == len(per_tile) == n_tile
    assert f"{n_tile} footprint(s) were copies of {n_tile} building(s)" in printed


# -- help: every option with its default ------------------------------------------------------------------


def test_every_option_of_every_command_gives_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        for a in p._actions:
            if not a.option_strings or a.required or isinstance(a, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            if "default" not in (a.help or "").lower():
                missing.append(f"{name} {a.option_strings[-1]}")
    assert not missing, missing
    help_pp = sub.choices["predict"].format_help()
    assert "footprint_threshold" in help_pp and "min_area" in help_pp and "tuned" in help_pp
    assert "IoU" in sub.choices["report"].format_help()
