"""Many scenes on a Dask cluster: one task per scene, big scenes split across workers, one merged layer.

:func:`predict_scenes_dask` is :func:`rooftrace.scenes.batch.predict_scenes` with Dask
(``dask.distributed``, the optional ``rooftrace[dask]`` extra) as the engine:

- **One task per scene.** Each scene is one task, so a worker that finishes takes the next scene.
  Each worker process loads the model once and keeps it (:func:`rooftrace.scenes.tasks.load_model_file`,
  cached per process by model path, SHA-256, device, TTA and precision), never once per task.
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
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from rooftrace.core.errors import RooftraceError, is_strict
from rooftrace.core.hashing import sha256_file
from rooftrace.core.locks import OutputLock
from rooftrace.gis.formats import FORMATS
from rooftrace.gis.merge import (
    MERGED_FORMAT,
    MERGED_LAYER,
    MERGED_NAME,
    merge_scenes,
    parse_crs,
)
from rooftrace.scenes.tasks import (
    ModelSpec,
    ScenePlan,
    WindowRun,
    assemble_task,
    blocks_task,
    plan_task,
    scene_task,
    window_task,
    write_task,
)

#: Default size above which a scene is split across workers (pixels, width x height): 8,000 x 8,000.
DEFAULT_SPLIT_ABOVE = 64_000_000

#: The suffix of the per-scene outputs on Dask: the merged layer's format (:mod:`rooftrace.gis.formats`).
SCENE_SUFFIX = FORMATS[MERGED_FORMAT].suffix

#: Default windows per phase-1 task and cores per phase-2 task of a split scene.
DEFAULT_WINDOWS_PER_TASK = 64
DEFAULT_BLOCKS_PER_TASK = 4


def _need_dask() -> Any:
    try:
        import distributed
    except ImportError:
        raise RooftraceError("Dask is not installed: pip install 'rooftrace[dask]' (or 'dask[distributed]')") from None
    return distributed


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


def scene_done(path: Path, scene: Path | None = None) -> bool:
    """Whether a per-scene GeoPackage is finished: it opens, reads back whole and carries the provenance of
    ``scene`` (:func:`rooftrace.gis.writers.output_complete`, the rule of the one-process path too)."""
    from rooftrace.gis.writers import output_complete

    return output_complete(path, scene) is None


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


def check_scheduler(scheduler: str | None) -> None:
    """A ``--scheduler`` that is not an address (``tcp://host:8786``, ``host:8786``) is a scheduler file: it must be
    there (Dask would take the missing file's path for an address and say "missing port number").

    Raises:
        RooftraceError: A scheduler file that does not exist or is a folder.
    """
    if scheduler is None or "://" in scheduler or re.fullmatch(r"[\w.\-\[\]:]+:\d+", scheduler):
        return
    if os.path.isdir(scheduler):
        raise RooftraceError(f"--scheduler {scheduler}: a folder; give the scheduler file (dask scheduler "
                             "--scheduler-file FILE writes it) or the scheduler's address, e.g. tcp://host:8786")
    if not os.path.isfile(scheduler):
        raise RooftraceError(f"--scheduler {scheduler}: no such scheduler file, and not an address such as tcp://host:8786; "
                             "nothing was predicted")


def make_client(scheduler: str | None = None, n_workers: int | None = None) -> tuple[Any, Any]:
    """A Dask client: to ``scheduler`` (``tcp://host:8786``, or a scheduler file path), else a
    LocalCluster of ``n_workers`` worker processes with one thread each. Returns ``(client, cluster)``;
    close both (``cluster`` is ``None`` when connecting to an existing scheduler)."""
    check_scheduler(scheduler)
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
            method, settings, block, margin, input_gsd or its older name gsd, max_group).

    Raises:
        RooftraceError: No scenes, two scenes with one stem, a bad option, no Dask, or a scheduler
            that cannot be reached; with ``--strict``, the first scene that fails.
    """
    from rooftrace.imagery.resample import checked_input_gsd
    from rooftrace.scenes.batch import check_unique_stems, list_scenes
    from rooftrace.scenes.blocks import block_cores

    t_start = time.perf_counter()
    kwargs["input_gsd"] = checked_input_gsd(kwargs.get("input_gsd"), kwargs.pop("gsd", None))  # gsd: its older name
    for name in ("windows_per_task", "blocks_per_task"):
        if locals()[name] < 1:
            raise RooftraceError(f"{name} {locals()[name]}: must be at least 1")
    target_crs = parse_crs(crs)
    check_scheduler(scheduler)
    every = list_scenes(scenes)
    check_unique_stems(every)
    out_dir = Path(out_dir)
    scene_dir = out_dir / "scenes"
    try:
        scene_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RooftraceError(f"{scene_dir}: cannot create it ({exc.strerror})") from None
    # One Dask run at a time per --out (a second stops here); an error drops the lock with this frame.
    lock = OutputLock(out_dir, folder=True, what="--out")
    result = DaskScenesResult(out_dir)
    todo = [p for p in every if force or not scene_done(scene_dir / f"{p.stem}{SCENE_SUFFIX}", p)]
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
    done = [p for p in every if scene_done(scene_dir / f"{p.stem}{SCENE_SUFFIX}", p)]
    if done:
        result.merged, result.n_merged, result.crs = merge_scenes(
            [(p.stem, scene_dir / f"{p.stem}{SCENE_SUFFIX}") for p in done], out_dir / merged, target_crs, result.failed)
    result.seconds = time.perf_counter() - t_start
    lock.release()
    return result


def _run(client: Any, spec: ModelSpec, todo: list[Path], scene_dir: Path, out_dir: Path, result: DaskScenesResult,
         kwargs: dict[str, Any], split_above: int, windows_per_task: int, blocks_per_task: int, retries: int, block_cores: Any) -> None:
    distributed = _need_dask()
    run_id = uuid.uuid4().hex[:8]
    opts = dict(retries=retries, pure=False)
    waiting: dict[Any, tuple[str, Path]] = {}  # future -> (kind, scene)
    for p in todo:
        out = scene_dir / f"{p.stem}{SCENE_SUFFIX}"
        px = _pixels(p)
        if px is not None and px > split_above:
            f = client.submit(plan_task, spec, str(p), kwargs, key=f"plan-{p.stem}-{run_id}", **opts)
            waiting[f] = ("plan", p)
        else:
            f = client.submit(scene_task, spec, str(p), str(out), kwargs, key=f"scene-{p.stem}-{run_id}", **opts)
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
        for tmp in scene_dir.glob(f".{p.stem}.*.tmp{SCENE_SUFFIX}*"):  # left by a worker that died while writing it
            tmp.unlink(missing_ok=True)


def _submit_split(client: Any, spec: ModelSpec, p: Path, plan: ScenePlan, scene_dir: Path, out_dir: Path, windows_per_task: int,
                  blocks_per_task: int, opts: dict[str, Any], run_id: str, t0: float, block_cores: Any, waiting: dict) -> Any:
    """Submit a split scene's tasks (windows, assembly, blocks, writing); returns the writing task's future."""
    work = out_dir / ".work" / f"{p.stem}-{run_id}"
    work.mkdir(parents=True, exist_ok=True)
    bs = plan.windows.batch_size
    step = max(1, windows_per_task // bs) * bs  # a multiple of the batch: the model sees stitch_scene's batches
    n = plan.windows.n_windows
    runs = [WindowRun(lo, min(n, lo + step), str(work / f"part-{k:05d}.tif")) for k, lo in enumerate(range(0, n, step))]
    part_paths = [run.part_path for run in runs]
    parts = [client.submit(window_task, spec, str(p), plan, run, key=f"windows-{p.stem}-{k}-{run_id}", **opts)
             for k, run in enumerate(runs)]
    prob_path = str(work / "probabilities.tif")
    assembled = client.submit(assemble_task, plan, parts, part_paths, prob_path, key=f"assemble-{p.stem}-{run_id}", **opts)
    cores = block_cores(plan.windows.height, plan.windows.width, plan.postprocessing.block)
    chunks = [cores[k:k + blocks_per_task] for k in range(0, len(cores), blocks_per_task)]
    blocks = [client.submit(blocks_task, plan, assembled, prob_path, chunk, key=f"blocks-{p.stem}-{k}-{run_id}", **opts)
              for k, chunk in enumerate(chunks)]
    written = client.submit(write_task, str(p), str(scene_dir / f"{p.stem}{SCENE_SUFFIX}"), plan, assembled, blocks, str(work), t0,
                            key=f"write-{p.stem}-{run_id}", **opts)
    waiting[written] = ("write", p)
    return written


# ---------------------------------------------------------------------------------------------
# One layer


__all__ = ["DEFAULT_SPLIT_ABOVE", "DaskScenesResult", "make_client", "predict_scenes_dask", "scene_done"]
