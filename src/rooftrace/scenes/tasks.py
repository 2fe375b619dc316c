"""The Dask tasks of :mod:`rooftrace.scenes.distributed`, as top-level functions workers import: a whole
scene, or a big scene's plan, window batches, assembly, post-processing blocks and writing; and the
per-worker model cache (each worker loads a model once)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file

_RUNNERS: dict[tuple, Any] = {}  # per worker process: loaded models


LOADS: dict[tuple, int] = {}  # per worker process: how many times each model was loaded (tests read it)


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


def worker_runner(spec: ModelSpec) -> Any:
    """The model as a :class:`rooftrace.inference.runtime.ModelRunner`, loaded once per worker process.

    Model files are cached by path, SHA-256, device, TTA and precision: a changed file (another
    SHA-256) is loaded anew, an unchanged one never twice. Callables are wrapped per call (cheap).
    """
    from rooftrace.inference.runtime import make_runner

    if spec.fn is not None:
        return make_runner(spec.fn, device=spec.device, tta=spec.tta, normalization=spec.normalization, precision=spec.precision)
    runner = _RUNNERS.get(spec.key)
    if runner is None:
        if spec.sha256 is not None and sha256_file(spec.path) != spec.sha256:  # type: ignore[arg-type]
            raise RooftraceError(f"{spec.path}: changed since the run started (SHA-256 differs); give every worker the same model")
        runner = make_runner(Path(spec.path), device=spec.device, tta=spec.tta, precision=spec.precision)  # type: ignore[arg-type]
        _RUNNERS[spec.key] = runner
        LOADS[spec.key] = LOADS.get(spec.key, 0) + 1
    return runner


def model_loads() -> dict[str, int]:
    """This process's model loads as ``{"<path> <sha256[:12]>": count}`` (run on workers by ``client.run``)."""
    return {f"{k[0]} {str(k[1])[:12]}": n for k, n in LOADS.items()}


def scene_task(spec: ModelSpec, scene: str, out: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """One whole scene on one worker: ``("done", SceneResult)`` or ``("failed", message)`` for bad input."""
    from rooftrace.scenes.predict import predict_scene

    try:
        result = predict_scene(scene, out, worker_runner(spec), force=True, progress=False, **kwargs)
    except RooftraceError as exc:
        return "failed", str(exc)
    return "done", result


def _open_scene(scene: str, plan: dict[str, Any]) -> Any:
    from rooftrace.imagery.raster import Scene

    sc = Scene(scene, bands=plan["bands"], percentiles=plan["stretch"])
    sc.set_scale(plan["scale"])
    return sc


def plan_task(spec: ModelSpec, scene: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """What a split scene's tasks need: scale, grid, channels, post-processing (``("plan", dict)``)."""
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
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Scene(scene, bands=kwargs.get("bands"),
                                                              percentiles=kwargs.get("stretch", DEFAULT_STRETCH)) as sc:
            method, settings = runner.postprocessing(kwargs.get("method"), kwargs.get("settings"))
            factor, gsd_in, gsd_source, notes = scene_scale(sc, check_gsd(kwargs.get("gsd")), runner.gsd)
            sc.set_scale(factor)
            grid = Grid.make(sc.width, sc.height, tile, overlap)
            channels = model_channels(runner, grid)
            crs = sc.crs
            plan = dict(
                bands=kwargs.get("bands"), stretch=kwargs.get("stretch", DEFAULT_STRETCH), scale=factor, width=sc.width,
                height=sc.height, tile=tile, overlap=overlap, batch_size=kwargs.get("batch_size", 4), channels=channels,
                method=method, settings=settings, block=kwargs.get("block", DEFAULT_BLOCK), margin=kwargs.get("margin", DEFAULT_MARGIN),
                max_group=kwargs.get("max_group", DEFAULT_MAX_GROUP), crs_wkt=crs.to_wkt() if crs is not None else None,
                src_crs=sc.src.crs, transform=sc.transform, src_transform=sc.src.transform, src_width=sc.src.width,
                src_height=sc.src.height, bands_text=sc.plan.describe(), model=runner.description, gsd_input=gsd_in,
                gsd_source=gsd_source, gsd_model=runner.gsd, notes=notes, n_windows=grid.n_windows,
                provenance=scene_provenance(runner, method, settings, scene, crs), unit_metres=unit_metres(crs, gsd_in, sc.src.transform),
            )
    except RooftraceError as exc:
        return "failed", str(exc)
    if plan["batch_size"] < 1:
        return "failed", f"--batch-size {plan['batch_size']}: must be at least 1"
    return "plan", plan


def window_task(spec: ModelSpec, scene: str, plan: dict[str, Any], lo: int, hi: int, part_path: str) -> tuple[str, Any]:
    """Phase 1 for jobs ``lo:hi`` (row-major windows) of a split scene, through the stitching loop
    stitch_scene runs (:func:`rooftrace.scenes.stitch.stitch_windows`), batched as it batches them;
    writes the probabilities those windows keep (zeros elsewhere) over the rows they span."""
    import rasterio
    from affine import Affine

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.imagery.windows import Grid
    from rooftrace.scenes.stitch import prob_profile, quantised_runner, stitch_windows

    try:
        runner = worker_runner(spec)
        grid = Grid.make(plan["width"], plan["height"], plan["tile"], plan["overlap"])
        nx, channels, bs = len(grid.xs), plan["channels"], plan["batch_size"]
        ky0, ky1 = grid.ky
        jobs = [(k // nx, k % nx) for k in range(lo, hi)]
        row0, row1 = int(ky0[jobs[0][0]]), int(ky1[jobs[-1][0]])
        tmp = f"{part_path}.{os.getpid()}.tmp.tif"
        crs, transform = (plan["src_crs"], plan["transform"] * Affine.translation(0, row0)) if plan["src_crs"] else (None, None)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_scene(scene, plan) as sc, \
                rasterio.open(tmp, "w", **prob_profile(plan["width"], row1 - row0, channels, crs, transform)) as dst:
            skipped = stitch_windows(grid, sc.read, quantised_runner(runner, channels, grid), bs, dst, channels, jobs=jobs)
        os.replace(tmp, part_path)
    except RooftraceError as exc:
        return "failed", str(exc)
    return "part", (row0, row1, len(jobs), skipped)


def assemble_task(plan: dict[str, Any], parts: list[tuple[str, Any]], part_paths: list[str], prob_path: str) -> tuple[str, Any]:
    """The stitched probability GeoTIFF from the phase-1 parts: per pixel, the one part that kept it."""
    import rasterio
    from rasterio.windows import Window

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.scenes.stitch import PROB_BLOCK, prob_profile

    for status, value in parts:
        if status == "failed":
            return "failed", value
    spans = [(p[1][0], p[1][1], path) for p, path in zip(parts, part_paths)]
    H, W, channels = plan["height"], plan["width"], plan["channels"]
    profile = prob_profile(W, H, channels, plan["src_crs"], plan["transform"])
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


def blocks_task(plan: dict[str, Any], assembled: tuple[str, Any], prob_path: str, cores: list[tuple[int, int]]) -> tuple[str, Any]:
    """Phase 2 for some cores: their buildings (WKB in scene pixels) and scores, core by core, in order."""
    import shapely

    from rooftrace.scenes.blocks import postprocess_blocks

    if assembled[0] == "failed":
        return assembled
    try:
        out = [(shapely.to_wkb(part.geoms), part.scores, part.n_truncated)
               for part in postprocess_blocks(prob_path, method=plan["method"], settings=plan["settings"], block=plan["block"],
                                              margin=plan["margin"], max_group=plan["max_group"], progress=False, cores=cores)]
    except RooftraceError as exc:
        return "failed", str(exc)
    return "blocks", out


def write_task(scene: str, out: str, plan: dict[str, Any], assembled: tuple[str, Any], blocks: list[tuple[str, Any]],
                work: str, t0: float) -> tuple[str, Any]:
    """The split scene's GeoPackage, blocks in the single-process order; returns ``("done", SceneResult)``."""
    import shapely
    from pyproj import CRS

    from rooftrace.gis.provenance import crs_name
    from rooftrace.gis.writers import FeatureWriter, scene_area_km2
    from rooftrace.scenes.predict import SceneResult

    failed = [v for s, v in [assembled, *blocks] if s == "failed"]
    if failed:
        return "failed", failed[0]
    crs = CRS.from_wkt(plan["crs_wkt"]) if plan["crs_wkt"] else None
    writer = FeatureWriter(out, crs, plan["transform"], force=True, provenance=plan.get("provenance"),
                           metres_per_unit=plan.get("unit_metres"))
    truncated = 0
    try:
        for _, parts in blocks:
            for wkb, scores, n_trunc in parts:
                writer.add(shapely.from_wkb(wkb), scores)
                truncated += n_trunc
        written = writer.close()
    except BaseException:
        writer.abort()
        raise
    shutil.rmtree(work, ignore_errors=True)
    st = plan["src_transform"]
    seconds = time.time() - t0
    return "done", SceneResult(
        scene=Path(scene), out=written, model=plan["model"], n_buildings=writer.count, width=plan["src_width"],
        height=plan["src_height"], crs=crs_name(crs) if crs is not None else None, pixel_size=(abs(st.a), abs(st.e)),
        area_km2=scene_area_km2(plan["src_width"], plan["src_height"], st, crs), bands=plan["bands_text"],
        n_windows=plan["n_windows"], n_windows_nodata=int(assembled[1]), n_truncated=truncated, seconds_inference=float("nan"),
        seconds_postprocess=float("nan"), seconds=seconds, gsd_input=plan["gsd_input"], gsd_source=plan["gsd_source"],
        gsd_model=plan["gsd_model"], scale=plan["scale"],
        notes=[*plan["notes"], "split across workers: the inference and post-processing times are in the total"],
    )
