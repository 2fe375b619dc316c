"""Georeferenced predictions and the model's pixel size (issue 12 part 2, issue 13 part 3).

- `predict` on georeferenced tiles writes longitude/latitude GeoJSON (RFC 7946) and a GeoPackage in
  the tiles' CRS; on plain tiles a pixel GeoJSON that says so; CSV and COCO stay in pixels.
- A model that records the pixel size it was trained at gets every tile (and every scene) resampled
  to it, and the footprints come back in the input's own pixels or CRS.

The model here is never a trained network. The coordinate tests feed the source labels' own targets
through post-processing (an oracle: the probabilities of a tile are looked up by its pixels), so what
they check is the chain pixels -> map -> EPSG:4326, not a model. The pixel-size tests use a
stand-in "model" that is a fixed function of the image *at the pixel size it is given*: bright
blobs, opened with a 7 x 7 px square. The opening removes bright bars narrower than 7 px, so a bar
4 px wide at 0.3 m vanishes at 0.3 m but survives at 0.15 m (8 px) unless the tile is resampled:
the footprints of the two tiles agree only when resampling happens, with the right factor, and the
footprints are scaled back exactly.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import mercantile
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from pyproj import Transformer
from rasterio.transform import from_bounds, from_origin
from shapely.geometry import box, shape

from rooftrace.cli import main
from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation.oracle import perfect_probabilities
from rooftrace.geometry.shapes import map_to_pixel
from rooftrace.imagery.read import read_rgb
from rooftrace.labels.formats import read_labels
from rooftrace.labels.geojson import read_geojson
from rooftrace.labels.records import ImageLabels
from tests.conftest import REPO, crash_after, write_tiny_model

OSM = REPO.parent / "shared" / "data" / "osm-oam"


@pytest.fixture(scope="module")
def osm() -> Path:
    if not (OSM / "banepa" / "labels.geojson").exists():
        pytest.skip(f"osm-oam data not found at {OSM}")
    return OSM


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A tiny model that records no pixel size."""
    return write_tiny_model(tmp_path_factory.mktemp("plain") / "tiny.safetensors", base_channels=4)


def model_with_gsd(path: Path, gsd: float) -> Path:
    """A tiny untrained model file whose metadata records ``gsd`` (``data.gsd``)."""
    from rooftrace.config import load_config
    from rooftrace.models.architectures import build_model
    from rooftrace.models.files import save_model

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=4", "data.channels=[footprint, boundary, contact]",
                                                                 "loss.channel_weights=[1, 0.5, 0.5]", f"data.gsd={gsd}"])
    return save_model(path, build_model(cfg.model, 3).eval(), cfg)


@pytest.fixture(scope="module")
def gsd_model(tmp_path_factory) -> Path:
    return model_with_gsd(tmp_path_factory.mktemp("gsd") / "m03.safetensors", 0.3)


# --- helpers ---------------------------------------------------------------------------------------


def _padded(rgb: np.ndarray, mean, std) -> torch.Tensor:
    from rooftrace.imagery.normalize import Normalization

    h, w = rgb.shape[:2]
    x = torch.zeros(3, -(-h // 32) * 32, -(-w // 32) * 32)
    x[:, :h, :w] = torch.from_numpy(Normalization(mean, std).apply(rgb))
    return x


def oracle_probabilities(monkeypatch, tiles: dict[Path, ImageLabels], model: Path) -> None:
    """Make predict's model return, for each tile, the targets of its labels (looked up by its pixels)."""
    import rooftrace.inference.runtime as runtime_mod
    from rooftrace.models.files import load_model

    m = load_model(model)
    table = {}
    for path, img in tiles.items():
        x = _padded(read_rgb(path), m.mean, m.std)
        probs = np.zeros((3, *x.shape[1:]), np.float32)
        probs[:, : img.height, : img.width] = perfect_probabilities(img, channels=3)
        table[hashlib.sha1(x.numpy().tobytes()).hexdigest()] = probs

    def fake(loaded, x, device, tta=False, precision="auto"):
        return np.stack([table[hashlib.sha1(t.numpy().tobytes()).hexdigest()] for t in x])

    monkeypatch.setattr(runtime_mod, "predict_probabilities", fake)


def bright_blobs(rgb: np.ndarray) -> np.ndarray:
    """The stand-in model: ``(3, H, W)`` footprint/boundary/contact probabilities of the bright
    pixels of an ``(H, W, 3)`` uint8 image, opened with a 7 x 7 px square (so anything narrower than
    7 px *at the pixel size it is given* is no building)."""
    mask = (rgb.astype(np.float32).mean(axis=2) > 127.5).astype(np.uint8)
    opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    out = np.zeros((3, *mask.shape), np.float32)
    out[0] = np.where(opened > 0, 0.95, 0.02)
    return out


def blob_model(monkeypatch) -> None:
    """Make predict's model :func:`bright_blobs` of the (normalised) input it is given."""
    import rooftrace.inference.runtime as runtime_mod

    def fake(loaded, x, device, tta=False, precision="auto"):
        mean = np.asarray(loaded.mean, np.float32)[:, None, None]
        std = np.asarray(loaded.std, np.float32)[:, None, None]
        rgb = [np.clip((t.numpy() * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(1, 2, 0) for t in x]
        return np.stack([bright_blobs(im) for im in rgb])

    monkeypatch.setattr(runtime_mod, "predict_probabilities", fake)


def synthetic_tile(size: int = 320, seed: int = 0) -> tuple[np.ndarray, int]:
    """A 0.3 m tile: dark ground, four bright bars 4 x 40 px (narrower than the stand-in model's
    7 px), and bright rectangles of 10-30 px, all at least 6 px apart. Returns ``(rgb, number of
    rectangles)``."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 40, np.uint8)
    taken = np.zeros((size, size), bool)
    for k in range(4):
        y, x = 12 + k * (size // 4), 12 + 17 * k
        rgb[y: y + 4, x: x + 40] = 220
        taken[y: y + 4, x: x + 40] = True
    n = 0
    for _ in range(400):
        w, h = rng.integers(10, 31, 2)
        x, y = rng.integers(4, size - 4 - w), rng.integers(4, size - 4 - h)
        if taken[max(0, y - 6): y + h + 6, max(0, x - 6): x + w + 6].any():
            continue
        taken[y: y + h, x: x + w] = True
        rgb[y: y + h, x: x + w] = 220
        n += 1
    return rgb, n


def match(pred, gt, iou: float = 0.5) -> tuple[int, list[float]]:
    """Greedy best-IoU matching: the number of predictions matched at ``iou`` and their IoUs."""
    pred, gt = np.asarray(pred, dtype=object), np.asarray(gt, dtype=object)
    if len(pred) == 0 or len(gt) == 0:
        return 0, []
    tree = shapely.STRtree(gt)
    used, ious = set(), []
    for p in pred:
        best, which = 0.0, None
        for j in tree.query(p, predicate="intersects"):
            if j in used:
                continue
            v = shapely.area(shapely.intersection(p, gt[j])) / shapely.area(shapely.union(p, gt[j]))
            if v > best:
                best, which = v, j
        if which is not None and best >= iou:
            used.add(which)
            ious.append(best)
    return len(ious), ious


def write_tif(path: Path, rgb: np.ndarray, transform, crs: str = "EPSG:32645") -> Path:
    h, w = rgb.shape[:2]
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    return path


def features(path: Path) -> dict:
    return json.loads(path.read_text())


# --- issue 12 part 2: map coordinates out ----------------------------------------------------------


def test_predict_on_banepa_chips_lands_on_the_labels_in_epsg_4326(osm, plain_model, tmp_path, monkeypatch):
    """GeoTIFF chips georeferenced by .aux.xml sidecars (EPSG:4326): the GeoJSON is lon/lat
    (RFC 7946, no crs member) and each footprint lies on its source label; the GeoPackage opens in
    the chips' CRS. Probabilities are the labels' own targets (an oracle), so this checks the
    coordinates, not a model."""
    from rooftrace.inference.predict import predict_folder

    chips = osm / "banepa" / "chips"
    files = sorted(chips.glob("*.tif"))[:16]
    images = tmp_path / "chips"
    images.mkdir()
    for f in files:
        shutil.copy(f, images / f.name)
        shutil.copy(str(f) + ".aux.xml", images / (f.name + ".aux.xml"))
    tiles = {}
    for f in sorted(images.glob("*.tif")):
        ls = read_geojson(osm / "banepa" / "labels.geojson", raster=f)  # labels -> this chip's pixels (formats, not predict)
        tiles[f] = next(iter(ls))
    oracle_probabilities(monkeypatch, tiles, plain_model)
    result = predict_folder(images, tmp_path / "out", plain_model, workers=0, write_overlays=False, progress=False)
    out = tmp_path / "out"
    fc = features(out / "predictions.geojson")
    assert "crs" not in fc and fc["rooftrace"]["coordinates"] == "EPSG:4326"
    assert not (out / "predictions-pixels.geojson").exists()
    assert result.map_outputs is not None and result.map_outputs.n_located == 16 and result.map_outputs.origins == {"geotiff": 16}
    assert "longitude/latitude" in result.summary()

    labels = read_geojson(osm / "banepa" / "labels.geojson")  # EPSG:4326, as OSM has them
    gt_all = np.asarray(next(iter(labels)).footprints, dtype=object)
    n_pred = n_matched = n_gt = 0
    offsets = []
    by_image: dict = {}
    for feat in fc["features"]:
        by_image.setdefault(feat["properties"]["image_id"], []).append(shape(feat["geometry"]))
        assert feat["geometry"]["type"] == "Polygon"
        ring = np.asarray(feat["geometry"]["coordinates"][0])
        assert 85.5 < ring[:, 0].min() < 85.53 and 27.6 < ring[:, 1].min() < 27.65  # lon, lat: Banepa
        assert shapely.Polygon(ring).exterior.is_ccw  # RFC 7946 right-hand rule
    for f in tiles:
        with rasterio.open(f) as src:
            chip = box(*src.bounds)
        gt = [g for g in shapely.intersection(gt_all, chip) if not g.is_empty and g.area > 0]
        pred = by_image.get(f.stem, [])
        k, ious = match(pred, gt)
        n_pred, n_matched, n_gt = n_pred + len(pred), n_matched + k, n_gt + len(gt)
        for p in pred:  # centroid offset to the nearest label, in metres
            near = min(gt, key=lambda g: g.distance(p.centroid))
            dx, dy = np.subtract(p.centroid.coords[0], near.centroid.coords[0])
            offsets.append(np.hypot(dx * 111320 * np.cos(np.radians(27.63)), dy * 110570))
    assert n_pred > 300
    assert n_matched >= 0.95 * n_pred and n_matched >= 0.9 * n_gt, (n_matched, n_pred, n_gt)
    assert np.median(offsets) < 0.1  # metres: under a pixel (0.13 m)
    # The GeoPackage: the chips' CRS, the same footprints.
    info = pyogrio.read_info(out / "predictions.gpkg")
    assert info["crs"] == "EPSG:4326" and info["features"] == len(fc["features"]) == result.labels.n_footprints
    # CSV and COCO stay in pixels of each chip.
    csv_back = read_labels(out / "submission.csv")
    assert all(0 <= v <= 512 for img in csv_back for g in img.footprints for v in shapely.bounds(g))


def test_predict_on_kampala_tile_names_lands_on_the_labels_and_tms_flips(osm, plain_model, tmp_path, monkeypatch):
    """PNG chips located only by their XYZ names (Web Mercator): lon/lat GeoJSON on the labels, a
    GeoPackage in EPSG:3857; --tms reads the same names counted from the bottom."""
    from rooftrace.inference.predict import predict_folder

    labels = read_geojson(osm / "kampala" / "labels.geojson")
    gt_ll = np.asarray(next(iter(labels)).footprints, dtype=object)
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    gt_merc = shapely.transform(gt_ll, lambda xy: np.column_stack(to_merc.transform(xy[:, 0], xy[:, 1])))
    to_ll = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    chip_gt = {}  # per chip: its labels, clipped to it, in lon/lat
    images = tmp_path / "chips"
    images.mkdir()
    tiles, chosen = {}, []
    for f in sorted((osm / "kampala" / "chips").glob("*.png")):
        x, y, z = (int(v) for v in f.stem.split("-")[1:])
        b = mercantile.xy_bounds(x, y, z)
        chip = box(b.left, b.bottom, b.right, b.top)
        inside = [g for g in shapely.intersection(gt_merc, chip) if not g.is_empty and g.area > chip.area / 2000]
        if inside and sum(c[2] == z for c in chosen) < 3:  # up to three chips of each zoom (pixel size) with buildings
            shutil.copy(f, images / f.name)
            chosen.append((x, y, z))
            t = from_bounds(b.left, b.bottom, b.right, b.top, 256, 256)  # rasterio's, not rooftrace.imagery.georef's
            img = ImageLabels(key=f.stem, file_name=f.name, width=256, height=256)
            img.footprints = [map_to_pixel(g, t) for g in inside]
            tiles[images / f.name] = img
            chip_gt[f.stem] = shapely.transform(np.asarray(inside, dtype=object), lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    assert len({c[2] for c in chosen}) == 3
    oracle_probabilities(monkeypatch, tiles, plain_model)
    result = predict_folder(images, tmp_path / "out", plain_model, workers=0, write_overlays=False, write_masks=False, progress=False)
    assert result.map_outputs.origins == {"tile-name": len(chosen)}
    assert pyogrio.read_info(tmp_path / "out" / "predictions.gpkg")["crs"] == "EPSG:3857"
    by_image: dict = {}
    for feat in features(tmp_path / "out" / "predictions.geojson")["features"]:
        by_image.setdefault(feat["properties"]["image_id"], []).append(shape(feat["geometry"]))
    n_pred = sum(len(v) for v in by_image.values())
    k = sum(match(v, chip_gt[key])[0] for key, v in by_image.items())
    assert n_pred >= 5 and k >= 0.9 * n_pred, (k, n_pred)
    # TMS: the same names, y counted from the bottom: every footprint moves to the flipped tile.
    tms = predict_folder(images, tmp_path / "tms", plain_model, workers=0, write_overlays=False, write_masks=False, progress=False, tms=True)
    assert tms.labels.n_footprints == result.labels.n_footprints
    for feat in features(tmp_path / "tms" / "predictions.geojson")["features"]:
        x, y, z = (int(v) for v in feat["properties"]["image_id"].split("-")[1:])
        b = mercantile.bounds(x, 2**z - 1 - y, z)
        c = shape(feat["geometry"]).centroid
        assert b.west <= c.x <= b.east and b.south <= c.y <= b.north


def test_plain_tiles_give_pixel_geojson_that_says_so_and_mixed_folders_split(osm, plain_model, tmp_path):
    from rooftrace.inference.predict import predict_folder

    plain = tmp_path / "plain"
    plain.mkdir()
    rgb, _ = synthetic_tile(128)
    cv2.imwrite(str(plain / "0001.png"), rgb)
    predict_folder(plain, tmp_path / "o1", plain_model, workers=0, progress=False)
    fc = features(tmp_path / "o1" / "predictions.geojson")
    assert fc["rooftrace"]["coordinates"] == "pixel" and "NOT longitude/latitude" in fc["rooftrace"]["note"]
    assert fc["name"].startswith("pixel coordinates")
    assert not (tmp_path / "o1" / "predictions.gpkg").exists()
    # A folder mixing a georeferenced chip and a plain tile.
    f = sorted((osm / "banepa" / "chips").glob("*.tif"))[0]
    shutil.copy(f, plain / f.name)
    shutil.copy(str(f) + ".aux.xml", plain / (f.name + ".aux.xml"))
    r = predict_folder(plain, tmp_path / "o2", plain_model, workers=0, progress=False)
    out = tmp_path / "o2"
    assert read_labels(out / "predictions-pixels.geojson").images.keys() == {1}
    assert {ft["properties"]["image_id"] for ft in features(out / "predictions.geojson")["features"]} <= {f.stem}
    assert r.map_outputs.n_located == 1 and r.map_outputs.n_unlocated == 1
    assert "1 tile(s) are not georeferenced" in r.summary()
    assert len(read_labels(out / "submission.csv")) == 2


# --- issue 13 part 3: the model's pixel size -------------------------------------------------------


@pytest.fixture(scope="module")
def two_resolutions(tmp_path_factory) -> tuple[Path, Path, int]:
    """The same ground as a 0.3 m GeoTIFF and a 0.15 m one (upsampled 2x with OpenCV, bilinear)."""
    d = tmp_path_factory.mktemp("res")
    rgb, n = synthetic_tile(320)
    fine = cv2.resize(rgb, (640, 640), interpolation=cv2.INTER_LINEAR)
    a, b = d / "a", d / "b"
    a.mkdir(), b.mkdir()
    write_tif(a / "tile.tif", rgb, from_origin(330000, 3060000, 0.3, 0.3))
    write_tif(b / "tile.tif", fine, from_origin(330000, 3060000, 0.15, 0.15))
    return a, b, n


def _pixel_footprints(out: Path) -> list:
    return list(read_labels(out / "submission.csv")[next(iter(read_labels(out / "submission.csv").images))].footprints)


def test_a_tile_at_015_m_and_the_same_at_03_m_give_matching_footprints(two_resolutions, gsd_model, plain_model, tmp_path, monkeypatch):
    from shapely import affinity

    from rooftrace.inference.predict import predict_folder

    a, b, n = two_resolutions
    blob_model(monkeypatch)
    ra = predict_folder(a, tmp_path / "a", gsd_model, workers=0, progress=False)
    rb = predict_folder(b, tmp_path / "b", gsd_model, workers=0, progress=False)
    assert ra.tile_gsd["tile"]["factor"] == 1.0 and rb.tile_gsd["tile"]["factor"] == pytest.approx(0.5, abs=1e-3)
    assert rb.tile_gsd["tile"]["gsd_source"] == "geotiff" and "resampled from 0.15 m" in rb.summary()
    fa, fb = _pixel_footprints(tmp_path / "a"), _pixel_footprints(tmp_path / "b")
    assert len(fa) == n  # the bars are no buildings at 0.3 m
    assert all(0 <= v <= 640 for g in fb for v in shapely.bounds(g)) and max(shapely.bounds(g)[2] for g in fb) > 320  # its own grid
    k, ious = match([affinity.scale(g, 0.5, 0.5, origin=(0, 0)) for g in fb], fa)
    assert abs(len(fb) - len(fa)) <= 1 and k >= 0.9 * len(fa) and np.median(ious) > 0.8, (len(fa), len(fb), k)
    # In map coordinates they land on each other with nothing scaled by hand.
    ga = [shape(f["geometry"]) for f in features(tmp_path / "a" / "predictions.geojson")["features"]]
    gb = [shape(f["geometry"]) for f in features(tmp_path / "b" / "predictions.geojson")["features"]]
    assert match(gb, ga)[0] >= 0.9 * len(ga)
    # The mask is in the tile's own pixels too.
    assert cv2.imread(str(tmp_path / "b" / "masks" / "tile.png"), cv2.IMREAD_UNCHANGED).shape == (640, 640)
    # Control: a model that records no pixel size sees the 0.15 m tile as it is, and the bars
    # (8 px wide there) become buildings: the agreement above is the resampling's doing.
    rc = predict_folder(b, tmp_path / "c", plain_model, workers=0, progress=False)
    assert rc.tile_gsd["tile"]["factor"] == 1.0 and rc.labels.n_footprints >= len(fa) + 3


def test_gsd_option_resamples_plain_tiles_and_unknown_ones_are_said_once(two_resolutions, gsd_model, tmp_path, monkeypatch, capsys):
    from shapely import affinity

    a, b, n = two_resolutions
    blob_model(monkeypatch)
    plain = tmp_path / "plain"
    plain.mkdir()
    with rasterio.open(b / "tile.tif") as src:
        fine = src.read().transpose(1, 2, 0)
    cv2.imwrite(str(plain / "tile.png"), cv2.cvtColor(fine, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(plain / "other.png"), cv2.cvtColor(fine, cv2.COLOR_RGB2BGR))
    assert main(["predict", "--images", str(plain), "--out", str(tmp_path / "g"), "--model", str(gsd_model), "--workers", "0",
                 "--gsd", "0.15"]) == 0
    assert "2 of 2 tiles resampled from 0.15 m (--gsd)" in capsys.readouterr().out
    assert main(["predict", "--images", str(plain), "--out", str(tmp_path / "u"), "--model", str(gsd_model), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert text.count("taken to be the model's (0.3 m)") == 1 and "2 tile(s) have no georeference" in text
    g = read_labels(tmp_path / "g" / "submission.csv")
    ref = read_labels(tmp_path / "u" / "submission.csv")  # not resampled: the bars are buildings
    fa = [affinity.scale(f, 2, 2, origin=(0, 0)) for f in read_geojson_pixels(a)]
    for key in g.images:
        assert match(g[key].footprints, fa)[0] >= 0.9 * n
        assert len(ref[key].footprints) >= len(g[key].footprints) + 3


def read_geojson_pixels(folder: Path) -> list:
    """Footprints of the 0.3 m tile through the stand-in model, computed directly (no predict)."""
    from rooftrace.instances.postprocess import postprocess

    with rasterio.open(folder / "tile.tif") as src:
        rgb = src.read().transpose(1, 2, 0)
    return list(postprocess(bright_blobs(rgb)).footprints)


def test_bad_gsd_is_refused_and_a_disagreeing_one_is_noted(osm, plain_model, gsd_model, tmp_path, capsys):
    images = tmp_path / "i"
    images.mkdir()
    f = sorted((osm / "banepa" / "chips").glob("*.tif"))[0]
    shutil.copy(f, images / f.name)
    shutil.copy(str(f) + ".aux.xml", images / (f.name + ".aux.xml"))
    for bad in ("0", "-0.3", "nan"):
        assert main(["predict", "--images", str(images), "--out", str(tmp_path / "o"), "--model", str(plain_model), "--gsd", bad]) == 2
        err = capsys.readouterr().err
        assert f"--gsd {bad}" in err and "greater than 0" in err and "Traceback" not in err
    assert main(["predict-scene", str(images / f.name), "--out", str(tmp_path / "s.gpkg"), "--model", str(plain_model), "--gsd", "0"]) == 2
    assert "greater than 0" in capsys.readouterr().err
    # The chip is 0.13 m; --gsd 0.5 overrides it (the user said so) but is noted.
    assert main(["predict", "--images", str(images), "--out", str(tmp_path / "o"), "--model", str(gsd_model), "--workers", "0",
                 "--gsd", "0.5", "--no-overlays"]) == 0
    out = capsys.readouterr().out
    assert "--gsd 0.5 overrides the pixel size of 1 georeferenced tile(s) whose own differs by more than 2x" in out
    with pytest.raises(RooftraceError, match="greater than 0"):
        from rooftrace.inference.predict import predict_folder

        predict_folder(images, tmp_path / "o3", plain_model, gsd=-1.0)


def test_onnx_export_carries_the_pixel_size(gsd_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from rooftrace.inference.export import export_onnx
    from rooftrace.models.onnx import load_onnx

    export_onnx(gsd_model, tmp_path / "m.onnx")
    loaded = load_onnx(tmp_path / "m.onnx", device="cpu")
    assert loaded.gsd == pytest.approx(0.3) and loaded.meta["gsd"] == pytest.approx(0.3)


# --- predict-scene: the same rule ------------------------------------------------------------------


def _scene_runner(gsd):
    from rooftrace.inference.runtime import ModelRunner

    return ModelRunner(lambda batch: np.stack([bright_blobs(im) for im in batch]), 3, None, "bright blobs", gsd=gsd)


def test_a_scene_at_015_m_and_at_03_m_give_matching_footprints_in_the_crs(tmp_path):
    from rooftrace.scenes.predict import predict_scene

    rgb = np.concatenate([np.concatenate([synthetic_tile(320, seed=s)[0] for s in (r, r + 1)], axis=1) for r in (0, 2)])  # 640 x 640
    fine = cv2.resize(rgb, (1280, 1280), interpolation=cv2.INTER_LINEAR)
    a = write_tif(tmp_path / "a.tif", rgb, from_origin(330000, 3060000, 0.3, 0.3))
    b = write_tif(tmp_path / "b.tif", fine, from_origin(330000, 3060000, 0.15, 0.15))
    kw = dict(tile=256, overlap=32, block=256, margin=16, progress=False)
    ra = predict_scene(a, tmp_path / "a.gpkg", _scene_runner(0.3), **kw)
    rb = predict_scene(b, tmp_path / "b.gpkg", _scene_runner(0.3), **kw)
    assert ra.scale == 1.0 and rb.scale == pytest.approx(0.5, abs=1e-3) and rb.gsd_source == "geotiff"
    assert rb.width == 1280 and "read as 640 x 640" in rb.summary() and rb.n_windows == ra.n_windows
    ga = _gpkg(tmp_path / "a.gpkg")
    gb = _gpkg(tmp_path / "b.gpkg")
    assert pyogrio.read_info(tmp_path / "b.gpkg")["crs"] == "EPSG:32645"
    k, ious = match(gb, ga)
    assert abs(len(ga) - len(gb)) <= 2 and k >= 0.9 * len(ga) and np.median(ious) > 0.8, (len(ga), len(gb), k)
    # Control: a model without a pixel size reads the 0.15 m scene as it is, and the bars are buildings.
    rc = predict_scene(b, tmp_path / "c.gpkg", _scene_runner(None), **kw)
    assert rc.scale == 1.0 and rc.n_buildings >= len(ga) + 8
    # --gsd for a scene overrides its transform (here: wrongly, and noted).
    rd = predict_scene(b, tmp_path / "d.gpkg", _scene_runner(0.3), gsd=0.6, **kw)
    assert rd.scale == pytest.approx(2.0) and "differs by more than 2x" in rd.summary()


def _gpkg(path: Path) -> np.ndarray:
    import pyogrio.raw

    _, _, wkb, _ = pyogrio.raw.read(path)
    return shapely.from_wkb(wkb)


def test_a_resumed_run_on_georeferenced_tiles_writes_the_same_map_outputs(two_resolutions, gsd_model, tmp_path, monkeypatch):
    """Tiles finished before a crash are located again at the end; their pixel size is kept from the record."""
    import rooftrace.inference.predict as pr

    a, b, _ = two_resolutions
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(a / "tile.tif", images / "a.tif")
    shutil.copy(b / "tile.tif", images / "b.tif")
    blob_model(monkeypatch)
    ref = pr.predict_folder(images, tmp_path / "ref", gsd_model, workers=0, threads=0, batch_size=1, progress=False)
    real = pr._finish_tile
    monkeypatch.setattr(pr, "_finish_tile", crash_after(real, 1))
    with pytest.raises(RuntimeError, match="simulated"):
        pr.predict_folder(images, tmp_path / "out", gsd_model, workers=0, threads=0, batch_size=1, progress=False)
    monkeypatch.setattr(pr, "_finish_tile", real)
    done = pr.predict_folder(images, tmp_path / "out", gsd_model, workers=0, threads=0, batch_size=1, resume=True, progress=False)
    assert done.n_resumed == 1 and done.tile_gsd == ref.tile_gsd
    for name in ("predictions.geojson", "submission.csv", "predictions.coco.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    assert _gpkg(tmp_path / "out" / "predictions.gpkg").tolist() == _gpkg(tmp_path / "ref" / "predictions.gpkg").tolist()
