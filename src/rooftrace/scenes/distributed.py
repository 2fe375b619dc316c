"""Many scenes on a Dask cluster: one task per scene, big scenes split across workers, one merged layer.

:func:`predict_scenes_dask` is :func:`rooftrace.scenes.batch.predict_scenes` with Dask
(``dask.distributed``, the optional ``rooftrace[dask]`` extra) as the engine:

- **One task per scene.** Each scene is one task, so a worker that finishes takes the next scene.
  Each worker process loads the model once and keeps it (:func:`worker_runner`, cached per
  process by model path, SHA-256, device, TTA and precision), never once per task.
- **Big scenes across workers.** A scene of more than ``split_above`` pixels is split. Phase 1
  (windows, model, stitching) runs as tasks of ``windows_per_task`` windows each, in the order
  and with the batches :func:`rooftrace.scenes.stitch.stitch_scene` uses (task boundaries fall on
  multiples of ``batch_size``, so the model sees the same batches). Each task writes the part
  of the stitched probabilities its windows keep; every pixel is kept by one window, so the
  parts merge by a per-pixel maximum into exactly the single-process probability GeoTIFF.
  Phase 2 runs the post-processing cores in tasks of ``blocks_per_task`` cores through
  :func:`rooftrace.scenes.blocks.postprocess_blocks`: a group of touching buildings belongs to the
  one core holding its first pixel, whichever process runs it, so each building comes out
  exactly once and the scene's GeoPackage equals the single-process one, feature for feature.
- **One layer.** The per-scene outputs (``OUT/scenes/<scene>.gpkg``) are merged into
  ``OUT/footprints.gpkg``, layer ``footprints``, with the scene's name on every building, in
  the CRS given (``crs``) or else the first scene's; scenes in other CRSs are reprojected. Each
  building keeps its ``score`` and ``area_m2`` (ground square metres, the same in every CRS), and
  the layer's metadata records every scene's provenance. Written to a temporary file and renamed.
- **Faults.** A scene that fails on bad input is reported and the others finish. A task whose
  worker dies is rerun by Dask on another worker, and any other error is retried once
  (``retries``) before the scene is reported. Per-scene outputs are written atomically, so a
  scene is written once whatever dies; a rerun skips scenes whose GeoPackage opens (a 0-byte or
  unreadable one is redone) and rebuilds the same merged layer.

The output folder (and the work folder for big scenes, ``OUT/.work``) must be on a filesystem
every worker sees, and every worker needs the scenes and the model file at the same paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rooftrace.core.errors import RooftraceError, is_strict
from rooftrace.core.hashing import sha256_file

#: Default size above which a scene is split across workers (pixels, width x height): 8,000 x 8,000.
DEFAULT_SPLIT_ABOVE = 64_000_000
#: Default windows per phase-1 task and cores per phase-2 task of a split scene.
DEFAULT_WINDOWS_PER_TASK = 64
DEFAULT_BLOCKS_PER_TASK = 4
#: The merged layer's file and layer name.
MERGED_NAME = "footprints.gpkg"
MERGED_LAYER = "footprints"

_RUNNERS: dict[tuple, Any] = {}  # per worker process: loaded models
LOADS: dict[tuple, int] = {}  # per worker process: how many times each model was loaded (tests read it)


def _need_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise RooftraceError("Dask is not installed: pip install 'rooftrace[dask]' (or 'dask[distributed]')") from None
    return distributed


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


# ---------------------------------------------------------------------------------------------
# Tasks (run on the workers)


def _scene_task(spec: ModelSpec, scene: str, out: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
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


def _plan_task(spec: ModelSpec, scene: str, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """What a split scene's tasks need: scale, grid, channels, post-processing (``("plan", dict)``)."""
    import rasterio

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
    from rooftrace.scenes.writers import scene_provenance, unit_metres

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
            channels = runner.channels
            if channels is None:  # a callable: ask it once what it returns, as stitch_scene does
                probe = runner.fn(np.zeros((1, grid.th, grid.tw, 3), dtype=np.uint8))
                channels = int(np.asarray(probe).shape[1]) if np.ndim(probe) == 4 else 0
                if channels not in (1, 3):
                    raise RooftraceError(f"the model returned shape {np.shape(probe)}; expected (1, 1 or 3, {grid.th}, {grid.tw})")
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


def _window_task(spec: ModelSpec, scene: str, plan: dict[str, Any], lo: int, hi: int, part_path: str) -> tuple[str, Any]:
    """Phase 1 for jobs ``lo:hi`` (row-major windows) of a split scene, batched as stitch_scene batches
    them; writes the probabilities those windows keep (zeros elsewhere) over the rows they span."""
    import rasterio
    from affine import Affine

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.imagery.windows import Grid
    from rooftrace.scenes.stitch import _PROB_BLOCK, _compression, _quantise

    try:
        runner = worker_runner(spec)
        grid = Grid.make(plan["width"], plan["height"], plan["tile"], plan["overlap"])
        nx, channels, bs = len(grid.xs), plan["channels"], plan["batch_size"]
        ky0, ky1 = grid.ky
        kx0, kx1 = grid.kx
        jobs = [(k // nx, k % nx) for k in range(lo, hi)]
        row0, row1 = int(ky0[jobs[0][0]]), int(ky1[jobs[-1][0]])
        out = np.zeros((channels, row1 - row0, plan["width"]), dtype=np.uint8)
        skipped = 0
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_scene(scene, plan) as sc:
            for k in range(0, len(jobs), bs):
                items = [(i, j, *sc.read(grid.window(i, j))) for i, j in jobs[k:k + bs]]
                run = [it for it in items if it[3] is None or it[3].any()]
                skipped += len(items) - len(run)
                if not run:
                    continue
                q = _quantise(runner.fn(np.stack([it[2] for it in run])), len(run), grid.th, grid.tw)
                if q.shape[1] != channels:
                    raise RooftraceError(f"the model returned {q.shape[1]} channels, then {channels}")
                for n, (i, j, _, valid) in enumerate(run):
                    part = q[n]
                    if valid is not None:
                        part[:, ~valid] = 0
                    r0, r1 = ky0[i] - grid.ys[i], ky1[i] - grid.ys[i]
                    c0, c1 = kx0[j] - grid.xs[j], kx1[j] - grid.xs[j]
                    out[:, ky0[i] - row0:ky1[i] - row0, kx0[j]:kx1[j]] = part[:, r0:r1, c0:c1]
        tmp = f"{part_path}.{os.getpid()}.tmp.tif"
        where = dict(crs=plan["src_crs"], transform=plan["transform"] * Affine.translation(0, row0)) if plan["src_crs"] else {}
        with rasterio.open(tmp, "w", driver="GTiff", width=out.shape[2], height=out.shape[1], count=channels, dtype="uint8", **where,
                           tiled=True, blockxsize=_PROB_BLOCK, blockysize=_PROB_BLOCK, BIGTIFF="IF_SAFER", **_compression()) as dst:
            dst.write(out)
        os.replace(tmp, part_path)
    except RooftraceError as exc:
        return "failed", str(exc)
    return "part", (row0, row1, len(jobs), skipped)


def _assemble_task(plan: dict[str, Any], parts: list[tuple[str, Any]], part_paths: list[str], prob_path: str) -> tuple[str, Any]:
    """The stitched probability GeoTIFF from the phase-1 parts: per pixel, the one part that kept it."""
    import rasterio
    from rasterio.windows import Window

    from rooftrace.imagery.raster import GDAL_CACHE_MB
    from rooftrace.scenes.stitch import _PROB_BLOCK, _compression

    for status, value in parts:
        if status == "failed":
            return "failed", value
    spans = [(p[1][0], p[1][1], path) for p, path in zip(parts, part_paths)]
    H, W, channels = plan["height"], plan["width"], plan["channels"]
    profile = dict(driver="GTiff", width=W, height=H, count=channels, dtype="uint8", crs=plan["src_crs"],
                   transform=plan["transform"], tiled=True, blockxsize=_PROB_BLOCK, blockysize=_PROB_BLOCK, BIGTIFF="IF_SAFER",
                   **_compression())
    tmp = f"{prob_path}.{os.getpid()}.tmp.tif"
    step = _PROB_BLOCK * 4  # rows assembled at a time (whole blocks)
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


def _blocks_task(plan: dict[str, Any], assembled: tuple[str, Any], prob_path: str, cores: list[tuple[int, int]]) -> tuple[str, Any]:
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


def _write_task(scene: str, out: str, plan: dict[str, Any], assembled: tuple[str, Any], blocks: list[tuple[str, Any]],
                work: str, t0: float) -> tuple[str, Any]:
    """The split scene's GeoPackage, blocks in the single-process order; returns ``("done", SceneResult)``."""
    import shapely
    from pyproj import CRS

    from rooftrace.inference.provenance import _crs_name
    from rooftrace.scenes.predict import SceneResult
    from rooftrace.scenes.writers import FeatureWriter, scene_area_km2

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
        height=plan["src_height"], crs=_crs_name(crs) if crs is not None else None, pixel_size=(abs(st.a), abs(st.e)),
        area_km2=scene_area_km2(plan["src_width"], plan["src_height"], st, crs), bands=plan["bands_text"],
        n_windows=plan["n_windows"], n_windows_nodata=int(assembled[1]), n_truncated=truncated, seconds_inference=float("nan"),
        seconds_postprocess=float("nan"), seconds=seconds, gsd_input=plan["gsd_input"], gsd_source=plan["gsd_source"],
        gsd_model=plan["gsd_model"], scale=plan["scale"],
        notes=[*plan["notes"], "split across workers: the inference and post-processing times are in the total"],
    )


# ---------------------------------------------------------------------------------------------
# The client side


@dataclass
class DaskScenesResult:
    """What :func:`predict_scenes_dask` did.

    Attributes:
        out_dir: The output folder; per-scene GeoPackages are in ``out_dir/scenes``.
        merged: The merged layer (``None`` when no scene was done).
        results: Scenes predicted in this run; ``split``: those of them split across workers.
        skipped: Scenes already done (their GeoPackage opened), not redone.
        failed: ``(scene, message)`` for scenes that failed (bad input, or a task that failed again
            after its retry) or could not join the merged layer.
        n_merged: Buildings in the merged layer; ``crs``: its CRS.
    """

    out_dir: Path
    merged: Path | None = None
    results: list[Any] = field(default_factory=list)
    split: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    n_merged: int = 0
    crs: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"dask: {len(self.results)} scene(s) predicted ({len(self.split)} split across workers), {len(self.skipped)} "
                 f"already done, {len(self.failed)} failed, in {self.seconds:.1f} s; per-scene outputs in {self.out_dir / 'scenes'}"]
        lines += [f"  {r.scene.name}: {r.n_buildings} buildings, {r.seconds:.1f} s" for r in self.results]
        lines += [f"  failed {p}: {msg}" for p, msg in self.failed]
        if self.merged is not None:
            lines.append(f"{self.n_merged} buildings merged into {self.merged} (layer {MERGED_LAYER!r}, {self.crs or 'no CRS'})")
        return "\n".join(lines)


def scene_done(path: Path) -> bool:
    """Whether a per-scene GeoPackage is finished: not empty and it opens (a partial file does not)."""
    try:
        if path.stat().st_size == 0:
            return False
        import pyogrio

        pyogrio.read_info(path)
        return True
    except Exception:  # noqa: BLE001 - missing, truncated, not a GeoPackage: not done
        return False


def _model_spec(model: Any, device: str, tta: bool, precision: str, normalization: Any) -> ModelSpec:
    from rooftrace.inference.runtime import ModelRunner

    if model is None:
        from rooftrace.models.files import shipped_model

        model = shipped_model()
    if isinstance(model, (str, Path)):
        path = Path(model).resolve()
        if not path.is_file():
            raise RooftraceError(f"{model}: no such model file")
        return ModelSpec(str(path), sha256_file(path), device, tta, precision)
    if isinstance(model, ModelRunner) or hasattr(model, "model") and hasattr(model, "channels"):
        raise RooftraceError("predict_scenes_dask: give the model as a file (each worker loads it once) or a callable")
    if not callable(model):
        raise RooftraceError(f"model {model!r}: expected a model file or a callable")
    return ModelSpec(None, None, device, tta, precision, fn=model, normalization=normalization)


def _pixels(path: Path) -> int | None:
    import rasterio

    try:
        with rasterio.open(path) as src:
            return int(src.width) * int(src.height)
    except Exception:  # noqa: BLE001 - an unreadable scene fails in its task, with the scene's own message
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if name == "KilledWorker":
        return f"the workers running it died ({text})"
    return f"{name}: {text}" if text else name


def make_client(scheduler: str | None = None, n_workers: int | None = None) -> tuple[Any, Any]:
    """A Dask client: to ``scheduler`` (``tcp://host:8786``, or a scheduler file path), else a
    LocalCluster of ``n_workers`` worker processes with one thread each. Returns ``(client, cluster)``;
    close both (``cluster`` is ``None`` when connecting to an existing scheduler)."""
    distributed = _need_dask()
    if scheduler is not None:
        try:
            if os.path.isfile(scheduler):
                return distributed.Client(scheduler_file=scheduler, timeout="30s"), None
            return distributed.Client(scheduler, timeout="30s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise RooftraceError(f"--scheduler {scheduler}: cannot connect ({_describe(exc)})") from None
    n = n_workers or 1
    if n < 1:
        raise RooftraceError(f"--dask-workers {n}: must be at least 1")
    with keep_environ():
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    return distributed.Client(cluster), cluster


@contextlib.contextmanager
def keep_environ() -> Iterator[None]:
    """Restore this process's environment afterwards: Dask's nanny sets ``OMP_NUM_THREADS=1`` (and
    more) in the *parent* process to pass them to its workers, which would silently make every later
    subprocess of the caller single-threaded."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def predict_scenes_dask(
    scenes: Sequence[str | Path],
    out_dir: str | Path,
    model: Any = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    crs: str | None = None,
    split_above: int = DEFAULT_SPLIT_ABOVE,
    windows_per_task: int = DEFAULT_WINDOWS_PER_TASK,
    blocks_per_task: int = DEFAULT_BLOCKS_PER_TASK,
    retries: int = 1,
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    normalization: Any = None,
    force: bool = False,
    merged: str = MERGED_NAME,
    **kwargs: Any,
) -> DaskScenesResult:
    """Predict many scenes on a Dask cluster and merge them into one layer.

    Args:
        scenes: Files, folders and ``.txt`` lists (see :func:`rooftrace.scenes.batch.list_scenes`).
        out_dir: Output folder: ``scenes/<scene>.gpkg`` per scene and ``footprints.gpkg`` (``merged``).
        model: A model file (default the shipped model), loaded once per worker, or a callable.
        client: A ``distributed.Client``; else one to ``scheduler``, else a LocalCluster of
            ``n_workers`` processes (one thread each), closed at the end.
        crs: The merged layer's CRS (``EPSG:4326``, WKT, ...); default the first scene's.
        split_above: Scenes of more pixels (width x height of the file) are split across workers.
        windows_per_task, blocks_per_task: Size of a split scene's phase-1 and phase-2 tasks.
        retries: How many times Dask reruns a task that raised (a worker that dies is handled by
            Dask's own rescheduling).
        force: Redo scenes whose output exists.
        kwargs: As for :func:`rooftrace.scenes.predict.predict_scene` (tile, overlap, batch_size, bands, stretch,
            method, settings, block, margin, gsd, max_group).

    Raises:
        RooftraceError: No scenes, two scenes with one stem, a bad option, no Dask, or a scheduler
            that cannot be reached; with ``--strict``, the first scene that fails.
    """
    from rooftrace.imagery.resample import check_gsd
    from rooftrace.scenes.batch import check_unique_stems, list_scenes
    from rooftrace.scenes.blocks import block_cores

    t_start = time.perf_counter()
    check_gsd(kwargs.get("gsd"))
    for name in ("windows_per_task", "blocks_per_task"):
        if locals()[name] < 1:
            raise RooftraceError(f"{name} {locals()[name]}: must be at least 1")
    target_crs = _parse_crs(crs)
    every = list_scenes(scenes)
    check_unique_stems(every)
    out_dir = Path(out_dir)
    scene_dir = out_dir / "scenes"
    try:
        scene_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooftraceError(f"{scene_dir}: cannot create it ({exc.strerror})") from None
    result = DaskScenesResult(out_dir)
    todo = [p for p in every if force or not scene_done(scene_dir / f"{p.stem}.gpkg")]
    result.skipped = [p for p in every if p not in todo]
    if todo:
        spec = _model_spec(model, device, tta, precision, normalization)
        own_client, own_cluster = None, None
        if client is None:
            own_client, own_cluster = make_client(scheduler, n_workers)
            client = own_client
        try:
            _run(client, spec, todo, scene_dir, out_dir, result, kwargs, split_above, windows_per_task, blocks_per_task, retries,
                 block_cores)
        finally:
            if own_client is not None:
                own_client.close()
            if own_cluster is not None:
                own_cluster.close()
    done = [p for p in every if scene_done(scene_dir / f"{p.stem}.gpkg")]
    if done:
        result.merged, result.n_merged, result.crs = merge_scenes(
            [(p.stem, scene_dir / f"{p.stem}.gpkg") for p in done], out_dir / merged, target_crs, result.failed)
    result.seconds = time.perf_counter() - t_start
    return result


def _run(client: Any, spec: ModelSpec, todo: list[Path], scene_dir: Path, out_dir: Path, result: DaskScenesResult,
         kwargs: dict[str, Any], split_above: int, windows_per_task: int, blocks_per_task: int, retries: int, block_cores: Any) -> None:
    distributed = _need_dask()
    run_id = uuid.uuid4().hex[:8]
    opts = dict(retries=retries, pure=False)
    waiting: dict[Any, tuple[str, Path]] = {}  # future -> (kind, scene)
    for p in todo:
        out = scene_dir / f"{p.stem}.gpkg"
        px = _pixels(p)
        if px is not None and px > split_above:
            f = client.submit(_plan_task, spec, str(p), kwargs, key=f"plan-{p.stem}-{run_id}", **opts)
            waiting[f] = ("plan", p)
        else:
            f = client.submit(_scene_task, spec, str(p), str(out), kwargs, key=f"scene-{p.stem}-{run_id}", **opts)
            waiting[f] = ("scene", p)
    started = {p: time.time() for p in todo}
    ac = distributed.as_completed(list(waiting))
    for fut in ac:
        kind, p = waiting.pop(fut)
        try:
            status, value = fut.result()
        except Exception as exc:  # noqa: BLE001 - a task that failed after its retries, or whose workers died
            status, value = "failed", _describe(exc)
        if status == "failed":
            result.failed.append((p, value))
            if is_strict():
                client.cancel(list(waiting))
                raise RooftraceError(f"{p}: {value}")
            continue
        if kind == "plan":
            ac.add(_submit_split(client, spec, p, value, scene_dir, out_dir, windows_per_task, blocks_per_task, opts, run_id,
                                 started[p], block_cores, waiting))
            result.split.append(p)
            continue
        result.results.append(value)
        for tmp in scene_dir.glob(f".{p.stem}.*.tmp.gpkg*"):  # left by a worker that died while writing it
            tmp.unlink(missing_ok=True)


def _submit_split(client: Any, spec: ModelSpec, p: Path, plan: dict[str, Any], scene_dir: Path, out_dir: Path, windows_per_task: int,
                  blocks_per_task: int, opts: dict[str, Any], run_id: str, t0: float, block_cores: Any, waiting: dict) -> Any:
    """Submit a split scene's tasks (windows, assembly, blocks, writing); returns the writing task's future."""
    work = out_dir / ".work" / f"{p.stem}-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    bs = plan["batch_size"]
    step = max(1, windows_per_task // bs) * bs  # a multiple of the batch: the model sees stitch_scene's batches
    n = plan["n_windows"]
    ranges = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    part_paths = [str(work / f"part-{k:05d}.tif") for k in range(len(ranges))]
    parts = [client.submit(_window_task, spec, str(p), plan, lo, hi, path, key=f"windows-{p.stem}-{k}-{run_id}", **opts)
             for k, ((lo, hi), path) in enumerate(zip(ranges, part_paths))]
    prob_path = str(work / "probabilities.tif")
    assembled = client.submit(_assemble_task, plan, parts, part_paths, prob_path, key=f"assemble-{p.stem}-{run_id}", **opts)
    cores = block_cores(plan["height"], plan["width"], plan["block"])
    chunks = [cores[k:k + blocks_per_task] for k in range(0, len(cores), blocks_per_task)]
    blocks = [client.submit(_blocks_task, plan, assembled, prob_path, chunk, key=f"blocks-{p.stem}-{k}-{run_id}", **opts)
              for k, chunk in enumerate(chunks)]
    written = client.submit(_write_task, str(p), str(scene_dir / f"{p.stem}.gpkg"), plan, assembled, blocks, str(work), t0,
                            key=f"write-{p.stem}-{run_id}", **opts)
    waiting[written] = ("write", p)
    return written


# ---------------------------------------------------------------------------------------------
# One layer


def _parse_crs(crs: str | None) -> Any:
    if crs is None:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(crs)
    except CRSError:
        raise RooftraceError(f"--crs {crs!r}: not a CRS pyproj knows (try EPSG:4326 or EPSG:3857)") from None


def merged_provenance(items: Sequence[tuple[str, dict[str, Any] | None]], crs: Any) -> dict[str, Any]:
    """The merged layer's provenance: each scene's own (``scenes``, by name), with what they all share
    (model, post-processing) also at the top; ``crs`` is the merged layer's."""
    from rooftrace.core.version import __version__
    from rooftrace.inference.provenance import FIELDS, _crs_name

    scenes = {stem: prov for stem, prov in items}
    known = [p for p in scenes.values() if p]
    prov: dict[str, Any] = {"software": f"rooftrace {__version__}", "rooftrace_version": __version__}
    shared = []
    for key in ("model", "postprocessing"):
        values = {json.dumps(p.get(key), sort_keys=True) for p in known}
        if len(values) == 1 and len(known) == len(scenes):
            prov[key] = json.loads(values.pop())
            shared.append(key)
        else:
            prov[key] = "differs by scene (see scenes)" if known else None
    prov["source"] = {"scenes": len(scenes)}
    prov["crs"] = _crs_name(crs) if crs is not None else None
    prov["fields"] = {"scene": "the scene (file stem) the building was predicted in", **FIELDS}
    # per scene: what is not shared (its raster and CRS, at least), or None for a file written without provenance
    prov["scenes"] = {stem: {k: v for k, v in p.items() if k not in (*shared, "software", "rooftrace_version", "fields")} if p else None
                      for stem, p in scenes.items()}
    return prov


def merge_scenes(items: Sequence[tuple[str, Path]], out: Path, crs: Any = None,
                 failed: list[tuple[Path, str]] | None = None) -> tuple[Path, int, str | None]:
    """Per-scene GeoPackages into one layer ``footprints`` with a ``scene`` field, written atomically.

    ``crs`` (a pyproj CRS) defaults to the first scene's; other scenes are reprojected to it.
    Each building keeps its ``score`` and ``area_m2`` (ground square metres, the same in any CRS;
    measured here, in the scene's own CRS, for a scene file written before rooftrace wrote it).
    The layer's metadata holds :func:`merged_provenance` (item ``rooftrace``), from each scene's
    own. A scene without a CRS cannot join a layer with one: it is appended to ``failed``.
    Returns ``(path, buildings, CRS name)``.
    """
    import pyogrio
    import pyogrio.raw
    import shapely
    from pyproj import CRS, Transformer

    from rooftrace.geometry.areas import area_m2
    from rooftrace.inference.provenance import (
        _crs_name,
        provenance_metadata,
        read_provenance,
    )

    if out.suffix.lower() != ".gpkg":
        raise RooftraceError(f"{out}: the merged layer is a GeoPackage; name it .gpkg")
    failed = failed if failed is not None else []
    infos = [(stem, path, pyogrio.read_info(path)) for stem, path in items]
    if crs is None and infos:
        first = infos[0][2].get("crs")
        crs = CRS.from_user_input(first) if first else None
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    for q in out.parent.glob(tmp.name + "*"):
        q.unlink(missing_ok=True)
    names_out = ["scene", "score", "area_m2"]
    joined: list[tuple[str, dict[str, Any] | None]] = []
    count, started = 0, False
    wkt = crs.to_wkt() if crs is not None else None

    def write(geoms: np.ndarray, fields: list[np.ndarray]) -> None:
        nonlocal started
        meta = {} if started else {"layer_metadata": provenance_metadata(merged_provenance(joined, crs))}
        pyogrio.raw.write(tmp, shapely.to_wkb(geoms) if len(geoms) else np.empty(0, dtype=object), fields, names_out,
                          layer=MERGED_LAYER, driver="GPKG", geometry_type="Polygon", crs=wkt, append=started, **meta)
        started = True

    try:
        accepted = []
        for stem, path, info in infos:
            src_crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
            if (src_crs is None) != (crs is None):
                failed.append((path, f"has no CRS, so it cannot join the merged layer in {_crs_name(crs)}" if src_crs is None
                               else "the merged layer has no CRS (the first scene had none); give --crs"))
                continue
            accepted.append((stem, path, src_crs))
            try:
                joined.append((stem, read_provenance(path)))
            except Exception:  # noqa: BLE001 - a scene file without (readable) provenance still joins
                joined.append((stem, None))
        for stem, path, src_crs in accepted:
            meta, _, wkb, fields = pyogrio.raw.read(path)
            by_name = dict(zip(list(meta["fields"]), fields))
            geoms = shapely.from_wkb(wkb) if len(wkb) else np.empty(0, dtype=object)
            area = np.asarray(by_name["area_m2"], dtype=np.float64) if "area_m2" in by_name else area_m2(geoms, src_crs)
            if crs is not None and src_crs is not None and not src_crs.equals(crs):
                tr = Transformer.from_crs(src_crs, crs, always_xy=True)
                geoms = shapely.transform(geoms, lambda xy, tr=tr: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            score = np.asarray(by_name["score"], dtype=np.float64) if "score" in by_name else np.zeros(len(geoms))
            if len(geoms) == 0 and started:
                continue
            write(geoms, [np.asarray([stem] * len(geoms), dtype=object), score, area])
            count += len(geoms)
        if not started:  # every scene was refused: an empty layer still says what the run gave
            write(np.empty(0, dtype=object), [np.empty(0, dtype=object), np.empty(0), np.empty(0)])
        os.replace(tmp, out)
    except BaseException:
        for q in out.parent.glob(tmp.name + "*"):
            q.unlink(missing_ok=True)
        raise
    return out, count, _crs_name(crs) if crs is not None else None


__all__ = [
    "DEFAULT_SPLIT_ABOVE", "DaskScenesResult", "ModelSpec", "make_client", "merge_scenes", "model_loads", "predict_scenes_dask",
    "scene_done", "worker_runner",
]
