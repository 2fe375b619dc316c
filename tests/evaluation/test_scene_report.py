"""The scene report (``rooftrace report --raster``), its offline interactive map, and the tile report's clickable
tiles, checked from their files and, under the ``browser`` marker, in a real headless Chromium.

Browser tests skip (with the reason) when Playwright or a system Chromium is missing; they never download a
browser. ``.ci/run`` installs Chromium from the Debian packages when it can.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from PIL import Image
from pyproj import CRS

from rooftrace.cli import main
from rooftrace.evaluation import browser
from rooftrace.evaluation.scene_report import JS_VARIABLE, write_scene_report

WIDTH, HEIGHT = 1200, 900
TRANSFORM = Affine(0.5, 0, 400_000.0, 0, -0.5, 5_500_000.0)
UTM = CRS.from_epsg(32633)
N_TRUE = 40  # buildings in the scene
N_FOUND = 36  # of them predicted (4 missed) ...
N_FALSE = 5  # ... plus false positives
N_SHAPES = N_FOUND + N_FALSE + (N_TRUE - N_FOUND)  # predicted + missed shapes on the map

needs_browser = pytest.mark.skipif(browser.unavailable() is not None, reason=f"browser test: {browser.unavailable()}")
#: Declared in pyproject.toml's pytest markers ("browser: opens reports in a headless Chromium").
browser_mark = pytest.mark.browser


def _to_map(g):
    return shapely.transform(g, lambda xy: np.column_stack((TRANSFORM.c + TRANSFORM.a * xy[:, 0], TRANSFORM.f + TRANSFORM.e * xy[:, 1])))


def _make_scene(folder: Path) -> dict[str, Path]:
    """An RGB GeoTIFF (UTM 33N, 0.5 m) with bright buildings on a grid, predictions (GeoPackage with score and
    area, many vertices each) and labels (GeoJSON in longitude/latitude)."""
    import pyogrio.raw
    import rasterio
    from rasterio.features import rasterize

    from rooftrace.labels.geojson import reproject

    rng = np.random.default_rng(1)
    boxes = []
    for k in range(N_TRUE):
        r, c = divmod(k, 8)
        x0, y0 = 60 + c * 140, 60 + r * 160
        boxes.append(shapely.box(x0, y0, x0 + 60 + 3 * (k % 5), y0 + 45))
    false = [shapely.box(20 + 230 * k, 860, 50 + 230 * k, 885) for k in range(N_FALSE)]
    img = np.full((3, HEIGHT, WIDTH), 70, np.uint8)
    img += rng.integers(0, 20, img.shape, dtype=np.uint8)
    mask = rasterize([(b, 1) for b in boxes], out_shape=(HEIGHT, WIDTH), dtype="uint8")
    img[:, mask > 0] = 200
    tif = folder / "scene.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8", crs=UTM.to_wkt(),
                       transform=TRANSFORM) as dst:
        dst.write(img)
    # Predictions: densified outlines (as traced from a mask), slightly shrunk so IoU stays high but not 1.
    pred_px = [shapely.segmentize(shapely.buffer(b, -1.0, join_style="mitre"), 2.0) for b in boxes[:N_FOUND]] + false
    pred = np.asarray([_to_map(g) for g in pred_px], dtype=object)
    scores = np.round(np.linspace(0.55, 0.97, len(pred)), 4)
    gpkg = folder / "scene.gpkg"
    pyogrio.raw.write(gpkg, shapely.to_wkb(pred), [scores, shapely.area(pred)], ["score", "area"], layer="scene",
                      driver="GPKG", geometry_type="Polygon", crs=UTM.to_wkt())
    lab = reproject(np.asarray([_to_map(b) for b in boxes], dtype=object), UTM, CRS.from_epsg(4326))
    labels = folder / "labels.geojson"
    pyogrio.raw.write(labels, shapely.to_wkb(lab), [], [], driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")
    return {"tif": tif, "gpkg": gpkg, "labels": labels}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scene")
    files = _make_scene(folder)
    files["report"] = write_scene_report(files["gpkg"], files["tif"], folder / "report", labels=files["labels"],
                                         map_size=800, quicklook_size=600).path
    return files


def _js_data(report: Path) -> dict:
    text = (report.parent / "footprints.js").read_text()
    m = re.fullmatch(rf"window\.{JS_VARIABLE}=(.*);\s*", text, re.DOTALL)
    assert m, "footprints.js assigns one JSON value to the variable"
    return json.loads(m.group(1))


# ---------------------------------------------------------------------------------------------
# Files


def test_scene_report_scores_against_reprojected_labels(scene):
    scores = json.loads((scene["report"].parent / "scores.json").read_text())
    assert (scores["tp"], scores["fp"], scores["fn"]) == (N_FOUND, N_FALSE, N_TRUE - N_FOUND)
    html = scene["report"].read_text()
    assert "id='figures'" in html and f"<td>{N_FOUND}</td>" in html
    assert "labels.geojson: labels are in EPSG:4326, the raster in EPSG:32633: reprojected" in html


def test_scene_report_js_data_holds_every_building_with_its_properties(scene):
    data = _js_data(scene["report"])
    feats = data["buildings"]["features"]
    assert len(feats) == N_FOUND + N_FALSE and len(data["missed"]["features"]) == N_TRUE - N_FOUND
    classes = [f["properties"]["class"] for f in feats]
    assert classes.count("true positive") == N_FOUND and classes.count("false positive") == N_FALSE
    p = feats[0]["properties"]
    assert {"id", "score", "area", "area_m2", "class", "iou", "x", "y"} <= set(p)
    assert p["score"] == pytest.approx(0.55) and p["id"] == 1  # GeoPackage fids start at 1
    # area_m2 (geodesic, computed because the file has none) agrees with the UTM area to well under 1 %.
    assert p["area_m2"] == pytest.approx(p["area"], rel=0.01)
    # Display coordinates are raster pixels, y negated (Leaflet CRS.Simple): the first building's corner.
    xs = [pt[0] for pt in feats[0]["geometry"]["coordinates"][0]]
    ys = [pt[1] for pt in feats[0]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(61, abs=0.11) and max(ys) == pytest.approx(-61, abs=0.11)
    assert data["width"] == WIDTH and data["crs"] == "EPSG:32633"


def test_scene_report_display_geometry_is_simplified(scene):
    import pyogrio.raw

    _, _, wkb, _ = pyogrio.raw.read(scene["gpkg"])
    full = shapely.get_num_coordinates(shapely.from_wkb(wkb)).sum()
    shown = sum(len(f["geometry"]["coordinates"][0]) for f in _js_data(scene["report"])["buildings"]["features"])
    assert shown < full / 3  # the file's segmentized outlines keep their vertices; the map's do not


def test_scene_report_is_offline_and_its_images_are_bounded(scene):
    out = scene["report"].parent
    html = scene["report"].read_text()
    assert not re.search(r"https?://", html), "the page names no URL"
    assert not re.search(r"https?://", (out / "footprints.js").read_text())
    assert re.search(r'<script src="leaflet/leaflet.js">', html) and 'href="leaflet/leaflet.css"' in html
    for name in ("leaflet.js", "leaflet.css", "LICENSE", "images/layers.png"):
        assert (out / "leaflet" / name).is_file()
    assert "BSD" in (out / "leaflet" / "LICENSE").read_text() or "Redistribution" in (out / "leaflet" / "LICENSE").read_text()
    with Image.open(out / "scene.jpg") as im:
        assert max(im.size) == 800 and im.size == (800, 600)
    with Image.open(out / "quicklook.jpg") as im:
        assert max(im.size) == 600
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) < 1_500_000


def test_scene_report_small_raster_is_not_enlarged_and_predictions_may_be_in_another_crs(scene, tmp_path):
    import pyogrio.raw

    from rooftrace.labels.geojson import reproject

    meta, _, wkb, fields = pyogrio.raw.read(scene["gpkg"])
    ll = reproject(shapely.from_wkb(wkb), UTM, CRS.from_epsg(4326))
    pred = tmp_path / "pred.geojson"
    pyogrio.raw.write(pred, shapely.to_wkb(ll), fields, meta["fields"], driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")
    r = write_scene_report(pred, scene["tif"], tmp_path / "r", map_size=4096)
    assert r.score is None and r.n_footprints == N_FOUND + N_FALSE and r.map_shape == (HEIGHT, WIDTH)
    assert any("reprojected for display" in n for n in r.notes)
    data = _js_data(r.path)
    assert not data["labels"] and "class" not in data["buildings"]["features"][0]["properties"]
    xs = [pt[0] for pt in data["buildings"]["features"][0]["geometry"]["coordinates"][0]]
    assert min(xs) == pytest.approx(61, abs=0.11)
    assert "mean score" in r.path.read_text()


def test_cli_report_writes_a_scene_report_and_refuses_to_overwrite(scene, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["report", "--pred", str(scene["gpkg"]), "--raster", str(scene["tif"]), "--gt", str(scene["labels"]), "--out", str(out)]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert f"scene report of {N_FOUND + N_FALSE} buildings" in said and "object F1" in said
    assert (out / "index.html").exists() and (out / "footprints.js").exists()
    assert main(args) == 2 and "pass --force" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0


def test_tile_report_refuses_map_labels_without_their_raster(scene, tmp_path, capsys):
    assert main(["report", "--pred", str(scene["gpkg"]), "--gt", str(scene["labels"]), "--out", str(tmp_path / "r")]) == 2
    assert "--raster" in capsys.readouterr().err


def test_predict_overlay_has_scores_and_a_legend():
    from rooftrace.imagery.draw import LEGEND_HEIGHT, OUTLINE_RGB, render_overlay

    rgb = np.full((500, 500, 3), 90, np.uint8)
    fps = [shapely.box(50, 50, 200, 150), shapely.box(300, 300, 450, 420)]
    pic = render_overlay(rgb, fps, [0.87, 0.5])
    assert pic.shape == (500 + LEGEND_HEIGHT, 500, 3)
    inside = pic[60:140, 60:190]
    assert (inside > 200).all(axis=-1).sum() > 5, "the score is written in white inside the building"
    strip = pic[500:]
    assert (strip == OUTLINE_RGB).all(axis=-1).any() and (strip > 200).all(axis=-1).sum() > 50  # swatch and text
    bare = render_overlay(rgb, fps, None)
    assert not (bare[60:140, 60:190] > 200).all(axis=-1).any()


# ---------------------------------------------------------------------------------------------
# In a browser


@browser_mark
@needs_browser
def test_scene_report_map_in_chromium(scene):
    with browser.open_report(scene["report"], ready="window.rooftraceReady === true") as opened:
        page = opened.page
        assert page.locator("#map.leaflet-container").count() == 1
        img = page.locator("#map img.leaflet-image-layer")
        assert img.count() == 1
        assert page.evaluate("(i => i.complete && i.naturalWidth)(document.querySelector('#map img.leaflet-image-layer'))") == 800
        assert page.locator("#map path.leaflet-interactive").count() >= N_SHAPES
        assert page.evaluate("window.rooftraceMap.count") == N_FOUND + N_FALSE
        # Click the middle of the first building: its popup shows its id, score and area.
        page.locator("#map").scroll_into_view_if_needed()
        page.evaluate("(() => { const m = window.rooftraceMap.map; const l = window.rooftraceMap.buildings.getLayers()[0];"
                      " m.setView(l.getBounds().getCenter(), m.getZoom() + 1, {animate: false}); })()")
        box = page.locator("#map").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        popup = page.locator(".leaflet-popup-content")
        popup.wait_for(state="visible", timeout=5000)
        text = popup.inner_text()
        assert "building 1" in text and "score" in text and "0.5500" in text and "area (m²)" in text and "true positive" in text
        assert page.locator("#quicklook img").evaluate("i => i.naturalWidth") == 600
        assert opened.outside_requests() == [] and opened.errors == []
        assert all(u.startswith(("file:", "data:")) for u in opened.requests) and len(opened.requests) >= 5
        assert opened.load_s < 10


@browser_mark
@needs_browser
def test_tile_report_in_chromium_shows_scores_on_click(sample, tmp_path):
    from rooftrace.labels.coco import read_coco
    from rooftrace.labels.geojson import write_geojson

    gt = read_coco(sample / "test" / "test.json")
    folder = tmp_path / "pred"
    (folder / "overlays").mkdir(parents=True)
    for img in gt:
        img.scores = [0.9] * len(img.footprints)
    n = gt.n_footprints
    write_geojson(gt, folder / "predictions.geojson")
    Image.new("RGB", (8, 8)).save(folder / "overlays" / "0000.png")
    out = tmp_path / "report"
    assert main(["report", "--pred", str(folder), "--gt", str(sample / "test" / "test.json"), "--out", str(out)]) == 0
    with browser.open_report(out / "index.html") as opened:
        page = opened.page
        assert page.locator("figure.tile svg path.b").count() >= n
        assert page.locator("figure.tile img").evaluate_all("l => l.every(i => i.complete && i.naturalWidth > 0)")
        first = page.locator("figure.tile path.b.tp").first
        first.scroll_into_view_if_needed()
        first.click()
        info = first.locator("xpath=ancestor::figure").locator(".info").inner_text()
        assert "score 0.900" in info and "true positive" in info
        assert page.locator("a", has_text="predict's overlay").count() == 1
        assert opened.outside_requests() == [] and opened.errors == []


@browser_mark
@needs_browser
def test_sample_scene_screenshot(sample, tmp_path):
    """The README's screenshot, from the sample's Austin scene: docs/scene-report.png (made by
    docs/scene_report_screenshot.py with the shipped model; here with the labels standing in for predictions,
    so the test needs no model)."""
    scenes = sample / "scenes"
    r = write_scene_report(scenes / "inria_austin.geojson", scenes / "inria_austin.tif", tmp_path / "r",
                           labels=scenes / "inria_austin.geojson")
    png = browser.screenshot_scene_map(r.path, tmp_path / "map.png", width=800, height=600)
    with Image.open(png) as im:
        assert im.size[0] >= 700 and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 1000
