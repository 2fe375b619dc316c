"""The Dask tasks of :mod:`rooftrace.scenes.distributed`, as top-level functions workers import: a whole
scene, or a big scene's plan, window batches, assembly, post-processing blocks and writing; the typed
objects they hand each other (:class:`ScenePlan`, :class:`WindowRun`); and the per-worker model cache
(:func:`load_model_file`: each worker process loads a model file once)."""

from __future__ import annotations

import functools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load the model: a file (with its SHA-256, the cache key) or a callable."""

    path: str | None
    sha256: str | None
    device: str = "auto"
    tta: bool = False
    precision: str = "auto"
    fn: Any = None  # a callable model (pickled to the workers with each task)
    normalization: Any = None

    @property
    def key(self) -> tuple:
        return (self.path, self.sha256, self.device, self.tta, self.precision)


@functools.cache
def load_model_file(path: str, sha256: str | None, device: str = "auto", tta: bool = False, precision: str = "auto") -> Any:
    """A model file as a :class:`rooftrace.inference.runtime.ModelRunner`, loaded once per worker process.

    Cached by path, SHA-256, device, TTA and precision (the arguments): a changed file (another SHA-256)
    is loaded anew, an unchanged one never twice. ``load_model_file.cache_info()`` run on a worker
    (``client.run``) says how many models it loaded (``misses``) and how many tasks reused one (``hits``).

    Raises:
        RooftraceError: The file's SHA-256 is no longer ``sha256`` (nothing is cached then).
    """
    from rooftrace.inference.runtime import make_runner

    if sha256 is not None and sha256_file(path) != sha256:
        raise RooftraceError(f"{path}: changed since the run started (SHA-256 differs); give every worker the same model")
    return make_runner(Path(path), device=device, tta=tta, precision=precision)


def worker_runner(spec: ModelSpec) -> Any:
    """The model as a :class:`rooftrace.inference.runtime.ModelRunner`: a model file through the
    per-worker cache (:func:`load_model_file`); a callable wrapped per call (cheap)."""
    from rooftrace.inference.runtime import make_runner

    if spec.fn is not None:
        return make_runner(spec.fn, device=spec.device, tta=spec.tta, normalization=spec.normalization, precision=spec.precision)
    return load_model_file(*spec.key)


# ---------------------------------------------------------------------------------------------
# What a split scene's tasks hand each other


@dataclass(frozen=True)
class SceneReading:
    """How every task opens the scene, as the single-process run reads it.

    Attributes:
        bands: The band mapping asked for (``None``: the scene's own choice).
        stretch: The percentile stretch for bit depths other than 8.
        scale: The factor the scene is read at so that its pixels are the model's (1.0: as is).
    """

    bands: str | None
    stretch: tuple[float, float]
    scale: float


@dataclass(frozen=True)
class SceneWindows:
    """The scene as the model sees it (resampled by ``scale``) and its grid of windows.

    Attributes:
        width, height: The resampled scene in pixels (the grid's and the probability GeoTIFF's size).
        tile, overlap: The windows' size and overlap in pixels (:class:`rooftrace.imagery.windows.Grid`).
        n_windows: Windows in the grid (row-major; phase-1 tasks take runs of them).
        batch_size: Windows per model call; phase-1 runs start on multiples of it.
        channels: The model's output channels (the probability GeoTIFF's bands).
    """

    width: int
    height: int
    tile: int
    overlap: int
    n_windows: int
    batch_size: int
    channels: int


@dataclass(frozen=True)
class ScenePostprocessing:
    """Phase 2: the post-processing and the blocks it runs in (:func:`rooftrace.scenes.blocks.postprocess_blocks`).

    Attributes:
        method, settings: The post-processing method and its settings (the model's tuned ones unless given).
        block, margin, max_group: Block core size, margin, and the largest group of touching buildings (pixels).
    """

    method: str
    settings: Any
    block: int
    margin: int
    max_group: int


@dataclass(frozen=True)
class SceneGeoref:
    """Where the results lie on the ground, for the probability GeoTIFF and the GIS output.

    Attributes:
        crs_wkt: The scene's CRS as WKT (``None``: no CRS; footprints in scene pixels).
        src_crs: The file's CRS as rasterio reads it (``None``: none).
        transform: The resampled scene's affine transform (pixel to map coordinates).
        provenance: The provenance written into the output (:func:`rooftrace.gis.writers.scene_provenance`).
        unit_metres: Metres per map unit for ``area_m2`` (:func:`rooftrace.gis.writers.unit_metres`).
    """

    crs_wkt: str | None
    src_crs: Any
    transform: Any
    provenance: dict[str, Any] | None
    unit_metres: float | None


@dataclass(frozen=True)
class SceneFacts:
    """What the scene's :class:`rooftrace.scenes.predict.SceneResult` reports about the file and the model.

    Attributes:
        src_width, src_height, src_transform: The file's own size in pixels and transform.
        bands_text: How bands were read (:meth:`BandPlan.describe`).
        model: The model that ran (its description).
        input_gsd: The scene's pixel size in metres (``None``: unknown), and ``gsd_source``
            where it came from (``--gsd``, ``geotiff`` or ``unknown``).
        model_gsd: The pixel size the model was trained at (``None``: not recorded).
        notes: Summary lines about the pixel size.
    """

    src_width: int
    src_height: int
    src_transform: Any
    bands_text: str
    model: str
    input_gsd: float | None
    gsd_source: str
    model_gsd: float | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ScenePlan:
    """What every task of a split scene needs, decided once by :func:`plan_task` (pickled to the workers)."""

    reading: SceneReading
    windows: SceneWindows
    postprocessing: ScenePostprocessing
    georef: SceneGeoref
    facts: SceneFacts


@dataclass(frozen=True)
class WindowRun:
    """One phase-1 task's share of a split scene.

    Attributes:
        lo, hi: The windows ``lo:hi`` in row-major order (``lo`` a multiple of the batch size).
        part_path: The GeoTIFF this task writes: the probabilities its windows keep, zeros elsewhere.
    """

    lo: int
    hi: int
    part_path: str


# ---------------------------------------------------------------------------------------------
# The tasks


def scene_task(spec: ModelSpec, scene: str, out: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """One whole scene on one worker: ``("done", SceneResult)`` or ``("failed", message)`` for bad input."""
    from rooftrace.scenes.predict import predict_scene

    try:
        result = predict_scene(scene, out, worker_runner(spec), force=True, progress=False, **kwargs)
    except RooftraceError as exc:
        return "failed", str(exc)
    return "done", result


def _open_scene(scene: str, reading: SceneReading) -> Any:
    from rooftrace.imagery.raster import Scene

    sc = Scene(scene, bands=reading.bands, percentiles=reading.stretch)
    sc.set_scale(reading.scale)
    return sc


def plan_task(spec: ModelSpec, scene: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """What a split scene's tasks need: scale, grid, channels, post-processing (``("plan", ScenePlan)``)."""
    import rasterio

    from rooftrace.gis.writers import scene_provenance, unit_metres
    from rooftrace.imagery.raster import DEFAULT_STRETCH, GDAL_CACHE_MB, Scene
    from rooftrace.imagery.resample import check_gsd
    from rooftrace.imagery.windows import (
        DEFAULT_OVERLAP,
        DEFAULT_TILE,
        Grid,
        check_tiling,
    )
    from rooftrace.scenes.blocks import DEFAULT_BLOCK, DEFAULT_MARGIN, DEFAULT_MAX_GROUP
    from rooftrace.scenes.predict import scene_scale
    from rooftrace.scenes.stitch import model_channels

    try:
        tile, overlap = kwargs.get("tile", DEFAULT_TILE), kwargs.get("overlap", DEFAULT_OVERLAP)
        check_tiling(tile, overlap)
        runner = worker_runner(spec)
        stretch = kwargs.get("stretch", DEFAULT_STRETCH)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Scene(scene, bands=kwargs.get("bands"), percentiles=stretch) as sc:
            method, settings = runner.postprocessing(kwargs.get("method"), kwargs.get("settings"))
            factor, input_gsd, gsd_source, notes = scene_scale(sc, check_gsd(kwargs.get("input_gsd")), runner.gsd)
            sc.set_scale(factor)
            grid = Grid.make(sc.width, sc.height, tile, overlap)
            channels = model_channels(runner, grid)
            crs = sc.crs
            plan = ScenePlan(
                reading=SceneReading(bands=kwargs.get("bands"), stretch=stretch, scale=factor),
                windows=SceneWindows(width=sc.width, height=sc.height, tile=tile, overlap=overlap, n_windows=grid.n_windows,
                                     batch_size=kwargs.get("batch_size", 4), channels=channels),
                postprocessing=ScenePostprocessing(method=method, settings=settings, block=kwargs.get("block") or DEFAULT_BLOCK,
                                                   margin=kwargs.get("margin", DEFAULT_MARGIN),
                                                   max_group=kwargs.get("max_group", DEFAULT_MAX_GROUP)),
                georef=SceneGeoref(crs_wkt=crs.to_wkt() if crs is not None else None, src_crs=sc.src.crs, transform=sc.transform,
                                   provenance=scene_provenance(runner, method, settings, scene, crs),
                                   unit_metres=unit_metres(crs, input_gsd, sc.src.transform)),
                facts=SceneFacts(src_width=sc.src.width, src_height=sc.src.height, src_transform=sc.src.transform,
                                 bands_text=sc.plan.describe(), model=runner.description, input_gsd=input_gsd,
                                 gsd_source=gsd_source, model_gsd=runner.gsd, notes=tuple(notes)),
            )
    except RooftraceError as exc:
        return "failed", str(exc)
    if plan.windows.batch_size < 1:
        return "failed", f"--batch-size {plan.windows.batch_size}: must be at least 1"
    return "plan", plan


def window_task(spec: ModelSpec, scene: str, plan: ScenePlan, run: WindowRun) -> tuple[str, Any]:
    """Phase 1 for the windows ``run.lo:run.hi`` (row-major) of a split scene, through the stitching loop
    stitch_scene runs (:func:`rooftrace.scenes.stitch.stitch_windows`), batched as it batches them;
    writes the probabilities those windows keep (zeros elsewhere) over the rows they span."""
    import rasterio
    from affine import Affine

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.imagery.windows import Grid
    from rooftrace.scenes.stitch import prob_profile, quantised_runner, stitch_windows

    win, geo = plan.windows, plan.georef
    try:
        runner = worker_runner(spec)
        grid = Grid.make(win.width, win.height, win.tile, win.overlap)
        nx, channels = len(grid.xs), win.channels
        ky0, ky1 = grid.ky
        jobs = [(k // nx, k % nx) for k in range(run.lo, run.hi)]
        row0, row1 = int(ky0[jobs[0][0]]), int(ky1[jobs[-1][0]])
        tmp = f"{run.part_path}.{os.getpid()}.tmp.tif"
        crs, transform = (geo.src_crs, geo.transform * Affine.translation(0, row0)) if geo.src_crs else (None, None)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_scene(scene, plan.reading) as sc, \
                rasterio.open(tmp, "w", **prob_profile(win.width, row1 - row0, channels, crs, transform)) as dst:
            skipped = stitch_windows(grid, sc.read, quantised_runner(runner, channels, grid), win.batch_size, dst, channels, jobs=jobs)
        os.replace(tmp, run.part_path)
    except RooftraceError as exc:
        return "failed", str(exc)
    return "part", (row0, row1, len(jobs), skipped)


def assemble_task(plan: ScenePlan, parts: list[tuple[str, Any]], part_paths: list[str], prob_path: str) -> tuple[str, Any]:
    """The stitched probability GeoTIFF from the phase-1 parts: per pixel, the one part that kept it."""
    import rasterio
    from rasterio.windows import Window

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.scenes.stitch import PROB_BLOCK, prob_profile

    for status, value in parts:
        if status == "failed":
            return "failed", value
    spans = [(p[1][0], p[1][1], path) for p, path in zip(parts, part_paths)]
    H, W, channels = plan.windows.height, plan.windows.width, plan.windows.channels
    profile = prob_profile(W, H, channels, plan.georef.src_crs, plan.georef.transform)
    tmp = f"{prob_path}.{os.getpid()}.tmp.tif"
    step = PROB_BLOCK * 4  # rows assembled at a time (whole blocks)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(tmp, "w", **profile) as dst:
        for r in range(0, H, step):
            r1 = min(H, r + step)
            rows = np.zeros((channels, r1 - r, W), dtype=np.uint8)
            for a, b, path in spans:
                lo, hi = max(a, r), min(b, r1)
                if lo < hi:
                    with rasterio.open(path) as src:
                        np.maximum(rows[:, lo - r:hi - r], src.read(window=Window(0, lo - a, W, hi - lo)), out=rows[:, lo - r:hi - r])
            dst.write(rows, window=Window(0, r, W, r1 - r))
    os.replace(tmp, prob_path)
    return "probabilities", sum(p[1][3] for p in parts)


def blocks_task(plan: ScenePlan, assembled: tuple[str, Any], prob_path: str, cores: list[tuple[int, int]]) -> tuple[str, Any]:
    """Phase 2 for some cores: their buildings (WKB in scene pixels) and scores, core by core, in order."""
    import shapely

    from rooftrace.scenes.blocks import postprocess_blocks

    if assembled[0] == "failed":
        return assembled
    pp = plan.postprocessing
    try:
        out = [(shapely.to_wkb(part.geoms), part.scores, part.n_truncated, part.n_below_score)
               for part in postprocess_blocks(prob_path, method=pp.method, settings=pp.settings, block=pp.block,
                                              margin=pp.margin, max_group=pp.max_group, progress=False, cores=cores)]
    except RooftraceError as exc:
        return "failed", str(exc)
    return "blocks", out


def write_task(scene: str, out: str, plan: ScenePlan, assembled: tuple[str, Any], blocks: list[tuple[str, Any]],
                work: str, t0: float) -> tuple[str, Any]:
    """The split scene's GeoPackage, blocks in the single-process order; returns ``("done", SceneResult)``."""
    import shapely
    from pyproj import CRS

    from rooftrace.gis.provenance import crs_name
    from rooftrace.gis.writers import FeatureWriter, scene_area_km2
    from rooftrace.inference.card import score_warning
    from rooftrace.scenes.predict import SceneResult

    failed = [v for s, v in [assembled, *blocks] if s == "failed"]
    if failed:
        return "failed", failed[0]
    geo, facts = plan.georef, plan.facts
    min_score = plan.postprocessing.settings.min_score if plan.postprocessing.settings is not None else 0.0
    crs = CRS.from_wkt(geo.crs_wkt) if geo.crs_wkt else None
    writer = FeatureWriter(out, crs, geo.transform, force=True, provenance=geo.provenance, metres_per_unit=geo.unit_metres)
    truncated = below = 0
    try:
        for _, parts in blocks:
            for wkb, scores, n_trunc, n_below in parts:
                writer.add(shapely.from_wkb(wkb), scores)
                truncated += n_trunc
                below += n_below
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(work, ignore_errors=True)
    st = facts.src_transform
    seconds = time.time() - t0
    return "done", SceneResult(
        scene=Path(scene), out=written, model=facts.model, n_buildings=writer.count, width=facts.src_width,
        height=facts.src_height, crs=crs_name(crs) if crs is not None else None, pixel_size=(abs(st.a), abs(st.e)),
        area_km2=scene_area_km2(facts.src_width, facts.src_height, st, crs), bands=facts.bands_text,
        n_windows=plan.windows.n_windows, n_windows_nodata=int(assembled[1]), n_truncated=truncated,
        seconds_inference=float("nan"), seconds_postprocess=float("nan"), seconds=seconds, gsd_input=facts.input_gsd,
        gsd_source=facts.gsd_source, gsd_model=facts.model_gsd, scale=plan.reading.scale,
        notes=[*facts.notes, *(w for w in (score_warning(writer.count, below, min_score, Path(scene).name),) if w),
               "split across workers: the inference and post-processing times are in the total"],
        n_below_score=below,
    )
