"""GIS outputs that carry their meaning: area_m2 in square metres in every CRS, provenance in each file's
metadata, GeoPackage / GeoJSON / FlatGeobuf / GeoParquet by suffix, GeoJSON always longitude/latitude."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import box

import rooftrace
from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file
from rooftrace.geometry.areas import area_m2
from rooftrace.gis.provenance import read_provenance
from rooftrace.gis.writers import OUTPUT_DRIVERS, FeatureWriter, check_output
from rooftrace.prepare.targets import make_targets
from rooftrace.scenes.predict import predict_scene
from tests.conftest import write_tiny_model

#: 0.5 m pixels of UTM zone 18N at about 60°N, 75°W (the zone's central meridian).
UTM18 = "EPSG:32618"
TRANSFORM_60N = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 6654000.0)
FORMATS = (".gpkg", ".geojson", ".fgb", ".parquet")


def need_parquet() -> None:
    """GeoParquet is written with pyarrow (the ``parquet`` extra) and read back here with geopandas (dev)."""
    pytest.importorskip("pyarrow.parquet")
    pytest.importorskip("geopandas")


def identity(x):
    """A perfect model of a raster whose pixels are probabilities x 255: returns them."""
    return x.float() / 255


def ground_square(lon: float, lat: float, side: float = 10.0) -> shapely.Polygon:
    """A ``side`` x ``side`` metre square on the ground at (lon, lat), in longitude/latitude (WGS 84):
    its corners laid out in the local azimuthal equidistant frame, whose scale is exact to 1e-12 at
    10 m from its centre."""
    aeqd = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +ellps=WGS84")
    t = Transformer.from_crs(aeqd, "EPSG:4326", always_xy=True)
    h = side / 2
    return shapely.Polygon([t.transform(x, y) for x, y in [(-h, -h), (h, -h), (h, h), (-h, h)]])


def to_crs(geom, crs: str):
    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


# ---------------------------------------------------------------------------------------------
# area_m2


@pytest.mark.parametrize("crs", ["EPSG:32618", "EPSG:3857", "EPSG:4326", "EPSG:3035", "EPSG:27572"])
def test_area_m2_of_a_10_m_square_is_100_at_60_n(crs):
    lon = 10.0 if crs in ("EPSG:3035", "EPSG:27572") else -75.5  # inside each CRS's area of use
    square = to_crs(ground_square(lon, 60.0), crs)
    assert area_m2([square], crs)[0] == pytest.approx(100.0, rel=1e-3)
    if crs == "EPSG:3857":  # the planar area in Web Mercator is 1 / cos²(60°) = 4x the ground's
        assert shapely.area(square) == pytest.approx(400.0, rel=1e-2)


def test_area_m2_subtracts_holes_adds_parts_and_needs_a_unit_without_a_crs():
    ring = shapely.Polygon([(0, 0), (20, 0), (20, 20), (0, 20)], holes=[[(5, 5), (15, 5), (15, 15), (5, 15)]])
    multi = shapely.MultiPolygon([box(0, 0, 10, 10), box(30, 30, 40, 40)])
    geoms = np.asarray([ring, multi, shapely.Polygon()], dtype=object)
    t = Transformer.from_crs("EPSG:3857", "EPSG:32618", always_xy=True)
    x0, y0 = t.transform(*Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-75.0, 60.0))
    utm = shapely.transform(geoms, lambda xy: xy + [x0, y0])
    got = area_m2(utm, UTM18)
    assert got[0] == pytest.approx(300.0 / 0.9996**2, rel=1e-5) and got[1] == pytest.approx(200.0 / 0.9996**2, rel=1e-5)
    assert got[2] == 0.0
    assert np.allclose(area_m2(geoms, None, metres_per_unit=0.5), [75.0, 50.0, 0.0])
    assert np.isnan(area_m2(geoms, None)).all()  # unknown, not a made-up number


def test_area_m2_is_fast_for_a_scene_of_buildings(monkeypatch):
    """50,000 nine-vertex buildings in UTM: measured against an equal-area projection (an independent,
    exact method). What keeps it fast is checked, not a time (which a loaded machine would stretch): every
    vertex of every building goes through PROJ in one vectorised call, none one building at a time."""
    rng = np.random.default_rng(0)
    n = 50_000
    x, y = 500000 + rng.uniform(-10000, 10000, n), 6654000 + rng.uniform(-10000, 10000, n)
    geoms = shapely.buffer(shapely.points(x, y), rng.uniform(3, 15, n), quad_segs=2)
    calls = []
    transform = Transformer.transform

    def counted(self, xx, yy, *args, **kwargs):
        calls.append(np.size(xx))
        return transform(self, xx, yy, *args, **kwargs)

    monkeypatch.setattr(Transformer, "transform", counted)
    t = time.perf_counter()
    got = area_m2(geoms, UTM18)
    seconds = time.perf_counter() - t
    monkeypatch.undo()
    assert calls == [shapely.get_num_coordinates(geoms).sum()], calls[:5]  # one PROJ call, every vertex in it
    laea = Transformer.from_crs(UTM18, "+proj=laea +lat_0=60 +lon_0=-75 +ellps=WGS84", always_xy=True)
    exact = shapely.area(shapely.transform(geoms, lambda xy: np.column_stack(laea.transform(xy[:, 0], xy[:, 1]))))
    assert np.abs(got / exact - 1).max() < 1e-6
    print(f"area_m2: {n} polygons in {seconds:.2f} s ({seconds / n * 1e6:.1f} µs each)")  # for the log, not asserted


# ---------------------------------------------------------------------------------------------
# Every format from predict_scene


@pytest.fixture(scope="module")
def scene_60n(tmp_path_factory) -> tuple[Path, list]:
    """Perfect targets (footprint, boundary, contact x 255) of a few buildings, 0.5 m pixels in UTM 18N at 60°N."""
    footprints = [box(10, 10, 30, 30), box(40, 12, 90, 28), box(20, 50, 44, 70), box(60, 40, 64, 80), box(70, 70, 95, 95)]
    d = tmp_path_factory.mktemp("scene60")
    path = d / "scene.tif"
    data = make_targets(footprints, (100, 110)).stack() * np.uint8(255)
    with rasterio.open(path, "w", driver="GTiff", width=110, height=100, count=3, dtype="uint8", crs=UTM18,
                       transform=TRANSFORM_60N) as dst:
        dst.write(data)
    return path, footprints


def read_any(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], CRS | None, list[str]]:
    """Geometries, fields, CRS and field names of a vector file: pyogrio, or geopandas for GeoParquet."""
    if path.suffix == ".parquet":
        need_parquet()
        import geopandas as gpd

        df = gpd.read_parquet(path)
        cols = [c for c in df.columns if c != df.geometry.name]
        return np.asarray(df.geometry.values, dtype=object), {c: df[c].to_numpy() for c in cols}, df.crs, cols
    meta, _, wkb, fields = pyogrio.raw.read(path)
    cols = list(meta["fields"])
    return shapely.from_wkb(wkb), dict(zip(cols, fields)), CRS.from_user_input(meta["crs"]) if meta["crs"] else None, cols


def by_centroid(geoms: np.ndarray, *arrays: np.ndarray):
    """Features sorted by their centroid (FlatGeobuf's spatial index stores them in Hilbert order)."""
    c = shapely.centroid(geoms)
    order = np.lexsort((np.round(shapely.get_x(c), 3), np.round(shapely.get_y(c), 3)))
    return (geoms[order], *(a[order] for a in arrays))


@pytest.fixture(scope="module")
def outputs(scene_60n, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("formats")
    need_parquet()
    for suffix in FORMATS:
        predict_scene(scene_60n[0], d / f"out{suffix}", identity, tile=64, overlap=16, block=64, margin=8, progress=False)
    return {s: d / f"out{s}" for s in FORMATS}


def test_the_output_formats_are_chosen_by_suffix():
    assert {OUTPUT_DRIVERS[s] for s in FORMATS} == {"GPKG", "GeoJSON", "FlatGeobuf", "Parquet"}
    with pytest.raises(RooftraceError, match=r"\.shp.*\.gpkg.*\.fgb.*\.parquet.*\.geojson"):
        check_output("x.shp")


@pytest.mark.parametrize("suffix", FORMATS)
def test_each_format_has_the_same_features_fields_and_crs(outputs, scene_60n, suffix):
    _, footprints = scene_60n
    ref_geoms, ref_fields, ref_crs, ref_cols = read_any(outputs[".gpkg"])
    geoms, fields, crs, cols = read_any(outputs[suffix])
    assert ref_cols == cols == ["score", "area_m2"]
    assert len(geoms) == len(ref_geoms) == len(footprints)
    assert set(shapely.get_type_id(geoms).tolist()) == {3}  # Polygons
    if suffix == ".geojson":  # RFC 7946: longitude/latitude, no crs member, exterior rings counter-clockwise
        assert crs.equals(CRS.from_epsg(4326))
        head = json.loads(outputs[suffix].read_text())
        assert "crs" not in head
        assert all(shapely.Polygon(f["geometry"]["coordinates"][0]).exterior.is_ccw for f in head["features"])
        lon, lat = shapely.get_x(shapely.centroid(geoms)), shapely.get_y(shapely.centroid(geoms))
        assert (np.abs(lon + 75) < 0.01).all() and (np.abs(lat - 60.0) < 0.05).all()
        t = Transformer.from_crs("EPSG:4326", UTM18, always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    else:
        assert crs.equals(ref_crs) and crs.to_epsg() == 32618
    g, s, a = by_centroid(geoms, np.asarray(fields["score"], float), np.asarray(fields["area_m2"], float))
    rg, rs, ra = by_centroid(ref_geoms, np.asarray(ref_fields["score"], float), np.asarray(ref_fields["area_m2"], float))
    tol = 1e-3 if suffix == ".geojson" else 1e-9  # metres: GeoJSON keeps 1/1000 of a pixel (9 decimals of a degree here)
    assert shapely.hausdorff_distance(g, rg).max() < tol
    assert np.array_equal(shapely.get_num_coordinates(g), shapely.get_num_coordinates(rg))
    assert np.allclose(s, rs, atol=1e-4) and np.allclose(a, ra, atol=1e-3)
    # area_m2 is ground square metres: the pixel area (0.25 m²) over the UTM scale factor squared near its meridian
    pixels = sorted(fp.area for fp in footprints)
    assert sorted(a) == pytest.approx([p * 0.25 / 0.9996**2 for p in pixels], rel=2e-5)


@pytest.mark.parametrize("suffix", FORMATS)
def test_each_format_carries_its_provenance(outputs, scene_60n, suffix):
    out = outputs[suffix]
    if suffix == ".parquet":  # GeoParquet 1.1 metadata and a rooftrace key, in the Parquet file's key-value metadata
        import pyarrow.parquet as pq

        meta = pq.read_schema(out).metadata
        geo = json.loads(meta[b"geo"])
        assert geo["version"].startswith("1.") and geo["primary_column"] == "geometry"
        assert geo["columns"]["geometry"]["encoding"] == "WKB" and CRS.from_json_dict(geo["columns"]["geometry"]["crs"]).to_epsg() == 32618
        raw = json.loads(meta[b"rooftrace"])
    else:  # pyogrio reads it back as layer metadata
        meta = pyogrio.read_info(out)["layer_metadata"]
        raw = json.loads(meta["DESCRIPTION"] if suffix == ".geojson" else meta["rooftrace"])
        if suffix == ".geojson":  # and the same as a foreign member, for a plain JSON reader
            assert json.loads(out.read_text())["rooftrace"] == raw
    prov = read_provenance(out)
    assert prov == raw
    assert prov["rooftrace_version"] == rooftrace.__version__
    assert prov["source"]["raster"] == str(scene_60n[0].resolve())
    assert prov["crs"] == ("EPSG:4326" if suffix == ".geojson" else UTM18)
    assert prov["postprocessing"]["method"] == "watershed" and prov["postprocessing"]["settings"]["footprint_threshold"] == 0.5
    assert prov["model"]["file"] is None and prov["model"]["sha256"] is None  # a callable, not a file
    assert set(prov["fields"]) == {"score", "area_m2"}
    assert not list(out.parent.glob(f".{out.stem}*"))  # no temporary or staging file is left


def test_a_model_file_is_recorded_with_its_sha256(scene_60n, tmp_path):
    need_parquet()
    model = write_tiny_model(tmp_path / "tiny.safetensors", base_channels=4)
    for suffix in (".gpkg", ".parquet"):
        out = tmp_path / f"m{suffix}"
        result = predict_scene(scene_60n[0], out, model, device="cpu", tile=64, overlap=16, progress=False)
        prov = read_provenance(out)
        assert prov["model"]["file"] == "tiny.safetensors" and prov["model"]["sha256"] == sha256_file(model)
        assert prov["model"]["path"] == str(model.resolve())
        assert prov["postprocessing"]["method"] and prov["postprocessing"]["settings"]
        assert read_any(out)[1]["area_m2"].shape == (result.n_buildings,)


def test_geojson_of_a_scene_without_a_crs_is_refused_other_formats_leave_it_unknown(tmp_path):
    data = (make_targets([box(10, 10, 30, 30)], (48, 48)).stack() * np.uint8(255))
    scene = tmp_path / "nocrs.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=48, height=48, count=3, dtype="uint8") as dst:
        dst.write(data)
    with pytest.raises(RooftraceError, match=r"out\.geojson: the scene has no CRS.*RFC 7946.*\.gpkg"):
        predict_scene(scene, tmp_path / "out.geojson", identity, tile=48, overlap=0, progress=False)
    assert not list(tmp_path.glob("*out*"))
    need_parquet()
    predict_scene(scene, tmp_path / "out.parquet", identity, tile=48, overlap=0, gsd=0.5, progress=False)
    predict_scene(scene, tmp_path / "out.fgb", identity, tile=48, overlap=0, progress=False)
    _, fields, crs, _ = read_any(tmp_path / "out.parquet")
    assert crs is None  # GeoParquet "crs": null (unknown), not the CRS84 a missing key would mean
    assert fields["area_m2"].tolist() == pytest.approx([400 * 0.25])  # from --gsd
    _, fields, crs, _ = read_any(tmp_path / "out.fgb")
    assert crs is None and np.isnan(fields["area_m2"]).all()  # no CRS, no --gsd: unknown


def test_the_flatgeobuf_stream_is_staged_and_converted_in_chunks(tmp_path):
    """More features than a chunk: FlatGeobuf is staged in a GeoPackage, converted batch by batch,
    and every feature comes through."""
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 4000, size=(2500, 2)) * 3
    pixel = shapely.box(xy[:, 0], xy[:, 1], xy[:, 0] + 2, xy[:, 1] + 2)
    w = FeatureWriter(tmp_path / "many.fgb", CRS.from_user_input(UTM18), TRANSFORM_60N, chunk=300)
    for k in range(0, len(pixel), 700):
        w.add(pixel[k:k + 700], np.full(len(pixel[k:k + 700]), 0.5))
        assert w.stage.exists() and not w.path.exists()
    w.close()
    assert not w.stage.exists() and pyogrio.read_info(tmp_path / "many.fgb")["features"] == 2500
    assert read_provenance(tmp_path / "many.fgb")["crs"] == UTM18


# ---------------------------------------------------------------------------------------------
# Tile prediction's map outputs


def test_tile_predict_map_outputs_carry_area_m2_and_provenance(tmp_path, monkeypatch):
    """A georeferenced 0.5 m tile at 60°N with bright squares; the model is made to return them."""
    import rooftrace.inference.runtime as runtime_mod
    from rooftrace.inference.predict import predict_folder

    rgb = np.full((96, 96, 3), 30, np.uint8)
    rgb[10:30, 10:30] = 230  # 20 x 20 px = 100 m² on the ground (over the UTM scale factor squared)
    rgb[50:60, 40:80] = 230
    images = tmp_path / "tiles"
    images.mkdir()
    with rasterio.open(images / "t.tif", "w", driver="GTiff", width=96, height=96, count=3, dtype="uint8", crs=UTM18,
                       transform=TRANSFORM_60N) as dst:
        dst.write(rgb.transpose(2, 0, 1))
    model = write_tiny_model(tmp_path / "tiny.safetensors", base_channels=4)

    def bright(loaded, x, device, tta=False, precision="auto"):
        mean = np.asarray(loaded.mean, np.float32)[:, None, None]
        std = np.asarray(loaded.std, np.float32)[:, None, None]
        out = []
        for t in x:
            m = ((t.numpy() * std + mean).mean(axis=0) > 0.5).astype(np.float32)
            out.append(np.stack([np.where(m > 0, 0.95, 0.02), np.zeros_like(m), np.zeros_like(m)]))
        return np.stack(out)

    monkeypatch.setattr(runtime_mod, "predict_probabilities", bright)
    predict_folder(images, tmp_path / "out", model, workers=0, write_overlays=False, write_masks=False, progress=False)
    out = tmp_path / "out"
    fc = json.loads((out / "predictions.geojson").read_text())
    assert "crs" not in fc and fc["rooftrace"]["coordinates"] == "EPSG:4326"
    areas = sorted(f["properties"]["area_m2"] for f in fc["features"])
    assert areas == pytest.approx([100 / 0.9996**2, 100 / 0.9996**2], rel=1e-4)  # 20 x 20 and 10 x 40 px of 0.5 m
    meta, _, _, fields = pyogrio.raw.read(out / "predictions.gpkg")
    assert list(meta["fields"]) == ["image_id", "file_name", "score", "area_m2"]
    assert sorted(fields[3]) == pytest.approx(areas, rel=1e-6)
    for path in (out / "predictions.geojson", out / "predictions.gpkg"):
        prov = read_provenance(path)
        assert prov["model"]["file"] == "tiny.safetensors" and prov["model"]["sha256"] == sha256_file(model)
        assert prov["source"]["images"] == str(images.resolve()) and prov["rooftrace_version"] == rooftrace.__version__
        assert prov["postprocessing"]["method"] == "watershed"
    assert read_provenance(out / "predictions.geojson")["crs"] == "EPSG:4326"
    assert read_provenance(out / "predictions.gpkg")["crs"] == UTM18


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_output_format_reads_back_and_scores_perfectly(outputs, scene_60n, suffix):
    """What rooftrace writes, rooftrace reads: each format, read back onto the scene's pixels, scores
    object F1 1.0 against the buildings the perfect targets were drawn from (GeoParquet read with pyarrow)."""
    from rooftrace.evaluation.metrics import evaluate_labels
    from rooftrace.labels.formats import read_labels
    from rooftrace.labels.records import LabelSet

    path, footprints = scene_60n
    pred = read_labels(outputs[suffix], raster=path)
    (img,) = list(pred)
    assert len(img.footprints) == len(footprints) and all(s is not None for s in img.scores)
    gt = LabelSet()
    ref = gt.get_or_add(img.key)
    ref.footprints, ref.width, ref.height = list(footprints), img.width, img.height
    assert evaluate_labels(gt, pred, pixel=False).f1 == 1.0


def test_a_parquet_file_that_is_not_geoparquet_is_one_line(tmp_path):
    need_parquet()
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rooftrace.labels.formats import read_labels

    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "plain.parquet")
    with pytest.raises(RooftraceError, match=r"plain\.parquet: a Parquet file without GeoParquet 'geo' metadata"):
        read_labels(tmp_path / "plain.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(RooftraceError, match=r"junk\.parquet: not a readable Parquet file"):
        read_labels(tmp_path / "junk.parquet")
