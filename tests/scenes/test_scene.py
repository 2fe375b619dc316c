"""Georeferenced scenes: windowed inference, stitching, seams, CRS, bands, nodata, splits, shards."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import box

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.shapes import map_to_pixel, pixel_to_map
from rooftrace.imagery.raster import parse_bands
from rooftrace.imagery.windows import Grid, window_keep, window_starts
from rooftrace.instances.postprocess import postprocess
from rooftrace.labels.coco import read_coco
from rooftrace.labels.formats import read_labels
from rooftrace.labels.geojson import read_geojson
from rooftrace.prepare.scenes import prepare_scenes
from rooftrace.prepare.targets import make_targets
from rooftrace.scenes.batch import (
    list_scenes,
    parse_shard,
    predict_scenes,
    shard_scenes,
)
from rooftrace.scenes.predict import predict_scene
from tests.conftest import start_held, write_tiny_model

REPO = Path(__file__).resolve().parents[2]
#: A transform whose numbers are exact in binary, so pixel <-> map conversions are exact.
DYADIC = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)


def identity(x):
    """A perfect model of a raster whose pixels are probabilities x 255: returns them."""
    return x.float() / 255


def write_raster(path: Path, data: np.ndarray, transform: Affine = DYADIC, crs: str = "EPSG:32616", **profile) -> Path:
    """A GeoTIFF of ``data`` (bands, height, width)."""
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, **profile) as dst:
        dst.write(data)
    return path


def targets_raster(path: Path, footprints, shape: tuple[int, int], transform: Affine = DYADIC, crs: str = "EPSG:32616") -> Path:
    """Perfect targets (footprint, boundary, contact) of ``footprints`` as a 3-band 0/255 GeoTIFF."""
    return write_raster(path, make_targets(footprints, shape).stack() * np.uint8(255), transform, crs)


def read_pixel_polygons(path: Path, transform: Affine) -> np.ndarray:
    """Polygons of a vector file, back in the raster's pixel coordinates."""
    _, _, wkb, _ = pyogrio.raw.read(path)
    return np.asarray([map_to_pixel(g, transform) for g in shapely.from_wkb(wkb)], dtype=object)


def as_set(geoms) -> set[bytes]:
    return set(shapely.to_wkb(shapely.normalize(np.asarray(list(geoms), dtype=object))))


# ---------------------------------------------------------------------------------------------
# Windows and stitching


@pytest.mark.parametrize("size, tile, overlap", [(1000, 512, 64), (301, 64, 16), (233, 256, 32), (64, 64, 0), (700, 100, 30)])
def test_kept_ranges_tile_each_axis_exactly_and_lie_inside_their_windows(size, tile, overlap):
    starts = window_starts(size, tile, overlap)
    lo, hi = window_keep(starts, tile, size)
    t = min(tile, size)
    assert starts[0] == 0 and starts[-1] + t == size
    assert lo[0] == 0 and hi[-1] == size and np.array_equal(lo[1:], hi[:-1]) and (hi > lo).all()
    assert (lo >= starts).all() and (hi <= starts + t).all()
    if len(starts) > 2:  # a regular step crops (tile - stride) // 2 on each inner side
        assert lo[1] - starts[1] == overlap // 2


@pytest.mark.parametrize("shape, tile, overlap, batch", [((301, 233), 64, 16, 3), ((150, 233), 256, 32, 2)])
def test_identity_model_reproduces_the_input_exactly_after_stitching(tmp_path, shape, tile, overlap, batch):
    data = np.random.default_rng(0).integers(0, 256, (3, *shape), dtype=np.uint8)
    scene = write_raster(tmp_path / "noise.tif", data)
    result = predict_scene(scene, tmp_path / "out.gpkg", identity, tile=tile, overlap=overlap, batch_size=batch,
                           probabilities=tmp_path / "p.tif", progress=False)
    grid = Grid.make(shape[1], shape[0], tile, overlap)
    assert result.n_windows == grid.n_windows
    with rasterio.open(tmp_path / "p.tif") as src:
        assert np.array_equal(src.read(), data)
        assert src.transform == DYADIC and src.crs.to_epsg() == 32616


@pytest.fixture(scope="module")
def seam_scene(tmp_path_factory) -> tuple[Path, list]:
    """Buildings placed across window seams (tile 64, overlap 16: seams at x, y = 56, 104, 152) and
    across post-processing blocks (64 px, margin 8): a long one wider than block and margin, a pair
    that shares a wall across a seam and a block edge, one on a block corner."""
    footprints = [
        box(50, 20, 70, 40),  # across the first vertical seam
        box(10, 60, 190, 80),  # 180 px long: crosses every seam and three blocks
        box(96, 100, 128, 130), box(128, 100, 150, 130),  # touching pair, wall on a block edge
        box(120, 150, 140, 170),  # on the corner of four blocks
        box(3, 3, 9, 9),  # a small one near the scene's corner
    ]
    path = targets_raster(tmp_path_factory.mktemp("seam") / "seam.tif", footprints, (200, 230))
    return path, footprints


def test_a_building_across_a_seam_comes_out_once_and_whole(seam_scene, tmp_path):
    path, footprints = seam_scene
    result = predict_scene(path, tmp_path / "out.gpkg", identity, tile=64, overlap=16, block=64, margin=8, progress=False)
    assert result.n_buildings == len(footprints) and result.n_truncated == 0
    assert as_set(read_pixel_polygons(tmp_path / "out.gpkg", DYADIC)) == as_set(footprints)


def test_pixel_to_map_and_back_is_exact(seam_scene, tmp_path):
    path, footprints = seam_scene
    geoms = np.asarray(footprints, dtype=object)
    back = map_to_pixel(pixel_to_map(geoms, DYADIC), DYADIC)
    assert np.array_equal(shapely.get_coordinates(back), shapely.get_coordinates(geoms))
    austin = Affine(0.29999999999997673, 0.0, 617100.0, 0.0, -0.30000000000009314, 3344400.0)
    back = map_to_pixel(pixel_to_map(geoms, austin), austin)
    # Not dyadic: exact to the rounding of coordinates near 3.3e6 m (a few nanometres).
    assert np.abs(shapely.get_coordinates(back) - shapely.get_coordinates(geoms)).max() < 1e-8
    # Through the GeoPackage: every vertex comes back on a pixel corner.
    predict_scene(path, tmp_path / "out.gpkg", identity, progress=False)
    coords = shapely.get_coordinates(read_pixel_polygons(tmp_path / "out.gpkg", DYADIC))
    assert np.array_equal(coords, np.round(coords))


def test_crs_and_fields_survive_into_geopackage_and_geojson(seam_scene, tmp_path):
    path, footprints = seam_scene
    for name, crs in (("out.gpkg", "EPSG:32616"), ("out.geojson", "EPSG:4326")):  # GeoJSON: RFC 7946 longitude/latitude
        predict_scene(path, tmp_path / name, identity, progress=False)
        info = pyogrio.read_info(tmp_path / name)
        assert info["crs"] == crs and info["features"] == len(footprints) and info["geometry_type"] == "Polygon"
        assert list(info["fields"]) == ["score", "area_m2"]
        _, _, wkb, (scores, areas) = pyogrio.raw.read(tmp_path / name)
        # 0.5 m pixels on UTM's central meridian, whose scale factor is 0.9996: ground m² (3 decimals in GeoJSON)
        expected = sorted(fp.area * 0.25 / 0.9996**2 for fp in footprints)
        assert sorted(areas) == pytest.approx(expected, rel=1e-5, abs=1e-3)
        assert np.allclose(scores, 1.0)
        labels = read_labels(tmp_path / name)
        assert labels.crs == crs and labels.n_footprints == len(footprints)


# ---------------------------------------------------------------------------------------------
# Post-processing in blocks against one pass over the whole scene (the sample's Inria scene)


@pytest.fixture(scope="module")
def austin_oracle(sample, tmp_path_factory) -> Path:
    """Perfect targets of the Austin scene, rasterised from its GeoJSON, in the scene's georeference."""
    scene = sample / "scenes" / "inria_austin.tif"
    img = next(iter(read_geojson(sample / "scenes" / "inria_austin.geojson", raster=scene)))
    with rasterio.open(scene) as src:
        transform, crs = src.transform, src.crs
    return targets_raster(tmp_path_factory.mktemp("oracle") / "austin_targets.tif", img.footprints, (img.height, img.width),
                          transform, crs)


def test_blocks_give_exactly_the_buildings_of_one_pass_and_f1_1_on_austin(sample, austin_oracle, tmp_path, capsys):
    from rooftrace.cli import main

    with rasterio.open(austin_oracle) as src:
        probs, transform = src.read().astype(np.float32) / 255, src.transform
    whole = postprocess(probs)
    out = tmp_path / "austin.gpkg"
    result = predict_scene(austin_oracle, out, identity, tile=512, overlap=64, block=128, margin=8, progress=False)
    assert result.n_buildings == len(whole.footprints) == 134
    _, _, wkb, _ = pyogrio.raw.read(out)
    assert as_set(shapely.from_wkb(wkb)) == as_set(pixel_to_map(np.asarray(whole.footprints, dtype=object), transform))
    assert main(["evaluate", "--gt", str(sample / "scenes" / "inria_austin.geojson"), "--pred", str(out)]) == 0
    assert "1.0000 mean over 1 images" in capsys.readouterr().out


@pytest.mark.parametrize("threads", [2, 3])
def test_blocks_in_threads_yield_the_same_buildings_in_the_same_order(austin_oracle, threads):
    from rooftrace.scenes.blocks import postprocess_blocks

    def run(n: int) -> list:
        return [(part.geoms, part.scores, part.n_truncated)
                for part in postprocess_blocks(austin_oracle, block=128, margin=8, progress=False, threads=n)]

    one, many = run(1), run(threads)
    assert len(one) == len(many) > 10  # many blocks, several with buildings
    for (g1, s1, t1), (g2, s2, t2) in zip(one, many):
        assert len(g1) == len(g2) and all(a.equals_exact(b, 0) for a, b in zip(g1, g2))
        assert np.array_equal(s1, s2) and t1 == t2
    with pytest.raises(RooftraceError, match="threads 0"):
        next(postprocess_blocks(austin_oracle, threads=0))


def test_the_default_block_is_cut_so_that_every_thread_has_one_and_the_buildings_stay(austin_oracle):
    from rooftrace.scenes.blocks import DEFAULT_BLOCK, MIN_AUTO_BLOCK, block_cores, block_size, postprocess_blocks

    assert block_size(20_000, 20_000, 4) == DEFAULT_BLOCK  # plenty of blocks: the default
    assert block_size(2048, 2048, 1) == DEFAULT_BLOCK
    assert block_size(2048, 2048, 2) == block_size(2048, 2048, 4) == 1024  # 4 cores of 1,024
    assert block_size(2048, 2048, 8) == MIN_AUTO_BLOCK  # 16 cores
    assert block_size(300, 300, 4) == MIN_AUTO_BLOCK  # never below
    assert block_size(2048, 2048, 4, block=256) == 256  # a block given is kept

    def buildings(threads: int) -> tuple[int, set]:
        parts = list(postprocess_blocks(austin_oracle, progress=False, threads=threads))
        geoms = [g for part in parts for g in part.geoms]
        return len(parts), as_set(np.asarray(geoms, dtype=object))

    with rasterio.open(austin_oracle) as src:
        assert max(src.height, src.width) <= DEFAULT_BLOCK  # one default block
    n_one, one = buildings(1)
    n_two, two = buildings(2)
    assert n_one == 1 and n_two > 1 and len(one) == 134
    assert one == two
    # Cores cut by a caller at the default size keep it: the one core holds every building, in two threads too.
    with rasterio.open(austin_oracle) as src:
        cores = block_cores(src.height, src.width, DEFAULT_BLOCK)
    given = [g for part in postprocess_blocks(austin_oracle, progress=False, threads=2, cores=cores) for g in part.geoms]
    assert as_set(np.asarray(given, dtype=object)) == one


# ---------------------------------------------------------------------------------------------
# Bands and nodata


def test_single_band_uint16_needs_a_band_mapping_and_is_stretched_per_scene(sample, tmp_path):
    scene = sample / "scenes" / "atlanta_pan.tif"
    with pytest.raises(RooftraceError, match=r"atlanta_pan\.tif: has a single band \(uint16\).*--bands 1,1,1"):
        predict_scene(scene, tmp_path / "x.gpkg", identity, progress=False)
    assert not (tmp_path / "x.gpkg").exists()
    result = predict_scene(scene, tmp_path / "pan.gpkg", identity, bands="1,1,1", tile=256, overlap=32,
                           probabilities=tmp_path / "p.tif", progress=False)
    assert pyogrio.read_info(tmp_path / "pan.gpkg")["crs"] == "EPSG:32616"
    with rasterio.open(scene) as src:
        pan, valid = src.read(1).astype(np.float64), src.read_masks(1) > 0
    lo, hi = np.percentile(pan[valid], [2, 98])  # 900 px < the 2,048 px overview: all pixels
    expected = np.floor(np.clip((pan - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)
    expected[~valid] = 0
    with rasterio.open(tmp_path / "p.tif") as src:
        stitched = src.read()
    assert all(np.array_equal(stitched[c], expected) for c in range(3))  # one stretch for every window
    assert "stretched per band" in result.bands


def test_nodata_pixels_give_no_buildings(tmp_path):
    data = np.full((1, 96, 160), 1000, dtype=np.uint16)
    data[:, :, :64] = 0  # nodata: a building-everywhere model must find nothing there
    scene = write_raster(tmp_path / "half.tif", data, nodata=0)

    def everywhere(x):
        import torch

        return torch.ones(x.shape[0], 1, x.shape[2], x.shape[3])

    result = predict_scene(scene, tmp_path / "out.gpkg", everywhere, bands=[1, 1, 1], tile=32, overlap=0, progress=False)
    assert result.n_windows_nodata == 2 * 3  # the windows wholly in nodata are not run
    found = read_pixel_polygons(tmp_path / "out.gpkg", DYADIC)
    assert len(found) == 1 and shapely.equals(found[0], box(64, 0, 160, 96))
    # RGBA: the alpha band is the mask, and needs no band mapping.
    rgba = np.full((4, 64, 64), 255, dtype=np.uint8)
    rgba[3, :32] = 0
    scene = write_raster(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    predict_scene(scene, tmp_path / "rgba.gpkg", identity, tile=32, overlap=0, progress=False)
    found = read_pixel_polygons(tmp_path / "rgba.gpkg", DYADIC)
    assert len(found) == 1 and shapely.equals(found[0], box(0, 32, 64, 64))


# ---------------------------------------------------------------------------------------------
# Options


def test_options_are_checked_with_clear_errors(seam_scene, tmp_path):
    path, _ = seam_scene
    with pytest.raises(RooftraceError, match=r"out\.shp: unknown output format"):
        predict_scene(path, tmp_path / "out.shp", identity, progress=False)
    (tmp_path / "exists.gpkg").write_text("keep me")
    with pytest.raises(RooftraceError, match="exists.gpkg: already exists; pass --force"):
        predict_scene(path, tmp_path / "exists.gpkg", identity, progress=False)
    assert (tmp_path / "exists.gpkg").read_text() == "keep me"
    with pytest.raises(RooftraceError, match="--overlap 64: must be"):
        predict_scene(path, tmp_path / "o.gpkg", identity, tile=64, overlap=64, progress=False)
    with pytest.raises(RooftraceError, match="--tile 16"):
        predict_scene(path, tmp_path / "o.gpkg", identity, tile=16, progress=False)
    with pytest.raises(RooftraceError, match="names band 4"):
        predict_scene(path, tmp_path / "o.gpkg", identity, bands="1,2,4", progress=False)
    with pytest.raises(RooftraceError, match="expected three band numbers"):
        parse_bands("1,2")
    with pytest.raises(RooftraceError, match="the model returned shape"):
        predict_scene(path, tmp_path / "o.gpkg", lambda x: x.float()[:, :2] / 255, progress=False)
    with pytest.raises(RooftraceError, match="need 0 <= I < N"):
        parse_shard("2/2")
    assert parse_shard("1/4") == (1, 4) and not list(tmp_path.glob(".*tmp*"))


# ---------------------------------------------------------------------------------------------
# Training splits from scenes


def test_prepare_scenes_round_trip_on_austin(sample, tmp_path, capsys):
    from rooftrace.cli import main

    scene, labels = sample / "scenes" / "inria_austin.tif", sample / "scenes" / "inria_austin.geojson"
    split = tmp_path / "austin"
    result = prepare_scenes([(scene, labels)], split, tile=512, progress=False)
    assert (result.n_tiles, result.n_buildings, result.n_buildings_kept) == (4, 134, 134)
    ls = read_coco(split / "austin.json")
    assert ls.report.problems == 0 and ls.report.dropped == 0 and ls.n_footprints == result.n_pieces
    assert {img.source for img in ls} == {"inria_austin"}
    with rasterio.open(scene) as src:
        transform = src.transform
    original = read_geojson(labels, raster=scene)["inria_austin"].footprints
    pieces = []
    for img in ls:
        y0, x0 = (int(v) for v in str(img.key).rsplit("_", 2)[1:])
        with rasterio.open(split / img.file_name) as t:  # each tile carries its own georeference
            assert t.transform == transform @ Affine.translation(x0, y0) and t.crs.to_epsg() == 26914 and t.count == 3
        assert all(box(0, 0, 512, 512).covers(fp) for fp in img.footprints)  # clipped to the tile
        pieces += [shapely.transform(fp, lambda xy: xy + [x0, y0]) for fp in img.footprints]
    # Every building is accounted for: the pieces put back together are the buildings.
    diff = shapely.symmetric_difference(shapely.union_all(pieces), shapely.union_all(original))
    assert diff.area < 1e-3
    assert main(["prepare", str(split), "--out", str(tmp_path / "prepared"), "--previews", "0"]) == 0
    assert "prepared 4 images" in capsys.readouterr().out
    with pytest.raises(RooftraceError, match="already holds a split"):
        prepare_scenes([(scene, labels)], split, progress=False)
    assert prepare_scenes([(scene, labels)], split, tile=512, force=True, progress=False).stale_tiles == 0


# ---------------------------------------------------------------------------------------------
# A real model file on the sample scene


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained three-channel baseline U-Net (8 base channels), as rooftrace writes model files."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def test_predict_scene_with_a_model_file_writes_a_geopackage_in_the_scene_crs(sample, tiny_model, tmp_path):
    out = tmp_path / "austin.gpkg"
    result = predict_scene(sample / "scenes" / "inria_austin.tif", out, tiny_model, device="cpu", progress=False)
    assert result.n_windows == 9 and result.area_km2 == pytest.approx(0.09)
    info = pyogrio.read_info(out)
    assert info["crs"] == "EPSG:26914" and info["features"] == result.n_buildings


# ---------------------------------------------------------------------------------------------
# Sharding many scenes over workers


@pytest.fixture
def scene_folder(tmp_path, seam_scene) -> Path:
    folder = tmp_path / "scenes"
    folder.mkdir()
    for k in range(3):
        (folder / f"s{k}.tif").write_bytes(seam_scene[0].read_bytes())
    return folder


def test_shards_cover_every_scene_once_and_resume(scene_folder, tmp_path):
    scenes = list_scenes([scene_folder])
    shares = [shard_scenes(scenes, (i, 2)) for i in range(2)]
    assert sorted(shares[0] + shares[1]) == scenes and not set(shares[0]) & set(shares[1])
    out = tmp_path / "out"
    for i in range(2):
        done = predict_scenes([scene_folder], out, identity, shard=f"{i}/2", progress=False)
        assert [r.scene for r in done.results] == shares[i] and not done.failed
    assert sorted(p.name for p in out.iterdir()) == ["s0.gpkg", "s1.gpkg", "s2.gpkg"]
    again = predict_scenes([scene_folder], out, identity, shard="0/2", progress=False)
    assert not again.results and again.skipped == shares[0]  # a rerun resumes: finished scenes are skipped
    (tmp_path / "list.txt").write_text("scenes/s2.tif  # comment\n\n")
    assert list_scenes([tmp_path / "list.txt"]) == [scenes[2]]


@pytest.mark.slow
def test_two_processes_share_the_scenes(scene_folder, tiny_model, tmp_path):
    """What one process per GPU does (CUDA_VISIBLE_DEVICES=i ... --shard i/N), here two on the CPU."""
    code = textwrap.dedent("""
        import sys
        from rooftrace.scenes.batch import predict_scenes
        r = predict_scenes([sys.argv[1]], sys.argv[2], sys.argv[3], shard=sys.argv[4], device="cpu", progress=False)
        sys.exit(1 if r.failed else 0)
    """)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(scene_folder), str(out), str(tiny_model), f"{i}/2"])
             for i in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert sorted(p.name for p in out.iterdir()) == ["s0.gpkg", "s1.gpkg", "s2.gpkg"]


# ---------------------------------------------------------------------------------------------
# Work not thrown away: outputs checked first, temporary probabilities beside the output


def test_an_output_that_cannot_be_written_stops_before_the_model_is_loaded_or_the_scene_read(seam_scene, tmp_path, monkeypatch):
    """--out inside a regular file (or a read-only folder) is found out before any inference, for one scene
    and for a folder of scenes, naming the output."""
    import rooftrace.scenes.predict as scene_mod

    def no(*args, **kwargs):
        raise AssertionError("the model was loaded or the scene read before the output was checked")

    monkeypatch.setattr(scene_mod, "make_runner", no)
    monkeypatch.setattr(scene_mod, "Scene", no)
    (tmp_path / "afile").write_text("a file, not a folder")
    out = tmp_path / "afile" / "out.gpkg"
    with pytest.raises(RooftraceError, match=r"afile/out\.gpkg: cannot write it \(.*afile is a file, not a folder\)"):
        predict_scene(seam_scene[0], out, tmp_path / "model.safetensors", progress=False)
    with pytest.raises(RooftraceError, match=r"afile/outs: cannot write it \(Not a directory\)"):
        predict_scenes([seam_scene[0]], tmp_path / "afile" / "outs", tmp_path / "model.safetensors", progress=False)
    with pytest.raises(RooftraceError, match=r"afile/p\.tif: cannot write it"):
        predict_scene(seam_scene[0], tmp_path / "ok.gpkg", identity, probabilities=tmp_path / "afile" / "p.tif", progress=False)
    assert not (tmp_path / "ok.gpkg").exists()


def test_a_killed_run_leaves_its_probabilities_beside_the_output_and_the_next_run_removes_them(seam_scene, tmp_path):
    """The stitched probabilities go to a hidden ``.<out>.probs.tif`` beside the output, not the system temp
    folder: a SIGKILLed predict-scene leaves nothing in $TMPDIR, and the next run of that output removes it."""
    import os
    import signal

    systmp, outs = tmp_path / "systmp", tmp_path / "outs"
    systmp.mkdir()
    code = f"""
        from rooftrace.scenes.predict import predict_scene
        calls = []
        def slow(x):
            calls.append(1)
            if len(calls) == 3:  # midway: the probabilities raster is being written
                held()
            return x.float() / 255
        predict_scene({str(seam_scene[0])!r}, {str(outs / 'out.gpkg')!r}, slow, tile=64, overlap=16, batch_size=1, progress=False)
    """
    env = {**os.environ, "TMPDIR": str(systmp), "OMP_NUM_THREADS": "1"}
    proc = start_held(code, env=env)  # returns once the child is held at its third window
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(systmp.iterdir()) == []
    left = sorted(p.name for p in outs.iterdir())
    assert ".out.gpkg.probs.tif" in left and "out.gpkg" not in left
    result = predict_scene(seam_scene[0], outs / "out.gpkg", identity, tile=64, overlap=16, block=64, margin=8, progress=False)
    assert result.n_buildings == len(seam_scene[1])
    assert [p.name for p in outs.iterdir() if p.name.startswith(".out.gpkg.probs")] == []
    assert "out.gpkg" in [p.name for p in outs.iterdir()]


def test_blocks_count_each_region_the_score_filter_drops_once(sample, tmp_path):
    """Two thirds of Austin's buildings drawn faint (footprint 0.75): post-processed in many small blocks, whose
    margins overlap and cut buildings, the scene counts each faint building once, as one pass over the whole map
    does, keeps exactly the sure ones, and says the model is unsure of the imagery."""
    from rooftrace.instances.postprocess import PostprocessSettings

    scene = sample / "scenes" / "inria_austin.tif"
    img = next(iter(read_geojson(sample / "scenes" / "inria_austin.geojson", raster=scene)))
    with rasterio.open(scene) as src:
        transform, crs = src.transform, src.crs
    shape = (img.height, img.width)
    data = make_targets(img.footprints, shape).stack() * np.uint8(255)
    faint = [fp for k, fp in enumerate(img.footprints) if k % 3]
    faint_px = make_targets(faint, shape).stack()[0].astype(bool)
    data[0][faint_px] = 191  # 0.749 as a probability
    raster = write_raster(tmp_path / "faint.tif", data, transform, crs)
    settings = PostprocessSettings(min_score=0.8)
    whole = postprocess(data.astype(np.float32) / 255, settings=settings)
    assert whole.n_below_score == len(faint) and len(whole) == len(img.footprints) - len(faint)
    result = predict_scene(raster, tmp_path / "faint.gpkg", identity, tile=512, overlap=64, block=128, margin=8,
                           settings=settings, progress=False)
    assert result.n_below_score == len(faint) and result.n_buildings == len(whole)
    line = [n for n in result.notes if "score filter" in n]
    assert len(line) == 1 and f"dropped {len(faint)} of the {len(img.footprints)} buildings found" in line[0]
    # The same buildings, all sure: nothing dropped, nothing said.
    sure_raster = targets_raster(tmp_path / "sure.tif", img.footprints, shape, transform, crs)
    sure = predict_scene(sure_raster, tmp_path / "sure.gpkg", identity, block=128, margin=8, settings=settings, progress=False)
    assert sure.n_below_score == 0 and not any("score filter" in n for n in sure.notes)
