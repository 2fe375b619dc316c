"""The Python API as a notebook user calls it (issue 14): ``rooftrace.load_model()``, ``model.predict`` on an
array, a file and a rasterio dataset, the batch and scene forms, and ONNX models everywhere ``--model`` is
taken (``predict-scene`` and ``tune`` included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

import rooftrace
from rooftrace.cli import main
from rooftrace.core.errors import RooftraceError
from tests.conftest import write_tiny_model


@pytest.fixture(scope="module")
def shipped():
    return rooftrace.load_model(device="cpu")


@pytest.fixture(scope="module")
def tiles(sample, tmp_path_factory) -> Path:
    """Five sample test tiles of different content."""
    d = tmp_path_factory.mktemp("tiles")
    for name in sorted(p.name for p in (sample / "test" / "image").iterdir())[:5]:
        shutil.copy(sample / "test" / "image" / name, d / name)
    return d


def _coco_polygons(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in json.loads(path.read_text()):
        rings = [np.asarray(s, float).reshape(-1, 2) for s in r["segmentation"]]
        out.setdefault(str(r["image_id"]), []).append((shapely.Polygon(rings[0], rings[1:]), r["score"]))
    return out


def test_predict_on_sample_tiles_equals_the_cli(shipped, tiles, tmp_path):
    """The same buildings and scores as ``rooftrace predict`` (which batches tiles and reads them in
    worker processes), with the model's tuned post-processing; that a tuned file is used is checked too."""
    assert shipped.postprocessing[1] is not None, "the shipped model's tuned settings were not found"
    assert main(["predict", "--images", str(tiles), "--out", str(tmp_path / "cli"), "--device", "cpu", "--no-overlays"]) == 0
    cli = _coco_polygons(tmp_path / "cli" / "predictions.coco.json")
    total = 0
    for path in sorted(tiles.iterdir()):
        got = shipped.predict(path)  # one result type for every input: a GeoDataFrame (issue 24)
        assert isinstance(got, geopandas.GeoDataFrame) and (got.attrs["width"], got.attrs["height"]) == rasterio.open(path).shape[::-1]
        assert got.crs is None and got.attrs["coordinates"] == "pixel" and got["area_m2"].isna().all()
        want = cli.get(str(rooftrace.image_key(path)), [])
        assert len(got) == len(want), path.name
        for (poly, score), (ref, ref_score) in zip(zip(got.geometry, got["score"]), want):
            assert poly.symmetric_difference(ref).area <= 1e-6 * max(ref.area, 1.0)
            assert score == pytest.approx(ref_score, abs=1e-4)
        total += len(got)
    assert total > 10


def test_array_dataset_and_batch_forms_agree_with_the_file(shipped, tiles):
    path = sorted(tiles.iterdir())[0]
    by_file = shipped.predict(path)
    rgb = np.moveaxis(rasterio.open(path).read([1, 2, 3]), 0, -1)
    by_array = shipped.predict(rgb)
    with rasterio.open(path) as ds:
        by_dataset = shipped.predict(ds)
    batch = shipped.predict_batch([path, rgb])
    for other in (by_array, by_dataset, *batch):
        assert isinstance(other, geopandas.GeoDataFrame) and len(other) == len(by_file)
        assert all(a.equals_exact(b, 1e-9) for a, b in zip(other.geometry, by_file.geometry))
    rich = shipped.footprints(path)  # the richer object, one call away
    assert isinstance(rich, rooftrace.Footprints) and rich.instances is not None
    assert all(a.equals_exact(b, 1e-9) for a, b in zip(rich.to_geodataframe().geometry, by_file.geometry))


def test_a_georeferenced_image_gives_a_geodataframe_in_its_crs(shipped, tiles, tmp_path):
    """The same tile written as a UTM GeoTIFF: the buildings come back as a GeoDataFrame in EPSG:32616
    whose geometries are the pixel polygons through the raster's transform."""
    src = sorted(tiles.iterdir())[0]
    with rasterio.open(src) as ds:
        data = ds.read([1, 2, 3])
    transform = from_origin(620000.0, 3350000.0, 0.3, 0.3)  # 0.3 m, the model's pixel size: no resampling
    geo = tmp_path / "geo.tif"
    with rasterio.open(geo, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=3, dtype="uint8",
                       crs="EPSG:32616", transform=transform) as dst:
        dst.write(data)
    gdf = shipped.predict(geo)
    pixel = shipped.footprints(np.moveaxis(data, 0, -1))
    assert gdf.crs.to_epsg() == 32616 and len(gdf) == len(pixel) > 0
    # area_m2 is the ground area: 0.09 m² a pixel in this UTM CRS (issue 24: it was missing for chips)
    assert list(gdf["area_m2"]) == pytest.approx([p.area * 0.09 for p in pixel.polygons], rel=1e-3)
    assert list(gdf["score"]) == pytest.approx(pixel.scores)
    a = np.asarray(transform.to_gdal())
    for g, p in zip(gdf.geometry, pixel.polygons):
        mapped = shapely.transform(p, lambda xy: np.c_[a[0] + xy[:, 0] * a[1], a[3] + xy[:, 1] * a[5]])
        assert g.symmetric_difference(mapped).area < 1e-6 * g.area
    assert gdf.geometry.total_bounds[0] >= 620000.0 and gdf.geometry.total_bounds[3] <= 3350000.0


def test_pixel_size_is_taken_into_account_for_arrays(shipped, tiles):
    """An array said to be at 0.15 m is read at the model's 0.3 m and its buildings come back in the
    array's own pixels: a 2x enlarged tile gives the buildings of the tile, twice as large."""
    path = sorted(tiles.iterdir())[1]
    rgb = np.moveaxis(rasterio.open(path).read([1, 2, 3]), 0, -1)
    big = np.repeat(np.repeat(rgb, 2, axis=0), 2, axis=1)
    small, large = shipped.footprints(rgb), shipped.footprints(big, gsd=0.15)
    assert (large.width, large.height) == (2 * small.width, 2 * small.height)
    assert abs(len(large) - len(small)) <= max(2, len(small) // 5)
    assert sum(p.area for p in large.polygons) == pytest.approx(4 * sum(p.area for p in small.polygons), rel=0.2)


def test_bad_inputs_are_clear_errors(shipped, tmp_path):
    with pytest.raises(RooftraceError, match="dtype float32; expected uint8"):
        shipped.predict(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(RooftraceError, match=r"shape \(2, 64, 64, 3\)"):
        shipped.predict(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(RooftraceError, match="missing.png"):
        shipped.predict(tmp_path / "missing.png")
    with pytest.raises(RooftraceError, match="expected an"):
        shipped.predict(42)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from rooftrace.inference.export import export_onnx

    d = tmp_path_factory.mktemp("onnx")
    src = write_tiny_model(d / "tiny.safetensors")
    export_onnx(src, d / "tiny.onnx")
    return d / "tiny.onnx"


def test_onnx_models_work_in_the_api_predict_scene_and_tune(onnx_model, sample, tiles, tmp_path):
    """``--model x.onnx`` in ``predict-scene`` and ``tune`` (each was PyTorch-only before), and in the API;
    the ONNX model's probabilities match its PyTorch source."""
    from rooftrace.inference.runtime import load_runtime

    onnx_rt = load_runtime(onnx_model)
    torch_rt = load_runtime(onnx_model.with_suffix(".safetensors"), device="cpu", precision="fp32")
    rgb = np.moveaxis(rasterio.open(sorted(tiles.iterdir())[0]).read([1, 2, 3]), 0, -1)
    assert onnx_rt.is_onnx and not torch_rt.is_onnx
    np.testing.assert_allclose(onnx_rt.probabilities(rgb), torch_rt.probabilities(rgb), atol=1e-4)
    assert isinstance(rooftrace.load_model(onnx_model).predict(rgb), geopandas.GeoDataFrame)

    scene = sample / "scenes" / "inria_austin.tif"
    out = tmp_path / "austin.gpkg"
    assert main(["predict-scene", str(scene), "--out", str(out), "--model", str(onnx_model), "--tile", "256"]) == 0
    assert out.exists()

    tune_model = tmp_path / "tune" / "tiny.onnx"
    tune_model.parent.mkdir()
    shutil.copy(onnx_model, tune_model)
    assert main(["tune", "--model", str(tune_model), "--split", str(sample / "val")]) == 0
    saved = json.loads((tmp_path / "tune" / "tiny.postprocess.json").read_text())
    assert "settings" in saved
    assert load_runtime(tune_model).settings is not None  # predict picks the tuned file up beside the ONNX model


def test_the_readme_python_example_runs_as_written(sample, tmp_path, monkeypatch):
    """The README's first-screen example, executed as written, with its placeholder files made real: a
    sample tile as ``tile.png``, a Banepa OpenAerialMap chip (GeoTIFF + .aux.xml) as ``chip.tif``, and the
    Austin sample scene as ``city.tif``."""
    import os
    import re

    from PIL import Image

    osm = Path(os.environ.get("ROOFTRACE_OSM_DIR", Path(__file__).resolve().parents[3] / "shared" / "data" / "osm-oam"))
    chips = sorted((osm / "banepa" / "chips").glob("*.tif"))
    if not chips:
        pytest.skip(f"osm-oam data not found at {osm}")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "rooftrace.load_model()" in code and "model.predict(" in code
    tile = sorted((sample / "test" / "image").iterdir())[0]
    Image.fromarray(np.moveaxis(rasterio.open(tile).read([1, 2, 3]), 0, -1)).save(tmp_path / "tile.png")
    shutil.copy(chips[0], tmp_path / "chip.tif")
    shutil.copy(chips[0].with_name(chips[0].name + ".aux.xml"), tmp_path / "chip.tif.aux.xml")
    shutil.copy(sample / "scenes" / "inria_austin.tif", tmp_path / "city.tif")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    buildings = namespace["buildings"]  # one result type for every input kind (issue 24)
    assert isinstance(buildings, geopandas.GeoDataFrame) and len(buildings) > 0 and buildings.attrs["coordinates"] == "pixel"
    assert isinstance(namespace["found"], rooftrace.Footprints) and len(namespace["found"]) == len(buildings)
    gdf = namespace["gdf"]
    assert isinstance(gdf, geopandas.GeoDataFrame) and gdf.crs is not None and len(gdf) > 0 and "score" in gdf
    assert (gdf["area_m2"] > 0).all()
    assert (tmp_path / "city.gpkg").stat().st_size > 0
    city = namespace["city"]  # predict_scene hands back the footprints it wrote
    assert isinstance(city, geopandas.GeoDataFrame) and len(city) == namespace["result"].n_buildings > 0
    assert city.crs == geopandas.read_file(tmp_path / "city.gpkg").crs and (city["area_m2"] > 0).all()


# --- issue 26: images of any size, window by window -------------------------------------------------------------

def _roofs(size: int, n: int, seed: int = 0) -> np.ndarray:
    """A synthetic image: bright roofs on a dark ground."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 60, np.uint8)
    for y, x, h, w in zip(*(rng.integers(0, size - 40, n) for _ in range(2)), *(rng.integers(8, 40, n) for _ in range(2))):
        img[y:y + h, x:x + w] = (200, 190, 180)
    return img


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", base_channels=4)


def _stand_in(batch: np.ndarray) -> np.ndarray:
    """A per-pixel stand-in network, ``(N, H, W, 3)`` uint8 -> ``(N, 3, H, W)``: roofs (red > 128) are buildings."""
    footprint = np.where(batch[..., 0] > 128, 0.9, 0.05).astype(np.float32)
    return np.stack([footprint, np.zeros_like(footprint), np.zeros_like(footprint)], axis=1)


def test_a_large_array_runs_as_predict_scene_runs_its_raster(model_file, tmp_path):
    """Above 2048 x 2048 px an array goes window by window, stitched and post-processed in blocks: the same
    buildings, bit for bit, as ``predict_scene`` on the same pixels written as a raster, and as the API on that
    file (a per-pixel stand-in network keeps it fast; the real one runs through the same stitching)."""
    import torch

    from rooftrace.scenes.predict import predict_scene

    img = _roofs(2100, 900)
    model = rooftrace.load_model(model_file, device="cpu")
    model.runtime.probabilities = _stand_in
    found = model.footprints(img)
    assert found.instances is None and (found.width, found.height) == (2100, 2100) and len(found) > 300
    with rasterio.open(tmp_path / "big.tif", "w", driver="GTiff", width=2100, height=2100, count=3, dtype="uint8") as dst:
        dst.write(np.moveaxis(img, -1, 0))

    def net(x: torch.Tensor) -> np.ndarray:
        return _stand_in(x.numpy().transpose(0, 2, 3, 1))

    predict_scene(tmp_path / "big.tif", tmp_path / "big.gpkg", model=net, progress=False)
    scene = geopandas.read_file(tmp_path / "big.gpkg").geometry.values

    def norm(geoms):
        return sorted(shapely.to_wkb(shapely.normalize(np.asarray(list(geoms), dtype=object))))

    assert norm(found.polygons) == norm(scene)
    assert norm(model.footprints(tmp_path / "big.tif").polygons) == norm(scene)


def test_a_6000_px_array_is_predicted_with_memory_flat_in_its_size(model_file, tmp_path):
    """Model.predict once grew about 22 bytes a pixel (a 20,000 x 20,000 array: 6.5 GB after 300 s). It now runs an
    image above 2048 x 2048 px window by window: on a 6,000 x 6,000 array (36 Mpx, 108 MB) the process's peak
    resident memory grows by under 480 MB over what it held before the call (22 bytes a pixel would be 790 MB; measured
    335-367 MB on the development machine and 403 MB once in a fresh-clone CI run, session 15, hence the margin),
    measured as the VmHWM of a fresh process (a per-pixel stand-in network keeps it fast; a window's
    activations do not grow with the image). ``benchmarks/api_memory.py`` measures the 20,000 x 20,000 case with
    the shipped network."""
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
import rooftrace
from tests.api.test_api import _roofs, _stand_in
model = rooftrace.load_model({str(model_file)!r}, device="cpu")
img = _roofs(6000, 6000)
model.predict(img[:512, :512])  # warm: the network's kernels, geopandas
model.runtime.probabilities = _stand_in
def peak():  # this process's own high-water mark (ru_maxrss also carries the parent's size at the spawn, on Linux)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
before = peak()
found = model.footprints(img)
after = peak()
print(len(found), before * 1024, after * 1024)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    n, before, after = (int(v) for v in run.stdout.split()[-3:])
    assert n > 3000, n
    assert after - before < 480 * 2**20, f"peak grew {(after - before) / 2**20:.0f} MB (from {before / 2**20:.0f} MB)"


def test_an_image_where_the_score_filter_drops_most_regions_warns_in_the_api(shipped, tiles, monkeypatch):
    """The API's image result carries the score filter's warning, raised as a ModelCardWarning for notebook users
    (post-processing counts the regions it dropped; here 200 are added to a real tile's count)."""
    import dataclasses

    import rooftrace.api as api
    from rooftrace.inference.card import ModelCardWarning

    path = sorted(tiles.iterdir())[0]
    real, seen = api.postprocess, {}

    def more_dropped(*a, **k):
        found = real(*a, **k)
        seen["below"] = found.n_below_score + 200
        return dataclasses.replace(found, n_below_score=seen["below"])

    monkeypatch.setattr(api, "postprocess", more_dropped)
    with pytest.warns(ModelCardWarning, match="score filter"):
        rich = shipped.footprints(path)
    line = [w for w in rich.warnings if "score filter" in w]
    assert len(line) == 1 and f"dropped {seen['below']} of the {seen['below'] + len(rich.polygons)} buildings found" in line[0]
