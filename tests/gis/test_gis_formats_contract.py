"""The contract every GIS output format of :mod:`rooftrace.gis.formats` keeps, run once per registered
format (and once for a toy format registered here in one call, as a new format would be): round trip of
features, fields, ``area_m2`` and CRS; an empty output; the CRS carried (or reprojected by the format's
rule); provenance read back; a bad target refused in one line that names the file; nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import box

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.areas import area_m2
from rooftrace.geometry.shapes import pixel_to_map
from rooftrace.gis import formats
from rooftrace.gis.formats import OutputFormat
from rooftrace.gis.provenance import crs_name, make_provenance, read_provenance
from rooftrace.gis.writers import (
    FeatureWriter,
    check_output,
    output_complete,
    read_features,
)

#: 0.5 m pixels of UTM zone 18N at about 60°N, 75°W.
UTM18 = CRS.from_user_input("EPSG:32618")
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 6654000.0)
#: Three buildings in scene pixels: 10 m x 10 m, 5 m x 20 m, and an L-shape.
PIXEL_GEOMS = np.asarray([box(10, 10, 30, 30), box(100, 40, 110, 80),
                          shapely.Polygon([(200, 200), (240, 200), (240, 210), (210, 210), (210, 240), (200, 240)])],
                         dtype=object)
SCORES = np.asarray([0.91, 0.5, 0.25])

#: A format added in one registration: a GeoPackage under another suffix (what a new OGR format needs).
TOY = OutputFormat("toy", (".gpkx",), "Toy GeoPackage", "GPKG", "ogr", lonlat=False,
                   provenance="layer metadata ``rooftrace`` and ``DESCRIPTION``")


@pytest.fixture(params=[*formats.names(), TOY.name])
def fmt(request) -> OutputFormat:
    if request.param == TOY.name:
        formats.register(TOY)
        request.addfinalizer(lambda: formats.unregister(TOY.name))
    f = formats.by_name(request.param)
    if f.needs is not None:
        pytest.importorskip(f.needs)
    return f


def write(path, crs=UTM18, geoms=PIXEL_GEOMS, scores=SCORES, chunk=2):
    w = FeatureWriter(path, crs, TRANSFORM, chunk=chunk, provenance=make_provenance(source="scene.tif", crs=crs))
    w.add(geoms, scores)
    return w.close()


def one_line_naming(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


class TestOutputFormatContract:
    """What every registered GIS output format does; a new format passes it without a line added here."""

    def test_round_trip_keeps_features_fields_area_and_crs(self, fmt, tmp_path):
        out = write(tmp_path / f"scene{fmt.suffix}")
        assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # atomic: no temporary file left
        geoms, fields, crs = read_features(out)
        expected_crs = CRS.from_epsg(4326) if fmt.lonlat else UTM18
        assert crs is not None and crs.equals(expected_crs)
        assert len(geoms) == len(PIXEL_GEOMS)
        assert {"score", "area_m2"} <= set(fields)
        # order is not part of the contract: FlatGeobuf sorts its features along its spatial index
        order = np.argsort(-np.asarray(fields["score"], dtype=float))
        geoms = geoms[order]
        np.testing.assert_allclose(np.asarray(fields["score"], dtype=float)[order], SCORES, atol=1e-4)
        in_utm = pixel_to_map(PIXEL_GEOMS, TRANSFORM)
        areas = area_m2(in_utm, UTM18)
        np.testing.assert_allclose(np.asarray(fields["area_m2"], dtype=float)[order], areas, atol=1e-3)
        assert areas[0] == pytest.approx(100.0, rel=2e-3)  # 10 m x 10 m on the ground
        # the same places: in the scene's CRS, or reprojected by the format's rule
        if fmt.lonlat:
            tr = Transformer.from_crs(UTM18, expected_crs, always_xy=True)
            expected = shapely.transform(in_utm, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            tolerance = 1e-7  # degrees, about a centimetre
        else:
            expected, tolerance = in_utm, 1e-6
        assert max(shapely.hausdorff_distance(geoms, expected)) < tolerance

    def test_empty_output_is_a_finished_file_with_provenance(self, fmt, tmp_path):
        out = write(tmp_path / f"empty{fmt.suffix}", geoms=np.empty(0, dtype=object), scores=np.empty(0))
        geoms, _, _ = read_features(out)
        assert len(geoms) == 0
        assert output_complete(out, "scene.tif") is None
        assert read_provenance(out) is not None

    def test_provenance_reads_back_with_the_output_crs(self, fmt, tmp_path):
        out = write(tmp_path / f"scene{fmt.suffix}")
        prov = read_provenance(out)
        assert prov is not None and prov["source"]["raster"].endswith("scene.tif")
        assert prov["crs"] == ("EPSG:4326" if fmt.lonlat else crs_name(UTM18))
        assert set(prov["fields"]) == {"score", "area_m2"}
        if fmt.lonlat:
            assert prov["reprojected_from"] == "EPSG:32618"
        assert output_complete(out, "scene.tif") is None
        assert output_complete(out, "another.tif") is not None

    def test_a_scene_without_a_crs_is_written_with_it_unknown_or_refused_in_one_line(self, fmt, tmp_path):
        path = tmp_path / f"nocrs{fmt.suffix}"
        if fmt.lonlat:  # its pixels would be read as degrees
            with pytest.raises(RooftraceError) as exc:
                write(path, crs=None)
            one_line_naming(exc, path)
            assert list(tmp_path.iterdir()) == []
        else:
            geoms, _, crs = read_features(write(path, crs=None))
            assert crs is None and len(geoms) == len(PIXEL_GEOMS)

    def test_a_bad_target_is_refused_in_one_line_naming_the_file(self, fmt, tmp_path):
        existing = tmp_path / f"there{fmt.suffix}"
        existing.write_bytes(b"not ours")
        with pytest.raises(RooftraceError) as exc:
            write(existing)
        assert "already exists" in one_line_naming(exc, existing)
        folder = tmp_path / f"folder{fmt.suffix}"
        folder.mkdir()
        with pytest.raises(RooftraceError) as exc:
            check_output(folder)
        assert "a folder, not a file" in one_line_naming(exc, folder)
        under_a_file = existing / f"out{fmt.suffix}"
        with pytest.raises(RooftraceError) as exc:
            write(under_a_file)
        one_line_naming(exc, under_a_file)

    def test_an_aborted_write_leaves_nothing(self, fmt, tmp_path):
        w = FeatureWriter(tmp_path / f"scene{fmt.suffix}", UTM18, TRANSFORM, chunk=1,
                          provenance=make_provenance(source="scene.tif", crs=UTM18))
        w.add(PIXEL_GEOMS, SCORES)
        w.abort()
        assert list(tmp_path.iterdir()) == []

    def test_the_suffix_chooses_it_and_an_unknown_one_lists_it(self, fmt, tmp_path):
        for suffix in fmt.suffixes:
            assert formats.output_format(tmp_path / f"x{suffix.upper()}") is fmt
        with pytest.raises(RooftraceError) as exc:
            check_output(tmp_path / "x.shp")
        assert fmt.suffix in one_line_naming(exc, tmp_path / "x.shp")


def test_the_registry_refuses_a_name_or_suffix_taken_and_lists_its_formats_for_messages():
    with pytest.raises(ValueError):
        formats.register(OutputFormat("gpkg2", (".gpkg",), "x", "GPKG", "ogr", lonlat=False, provenance=""))
    assert formats.formats_text() == ".gpkg (GeoPackage), .fgb (FlatGeobuf), .parquet (GeoParquet) or .geojson (longitude/latitude)"
    assert formats.out_names() == "OUT.gpkg, OUT.fgb, OUT.parquet or OUT.geojson"
    assert formats.lonlat_format() is formats.by_name("geojson")


def test_geojson_is_written_and_its_errors_named_without_pyogrio(tmp_path, monkeypatch):
    """GeoJSON is written by rooftrace itself, so a machine without pyogrio (the lent GPU's image) writes it, and a
    write error still names the output meant (pyogrio's own errors are caught only for the formats GDAL writes)."""
    import json
    import sys

    for name in ("pyogrio", "pyogrio.errors", "pyogrio.raw"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    out = write(tmp_path / "scene.geojson")
    data = json.loads(out.read_text())
    assert len(data["features"]) == len(PIXEL_GEOMS)
    w = FeatureWriter(tmp_path / "full.geojson", UTM18, TRANSFORM, provenance=make_provenance(source="scene.tif", crs=UTM18))

    class FullDisk:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    w._json = FullDisk()
    with pytest.raises(RooftraceError) as exc:
        w.add(PIXEL_GEOMS, SCORES)
    assert "No space left on device" in one_line_naming(exc, tmp_path / "full.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.geojson"]  # the temporary file removed
