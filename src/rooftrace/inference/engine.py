"""The tile engine: read -> place and resample -> batch -> forward -> post-process and write, as stages
that overlap.

:class:`TileEngine` runs any number of images through one loaded model (:class:`ModelRuntime`):

1. **read** (threads, :func:`prepare_tile` or any function the caller gives): decode the image, decide
   its pixel size and resample it (:func:`rooftrace.imagery.resample.place_tile`, the one pixel-size
   rule); it is normalised and padded to a multiple of 32 when its batch is made, straight into the batch,
   channels-last (:func:`rooftrace.inference.runtime.pad_normalise`). Decoding (OpenCV, GDAL, Pillow) and numpy release
   the GIL, so the readers run beside the network; at most ``ahead`` images are read ahead of it (a
   bounded queue: memory stays flat whatever the number of images);
2. **batch** (the calling thread): images of the same padded size are grouped into batches of
   ``batch_size`` (an image's probabilities then depend on nothing but the image: the same as at
   batch size 1), and an image of more than :data:`WINDOWED_ABOVE` pixels runs alone, window by window
   (:meth:`ModelRuntime.windowed_probabilities`, the window loop scenes are stitched with);
3. **forward** (:meth:`ModelRuntime.run`): in ``streams`` threads, each running one batch at a time on
   its share of the CPU's threads (:meth:`ModelRuntime.streams`: 2 on a CPU by default, PyTorch or ONNX
   Runtime), or in the calling thread with one stream (GPUs);
4. **finish** (threads, or in line with ``threads=0``: in the stream's thread, after its forward pass): the
   caller's function, typically post-processing, tracing and encoding per-image files (which ``predict`` writes
   in a thread of their own: :class:`rooftrace.core.files.WriteQueue`) (:mod:`rooftrace.instances.postprocess`:
   OpenCV, scikit-image, shapely and zlib release the GIL). At
   most ``max_pending`` images wait to be finished; results come back in the order batches ran.

On a CPU of up to 4 cores, finishing runs in line by default, one reader thread reads ahead, and two
streams run the network: while one stream post-processes its batch, the other's forward pass has the
cores to itself, and a forward pass on one thread does not wait on a thread that post-processing has
taken (with one stream over every core it does: ``benchmarks/pipeline_speed.py`` measures both).

Tile prediction (:func:`rooftrace.inference.predict.predict_folder`) and the Python API
(:meth:`rooftrace.api.Model.predict_batch`) run images through it; scenes run their windows through
:func:`rooftrace.imagery.windows.run_windows`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.memory import TILE_BYTES_PER_PIXEL
from rooftrace.imagery.read import read_rgb
from rooftrace.imagery.resample import TilePlace, check_resampled, place_tile, resample_rgb
from rooftrace.inference.runtime import WINDOWED_ABOVE, ModelRuntime, pad_normalise, padded_size


@dataclass
class Prepared:
    """One image, read and ready for the network (or the error that stopped it).

    Attributes:
        index: Its position in the caller's list.
        image: What the network sees: ``(h, w, 3)`` uint8 pixels, normalised straight into their batch with the
            runtime's normalisation and zero-padded to a multiple of 32 there (what :func:`prepare_rgb` gives); or
            ``(3, H', W')`` float32 already normalised and padded (a caller's own ``read``). ``None`` for a
            large image (see ``large``) or an error.
        large: The resampled ``(h, w, 3)`` uint8 image when it has more than :data:`WINDOWED_ABOVE` pixels
            (run window by window).
        size: ``(h, w)``: the size the network sees (after resampling).
        orig: ``(H, W)``: the image's own size.
        place: Where it lies and the pixel size it was predicted at.
        rgb: The image as read, when the caller keeps it (overlays).
        error: Why it could not be read (then nothing else is set).
    """

    index: int
    image: np.ndarray | None = None
    large: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)
    orig: tuple[int, int] = (0, 0)
    place: TilePlace | None = None
    rgb: np.ndarray | None = None
    error: str | None = None
    #: Seconds this image took to read, in wall and the reading thread's CPU time.
    seconds: tuple[float, float] = (0.0, 0.0)


def prepare_rgb(index: int, rgb: np.ndarray, place: TilePlace, keep_rgb: bool = False) -> Prepared:
    """An image already decoded, resampled by ``place.factor`` (normalised later, into its batch; kept whole when
    large)."""
    H, W = rgb.shape[:2]
    seen = resample_rgb(rgb, place.factor)
    h, w = seen.shape[:2]
    kept = rgb if keep_rgb else None
    if h * w > WINDOWED_ABOVE:
        return Prepared(index, large=seen, size=(h, w), orig=(H, W), place=place, rgb=kept)
    return Prepared(index, image=np.ascontiguousarray(seen), size=(h, w), orig=(H, W), place=place, rgb=kept)


def prepare_tile(index: int, path: Path, *, input_gsd: float | None = None, model_gsd: float | None = None,
                 tms: bool = False, keep_rgb: bool = False) -> Prepared:
    """Read one tile file, place it (:func:`place_tile`: a wrong pixel size is an error too) and prepare it."""
    t, c = time.perf_counter(), time.thread_time()
    try:
        rgb = read_rgb(path, TILE_BYTES_PER_PIXEL)  # a size that cannot fit: skipped before it is decoded
        place = place_tile(path, rgb.shape[1], rgb.shape[0], input_gsd, model_gsd, tms)  # a wrong pixel size: skipped too
        check_resampled(path, rgb.shape[1], rgb.shape[0], place.factor)
    except RooftraceError as exc:
        return Prepared(index, error=str(exc))
    out = prepare_rgb(index, rgb, place, keep_rgb)
    out.seconds = (time.perf_counter() - t, time.thread_time() - c)
    return out


def _padded(tile: Prepared) -> tuple[int, int]:
    """The padded size a prepared image runs at: its batch's key."""
    img = tile.image
    return padded_size(*img.shape[:2]) if img.dtype == np.uint8 else (img.shape[1], img.shape[2])  # type: ignore[union-attr]


@dataclass
class _Share:
    """Image ``k`` of a batch whose forward pass (and finishing, in line) runs in a stream's thread."""

    batch: Future
    k: int

    def done(self) -> bool:
        if not self.batch.done():
            return False
        job = self.batch.result()[self.k] if self.batch.exception() is None else None
        return not isinstance(job, Future) or job.done()

    def result(self) -> Any:
        job = self.batch.result()[self.k]
        return job.result() if isinstance(job, Future) else job


@dataclass
class TileEngine:
    """A model runtime with how images flow through it (see the module docstring).

    Attributes:
        runtime: The loaded model.
        batch_size: Images of one padded size per forward pass.
        readers: Reading threads (0: read in the calling thread, one image at a time).
        threads: Finishing threads (0: finish in line, after each batch).
        streams: Forward passes at once (``None``: the runtime's default; :meth:`ModelRuntime.streams`
            decides how many it grants). Outputs are the same for any number (PyTorch fp32: within 1e-5).
        ahead: Images read ahead of the network (default ``2 * batch_size``).
        timings: Seconds per stage, summed over images: ``read`` and ``read_cpu`` (in the reading
            threads), ``wait`` (the network waiting for an image), ``inference``.
    """

    runtime: ModelRuntime
    batch_size: int = 8
    readers: int = 1
    threads: int = 0
    ahead: int | None = None
    streams: int | None = None
    timings: dict[str, float] = field(default_factory=lambda: {"read": 0.0, "read_cpu": 0.0, "wait": 0.0, "inference": 0.0})

    def run(self, n: int, read: Callable[[int], Prepared], finish: Callable[[np.ndarray, Prepared], Any]
            ) -> Iterator[tuple[Prepared, Any]]:
        """Images ``0 .. n-1``: ``read(i)`` prepares each, ``finish(probs, prepared)`` finishes each
        (``probs``: ``(C, h, w)`` at the size the network saw). Yields ``(prepared, finish's result)`` as
        images finish, in the order their batches ran, and ``(prepared, None)`` at once for an image that
        could not be read.

        While it runs (until the generator is exhausted or closed), torch's thread count may be lowered for
        the streams (:meth:`ModelRuntime.streams`)."""
        with self.runtime.streams(self.streams) as streams:
            yield from self._run(n, read, finish, streams)

    def _run(self, n: int, read: Callable[[int], Prepared], finish: Callable[[np.ndarray, Prepared], Any], streams: int
             ) -> Iterator[tuple[Prepared, Any]]:
        ahead = max(1, self.ahead or 2 * self.batch_size)
        readers = ThreadPoolExecutor(self.readers, thread_name_prefix="rooftrace-read") if self.readers else None
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rooftrace-post") if self.threads else None
        nets = ThreadPoolExecutor(streams, thread_name_prefix="rooftrace-net") if streams > 1 else None
        # in flight: a batch per stream, one more waiting for a stream, and what waits to be finished
        max_pending = max((streams + 1) * self.batch_size, 4 * max(self.threads, 1))
        pending: deque[tuple[Prepared, Future | _Share | Any]] = deque()
        reads: deque[Future] = deque()
        timings = self.timings
        lock = threading.Lock()

        def ready(job: Any) -> bool:
            return not isinstance(job, (Future, _Share)) or job.done()

        def settle(limit: int) -> Iterator[tuple[Prepared, Any]]:
            while pending and (len(pending) > limit or ready(pending[0][1])):
                tile, job = pending.popleft()
                yield tile, job.result() if isinstance(job, (Future, _Share)) else job

        def begin(tile: Prepared, probs: np.ndarray) -> Future | Any:
            return pool.submit(finish, probs, tile) if pool is not None else finish(probs, tile)

        def forward(x: np.ndarray) -> np.ndarray:
            s = time.perf_counter()
            probs = self.runtime.run(x)
            with lock:
                timings["inference"] += time.perf_counter() - s
            return probs

        def forward_and_finish(x: np.ndarray, tiles: list[Prepared]) -> list[Future | Any]:
            probs = forward(x)
            return [begin(t, probs[k, :, : t.size[0], : t.size[1]]) for k, t in enumerate(tiles)]

        def run_batch(tiles: list[Prepared]) -> None:
            images: list[np.ndarray] = [t.image for t in tiles]  # type: ignore[misc]
            if all(img.dtype == np.uint8 for img in images):  # pixels: normalised straight into the batch
                x = pad_normalise(images, self.runtime.norm)
            else:  # already normalised and padded (a caller's own read)
                H, W = max(img.shape[1] for img in images), max(img.shape[2] for img in images)
                x = np.zeros((len(tiles), 3, H, W), dtype=np.float32)
                for k, img in enumerate(images):
                    x[k, :, : img.shape[1], : img.shape[2]] = img
            for t in tiles:
                t.image = None  # the batch holds it now
            if nets is None:
                pending.extend(zip(tiles, forward_and_finish(x, tiles)))
                return
            step = self.runtime.stream_batch(len(tiles), *x.shape[2:])  # the forward passes one stream would run, spread
            for a in range(0, len(tiles), step):
                part = nets.submit(forward_and_finish, x[a:a + step], tiles[a:a + step])
                pending.extend((t, _Share(part, k)) for k, t in enumerate(tiles[a:a + step]))

        def next_tile(i: int) -> Prepared:
            if readers is None:
                return read(i)
            while len(reads) < ahead and i + len(reads) < n:
                reads.append(readers.submit(read, i + len(reads)))
            return reads.popleft().result()

        buckets: dict[tuple[int, int], list[Prepared]] = {}
        try:
            for i in range(n):
                s = time.perf_counter()
                tile = next_tile(i)
                timings["wait"] += time.perf_counter() - s
                timings["read"] += tile.seconds[0]
                timings["read_cpu"] += tile.seconds[1]
                if tile.error is not None:
                    yield tile, None
                    continue
                if tile.large is not None:
                    yield from settle(0)  # one such image's probabilities in memory at a time
                    s = time.perf_counter()
                    probs = self.runtime.windowed_probabilities(tile.large, streams=streams)
                    tile.large = None
                    with lock:
                        timings["inference"] += time.perf_counter() - s
                    pending.append((tile, begin(tile, probs)))
                    yield from settle(0)
                    continue
                shape = _padded(tile)
                bucket = buckets.setdefault(shape, [])  # type: ignore[arg-type]
                bucket.append(tile)
                if len(bucket) >= self.batch_size:
                    run_batch(buckets.pop(shape))  # type: ignore[arg-type]
                    yield from settle(max_pending)
            for shape in list(buckets):
                run_batch(buckets.pop(shape))
            yield from settle(0)
        finally:
            for f in reads:
                f.cancel()
            if readers is not None:
                readers.shutdown(wait=True, cancel_futures=True)
            if nets is not None:
                nets.shutdown(wait=True, cancel_futures=True)
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
