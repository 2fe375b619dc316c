"""Readers and writers: exact geometry, round trips through every format, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from shapely.geometry import Polygon, box

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.polygons import mask_to_footprints
from rooftrace.labels.begc import (
    format_coordinates,
    parse_coordinates,
    read_begc_csv,
    write_begc_csv,
)
from rooftrace.labels.coco import read_coco, write_coco, write_coco_results
from rooftrace.labels.formats import align_keys, read_labels
from rooftrace.labels.geojson import read_geojson, write_geojson
from rooftrace.labels.masks import read_mask_folder
from rooftrace.labels.records import LabelSet, image_key
from rooftrace.labels.spacenet import read_spacenet_csv, write_spacenet_csv


def _set(images: dict) -> LabelSet:
    ls = LabelSet()
    for key, polys in images.items():
        ls.get_or_add(key).width = ls.get_or_add(key).height = 64
        for p in polys:
            ls.add(key, p, "test")
    return ls


def _same(a: LabelSet, b: LabelSet) -> None:
    assert set(a.images) == set(b.images)
    for key in a.images:
        fa, fb = a[key].footprints, b[key].footprints
        assert len(fa) == len(fb), key
        for p, q in zip(fa, fb):
            assert p.symmetric_difference(q).area < 1e-6, key


# --- exact geometry ---------------------------------------------------------------------------

def test_3x3_square_mask_gives_exactly_its_polygon_and_9_pixels():
    m = np.zeros((10, 10), bool)
    m[2:5, 3:6] = True  # rows 2..4, columns 3..5
    (fp,) = mask_to_footprints(m)
    assert fp.equals(box(3, 2, 6, 5))
    assert fp.area == 9
    from rooftrace.prepare.targets import rasterize_footprints

    assert np.array_equal(rasterize_footprints([fp], (10, 10)).astype(bool), m)


def test_diagonal_pixels_are_two_instances_with_4_connectivity():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = True
    assert len(mask_to_footprints(m, connectivity=4)) == 2
    assert len(mask_to_footprints(m, connectivity=8)) == 1


def test_image_key_is_integer_for_numeric_stems():
    assert image_key("image/0007.tif") == 7
    assert image_key("inria_austin1_4.tif") == "inria_austin1_4"


# --- BEGC2024 CSV -----------------------------------------------------------------------------

def test_begc_csv_rows_sorted_open_rings_and_empty_images(tmp_path):
    ls = _set({10: [box(0, 0, 2, 3)], 2: [], 7: [Polygon([(1.25, 1), (4.5, 1), (4.5, 5)])]})
    path = write_begc_csv(ls, tmp_path / "sub.csv", image_keys=[0, 2, 7, 10])
    lines = path.read_text().splitlines()
    assert lines[0] == "ImageID,Coordinates"
    assert [l.split(",")[0] for l in lines[1:]] == ["0", "2", "7", "10"]
    assert lines[1] == "0,[]" and lines[2] == "2,[]"
    rings = parse_coordinates(lines[3].split(",", 1)[1].strip('"'))
    assert len(rings) == 1 and len(rings[0]) == 3  # open ring: last point not repeated
    assert (1.25, 1.0) in rings[0]


def test_begc_csv_round_trip(tmp_path):
    ls = _set({0: [box(0, 0, 2, 3), box(5, 5, 9, 6)], 1: [], 3: [Polygon([(1, 1), (4, 1), (4, 5)])]})
    _same(ls, read_begc_csv(write_begc_csv(ls, tmp_path / "s.csv")))


def test_begc_csv_bad_rows_are_reported_with_line_numbers(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text('ImageID,Coordinates\n0,"[[(0, 0), (2, 0), (2, 2)]]"\n1,"[[(0, 0), (1"\n2,"[[(0, 0), (1, 1)]]"\n0,"[[(5, 5), (6, 5), (6, 6)]]"\n')
    ls = read_begc_csv(p)
    msgs = "\n".join(ls.report.messages)
    assert "line 3" in msgs and "not a list of rings" in msgs
    assert "line 4" in msgs and "fewer than 3 points" in msgs
    assert "line 5" in msgs and "appears again" in msgs
    assert len(ls[0].footprints) == 2 and ls[1].footprints == [] and ls[2].footprints == []


def test_begc_csv_wrong_header_is_a_clear_error(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,polygon\n1,[]\n")
    with pytest.raises(RooftraceError, match=r"x\.csv: header .*expected ImageID,Coordinates"):
        read_begc_csv(p)


def test_coordinates_are_never_evaluated_as_code():
    with pytest.raises(ValueError):
        parse_coordinates("__import__('os').system('true')")


@pytest.mark.parametrize("cell", ["{[1, 2]: [[(0.5, 0), (0.5, 0.5), (0, 0.5), (0, 0)]]}", "{[(0, 0), (1, 0), (1, 1)]}"])
def test_a_literal_python_cannot_build_is_bad_coordinates_not_a_crash(cell, tmp_path):
    # found by test_properties' hypothesis search: ast.literal_eval raised TypeError (a list as a dict key or in a set)
    with pytest.raises(ValueError, match="not a list of rings"):
        parse_coordinates(cell)
    p = tmp_path / "x.csv"
    p.write_text(f'ImageID,Coordinates\n1,"{cell}"\n')
    ls = read_begc_csv(p)  # the row is skipped and reported, the file still read
    assert ls.n_footprints == 0 and sum(ls.report.counts.values()) >= 1
    assert any("not a list of rings" in m for m in ls.report.messages), ls.report.messages


ring_pts = st.lists(st.tuples(st.integers(-50, 600), st.integers(-50, 600)), min_size=3, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(ring_pts, max_size=5))
def test_coordinates_format_parse_round_trip(rings):
    arrs = [np.asarray(r, dtype=float) for r in rings]
    back = parse_coordinates(format_coordinates(arrs))
    assert [list(map(tuple, a)) for a in arrs] == back


# --- SpaceNet CSV -----------------------------------------------------------------------------

def test_spacenet_csv_z_values_and_empty_images(tmp_path):
    p = tmp_path / "sn.csv"
    p.write_text(
        "ImageId,BuildingId,PolygonWKT_Pix,Confidence\n"
        'AOI_1_img1,0,"POLYGON Z ((0 0 0, 4 0 0, 4 4 0, 0 4 0, 0 0 0))",0.9\n'
        'AOI_1_img2,-1,POLYGON EMPTY,1\n'
    )
    ls = read_spacenet_csv(p)
    assert ls["AOI_1_img1"].footprints[0].equals(box(0, 0, 4, 4))
    assert not ls["AOI_1_img1"].footprints[0].has_z
    assert ls["AOI_1_img1"].scores == [0.9]
    assert ls["AOI_1_img2"].footprints == []
    _same(ls, read_spacenet_csv(write_spacenet_csv(ls, tmp_path / "out.csv")))


# --- COCO -------------------------------------------------------------------------------------

def _coco(tmp_path: Path, anns: list, images=None) -> Path:
    (tmp_path / "image").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "image" / "0001.png")
    data = {"images": images or [{"id": 5, "file_name": "image/0001.png", "width": 16, "height": 16}], "annotations": anns}
    p = tmp_path / "split.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_repairs_bowtie_and_drops_short_rings_with_summary(tmp_path):
    anns = [
        {"id": 1, "image_id": 5, "category_id": 3, "segmentation": [[0, 0, 4, 4, 4, 0, 0, 4]]},  # bow-tie
        {"id": 2, "image_id": 5, "category_id": 0, "segmentation": [[1, 1, 2, 2]]},  # 2 points
        {"id": 3, "image_id": 99, "category_id": 0, "segmentation": [[0, 0, 1, 0, 1, 1]]},  # unknown image
        {"id": 4, "image_id": 5, "category_id": 0, "segmentation": [[8, 8, 12, 8, 12, 12, 8, 12]]},
    ]
    ls = read_coco(_coco(tmp_path, anns))
    img = ls[1]  # keyed by the file stem 0001 -> 1
    assert img.record_id == 5 and (img.width, img.height) == (16, 16)
    assert len(img.footprints) == 2
    assert all(fp.is_valid for fp in img.footprints)
    assert ls.report.repaired == 1 and ls.report.dropped == 1
    assert ls.report.counts["unknown image ids"] == 1
    s = ls.report.summary()
    assert "1 repaired" in s and "annotations[2] (id 3): unknown image_id 99" in s


def test_coco_rle_is_decoded(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((16, 16), np.uint8, order="F")
    m[2:6, 3:7] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    ls = read_coco(_coco(tmp_path, [{"image_id": 5, "category_id": 0, "segmentation": rle}]))
    assert ls[1].footprints[0].equals(box(3, 2, 7, 6))


def test_coco_reports_missing_image_and_size_mismatch(tmp_path):
    images = [
        {"id": 1, "file_name": "image/0001.png", "width": 20, "height": 16},
        {"id": 2, "file_name": "image/0002.png", "width": 16, "height": 16},
    ]
    ls = read_coco(_coco(tmp_path, [], images=images))
    assert ls.report.counts["size mismatches"] == 1 and ls[1].width == 16
    assert ls.report.counts["missing image files"] == 1
    assert "0002.png is missing" in ls.report.summary()


def test_coco_not_json_is_a_clear_error(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(RooftraceError, match=r"t\.json: not valid JSON \(line 1"):
        read_coco(p)


def test_coco_and_results_round_trip(tmp_path):
    ls = _set({3: [box(0, 0, 2, 3), box(5, 5, 9, 6)], 4: [Polygon([(1, 1), (4, 1), (4, 5)])]})
    back = read_coco(write_coco(ls, tmp_path / "gt.json"), check_images=False)
    _same(ls, back)
    res = read_labels(write_coco_results(ls, tmp_path / "res.json"))
    _same(ls, align_keys(back, res))


# --- GeoJSON with its GeoTIFF -----------------------------------------------------------------

def _geotiff(path: Path, crs="EPSG:32614", transform=Affine(0.5, 0, 600000, 0, -0.5, 3300000), size=(20, 30)):
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=size[0], height=size[1], count=3, dtype="uint8", crs=crs, transform=transform) as dst:
        dst.write(np.zeros((3, size[1], size[0]), np.uint8))
    return transform


def test_geojson_map_to_pixel_is_exact_and_reprojects(tmp_path):
    from pyproj import Transformer

    t = _geotiff(tmp_path / "scene.tif")
    px = box(2, 3, 6, 8)
    from rooftrace.geometry.shapes import map_to_pixel, pixel_to_map

    m = pixel_to_map(px, t)
    assert map_to_pixel(m, t).equals(px)
    fc = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32614"}},
          "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(m)}]}
    (tmp_path / "l.geojson").write_text(json.dumps(fc))
    ls = read_geojson(tmp_path / "l.geojson", raster=tmp_path / "scene.tif")
    assert list(ls.images) == ["scene"] and ls["scene"].width == 20
    assert ls["scene"].footprints[0].symmetric_difference(px).area < 1e-9
    # The same polygon in WGS84 (the GeoJSON default CRS) comes back to the same pixels.
    tr = Transformer.from_crs("EPSG:32614", "EPSG:4326", always_xy=True)
    ll = shapely.transform(m, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(ll)}]}
    (tmp_path / "ll.geojson").write_text(json.dumps(fc))
    ls = read_geojson(tmp_path / "ll.geojson", raster=tmp_path / "scene.tif")
    assert ls["scene"].footprints[0].symmetric_difference(px).area < 1e-3
    assert "reprojected" in ls.report.summary()


def test_geojson_pixel_and_map_round_trips(tmp_path):
    ls = _set({0: [box(0, 0, 2, 3)], "a": [], 2: [box(1, 1, 5, 4)]})
    back = read_geojson(write_geojson(ls, tmp_path / "p.geojson"))
    _same(ls, back)
    assert back[0].width == 64
    t = _geotiff(tmp_path / "s.tif")
    scene = _set({"s": [box(1, 2, 5, 7), box(8, 8, 10, 12)]})
    p = write_geojson(scene, tmp_path / "m.geojson", transform=t, crs="EPSG:32614")
    _same(scene, read_geojson(p, raster=tmp_path / "s.tif"))
    assert read_geojson(p).crs == "EPSG:32614"


@pytest.mark.parametrize("geom", [
    box(1, 2, 5, 7),
    Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4), (2, 4)], [(6, 6), (8, 6), (8, 8)]]),
    shapely.MultiPolygon([box(0, 0, 1, 1), Polygon([(3, 3), (9, 3), (9, 9), (3, 9)], [[(4, 4), (5, 4), (5, 5)]])]),
    Polygon(),
    Polygon([(0, 0, 1), (1, 0, 2), (1, 1, 3)]),
    shapely.Point(1.5, 2.25),
])
def test_geojson_texts_write_what_shapely_mapping_writes(geom):
    from rooftrace.geometry.shapes import geojson_features, geojson_texts

    (text,) = geojson_texts([geom])
    assert json.loads(text) == json.loads(json.dumps(shapely.geometry.mapping(geom)))  # lists for tuples, number for number
    (feature,) = geojson_features([geom], [{"score": 0.5}])
    assert json.loads(feature) == {"type": "Feature", "properties": {"score": 0.5}, "geometry": json.loads(text)}


def test_geojson_texts_keep_every_double_and_write_none_as_null():
    from rooftrace.geometry.shapes import geojson_features, geojson_texts

    rng = np.random.default_rng(0)
    for scale in (1e-9, 1.0, 1e3, 1e7):
        xy = rng.random((400, 2)) * scale
        polys = shapely.polygons(np.stack([xy[0::4], xy[1::4], xy[2::4], xy[3::4], xy[0::4]], axis=1))
        back = np.array([json.loads(t)["coordinates"][0] for t in geojson_texts(polys)])
        assert (back == shapely.get_coordinates(polys).reshape(len(polys), 5, 2)).all()  # exact, not close
    assert geojson_texts([None, box(0, 0, 1, 1)])[0] == "null" and geojson_texts([]) == []
    assert json.loads(geojson_features([None], ['{"a": 1}'])[0]) == {"type": "Feature", "properties": {"a": 1}, "geometry": None}


def test_written_geojson_holds_what_json_dumps_of_the_collection_held(tmp_path):
    """The collection as the writer built it before its features came from GEOS's writer: the same members in the
    same order, each feature's properties and geometry (``mapping``'s) equal."""
    a = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(2, 2), (4, 2), (4, 4), (2, 4)]])
    ls = _set({"t1": [a, box(20, 20, 23.5, 24.25)], "t2": []})
    ls["t1"].scores = [0.91234, 0.5]
    data = json.loads((write_geojson(ls, tmp_path / "p.geojson")).read_text())
    assert list(data) == ["type", "name", "rooftrace", "features"]
    feats = [f for f in data["features"] if f["geometry"] is not None]
    assert [f["geometry"] for f in feats] == [json.loads(json.dumps(shapely.geometry.mapping(g))) for g in ls["t1"].footprints]
    assert [f["properties"]["score"] for f in feats] == [0.9123, 0.5]
    assert [f["properties"]["image_id"] for f in data["features"]] == ["t1", "t1", "t2"]  # t2 listed without buildings


def test_geojson_in_degrees_keeps_its_precision(tmp_path):
    poly = box(-97.7431, 30.2672, -97.7430, 30.2673)  # about 10 m in Austin, in degrees
    ls = LabelSet(crs="EPSG:4326")
    ls.add("scene", poly, "test")
    back = read_geojson(write_geojson(ls, tmp_path / "deg.geojson"))
    assert back.crs == "EPSG:4326"
    assert back["deg"].footprints[0].symmetric_difference(poly).area < 1e-14


def test_sample_scene_labels_land_on_pixel_edges(sample):
    ls = read_labels(sample / "scenes" / "inria_austin.geojson", raster=sample / "scenes" / "inria_austin.tif")
    img = ls["inria_austin"]
    assert (img.width, img.height) == (1000, 1000) and len(img.footprints) == 134
    xy = np.concatenate([shapely.get_coordinates(f) for f in img.footprints])
    assert np.allclose(xy, np.round(xy), atol=1e-6)  # mask-derived labels: integer pixel corners


# --- masks ------------------------------------------------------------------------------------

def test_mask_folder_instances_and_pairing(tmp_path):
    (tmp_path / "masks").mkdir()
    (tmp_path / "images").mkdir()
    m = np.zeros((12, 12), np.uint8)
    m[1:4, 1:4] = 255
    m[1:4, 5:9] = 255  # one empty column apart: two instances
    Image.fromarray(m).save(tmp_path / "masks" / "0003.png")
    for n in (3, 4):
        Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "images" / f"{n:04d}.png")
    ls = read_mask_folder(tmp_path / "masks", images=tmp_path / "images")
    assert [f.area for f in ls[3].footprints] == [9, 12]
    assert ls[4].footprints == [] and ls.report.counts["images without mask"] == 1


def test_unknown_format_and_missing_path_are_clear(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(RooftraceError, match="unknown label format"):
        read_labels(tmp_path / "x.txt")
    with pytest.raises(RooftraceError, match="no such file"):
        read_labels(tmp_path / "nope.json")


def test_sample_test_labels_round_trip_through_every_format(sample, tmp_path):
    gt = read_coco(sample / "test" / "test.json")
    assert gt.report.problems == 0 and gt.n_footprints == 353
    _same(gt, read_labels(write_begc_csv(gt, tmp_path / "a.csv")))
    _same(gt, read_labels(write_spacenet_csv(gt, tmp_path / "b.csv")))
    _same(gt, read_labels(write_geojson(gt, tmp_path / "c.geojson")))
    _same(gt, read_coco(write_coco(gt, tmp_path / "d.json"), check_images=False))
