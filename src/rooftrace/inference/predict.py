"""Inference on a folder of tiles: batched, optionally with flip TTA, then post-processing and files.

``predict_folder`` reads every tile in a folder (any size; each tile is zero-padded on the bottom and
right to a multiple of 32), runs the model under ``torch.inference_mode`` (channels_last; autocast as
:mod:`rooftrace.models.autocast` decides: bf16 on GPUs and on CPUs with native bf16; optionally
``torch.compile``), or an exported ``.onnx`` model with ONNX Runtime,
averages flipped predictions when asked, turns probabilities into one polygon per building
(:mod:`rooftrace.instances.postprocess`, with the thresholds ``rooftrace tune`` saved beside the model when there
are any), and writes into the output folder:

- ``submission.csv``: BEGC2024 format, one row for every image of the folder, sorted by ImageID;
- ``predictions.coco.json``: COCO results (``image_id`` is the image key);
- georeferenced tiles (a GeoTIFF's own transform, or a web-map tile name such as
  ``OAM-<x>-<y>-<z>.png``): ``predictions.geojson`` in longitude/latitude (RFC 7946, EPSG:4326) and
  ``predictions.gpkg`` in the tiles' CRS, ``image_id``, ``file_name``, ``score`` and ``area_m2``
  (ground square metres) per feature and the run's provenance in each file's metadata;
  the other tiles of a mixed folder in pixels in ``predictions-pixels.geojson``;
- no tile georeferenced: ``predictions.geojson`` in pixel coordinates, ``image_id`` per feature,
  marked ``"rooftrace": {"coordinates": "pixel", ...}`` at the top level;
- ``masks/<stem>.png``: 16-bit instance ids; ``overlays/<stem>.png``: the tile with its polygons.

When the model records the pixel size it was trained at, each tile is resampled to it first and
its footprints are brought back to the tile's own pixels (see :func:`predict_folder`).

Unreadable tiles are reported and skipped, and still get their (empty) row in the submission.

The work runs through the tile engine (:class:`rooftrace.inference.engine.TileEngine`), whose stages
overlap: reading threads decode, place, resample, normalise and pad tiles ahead of the network; tiles
of the same padded size are batched (so a 256 x 256 tile is never padded to a 672 x 672 neighbour's
size, and a tile's probabilities depend on nothing but the tile: the same as at batch size 1); the
network runs (on the CPU, one 512 x 512 tile's worth of pixels per forward pass, which is faster per
tile there than larger batches, and two passes at once, each on half the threads: ``streams``); each
tile is post-processed and its mask and overlay encoded and written in finishing threads, or in line
after its pass on a CPU of up to 4 cores (see ``benchmarks/pipeline_speed.py``). This module adds what is particular to a folder:
the output folder's checks, crash-safe records and resuming, and the output files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.core.collector import collector_paused, heap_frozen
from rooftrace.core.files import WriteQueue, atomic_write_text
from rooftrace.core.locks import FOLDER_LOCK
from rooftrace.gis.provenance import make_provenance
from rooftrace.imagery.georef import Georef
from rooftrace.imagery.read import list_images
from rooftrace.imagery.resample import (
    TilePlace,
    checked_input_gsd,
    footprints_to_grid,
    place_tile,
    resample_factor,
)
from rooftrace.inference.card import card_notes, score_warning
from rooftrace.inference.devices import default_threads, pick_device
from rooftrace.inference.engine import Prepared, TileEngine, prepare_tile
from rooftrace.inference.outputs import (
    GEOJSON_NAME,
    GPKG_NAME,
    PIXEL_GEOJSON_NAME,
    MapOutputs,
    write_map_outputs,
)
from rooftrace.inference.partial import (
    PARTIAL,
    file_stamp,
    read_tile_record,
    run_record,
    tile_record,
)
from rooftrace.inference.runtime import check_streams, load_runtime
from rooftrace.inference.tuned import SettingsArg, used_postprocessing
from rooftrace.instances.postprocess import PostprocessSettings, postprocess
from rooftrace.labels.begc import write_begc_csv
from rooftrace.labels.coco import write_coco_results
from rooftrace.labels.geojson import write_geojson
from rooftrace.labels.records import ImageKey, LabelSet, LoadReport, image_key
from rooftrace.models.autocast import normalise_precision
from rooftrace.models.onnx import is_onnx


@dataclass
class PredictResult:
    """What ``predict_folder`` did."""

    out_dir: Path
    labels: LabelSet
    n_images: int
    n_skipped: int
    seconds: float
    report: LoadReport
    files: list[Path] = field(default_factory=list)
    #: Seconds per stage, summed over tiles: ``read`` (reading threads), ``wait`` (main thread waiting for
    #: tiles), ``inference``, ``postprocess`` and ``encode`` (each tile's mask and overlay made into PNG bytes;
    #: summed over the post-processing threads, which run alongside inference), ``disk`` (those files and each
    #: tile's ``.partial`` record written and made durable, in the writing thread); ``*_cpu``: the same in those
    #: threads' CPU time, which does not count time a thread waited for a core; ``outputs`` (submission, GeoJSON,
    #: COCO, the map files), ``total``. (``encode`` was called ``write`` until session 15.)
    timings: dict[str, float] = field(default_factory=dict)
    #: Tiles an earlier, unfinished run had done (``resume=True``), taken from ``.partial``.
    n_resumed: int = 0
    #: The pixel size in metres the model was trained at (``None``: not recorded; tiles used as they are).
    model_gsd: float | None = None
    #: Per tile (by key): ``gsd`` (the input's pixel size in metres, ``None`` when unknown), ``gsd_source``
    #: (``--gsd``, ``geotiff``, ``tile-name``, ``unknown``), ``own_gsd`` and ``factor`` (the scale
    #: it was resampled by before the model saw it; 1.0 when it was not).
    tile_gsd: dict[ImageKey, dict[str, Any]] = field(default_factory=dict)
    #: Where the footprints went in map coordinates: see :class:`MapOutputs` (``None``: no tile is georeferenced).
    map_outputs: MapOutputs | None = None
    #: Lines about pixel sizes and coordinates, printed by :meth:`summary`.
    notes: list[str] = field(default_factory=list)
    #: Regions the score filter (``min_score``) dropped over all tiles; most of the regions found dropped is a
    #: model-card warning in :attr:`notes`.
    n_below_score: int = 0

    @property
    def gsd_model(self) -> float | None:
        """The older name of :attr:`model_gsd`, still read."""
        return self.model_gsd

    def summary(self) -> str:
        lines = [f"predicted {self.labels.n_footprints} buildings on {self.n_images - self.n_skipped} of {self.n_images} tiles "
                 f"in {self.seconds:.1f} s ({(self.n_images - self.n_skipped) / max(self.seconds, 1e-9):.1f} tiles/s); outputs in {self.out_dir}"]
        if self.n_resumed:
            lines.append(f"{self.n_resumed} tiles were done by the unfinished run and not predicted again")
        lines.extend(self.notes)
        if self.n_skipped:
            lines.append(f"{self.n_skipped} unreadable tile(s) skipped (they have an empty row in submission.csv):")
            lines.extend(f"  {m}" for m in self.report.messages[:20])
        return "\n".join(lines)


def _check_out_dir(out_dir: Path, force: bool, resume: bool = False) -> None:
    partial = out_dir / PARTIAL
    if resume:
        if not (partial / "run.json").exists():
            raise RooftraceError(f"{out_dir}: holds no unfinished predict run to resume (no {PARTIAL}/run.json)")
    elif out_dir.exists() and out_dir.is_dir() and any(p.name != FOLDER_LOCK for p in out_dir.iterdir()) and not force:
        if (partial / "run.json").exists():
            done = sum(1 for _ in partial.glob("*.json")) - 1
            raise RooftraceError(f"{out_dir}: holds an unfinished predict run ({done} tiles done); pass --resume to finish it, "
                                 "or --force to start again")
        raise RooftraceError(f"{out_dir}: already holds files; pass --force to overwrite them, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooftraceError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from None


def _check_unique_keys(images: Path, files: list[Path]) -> None:
    """Two tiles whose stems give one ImageID (``7.tif`` and ``7.png``, ``007.png`` and ``7.png``) are refused, naming both."""
    seen: dict[ImageKey, Path] = {}
    for f in files:
        k = image_key(f)
        if k in seen:
            raise RooftraceError(f"{images}: {seen[k].name} and {f.name} share the ImageID {k!r} (from their stems "
                                 f"{seen[k].stem!r} and {f.stem!r}); their rows would collide: rename or move one of them")
        seen[k] = f


def _encode_overlay(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 overlay, stored uncompressed (zlib level 0): the same pixels as
    :func:`rooftrace.imagery.png.encode_png` writes, about 0.5 ms a 512 x 512 tile against 12 ms for
    OpenCV at level 1 (aerial imagery hardly compresses: the file is about 2.2 times larger, 790 kB;
    ``--no-overlays`` skips them)."""
    from rooftrace.imagery.png import encode_png_quick

    return encode_png_quick(rgb, level=OVERLAY_PNG_LEVEL)


#: zlib levels of the overlay and mask PNGs ``predict`` writes (see :func:`rooftrace.imagery.png.encode_png_quick`).
OVERLAY_PNG_LEVEL = 0
MASK_PNG_LEVEL = 1


def _encode_mask(instances: np.ndarray, stem: str) -> bytes:
    """16-bit PNG bytes of a tile's instance map, at :data:`MASK_PNG_LEVEL`."""
    from rooftrace.imagery.png import encode_instances

    return encode_instances(instances, stem, level=MASK_PNG_LEVEL)


def _resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An id map resized to ``size = (H, W)`` by nearest neighbour (pixel centres), any integer dtype."""
    h, w = ids.shape
    H, W = size
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return ids[rows[:, None], cols[None, :]]


class _FinishedTile(NamedTuple):
    """What :func:`_finish_tile` gives the run for one tile."""

    footprints: list
    scores: list
    #: Wall and this thread's CPU seconds of post-processing, then of encoding the files.
    seconds: tuple[float, float, float, float]
    #: Regions the score filter dropped.
    below_score: int
    #: ``(path, bytes)`` to write, in order: written by the run's :class:`~rooftrace.core.files.WriteQueue`,
    #: off the network's threads.
    files: list[tuple[Path, bytes]]


def _finish_tile(probs: np.ndarray, rgb: np.ndarray | None, stem: str, out_dir: Path, method: str,
                 settings: PostprocessSettings | None, write_masks: bool, write_overlays: bool,
                 size: tuple[int, int] | None = None) -> _FinishedTile:
    """Post-process one tile and encode its mask and overlay (runs in a worker thread).

    ``probs`` are at the model's pixel size; ``size`` is the tile's own ``(H, W)`` when it was
    resampled, and the footprints and the mask are brought back to it (post-processing itself,
    whose thresholds were tuned at the model's pixel size, runs at the model's)."""
    from rooftrace.imagery.draw import render_overlay

    t0, c0 = time.perf_counter(), time.thread_time()
    found = postprocess(probs, method=method, settings=settings)
    footprints, scores, instances = list(found.footprints), list(found.scores), found.instances
    seen = tuple(probs.shape[1:])
    if size is not None and tuple(size) != seen:
        footprints, scores = footprints_to_grid(footprints, scores, seen, tuple(size))  # type: ignore[arg-type]
        if instances is not None:
            instances = _resize_nearest(instances, tuple(size))  # type: ignore[arg-type]
    t1, c1 = time.perf_counter(), time.thread_time()
    files: list[tuple[Path, bytes]] = []
    if write_masks and instances is not None:
        files.append((out_dir / "masks" / f"{stem}.png", _encode_mask(instances, stem)))
    if write_overlays and rgb is not None:
        files.append((out_dir / "overlays" / f"{stem}.png", _encode_overlay(render_overlay(rgb, footprints, scores))))
    return _FinishedTile(footprints, scores, (t1 - t0, c1 - c0, time.perf_counter() - t1, time.thread_time() - c1),
                         found.n_below_score, files)


#: What ``predict`` writes into ``--out`` (files and folders), none of which may be an input.
OUTPUT_NAMES = ("submission.csv", "predictions.geojson", "predictions-pixels.geojson", "predictions.gpkg",
                "predictions.coco.json", "masks", "overlays", PARTIAL)


def _exclusive_out(fn: Any) -> Any:
    """Run ``fn(images, out_dir, model, ...)`` holding ``out_dir``'s lock (a second run on it stops at once), after
    checking that no output is an input (the images folder is not ``out_dir`` nor inside it; the model is not one
    of its files). An output folder the run made is removed again if the run stops before writing anything."""
    import functools

    from rooftrace.core.locks import OutputLock
    from rooftrace.core.paths import check_distinct

    @functools.wraps(fn)
    def wrapper(images: str | Path, out_dir: str | Path, model: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = Path(out_dir)
        check_distinct({"--model": model if isinstance(model, (str, Path)) else None},
                       {"--out " + n: out / n for n in OUTPUT_NAMES})
        check_distinct({"--images": images}, {}, folders={"--out": out})
        created = not out.exists()
        try:
            with OutputLock(out, folder=True, what="--out"):
                return fn(images, out_dir, model, *args, **kwargs)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only when empty
            raise
    return wrapper


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_folder` runs (``rooftrace predict``'s options), checked by :meth:`checked`.

    Attributes:
        batch_size: Tiles per forward pass; tiles are batched with others of the same padded size.
        tta: Average the predictions of the four flips.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (an ``.onnx`` model picks its providers from it).
        workers: Tile-reading threads (0: read in the main thread), reading ahead of the network.
        method, settings: Post-processing; default: what ``rooftrace tune`` saved beside the
            model, else (ONNX) what travelled in its metadata, else the default method with default
            settings. ``settings`` as a mapping (``{"regularise": True}``, what ``--pp`` gives) changes
            only the settings it names, on top of those; complete :class:`PostprocessSettings` replace them.
            The summary's first note says what was used, and ``predictions.gpkg`` records it.
        write_masks, write_overlays: Also write ``masks/<stem>.png`` (16-bit instance ids) and
            ``overlays/<stem>.png`` (the tile with its polygons), the costliest outputs.
        force: Overwrite an output folder that holds files.
        progress: Show a progress bar.
        threads: Post-processing and writing threads (0: in line, after each forward pass;
            default: 0 for inference on a CPU of up to 4 cores, else half the cores, at most 8).
        streams: Forward passes at once, each on its share of the CPU's threads (``None``: 2 for a PyTorch
            model on a CPU, else 1, and 1 with ``compile``; :meth:`rooftrace.inference.runtime.ModelRuntime.streams`).
            The outputs are the same for any number (PyTorch fp32: probabilities within 1e-5).
        compile: ``torch.compile`` the PyTorch model (pays off on long runs on a GPU; the first
            batches of each tile size wait for compilation). Ignored for ONNX models.
        precision: ``auto`` (bf16 autocast on GPUs and on CPUs with native bf16, else fp32),
            ``fp32``, ``bf16`` or ``fp16``; see :mod:`rooftrace.models.autocast`. Ignored for ONNX models.
        resume: Finish the unfinished run in ``out_dir`` (killed or crashed): tiles it finished
            are taken from ``out_dir/.partial`` and not predicted again. The model, images,
            post-processing and outputs must be the first run's.
        input_gsd: The tiles' pixel size in metres, for tiles that do not say (``--input-gsd``); it overrides
            what a tile's georeference says (a tile whose own differs by more than 2x is noted).
        gsd: The older name of ``input_gsd``, still taken (``predict_folder(..., gsd=0.3)``).
        tms: Read web-map tile names as TMS (``y`` counted from the bottom) instead of XYZ.
    """

    batch_size: int = 8
    tta: bool = False
    device: str = "auto"
    workers: int = 2
    method: str | None = None
    settings: SettingsArg = None
    write_masks: bool = True
    write_overlays: bool = True
    force: bool = False
    progress: bool = True
    threads: int | None = None
    streams: int | None = None
    compile: bool = False
    precision: str = "auto"
    resume: bool = False
    input_gsd: float | None = None
    tms: bool = False
    gsd: float | None = None

    def checked(self, onnx: bool = False) -> PredictOptions:
        """The options with ``input_gsd`` (or its older name ``gsd``) and ``precision`` normalised and ``threads`` decided.
        ``onnx``: the model is an ``.onnx`` file (ONNX Runtime checks the device when it opens it; torch is not imported).

        Raises:
            RooftraceError: A bad ``workers``, ``streams``, ``input_gsd``, ``precision`` or ``device`` (before anything is read or written).
        """
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise RooftraceError(f"--workers {self.workers}: must be 0 (read tiles in the main thread) or more")
        check_streams(self.streams)
        if self.compile and self.streams is not None and self.streams > 1:
            raise RooftraceError(f"--streams {self.streams} with --compile: a compiled model is not safe to call from two "
                                 "threads at once; drop one of them")
        if onnx:
            from rooftrace.config import check_device

            kind = "cuda" if check_device(self.device).startswith("cuda") else "cpu"
        else:
            kind = pick_device(self.device).type  # a device torch does not know is refused before anything is read or written
        threads = default_threads(kind) if self.threads is None else max(0, int(self.threads))
        input_gsd = checked_input_gsd(self.input_gsd, self.gsd)
        return replace(self, input_gsd=input_gsd, gsd=None, precision=normalise_precision(self.precision), threads=threads)


@_exclusive_out
def predict_folder(images: str | Path, out_dir: str | Path, model: str | Path | None = None, options: PredictOptions | None = None,
                   **changes: Any) -> PredictResult:
    """Predict footprints for every tile of ``images`` and write the outputs into ``out_dir``.

    Args:
        model: A ``.safetensors`` model file written by rooftrace (``None``: the shipped model), or an ``.onnx`` file written by
            ``rooftrace export`` (run with ONNX Runtime: CUDA when available and ``device`` allows,
            else the CPU).
        options: How to run (:class:`PredictOptions`; default its defaults); ``changes`` change single
            options on top (``predict_folder(images, out, model, batch_size=4, write_overlays=False)``).

    Three stages (:class:`_FolderRun`): :meth:`~_FolderRun.start` (checks, the model, a new run's record or
    the unfinished run's tiles), :meth:`~_FolderRun.predict` (the tiles through the tile engine, each
    finished tile recorded), :meth:`~_FolderRun.finish` (the output files and the summary's notes).

    Pixel size: when the model records the pixel size it was trained at (``gsd`` in its
    metadata), each tile is resampled to it before the model sees it (OpenCV area averaging when
    shrinking, bilinear when enlarging; not when they differ by 2 % or less), post-processed at
    that size (where its tuned thresholds hold), and its footprints are scaled back to the tile's
    own pixel grid. A tile's pixel size is ``input_gsd`` when given, else its georeference's (a GeoTIFF
    transform or an XYZ tile name; measured on the ground at the tile's centre, so in metres for
    degrees too), else taken to be the model's (said once in the summary). A model without one:
    tiles are used as they are.

    Coordinates: ``submission.csv`` and ``predictions.coco.json`` are in each tile's pixels. When
    tiles are georeferenced (:func:`rooftrace.imagery.georef.locate_image`), ``predictions.geojson`` is
    in longitude/latitude (RFC 7946) and ``predictions.gpkg`` in the tiles' CRS
    (:func:`write_map_outputs`); the readable tiles that are not georeferenced then go, in pixels,
    to ``predictions-pixels.geojson``. When no tile is georeferenced, ``predictions.geojson`` is in
    pixels and says so in its top-level ``"rooftrace"`` member.

    Crash safety: each finished tile's result is written to ``out_dir/.partial/<stem>.json``
    (atomically, after its mask and overlay, by the run's write thread) as it finishes; the submission,
    GeoJSON and COCO files are written once at the end, each to a temporary name and renamed, and then
    ``.partial`` is removed. A run killed at
    any moment leaves no half-written file, and ``resume=True`` finishes it.
    """
    opts = replace(options or PredictOptions(), **changes).checked(onnx=model is not None and is_onnx(model))
    run = _FolderRun.start(Path(images), Path(out_dir), model, opts)
    with heap_frozen():  # the collector walks what the run makes, not the model and every module
        run.predict()
        return run.finish()


@dataclass
class _FolderRun:
    """One ``predict_folder`` run's state, from :meth:`start` to :meth:`finish`."""

    images: Path
    out_dir: Path
    model: str | Path
    opts: PredictOptions
    files: list[Path]
    keys: list[ImageKey]
    runtime: Any
    used: Any
    labels: LabelSet
    report: LoadReport
    #: Tiles the unfinished run finished (by file index), and those whose file changed since.
    done: dict[int, tuple[int, int, list, list, dict[str, Any]]]
    changed: list[str]
    #: File indexes still to predict (the engine's index ``j`` is ``todo[j]``), with their size and time before reading.
    todo: list[int]
    stamps: dict[int, Any]
    places: dict[int, TilePlace] = field(default_factory=dict)
    #: Per file index, the regions the score filter dropped (``Buildings.n_below_score``).
    below_score: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    timings: dict[str, float] = field(default_factory=lambda: {"postprocess": 0.0, "postprocess_cpu": 0.0, "encode": 0.0,
                                                               "encode_cpu": 0.0})
    t0: float = 0.0
    seconds: float = 0.0

    @classmethod
    def start(cls, images: Path, out_dir: Path, model: str | Path | None, opts: PredictOptions) -> _FolderRun:
        """Stage 1: the folder's checks, the model, and a new run's record (or the unfinished run's tiles)."""
        if images.is_file():
            raise RooftraceError(f"{images}: is a file; predict takes a folder of tiles. For one raster of any size run "
                                 f"`rooftrace predict-scene {images} --out {images.stem}.gpkg`, or put the file in a folder "
                                 "and give the folder")
        files = list_images(images)
        if not files:
            raise RooftraceError(f"{images}: no image files (.tif, .png, .jpg) in this folder")
        _check_unique_keys(images, files)
        _check_out_dir(out_dir, opts.force, opts.resume)
        runtime = load_runtime(model, device=opts.device, tta=opts.tta, precision=opts.precision,
                               onnx_spinning=opts.threads == 0 and opts.workers == 0, onnx_candidate=not opts.compile)
        if opts.compile and not runtime.is_onnx:
            import torch

            runtime.net.model = torch.compile(runtime.net.model)
        used = used_postprocessing(runtime, opts.method, opts.settings)
        if opts.input_gsd is not None and runtime.gsd is not None:
            try:
                resample_factor(opts.input_gsd, runtime.gsd)  # a --gsd no tile could be resampled from stops before any tile
            except RooftraceError as exc:
                raise RooftraceError(f"--gsd {opts.input_gsd:g}: {exc}") from None
        record = run_record(runtime.path, used.method, used.settings, opts.tta, opts.precision, images, opts.write_masks,
                             opts.write_overlays, opts.input_gsd, opts.tms)
        done, changed = _start_or_resume(out_dir, files, record, opts.resume)
        report = LoadReport(path=str(images))
        labels = LabelSet(report=report, root=images, format="predictions")
        keys = [image_key(f) for f in files]
        for f, k in zip(files, keys):  # file order, whatever order the batches finish in
            labels.get_or_add(k).file_name = f.name
        run = cls(images, out_dir, model, opts, files, keys, runtime, used, labels, report, done, changed,
                  todo=[n for n in range(len(files)) if n not in done], stamps={})
        for n, (w, h, fps, scores, rec) in done.items():
            img = labels[keys[n]]
            img.width, img.height, img.footprints, img.scores = w, h, fps, scores
            run.below_score[n] = int(rec.get("below_score", 0))
            if "gsd_source" in rec:  # where it lies is read again at the end; the pixel size it was predicted at is kept
                run.places[n] = TilePlace(None, rec.get("gsd"), rec["gsd_source"], rec.get("own_gsd"), float(rec.get("factor", 1.0)))
        run.stamps = {n: file_stamp(files[n]) for n in run.todo}  # taken before the tile is read
        return run

    def read(self, j: int) -> Prepared:
        """The engine's reading stage for its image ``j``."""
        o = self.opts
        return prepare_tile(j, self.files[self.todo[j]], input_gsd=o.input_gsd, model_gsd=self.runtime.gsd, tms=o.tms,
                            keep_rgb=o.write_overlays)

    def finish_tile(self, probs: np.ndarray, tile: Prepared) -> _FinishedTile:
        """The engine's finishing stage: post-process, mask and overlay (:func:`_finish_tile`)."""
        o = self.opts
        return _finish_tile(probs, tile.rgb, self.files[self.todo[tile.index]].stem, self.out_dir, self.used.method,
                            self.used.settings, o.write_masks, o.write_overlays, tile.orig)

    def predict(self) -> None:
        """Stage 2: every tile still to do through the tile engine; each finished tile recorded in ``.partial``."""
        o = self.opts
        streams = 1 if o.compile else o.streams  # a compiled model runs in one thread
        engine = TileEngine(self.runtime, batch_size=o.batch_size, readers=o.workers, threads=o.threads or 0, streams=streams)
        self.t0 = time.perf_counter()
        # Each tile's mask, overlay and record go to disk in a thread of their own, in that order (a record names a
        # finished tile, so its files are written before it), while the network runs on.
        with tqdm(total=len(self.files), initial=len(self.done), desc="predict", unit="tile", disable=not o.progress,
                  dynamic_ncols=True) as bar, WriteQueue() as writes:
            for tile, result in engine.run(len(self.todo), self.read, self.finish_tile):
                bar.update(1)
                if result is None:
                    self.report.skip(tile.error)  # type: ignore[arg-type]
                    self.skipped += 1
                    continue
                self._record(self.todo[tile.index], tile, result, writes)
        self.timings.update(engine.timings)
        self.timings["disk"], self.timings["disk_cpu"] = writes.seconds, writes.cpu
        self.seconds = time.perf_counter() - self.t0

    def _record(self, i: int, tile: Prepared, result: _FinishedTile, writes: WriteQueue) -> None:
        self.places[i] = tile.place  # type: ignore[assignment]
        (H, W), (fps, scores, seconds, below, files) = tile.orig, result
        img = self.labels[self.keys[i]]
        img.width, img.height, img.footprints, img.scores = W, H, fps, scores
        self.below_score[i] = below
        record = tile_record(W, H, fps, scores, self.places[i], self.stamps[i], below_score=below)
        writes.put([*files, (self.out_dir / PARTIAL / f"{self.files[i].stem}.json", record)])
        for name, value in zip(("postprocess", "postprocess_cpu", "encode", "encode_cpu"), seconds):
            self.timings[name] += value

    def finish(self) -> PredictResult:
        """Stage 3: the output files (then ``.partial`` goes) and the summary's notes."""
        files, keys, places, o = self.files, self.keys, self.places, self.opts
        readable = [n for n in range(len(files)) if n in self.done or n in places]
        with collector_paused():  # a burst of small lists (every building's coordinates), freed together
            maps, written = _write_outputs(self.labels, files, keys, readable, places, self.done, self.out_dir, self.images,
                                           self.model, self.used.method, self.used.settings, o.tms, self.used.to_json(),
                                           self.runtime.runtime_line)
        self.timings["outputs"] = time.perf_counter() - self.t0 - self.seconds
        self.timings["total"] = time.perf_counter() - self.t0
        model_gsd = self.runtime.gsd
        tile_gsd = {keys[n]: {"gsd": pl.input_gsd, "gsd_source": pl.gsd_source, "own_gsd": pl.own_gsd, "factor": pl.factor}
                    for n, pl in sorted(places.items())}
        notes = [self.used.describe(), self.runtime.runtime_line]
        notes.extend(_gsd_notes(tile_gsd, model_gsd, o.input_gsd, self.report, [files[n].name for n in sorted(places)]))
        notes.extend(_coordinate_notes(maps, len(readable)))
        notes.extend(card_notes(self.labels, tile_gsd, model_gsd))
        below = sum(self.below_score.values())
        unsure = score_warning(sum(len(self.labels[keys[n]].footprints) for n in readable), below,
                               self.used.settings.min_score, f"the {len(readable)} tile(s)")
        if unsure:
            notes.append(unsure)
        if self.changed:
            notes.insert(0, f"note: {len(self.changed)} tile(s) changed since the unfinished run recorded them (size or "
                            f"modification time) and were predicted again: {', '.join(self.changed[:5])}"
                            f"{' ...' if len(self.changed) > 5 else ''}")
        return PredictResult(self.out_dir, self.labels, len(files), self.skipped, self.seconds, self.report, written,
                             self.timings, n_resumed=len(self.done), model_gsd=model_gsd, tile_gsd=tile_gsd, map_outputs=maps,
                             notes=notes, n_below_score=below)


def _start_or_resume(out_dir: Path, files: list[Path], record: dict[str, Any], resume: bool
                     ) -> tuple[dict[int, tuple[int, int, list, list, dict[str, Any]]], list[str]]:
    """A new run's ``.partial/run.json``; or, resuming, the tiles the unfinished run finished (by file
    index) and the names of those whose file changed since (predicted again)."""
    partial = out_dir / PARTIAL
    done: dict[int, tuple[int, int, list, list, dict[str, Any]]] = {}
    changed: list[str] = []
    if not resume:
        if partial.exists():
            shutil.rmtree(partial)
        atomic_write_text(partial / "run.json", json.dumps(record, indent=1), force=True)
        return done, changed
    try:
        before = json.loads((partial / "run.json").read_text())
    except (OSError, ValueError):
        raise RooftraceError(f"{partial / 'run.json'}: unreadable; start again with --force") from None
    differ = [k for k in record if before.get(k) != record[k]]
    if differ:
        raise RooftraceError(f"{out_dir}: the unfinished run used other {', '.join(differ)}; resume it with the same "
                             "model, images and options, or start again with --force")
    for n, f in enumerate(files):
        got = read_tile_record(partial / f"{f.stem}.json")
        if got is None:
            continue
        if got[4].get("file") is None or got[4]["file"] != file_stamp(f):  # the tile changed: predicted again
            changed.append(f.name)
            continue
        done[n] = got
    return done, changed


def _write_outputs(labels: LabelSet, files: list[Path], keys: list[ImageKey], readable: list[int], places: dict[int, TilePlace],
                   done: dict, out_dir: Path, images: Path, model: str | Path, method: str, settings: PostprocessSettings | None,
                   tms: bool, settings_from: dict | None = None, runtime: str | None = None) -> tuple[MapOutputs | None, list[Path]]:
    """The submission, the GeoJSON (and GeoPackage) and the COCO results, each written atomically; then
    ``.partial`` is removed (the run is complete)."""
    georefs: dict[ImageKey, Georef] = {}
    for n in readable:
        geo = places[n].georef if n in places else None
        if geo is None and n in done:  # a resumed tile: where it lies is read again (its header only)
            w, h = done[n][0], done[n][1]
            geo = place_tile(files[n], w, h, tms=tms).georef
        if geo is not None:
            georefs[keys[n]] = geo
    written = [write_begc_csv(labels, out_dir / "submission.csv", image_keys=keys, force=True)]
    maps = write_map_outputs(labels, georefs, out_dir, make_provenance(source=images, crs=None, model_path=model, method=method,
                                                                       settings=settings, source_kind="images",
                                                                       settings_from=settings_from, runtime=runtime)) if georefs else None
    if maps is None:
        written.append(write_geojson(labels, out_dir / GEOJSON_NAME, force=True))
    else:
        written.extend(maps.files)
        plain = [keys[n] for n in readable if keys[n] not in georefs]
        maps.n_unlocated = len(plain)
        if plain:
            sub = LabelSet(report=LoadReport(path=str(images)), root=images, format="predictions")
            for k in plain:
                sub.images[k] = labels[k]
            written.append(write_geojson(sub, out_dir / PIXEL_GEOJSON_NAME, force=True))
    written.append(write_coco_results(labels, out_dir / "predictions.coco.json", force=True))
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
    return maps, written


def _gsd_notes(tile_gsd: dict[ImageKey, dict[str, Any]], model_gsd: float | None, input_gsd: float | None, report: LoadReport,
               names: list[str]) -> list[str]:
    """Summary lines on pixel sizes: what was resampled, what was assumed (once), where --gsd disagrees."""
    lines: list[str] = []
    if not tile_gsd:
        return lines
    info = list(tile_gsd.values())
    if model_gsd is None:
        if input_gsd is not None:
            lines.append(f"note: the model records no pixel size, so --gsd {input_gsd:g} changes nothing: tiles are used as they are")
        return lines
    resampled = [d for d in info if d["factor"] != 1.0]
    if resampled:
        fs = [d["factor"] for d in resampled]
        gs = [d["gsd"] for d in resampled]
        span = f"{min(gs):.3g} m" if max(gs) - min(gs) < 1e-3 else f"{min(gs):.3g}-{max(gs):.3g} m"
        fspan = f"x{min(fs):.3g}" if max(fs) - min(fs) < 1e-3 else f"x{min(fs):.3g} to x{max(fs):.3g}"
        srcs = ", ".join(sorted({d["gsd_source"] for d in resampled}))
        lines.append(f"pixel size: {len(resampled)} of {len(info)} tiles resampled from {span} ({srcs}) to the model's "
                     f"{model_gsd:.3g} m ({fspan}); footprints are in each tile's own pixels")
    else:
        lines.append(f"pixel size: the model's {model_gsd:.3g} m; no tile needed resampling")
    unknown = [d for d in info if d["gsd_source"] == "unknown"]
    if unknown:
        lines.append(f"note: {len(unknown)} tile(s) have no georeference and no --gsd was given: their pixel size was taken "
                     f"to be the model's ({model_gsd:.3g} m) and they were not resampled")
    if input_gsd is not None:
        off = [(n, d["own_gsd"]) for n, d in zip(names, info) if d["own_gsd"] and not 0.5 <= input_gsd / d["own_gsd"] <= 2.0]
        if off:
            name, own = off[0]
            msg = (f"--gsd {input_gsd:g} overrides the pixel size of {len(off)} georeferenced tile(s) whose own differs by more "
                   f"than 2x (e.g. {name}: {own:.3g} m); check --gsd")
            report.note(msg)
            lines.append("note: " + msg)
    return lines


def _coordinate_notes(maps: MapOutputs | None, n_readable: int) -> list[str]:
    """Summary lines on the coordinates of the outputs."""
    if maps is None:
        return [f"coordinates: no tile is georeferenced, so {GEOJSON_NAME} is in pixel coordinates (x = column, y = row "
                "of each tile), not longitude/latitude; give GeoTIFFs or web-map tile names (OAM-<x>-<y>-<z>) for map outputs"]
    origins = ", ".join(f"{v} by {'GeoTIFF georeference' if k == 'geotiff' else 'tile name'}" for k, v in sorted(maps.origins.items()))
    lines = [f"coordinates: {maps.n_located} tile(s) georeferenced ({origins}): {GEOJSON_NAME} in longitude/latitude "
             f"(EPSG:4326), {GPKG_NAME} in {maps.crs}; submission.csv and predictions.coco.json stay in pixels"]
    if maps.reprojected:
        lines.append(f"note: tiles in {', '.join(sorted(set(maps.reprojected)))} were reprojected to {maps.crs} in {GPKG_NAME}")
    if maps.n_merged:
        lines.append(f"overlapping tiles: {maps.n_merged} footprint(s) were copies of {maps.n_merged_buildings} building(s) "
                     f"already found in another tile (the same ground at several zoom levels, or overlapping tiles; IoU >= 0.5) "
                     f"and were merged to the highest-scoring one in {GEOJSON_NAME} and {GPKG_NAME}; submission.csv and "
                     "predictions.coco.json keep each tile's own")
    if maps.n_unlocated:
        lines.append(f"note: {maps.n_unlocated} tile(s) are not georeferenced: their footprints are in pixels only "
                     f"({PIXEL_GEOJSON_NAME}, submission.csv, predictions.coco.json)")
    return lines
