"""`rooftrace prepare-chips`: web-map chips / georeferenced chips + one OSM GeoJSON -> BEGC-style splits.

Real data from the osm-oam pack ($ROOFTRACE_OSM_DIR, default ../shared/data/osm-oam beside the repo):
Banepa's 48 GeoTIFF chips (EPSG:4326, georeference in .aux.xml sidecars, XYZ-named) and Kampala's 147
PNG chips (name only, zoom 19, 20 and 21 over the same ground). The expected labels are made here by a
separate, plain path (pyproj + the chip's transform + a clip), never by rooftrace.prepare.chips.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from pathlib import Path

import mercantile
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from pyproj import Geod, Transformer

from rooftrace.cli import main
from rooftrace.core.errors import RooftraceError
from rooftrace.evaluation.metrics import evaluate_labels
from rooftrace.imagery.georef import parse_tile_name, tile_georef
from rooftrace.labels.coco import read_coco
from rooftrace.labels.records import ImageLabels, LabelSet, image_key
from rooftrace.prepare.blocks import assign_blocks
from rooftrace.prepare.chips import prepare_chips

REPO = Path(__file__).resolve().parents[2]


def osm_dir() -> Path:
    """The osm-oam pack: $ROOFTRACE_OSM_DIR, else ../shared/data/osm-oam beside the repo."""
    return Path(os.environ.get("ROOFTRACE_OSM_DIR", REPO.parent / "shared" / "data" / "osm-oam"))


@pytest.fixture(scope="module")
def osm() -> Path:
    d = osm_dir()
    if not (d / "banepa" / "labels.geojson").exists() or not (d / "kampala" / "labels.geojson").exists():
        pytest.skip(f"osm-oam pack not found at {d}; set ROOFTRACE_OSM_DIR")
    return d


def _link_chips(src: list[Path], dst: Path) -> Path:
    """A chips folder of symlinks (with the .aux.xml sidecars) to some chips of the pack."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src:
        (dst / p.name).symlink_to(p)
        aux = p.with_name(p.name + ".aux.xml")
        if aux.exists():
            (dst / aux.name).symlink_to(aux)
    return dst


def _source_polygons(labels: Path) -> np.ndarray:
    meta, _, wkb, _ = pyogrio.raw.read(labels)
    assert meta["crs"] == "EPSG:4326"
    return shapely.make_valid(shapely.from_wkb(wkb))


def _chip_place(path: Path, width_out: int, height_out: int) -> tuple[str, Affine]:
    """The CRS and the transform of the written image of a chip, made here from the chip alone."""
    with rasterio.open(path) as src:
        if src.crs is not None:
            crs, t, w, h = src.crs.to_string(), src.transform, src.width, src.height
        else:
            tile = parse_tile_name(path)
            b = mercantile.xy_bounds(tile)
            w, h = src.width, src.height
            crs, t = "EPSG:3857", Affine((b.right - b.left) / w, 0, b.left, 0, -(b.top - b.bottom) / h, b.top)
    return crs, t @ Affine.scale(w / width_out, h / height_out)


def _expected(split_json: Path, polygons: np.ndarray) -> tuple[LabelSet, dict]:
    """Ground truth for a written split, by the plain path: the source polygons reprojected into each
    chip, through the inverse of the written image's transform, clipped, pieces under 1 px² left out.
    Also returns key -> list of source building indices, in the order of its pieces."""
    data = json.loads(split_json.read_text())
    gt, ids = LabelSet(), {}
    for rec in data["images"]:
        crs, t = _chip_place(Path(rec["chip"]), rec["width"], rec["height"])
        to_chip = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
        inv = ~t
        key = image_key(rec["file_name"])
        img = gt.get_or_add(key)
        img.width, img.height = rec["width"], rec["height"]
        ids[key] = []
        box = shapely.box(0, 0, rec["width"], rec["height"])
        for n, g in enumerate(polygons):
            px = shapely.transform(g, lambda xy: np.column_stack(to_chip.transform(xy[:, 0], xy[:, 1])))
            px = shapely.transform(px, lambda xy: np.column_stack((inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c,
                                                                     inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f)))
            piece = shapely.intersection(px, box)
            if piece.area >= 1.0:
                gt.add(key, piece, f"building {n}")
                ids[key].append(n)
    return gt, ids


# ------------------------------------------------------------------------------------ name vs GeoTIFF


def test_tile_names_give_the_geotiff_bounds_of_every_banepa_chip(osm):
    """Both ways of locating a chip, pinned against each other on real data: the bounds from the name
    (XYZ, Web Mercator) equal the GeoTIFF's own (EPSG:4326, .aux.xml) to 1/100 of a pixel."""
    chips = sorted((osm / "banepa" / "chips").glob("*.tif")) + sorted((osm / "banepa" / "unlabelled").glob("*.tif"))
    assert len(chips) == 64
    to_ll = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    worst = 0.0
    for p in chips:
        with rasterio.open(p) as src:
            assert src.crs.to_epsg() == 4326
            t, w, h = src.transform, src.width, src.height
        tile = parse_tile_name(p)
        assert tile is not None and tile.z == 19
        named = tile_georef(tile, w, h)
        for c, r in [(0, 0), (w, 0), (0, h), (w, h), (w / 2, h / 2)]:
            lon, lat = to_ll.transform(*(named.transform @ (c, r)))
            c2, r2 = ~t @ (lon, lat)
            worst = max(worst, abs(c2 - c), abs(r2 - r))
    assert worst < 0.01, f"name and GeoTIFF disagree by {worst:.4f} px"


# ------------------------------------------------------------------------------------ round trips


def test_banepa_round_trip_gives_f1_one(osm, tmp_path):
    """labels -> split (one split, native pixels) -> evaluate against the source reprojected into each chip: F1 1.0."""
    out = tmp_path / "out"
    r = prepare_chips(osm / "banepa" / "chips", osm / "banepa" / "labels.geojson", out, val=0, test=0, progress=False)
    assert list(r.splits) == ["train"] and r.per_split["train"]["chips"] == 48
    pred = read_coco(out / "train" / "train.json")
    assert pred.report.problems == 0  # written on the 0.01 px grid: nothing to repair on reading
    gt, _ = _expected(out / "train" / "train.json", _source_polygons(osm / "banepa" / "labels.geojson"))
    assert gt.n_footprints == pred.n_footprints > 1400
    score = evaluate_labels(gt, pred, pixel=False)
    assert score.f1 == 1.0 and score.fp == score.fn == 0
    rec = json.loads((out / "train" / "train.json").read_text())["images"][0]
    assert rec["source"] == "banepa" and rec["crs"] == "EPSG:4326" and rec["tile"][2] == 19
    assert rec["gsd"] == pytest.approx(0.132, abs=0.002)


def test_banepa_split_by_area_at_0_3_m(osm, tmp_path):
    """--gsd 0.3 with val and test: every split's own COCO against the source gives F1 1.0 (buildings cut by a
    split border aside), no block is in two splits, and no building is on two sides."""
    out = tmp_path / "out"
    r = prepare_chips(osm / "banepa" / "chips", osm / "banepa" / "labels.geojson", out, gsd=0.3, val=0.2, test=0.2,
                      progress=False)
    polygons = _source_polygons(osm / "banepa" / "labels.geojson")
    assert set(r.splits) == {"train", "val", "test"}
    assert sum(d["chips"] for d in r.per_split.values()) == 48
    for s in ("val", "test"):
        assert 6 <= r.per_split[s]["chips"] <= 14  # 20% of 48, block by block
    blocks, in_split = defaultdict(set), defaultdict(set)
    per_split = {}
    for s, path in r.splits.items():
        pred = read_coco(path)
        gt, ids = _expected(path, polygons)
        per_split[s] = (gt, pred, ids)
        for img in pred:
            blocks[img.group].add(s)
            assert img.gsd == pytest.approx(0.3, rel=0.01)
            # which source building each written piece is (the expected piece it overlaps most)
            exp = gt[img.key].footprints
            for fp in img.footprints:
                k = int(np.argmax([fp.intersection(e).area for e in exp]))
                in_split[ids[img.key][k]].add(s)
    assert all(len(v) == 1 for v in blocks.values()), "a block in two splits"
    assert all(len(v) == 1 for v in in_split.values()), "a building on two sides of the split"
    # Buildings reaching chips of two splits are kept whole in one of them only; all others round-trip exactly.
    reach = defaultdict(set)
    for s, (gt, _, ids) in per_split.items():
        for key in ids:
            for n in ids[key]:
                reach[n].add(s)
    border = {n for n, v in reach.items() if len(v) > 1}
    assert 0 < len(border) == r.counts["split-border buildings"]
    for s, (gt, pred, ids) in per_split.items():
        for img in gt:
            keep = [fp for fp, n in zip(img.footprints, ids[img.key]) if n not in border]
            drop = [fp for fp, n in zip(img.footprints, ids[img.key]) if n in border]
            img.footprints = keep
            p = pred[img.key]
            p.footprints = [fp for fp in p.footprints if not any(fp.intersection(d).area > 0.5 * fp.area for d in drop)]
        score = evaluate_labels(gt, pred, pixel=False)
        assert score.f1 == 1.0 and score.fp == score.fn == 0, s


def test_balance_buildings_gives_the_held_out_blocks_their_share_of_the_buildings(osm, tmp_path):
    """prepare-chips --balance buildings (finetune's default) on Banepa: each held-out split holds about its
    share of the buildings as well as of the chips, and the manifest says how the split was balanced."""
    labels = osm / "banepa" / "labels.geojson"
    r = prepare_chips(osm / "banepa" / "chips", labels, tmp_path / "b", val=0.2, test=0.2, balance="buildings", progress=False)
    total = sum(d["annotations"] for d in r.per_split.values())
    for s in ("val", "test"):
        assert 6 <= r.per_split[s]["chips"] <= 14
        assert 0.12 <= r.per_split[s]["annotations"] / total <= 0.28, (s, r.per_split)
    assert json.loads((tmp_path / "b" / "prepare-chips.json").read_text())["options"]["balance"] == "buildings"
    with pytest.raises(RooftraceError, match="--balance"):
        prepare_chips(osm / "banepa" / "chips", labels, tmp_path / "c", balance="area", progress=False)


def test_kampala_three_zoom_levels_give_the_same_buildings(osm, tmp_path):
    """The chips of zoom 19, 20 and 21 (one place, ~0.3, 0.15 and 0.07 m a pixel), each prepared at its own
    pixel size, give the same buildings: same centroids and areas in map coordinates."""
    chips = sorted((osm / "kampala" / "chips").glob("*.png"))
    merged = {}
    for z in (19, 20, 21):
        folder = _link_chips([p for p in chips if p.stem.endswith(f"-{z}")], tmp_path / f"z{z}" / "chips")
        r = prepare_chips(folder, osm / "kampala" / "labels.geojson", tmp_path / f"z{z}" / "out", val=0, test=0,
                          empty="keep", progress=False)
        path = r.splits["train"]
        data = json.loads(path.read_text())
        ls = read_coco(path)
        gt, _ = _expected(path, _source_polygons(osm / "kampala" / "labels.geojson"))
        assert evaluate_labels(gt, ls, pixel=False).f1 == 1.0
        geoms = []
        for rec in data["images"]:
            assert rec["crs"] == "EPSG:3857" and rec["tile"][2] == z
            t = Affine(*rec["transform"])
            geoms += [shapely.transform(fp, lambda xy: np.column_stack(t @ (xy[:, 0], xy[:, 1])))
                      for fp in ls[image_key(rec["file_name"])].footprints]
        assert {round(i.gsd, 2) for i in ls} == {{19: 0.3, 20: 0.15, 21: 0.07}[z]}
        parts = shapely.get_parts(shapely.union_all(geoms, grid_size=1e-3))
        merged[z] = parts[shapely.area(parts) >= 1.0]  # m² (Web Mercator at 0.35° N: scale 1.00002)
    base = merged[19]
    assert len(base) > 100
    for z in (20, 21):
        assert len(merged[z]) == len(base)
        tree = shapely.STRtree(merged[z])
        for g in base:
            other = merged[z][tree.nearest(g.centroid)]
            assert g.centroid.distance(other.centroid) < 0.05
            assert other.area == pytest.approx(g.area, rel=0.02)


# ------------------------------------------------------------------------------------ resampling, layouts


def test_gsd_resamples_image_and_labels_together(osm, tmp_path):
    chips = sorted((osm / "banepa" / "chips").glob("*.tif"))[:2]
    folder = _link_chips(chips, tmp_path / "chips")
    r = prepare_chips(folder, osm / "banepa" / "labels.geojson", tmp_path / "out", gsd=0.3, val=0, test=0, progress=False)
    data = json.loads(r.splits["train"].read_text())
    geod = Geod(ellps="WGS84")
    for rec in data["images"]:
        with rasterio.open(rec["chip"]) as src:
            t, w, h = src.transform, src.width, src.height
        lon, lat = t @ (w / 2, h / 2)
        gx = geod.inv(lon, lat, lon + t.a, lat)[2]
        gy = geod.inv(lon, lat, lon, lat + t.e)[2]
        assert (rec["width"], rec["height"]) == (round(w * gx / 0.3), round(h * gy / 0.3))
        assert rec["gsd"] == pytest.approx(0.3, rel=0.005)
        with Image.open(r.out_dir / "train" / rec["file_name"]) as im:
            assert im.size == (rec["width"], rec["height"]) and im.mode == "RGB"


def test_zxy_folder_layout_and_tms_give_what_the_geotiff_gives(osm, tmp_path):
    """A Banepa chip copied as a plain PNG into <z>/<x>/<y>.png (and into a TMS layout) is located by its
    path and gets the same labels as the GeoTIFF itself, to the 0.01 px the COCO file keeps."""
    chip = osm / "banepa" / "chips" / "OAM-386693-220244-19.tif"
    with rasterio.open(chip) as src:
        rgb = src.read().transpose(1, 2, 0)
    tile = parse_tile_name(chip)
    xyz, tms = tmp_path / "xyz", tmp_path / "tms"
    for root, y in ((xyz, tile.y), (tms, 2**19 - 1 - tile.y)):
        (root / "19" / str(tile.x)).mkdir(parents=True)
        Image.fromarray(rgb).save(root / "19" / str(tile.x) / f"{y}.png")
    labels = osm / "banepa" / "labels.geojson"
    ref = prepare_chips(_link_chips([chip], tmp_path / "tif"), labels, tmp_path / "o1", val=0, test=0, progress=False)
    a = read_coco(ref.splits["train"])
    for root, flag, name in ((xyz, False, "o2"), (tms, True, "o3")):
        r = prepare_chips(root, labels, tmp_path / name, val=0, test=0, tms=flag, progress=False)
        b = read_coco(r.splits["train"])
        (ia,), (ib,) = list(a), list(b)
        assert ib.file_name == f"image/{tile.x}-{tile.y}-19.png"  # the XYZ tile, whatever the layout
        assert parse_tile_name(ib.file_name) == tile
        assert len(ia.footprints) == len(ib.footprints) > 20
        score = evaluate_labels(LabelSet(images={0: ImageLabels(0, ia.footprints, width=512, height=512)}),
                                LabelSet(images={0: ImageLabels(0, ib.footprints, width=512, height=512)}), iou=0.99)
        assert score.f1 == 1.0


def test_assign_blocks_meets_shares_and_is_seeded():
    sizes = {f"b{i}": n for i, n in enumerate([2, 4, 6, 8, 12, 16])}
    shares = {"train": 0.6, "val": 0.2, "test": 0.2}
    a = assign_blocks(sizes, shares, seed=0)
    assert a == assign_blocks(sizes, shares, seed=0)
    got = defaultdict(int)
    for b, s in a.items():
        got[s] += sizes[b]
    assert got["val"] == got["test"] == 10 and got["train"] == 28
    one = {f"b{i}": 1 for i in range(20)}
    assert {assign_blocks(one, shares, seed=s)["b0"] for s in range(10)} == {"train", "val", "test"}


# ------------------------------------------------------------------------------------ chips without buildings


def test_balancing_buildings_gives_each_held_out_split_its_share_of_the_buildings():
    """Half of the blocks are empty: split by chips alone, a held-out split can get few or no buildings;
    balanced by buildings too (finetune's default), each split gets its share of both."""
    sizes = {f"b{i:02d}": 4 for i in range(20)}
    buildings = {b: (10 if i % 2 else 0) for i, b in enumerate(sizes)}
    shares = {"train": 0.6, "val": 0.2, "test": 0.2}

    def counts(where: dict[str, str], split: str) -> tuple[int, int]:
        return sum(sizes[b] for b, s in where.items() if s == split), sum(buildings[b] for b, s in where.items() if s == split)

    worst_by_chips = 0
    for seed in range(8):
        by_chips = assign_blocks(sizes, shares, seed=seed)
        balanced = assign_blocks(sizes, shares, seed=seed, buildings=buildings)
        assert balanced == assign_blocks(sizes, shares, seed=seed, buildings=buildings)
        for split in ("val", "test"):
            chips, found = counts(balanced, split)
            assert chips == 16 and found == 20, (seed, split, chips, found)  # exactly its share of both
            worst_by_chips = max(worst_by_chips, abs(counts(by_chips, split)[1] - 20))
    assert worst_by_chips >= 10  # chips alone do leave a split far from its share of the buildings


def test_chips_without_labels_outside_the_mapped_area_are_left_out(osm, tmp_path):
    labelled = sorted((osm / "banepa" / "chips").glob("*.tif"))[:2]
    unlabelled = sorted((osm / "banepa" / "unlabelled").glob("*.tif"))[:2]
    folder = _link_chips(labelled + unlabelled, tmp_path / "chips")
    labels = osm / "banepa" / "labels.geojson"
    r = prepare_chips(folder, labels, tmp_path / "a", val=0, test=0, progress=False)
    assert r.per_split["train"]["chips"] == 2 and r.counts["empty-outside"] == 2
    assert "2 chips without buildings outside the mapped area left out" in r.summary()
    r = prepare_chips(folder, labels, tmp_path / "b", val=0, test=0, empty="keep", progress=False)
    assert r.per_split["train"] == {**r.per_split["train"], "chips": 4, "empty": 2}
    aoi = tmp_path / "aoi.geojson"  # an area of interest that holds the unlabelled chips: true negatives
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[85.50, 27.60], [85.55, 27.60], [85.55, 27.65], [85.50, 27.65], [85.50, 27.60]]]}}]}))
    r = prepare_chips(folder, labels, tmp_path / "c", val=0, test=0, aoi=aoi, progress=False)
    assert r.per_split["train"]["chips"] == 4


# ------------------------------------------------------------------------------------ bad input


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["prepare-chips", *argv])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


@pytest.fixture
def two_chips(osm, tmp_path) -> Path:
    return _link_chips(sorted((osm / "banepa" / "chips").glob("*.tif"))[:2], tmp_path / "chips")


def test_cli_writes_the_split_and_refuses_to_overwrite(osm, two_chips, tmp_path, capsys):
    labels = str(osm / "banepa" / "labels.geojson")
    out = tmp_path / "out"
    code, text = _cli(capsys, str(two_chips), "--labels", labels, "--out", str(out), "--val", "0", "--test", "0")
    assert code == 0 and "wrote 2 chips" in text
    assert sorted(p.name for p in (out / "train" / "image").iterdir()) == [f"{p.stem}.png" for p in sorted(two_chips.glob("*.tif"))]
    code, text = _cli(capsys, str(two_chips), "--labels", labels, "--out", str(out))
    assert code == 2 and "already holds a split" in text and "--force" in text and "Traceback" not in text
    code, text = _cli(capsys, str(two_chips), "--labels", labels, "--out", str(out), "--val", "0.5", "--test", "0",
                      "--block", "1", "--force")
    assert code == 0 and "1 images of an earlier run removed" in text
    for s in ("train", "val"):  # each split folder holds its own images only
        names = {p.name for p in (out / s / "image").iterdir()}
        assert names == {r["file_name"][6:] for r in json.loads((out / s / f"{s}.json").read_text())["images"]} and len(names) == 1


def _geojson(path: Path, coords, crs: str | None = None) -> Path:
    data = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                       "geometry": {"type": "Polygon", "coordinates": [coords]}}]}
    if crs:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


BAD = {
    "no-tile-no-georef": "no georeference",
    "labels-elsewhere": "no building overlaps any chip",
    "unknown-crs": "is not one pyproj knows",
    "projected-without-crs": "not longitude/latitude degrees",
    "gpkg-without-crs": "declares no CRS",
    "mixed-zooms": "pass --gsd",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_file(case, osm, two_chips, tmp_path, capsys):
    labels = osm / "banepa" / "labels.geojson"
    chips = two_chips
    named = None
    square = [[85.52, 27.63], [85.5201, 27.63], [85.5201, 27.6301], [85.52, 27.63]]
    if case == "no-tile-no-georef":
        chips = tmp_path / "photos"
        chips.mkdir()
        Image.new("RGB", (64, 64)).save(chips / "IMG_0001.png")
        named = "IMG_0001.png"
    elif case == "labels-elsewhere":
        labels = _geojson(tmp_path / "elsewhere.geojson", [[2.35, 48.85], [2.36, 48.85], [2.36, 48.86], [2.35, 48.85]])
    elif case == "unknown-crs":
        labels = _geojson(tmp_path / "odd.geojson", square, crs="urn:ogc:def:crs:EPSG::999999")
    elif case == "projected-without-crs":
        labels = _geojson(tmp_path / "utm.geojson", [[500000, 3e6], [500010, 3e6], [500010, 3000010], [500000, 3e6]])
    elif case == "gpkg-without-crs":
        labels = tmp_path / "nocrs.gpkg"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # pyogrio warns that the file will have no CRS: the point
            pyogrio.raw.write(labels, np.array([shapely.to_wkb(shapely.Polygon(square))], dtype=object), [], [],
                              geometry_type="Polygon", crs=None, driver="GPKG")
    elif case == "mixed-zooms":
        chips = _link_chips([p for p in sorted((osm / "kampala" / "chips").glob("*.png")) if p.stem.endswith(("-1046544-21", "-523272-20"))],
                            tmp_path / "mixed")
        labels = osm / "kampala" / "labels.geojson"
        named = "mixed"
    named = named or labels.name
    code, text = _cli(capsys, str(chips), "--labels", str(labels), "--out", str(tmp_path / "out"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in text, text
    assert named in lines[0] and BAD[case] in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(RooftraceError):
        prepare_chips(chips, labels, tmp_path / "out2", progress=False)


def test_labels_crs_overrides_a_file_without_one(osm, two_chips, tmp_path):
    """Labels in UTM without a CRS member, told with --labels-crs, land where the EPSG:4326 originals do."""
    polys = _source_polygons(osm / "banepa" / "labels.geojson")
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32645", always_xy=True)
    utm = shapely.transform(polys, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
    path = tmp_path / "utm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(g)} for g in utm]}))
    a = prepare_chips(two_chips, osm / "banepa" / "labels.geojson", tmp_path / "a", val=0, test=0, progress=False)
    b = prepare_chips(two_chips, path, tmp_path / "b", val=0, test=0, labels_crs="EPSG:32645", progress=False)
    la, lb = read_coco(a.splits["train"]), read_coco(b.splits["train"])
    assert evaluate_labels(la, lb, pixel=False, iou=0.99).f1 == 1.0
