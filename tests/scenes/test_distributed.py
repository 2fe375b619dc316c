"""Scenes on a Dask cluster: same buildings as one process, big scenes split exactly, one merged layer, faults, reruns."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import box

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from rooftrace.cli import main  # noqa: E402
from rooftrace.gis.provenance import read_provenance
from rooftrace.prepare.targets import make_targets  # noqa: E402
from rooftrace.scenes.batch import list_scenes, predict_scenes
from rooftrace.scenes.distributed import predict_scenes_dask, scene_done
from rooftrace.scenes.predict import predict_scene
from rooftrace.scenes.tasks import load_model_file

REPO = Path(__file__).resolve().parents[2]
DYADIC = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)

# Test-module functions (models) go to the workers by value: the worker processes need not import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def identity(x):
    """A perfect model of a raster whose pixels are probabilities x 255."""
    return x.float() / 255


def kill_once(marker: Path):
    """The identity model, but its first call anywhere kills its own worker process (SIGKILL): a worker that dies."""

    def model(x):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return x.float() / 255

    return model


def write_raster(path: Path, data: np.ndarray, transform: Affine = DYADIC, crs: str = "EPSG:32616") -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform) as dst:
        dst.write(data)
    return path


def write_sharp_model(path: Path) -> Path:
    """The tiny seeded baseline U-Net (conftest's) with its last layer scaled x400, so that it finds
    thousands of 'buildings' on a real scene: an untrained one predicts 0.5 everywhere and finds none."""
    import torch

    from rooftrace.config import load_config
    from rooftrace.models.architectures import build_model
    from rooftrace.models.files import save_model

    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline-unet.yaml", ["model.base_channels=8", "data.channels=[footprint, boundary, contact]",
                                                                  "loss.channel_weights=[1, 0.5, 0.5]"])
    model = build_model(cfg.model, 3).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(400.0)
    return save_model(path, model, cfg)


def features(path: Path) -> tuple[list[bytes], np.ndarray]:
    """A vector file's geometries (WKB, in file order) and scores."""
    _, _, wkb, fields = pyogrio.raw.read(path)
    return list(wkb), np.asarray(fields[0])


@pytest.fixture(scope="module")
def client():
    """Two worker processes with one thread each, as the CLI's --dask-workers 2 makes."""
    from rooftrace.scenes.distributed import keep_environ

    with keep_environ():  # Dask's nanny would leave OMP_NUM_THREADS=1 in this process (and in later tests' subprocesses)
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        c = distributed.Client(cluster)
        yield c
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory) -> Path:
    return write_sharp_model(tmp_path_factory.mktemp("model") / "sharp.safetensors")


@pytest.fixture(scope="module")
def scene_list(sample, tmp_path_factory) -> list[Path]:
    """Two small made scenes (one in another UTM zone) and the sample's two scenes."""
    d = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    made = [write_raster(d / "made_a.tif", rng.integers(0, 256, (3, 200, 260), dtype=np.uint8)),
            write_raster(d / "made_b.tif", rng.integers(0, 256, (3, 180, 150), dtype=np.uint8), crs="EPSG:32617")]
    return made + [sample / "scenes" / "inria_austin.tif", sample / "scenes" / "atlanta_pan.tif"]


def test_dask_gives_the_buildings_of_one_process_and_one_merged_layer(client, sharp_model, scene_list, tmp_path):
    kw = dict(bands="1,1,1", device="cpu", tile=256, overlap=32)  # 1,1,1: the Atlanta scene is one uint16 band
    done = predict_scenes_dask(scene_list, tmp_path / "dask", sharp_model, client=client, **kw)
    one = predict_scenes(scene_list, tmp_path / "one", sharp_model, progress=False, **kw)
    assert not done.failed and not one.failed and len(done.results) == 4 and not done.split
    total = 0
    for p in scene_list:
        a, b = features(tmp_path / "dask" / "scenes" / f"{p.stem}.gpkg"), features(tmp_path / "one" / f"{p.stem}.gpkg")
        assert a[0] == b[0] and np.array_equal(a[1], b[1])
        total += len(a[0])
    assert total > 1000  # the sharp model finds thousands: the comparison is not of empty files
    # Each worker loaded the model once, for all the scenes it ran: its model cache never loaded a file twice
    # (every load still cached) and the scenes after a worker's first reused the model it had loaded.
    caches = client.run(lambda: load_model_file.cache_info())
    assert caches and all(c.misses == c.currsize for c in caches.values())
    assert sum(c.hits + c.misses for c in caches.values()) >= len(scene_list) > sum(c.misses for c in caches.values())
    # One layer, in the first scene's CRS, the scene's name on every building, other CRSs reprojected.
    merged = tmp_path / "dask" / "footprints.gpkg"
    info = pyogrio.read_info(merged)
    first = list_scenes(scene_list)[0]
    with rasterio.open(first) as src:
        assert info["crs"] == src.crs.to_string() and info["features"] == total == done.n_merged
    assert list(info["fields"]) == ["scene", "score", "area_m2"]
    _, _, wkb, (names, scores, areas) = pyogrio.raw.read(merged)
    assert sorted(set(names)) == sorted(p.stem for p in scene_list)
    b_geoms = shapely.from_wkb(wkb[names == "made_b"])
    with rasterio.open(scene_list[1]) as src:  # made_b is in EPSG:32617: reprojected, it lies far to the west
        own = shapely.from_wkb(features(tmp_path / "dask" / "scenes" / "made_b.gpkg")[0])
        assert len(b_geoms) == len(own) and str(src.crs) != info["crs"]
        assert abs(shapely.total_bounds(b_geoms)[0] - shapely.total_bounds(own)[0]) > 1000
    # area_m2 is ground square metres: reprojecting a scene into the merged CRS leaves it as it was
    own_area = pyogrio.raw.read(tmp_path / "dask" / "scenes" / "made_b.gpkg")[3][1]
    assert np.array_equal(areas[names == "made_b"], own_area)
    # the merged layer's provenance: what every scene shares, and each scene's raster
    prov = read_provenance(merged)
    assert prov["model"]["sha256"] and prov["model"]["file"] == Path(sharp_model).name and prov["crs"] == info["crs"]
    assert {k: v["source"]["raster"] for k, v in prov["scenes"].items()} == {p.stem: str(p.resolve()) for p in scene_list}


def buildings_scene(path: Path) -> Path:
    """Perfect targets of buildings across windows, blocks and tasks (300 x 330 px)."""
    footprints = [box(50, 20, 70, 40), box(10, 60, 320, 80), box(96, 100, 128, 130), box(128, 100, 150, 130),
                  box(120, 150, 140, 170), box(3, 3, 9, 9), box(200, 190, 300, 290), box(60, 200, 70, 295),
                  box(250, 120, 262, 131)]
    return write_raster(path, make_targets(footprints, (300, 330)).stack() * np.uint8(255))


def test_a_big_scene_split_across_workers_equals_one_process(client, sharp_model, sample, tmp_path):
    # Perfect targets with the identity model: buildings across every kind of seam.
    scene = buildings_scene(tmp_path / "big.tif")
    geo = dict(tile=64, overlap=16, block=64, margin=8, batch_size=3)
    done = predict_scenes_dask([scene], tmp_path / "dask", identity, client=client, split_above=10_000, windows_per_task=4,
                               blocks_per_task=2, **geo)
    assert not done.failed and done.split == [scene.resolve()]
    one = predict_scene(scene, tmp_path / "one.gpkg", identity, progress=False, **geo)
    a, b = features(tmp_path / "dask" / "scenes" / "big.gpkg"), features(tmp_path / "one.gpkg")
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and len(a[0]) == one.n_buildings == 9
    assert not (tmp_path / "dask" / ".work").exists() or not any((tmp_path / "dask" / ".work").iterdir())
    # A real network on the Austin scene: the same batches, so the same probabilities, bit for bit.
    austin = sample / "scenes" / "inria_austin.tif"
    geo = dict(tile=256, overlap=32, block=256, margin=32, batch_size=2, device="cpu")
    predict_scenes_dask([austin], tmp_path / "dask2", sharp_model, client=client, split_above=10_000, windows_per_task=5,
                        blocks_per_task=3, **geo)
    predict_scene(austin, tmp_path / "one2.gpkg", sharp_model, progress=False, **geo)
    a, b = features(tmp_path / "dask2" / "scenes" / "inria_austin.gpkg"), features(tmp_path / "one2.gpkg")
    assert len(a[0]) > 500 and a[0] == b[0] and np.array_equal(a[1], b[1])


def test_a_failing_scene_is_reported_the_others_finish_and_a_rerun_skips_them(client, sharp_model, tmp_path, capsys):
    folder = tmp_path / "scenes"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        write_raster(folder / f"s{k}.tif", rng.integers(0, 256, (3, 160, 170), dtype=np.uint8))
    (folder / "broken.tif").write_bytes(b"II*\x00 not a GeoTIFF")
    out = tmp_path / "out"
    argv = ["predict-scene", str(folder), "--out", str(out), "--model", str(sharp_model), "--device", "cpu",
            "--scheduler", client.scheduler.address, "--tile", "128", "--overlap", "16"]
    assert main(argv) == 1
    cap = capsys.readouterr()
    assert "failed " in cap.out and "broken.tif" in cap.out and "1 scene(s) failed" in cap.err
    assert "Traceback" not in cap.out + cap.err
    assert sorted(p.name for p in (out / "scenes").iterdir()) == ["s0.gpkg", "s1.gpkg", "s2.gpkg"]
    before = pyogrio.raw.read(out / "footprints.gpkg")
    assert before[2].size > 0 and set(before[3][0]) == {"s0", "s1", "s2"}
    # Rerun without the broken scene, with one output cut to 0 bytes: only that scene is redone.
    (folder / "broken.tif").unlink()
    (out / "scenes" / "s1.gpkg").write_bytes(b"")
    assert not scene_done(out / "scenes" / "s1.gpkg")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 scene(s) predicted" in text and "2 already done" in text
    after = pyogrio.raw.read(out / "footprints.gpkg")
    assert list(after[2]) == list(before[2]) and all(np.array_equal(x, y) for x, y in zip(after[3], before[3]))
    # Bad options stop with one line (exit 2).
    assert main([*argv, "--shard", "0/2"]) == 2 and "--shard" in capsys.readouterr().err
    assert main([*argv, "--crs", "EPSG:nope"]) == 2 and "--crs" in capsys.readouterr().err


def test_a_worker_killed_mid_run_still_gives_every_scene_once(client, tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    scene = buildings_scene(tmp_path / "b.tif")
    for k in range(4):
        (folder / f"k{k}.tif").write_bytes(scene.read_bytes())
    marker = tmp_path / "killed"
    done = predict_scenes_dask([folder], tmp_path / "out", kill_once(marker), client=client, tile=64, overlap=16)
    assert marker.exists()  # a worker did die, mid-task
    assert not done.failed and sorted(r.scene.name for r in done.results) == [f"k{k}.tif" for k in range(4)]
    assert sorted(p.name for p in (tmp_path / "out" / "scenes").iterdir()) == [f"k{k}.gpkg" for k in range(4)]
    _, _, wkb, (names, _, _) = pyogrio.raw.read(tmp_path / "out" / "footprints.gpkg")
    assert len(wkb) == 4 * 9 and all((names == f"k{k}").sum() == 9 for k in range(4))
