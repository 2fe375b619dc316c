"""Forward passes in streams (``--streams``): two at once, each on its share of the CPU's threads, with the
same outputs as one at a time, for tiles (the tile engine), windows (the one window loop) and scenes (the
same buildings where a kernel sums in another order on fewer threads: see the predict test)."""

from __future__ import annotations

import ast
import csv
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon

from rooftrace.core.errors import RooftraceError
from rooftrace.imagery.raster import ArrayScene
from rooftrace.imagery.windows import Grid, run_windows
from rooftrace.inference.engine import Prepared, TileEngine
from rooftrace.inference.runtime import cpu_chunk, load_runtime, make_runner
from rooftrace.scenes.stitch import stitch_scene
from tests.conftest import write_tiny_model


@dataclass
class FakeRuntime:
    """A runtime whose "network" is a fixed function of its input, that records the threads its passes ran
    in and, with ``meet``, makes the first two passes wait for each other (they can only both finish if
    they run at once)."""

    meet: bool = False
    threads_seen: set = field(default_factory=set)
    passes: list = field(default_factory=list)
    granted: int = 1

    def __post_init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=60)
        self.met = 0
        self.lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.threads_seen.add(threading.get_ident())
            self.passes.append(x.shape)
            first_two = self.meet and self.met < 2
            self.met += 1
        if first_two:
            self.barrier.wait()  # raises BrokenBarrierError if the other pass never comes
        mean = x.mean(axis=1, keepdims=True)
        return np.concatenate([1 / (1 + np.exp(-mean)), x[:, :2] * 0.1], axis=1).astype(np.float32)

    @contextmanager
    def streams(self, n: int | None = None):
        yield self.granted if n is None else n

    def stream_batch(self, batch_size: int, h: int, w: int) -> int:
        return max(1, min(batch_size, cpu_chunk(h, w)))

    def windowed_probabilities(self, rgb: np.ndarray, streams: int = 1) -> np.ndarray:
        raise AssertionError("no large image here")


def _tiles(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(96, 96), (64, 128), (96, 96)]
    return [rng.standard_normal((3, *sizes[i % 3])).astype(np.float32) for i in range(n)]


def _engine_run(streams: int, tiles: list[np.ndarray], meet: bool = False, threads: int = 0):
    rt = FakeRuntime(meet=meet)
    engine = TileEngine(rt, batch_size=4, readers=1, threads=threads, streams=streams)  # type: ignore[arg-type]

    def read(i: int) -> Prepared:
        img = tiles[i]
        return Prepared(i, image=img.copy(), size=img.shape[1:], orig=img.shape[1:])

    def finish(probs: np.ndarray, tile: Prepared) -> tuple[int, float, tuple]:
        return tile.index, float(probs.sum()), probs.shape

    out = [(t.index, r) for t, r in engine.run(len(tiles), read, finish)]
    return out, rt


@pytest.mark.parametrize("threads", [0, 2])
def test_the_engine_runs_two_forward_passes_at_once_with_the_same_results(threads):
    tiles = _tiles(23)
    one, rt1 = _engine_run(1, tiles, threads=threads)
    two, rt2 = _engine_run(2, tiles, meet=True, threads=threads)
    assert len(rt1.threads_seen) == 1  # one stream: the calling thread
    assert len(rt2.threads_seen) == 2 and rt2.met == len(rt2.passes)  # the first two passes met: they ran at once
    assert sorted(one) == sorted(two) and len(one) == 23
    assert [i for i, _ in one] == [i for i, _ in two]  # the same order: batches settle in the order they ran
    for i, (index, total, shape) in one:
        assert index == i and shape == (3, *tiles[i].shape[1:])


def test_streams_split_a_batch_into_the_forward_passes_one_stream_runs():
    tiles = [np.zeros((3, 512, 512), np.float32)] * 8 + [np.zeros((3, 128, 128), np.float32)] * 8
    _, rt = _engine_run(2, tiles)
    # 512 x 512: one tile per pass on a CPU (cpu_chunk), as one stream's run() chunks a batch; 128 x 128: the whole batch of 4
    assert sorted(s[0] for s in rt.passes) == [1] * 8 + [4, 4]


def test_run_windows_in_streams_keeps_the_windows_and_their_order():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    valid = np.ones(img.shape[:2], bool)
    valid[:, :300] = False  # some windows hold nothing valid and are skipped
    grid = Grid.make(900, 700, 256, 32)
    seen: set[int] = set()
    barrier = threading.Barrier(2, timeout=60)
    calls = [0]
    lock = threading.Lock()

    def read(win):
        sl = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        v = valid[sl]
        return img[sl], (None if v.all() else v)

    def run(batch: np.ndarray, meet: bool = False) -> np.ndarray:
        with lock:
            seen.add(threading.get_ident())
            first = meet and calls[0] < 2
            calls[0] += 1
        if first:
            barrier.wait()
        return batch.transpose(0, 3, 1, 2).astype(np.float32) / 255

    def collect(streams: int, meet: bool) -> list:
        return [(k.i, k.j, k.rows, k.cols, None if k.part is None else k.part.copy())
                for k in run_windows(grid, read, lambda b: run(b, meet), batch_size=3, streams=streams)]

    one = collect(1, False)
    seen.clear()
    calls[0] = 0  # the first two calls of the two-stream run meet at the barrier: two threads, whatever the timing
    two = collect(2, True)
    assert len(seen) == 2
    assert len(one) == len(two) == grid.n_windows
    assert any(p is None for *_, p in one)
    for a, b in zip(one, two):
        assert a[:4] == b[:4]
        assert (a[4] is None) == (b[4] is None) and (a[4] is None or np.array_equal(a[4], b[4]))


def test_streams_lower_torch_threads_while_they_run_and_restore_them(tmp_path):
    import torch

    rt = load_runtime(write_tiny_model(tmp_path / "tiny.safetensors"), device="cpu", precision="fp32")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert rt.default_streams() == 2
        x = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
        two_threads = rt.run(x)
        with rt.streams() as n:
            assert n == 2 and torch.get_num_threads() == 1
            assert np.abs(rt.run(x) - two_threads).max() < 1e-5  # fp32 sums in another order on one thread
        assert torch.get_num_threads() == 2
        with rt.streams(1) as n:
            assert n == 1 and torch.get_num_threads() == 2
        torch.set_num_threads(1)  # never more passes than threads
        with rt.streams(2) as n:
            assert n == 1 and torch.get_num_threads() == 1
        with pytest.raises(RooftraceError, match="--streams 0"):
            with rt.streams(0):
                pass
        torch.set_num_threads(2)
        with pytest.raises(ValueError):  # an error inside still restores the threads
            with rt.streams(2):
                raise ValueError
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_callable_scene_model_runs_one_stream():
    runner = make_runner(lambda x: x[:, :1].float() / 255)
    with runner.streams() as n:
        assert n == 1


@pytest.fixture(scope="module")
def shipped():
    return load_runtime(None, device="cpu")


def test_predict_writes_the_same_files_with_one_or_two_streams(sample, tmp_path):
    from rooftrace.inference.predict import predict_folder

    images = sample / "test" / "image"
    outs = {}
    for n in (1, 2):
        outs[n] = predict_folder(images, tmp_path / f"s{n}", None, streams=n, workers=1, progress=False).out_dir
    # The same buildings. Not always bit for bit: oneDNN's bf16 transposed convolution (the decoder's upsampling,
    # rooftrace.models.upsample_conv) sums in another order on one thread than on two for some sizes (here the
    # 650 x 650 px tiles, padded to 672), as fp32 convolutions do, so a pixel of a building may move.
    subs = {n: dict(csv.reader((outs[n] / "submission.csv").open())) for n in outs}
    assert subs[1].keys() == subs[2].keys() and len(subs[1]) == len(list(images.iterdir())) + 1  # + the header
    moved = 0
    for key, rings in subs[1].items():
        if key == "ImageID":
            continue
        a = [Polygon(r) for r in ast.literal_eval(rings or "[]")]
        b = [Polygon(r) for r in ast.literal_eval(subs[2][key] or "[]")]
        assert len(a) == len(b), key
        for p in a:
            best = max((p.intersection(q).area / p.union(q).area for q in b), default=0.0)
            assert best >= 0.95, (key, p.wkt)
            moved += best < 1.0
    assert moved <= 2
    masks = sorted(p.name for p in (outs[1] / "masks").glob("*.png"))
    assert masks == sorted(p.name for p in (outs[2] / "masks").glob("*.png"))
    found = 0
    for m in masks:
        a, b = (cv2.imread(str(o / "masks" / m), cv2.IMREAD_UNCHANGED) > 0 for o in (outs[1], outs[2]))
        assert a.shape == b.shape and (a != b).mean() < 1e-3, m
        found += a.any()
    assert found >= len(masks) // 2


def test_a_scene_stitches_the_same_probabilities_with_one_or_two_streams(sample, tmp_path, shipped):
    with rasterio.open(sample / "scenes" / "inria_austin.tif") as src:
        rgb = src.read(window=((0, 1100), (0, 1100))).transpose(1, 2, 0)
    runner = make_runner(shipped)
    probs = {}
    for n in (1, 2):
        path = tmp_path / f"p{n}.tif"
        stitch_scene(ArrayScene(rgb), runner, path, tile=512, overlap=64, batch_size=4, progress=False, streams=n)
        with rasterio.open(path) as src:
            probs[n] = src.read()
    assert probs[1].shape == (3, *rgb.shape[:2]) and probs[1].any()
    assert np.array_equal(probs[1], probs[2])


def test_predict_options_and_the_command_line_refuse_bad_streams(sample, tmp_path, capsys):
    from rooftrace.cli import main
    from rooftrace.inference.predict import PredictOptions

    with pytest.raises(RooftraceError, match="--streams 0"):
        PredictOptions(streams=0).checked()
    with pytest.raises(RooftraceError, match="--streams 2 with --compile"):
        PredictOptions(streams=2, compile=True).checked()
    assert PredictOptions(streams=1, compile=True).checked().streams == 1
    assert main(["predict", str(sample / "test" / "image"), "--out", str(tmp_path / "o"), "--streams", "0"]) == 2
    assert "--streams 0: must be 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    scene = sample / "scenes" / "inria_austin.tif"
    assert main(["predict-scene", str(scene), "--out", str(tmp_path / "s"), "--streams", "2", "--dask-workers", "1"]) == 2
    assert "on Dask each worker" in capsys.readouterr().err


def test_threads_are_run_in_a_pool_that_is_shut_down():
    # the engine's stream threads are gone once a run is over, even when it is abandoned half way
    tiles = _tiles(12)
    rt = FakeRuntime()
    engine = TileEngine(rt, batch_size=2, readers=1, threads=0, streams=2)  # type: ignore[arg-type]
    gen = engine.run(len(tiles), lambda i: Prepared(i, image=tiles[i].copy(), size=tiles[i].shape[1:]), lambda p, t: t.index)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("rooftrace-net")]


