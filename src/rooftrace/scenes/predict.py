"""Georeferenced scenes: a large GeoTIFF in, one GIS-ready polygon per building out.

:func:`predict_scene` runs a model over a scene of any size with memory bounded by the tile and
block sizes, not by the scene, and writes the buildings in the raster's CRS (GeoPackage, FlatGeobuf
or GeoParquet; GeoJSON in longitude/latitude), one feature per building with its ``area_m2`` (ground
square metres) and a ``score``, and the run's provenance in the file's metadata
(:mod:`rooftrace.gis.writers`). Two phases:

1. **Inference and stitching.** The scene is read window by window (``tile`` x ``tile`` pixels,
   consecutive windows ``overlap`` pixels apart; the last window of a row or column is shifted
   back to end at the scene's edge, so no window is padded unless the scene is smaller than a
   tile). Windows are batched and read one batch ahead in a thread. Each pixel takes its
   probability from exactly one window: the one it is most central in. Where two windows
   overlap, the overlap is split at its middle (*overlap-and-crop*, raster-vision's rule
   ``crop = (chip - stride) // 2`` for a regular grid), so a network's weak borders are
   never used and nothing is averaged. Rows are stitched one strip of windows at a time and
   written, as uint8 probabilities (1/255 steps), into a tiled, compressed temporary GeoTIFF with
   the scene's georeference: the scene's probabilities live on disk, never in memory.
2. **Post-processing in blocks.** The stitched map is cut into ``block`` x ``block`` *cores*;
   each core is read with a ``margin`` around it and post-processed as a whole
   (:func:`rooftrace.instances.postprocess.postprocess`). Post-processing is local to *groups*: the
   8-connected components of the building mask dilated by one pixel (every step of ``watershed``
   works inside a 4-connected component of the mask, and ``seed``'s 3 x 3 closing reaches one
   pixel). A group is kept by the block whose core holds its *anchor*, its first pixel in raster
   order, which lies in exactly one core, so every building comes out exactly once, neither cut
   nor duplicated. A group that reaches the edge of its read window (within 2 pixels of a side
   that is not the scene's edge) may go on beyond it: its window is grown on those sides,
   doubling, until the group is whole, and the group alone is post-processed there. So a
   building larger than the margin, a warehouse or a terrace of touching houses, is still one
   building. Growth stops at ``max_group`` pixels a side (4,096 px, 1.2 km at 0.3 m): a group
   larger than that is cut there and counted in :attr:`SceneResult.n_truncated`.

Peak memory is the model and one batch of windows (phase 1), one strip of stitched rows
(``3 x tile x width`` bytes: 30 MB for a 20,000-pixel-wide scene), and one block with its
post-processing (2,304 x 2,304 px at the defaults: 64 MB of float32 probabilities plus the
post-processing's working arrays). GDAL's block cache is capped at 128 MB. Measured by
``benchmarks/scene_scale.py``: 0.93 GB at 4,000 x 4,000 px and 1.05 GB at 20,000 x 20,000 px, of
which about 0.63 GB is importing torch.

Bands (:class:`Scene`): three-band uint8 rasters are read as they are (a fourth band is accepted
when it is an alpha band). Any other band count needs a mapping, ``bands=(1, 1, 1)`` for a
panchromatic band or ``(1, 2, 3)`` for the first three bands of a multispectral image. Other
bit depths (uint16, float) are stretched to uint8 band by band between their 2nd and 98th
percentiles, computed once per scene from a decimated read (at most 2,048 pixels a side, served
from overviews when the file has them): per-window percentiles would give each window its own
contrast and the windows would disagree along every seam. Nodata (nodata values, alpha bands,
internal masks, NaN) is read as invalid: invalid pixels are black to the model and have
probability 0, so no building is found on them, and windows with no valid pixel are not run.

Many scenes, many machines: :func:`predict_scenes` takes a list of scenes and a shard ``(i, n)``
and processes scenes ``i, i + n, i + 2n, ...`` of the sorted list, skipping any whose output
exists, so ``n`` independent processes (one per GPU with ``CUDA_VISIBLE_DEVICES``, one per node
of a batch system, or ``n`` tasks of Dask or Ray) share a nation-sized job with no coordination,
and a killed job resumes where it stopped.

Torch is imported only when a model is run, so reading scenes, stitching and post-processing do
not need it.
"""

from __future__ import annotations

import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import rasterio

from rooftrace.core.errors import RooftraceError
from rooftrace.core.locks import OutputLock
from rooftrace.core.paths import check_distinct
from rooftrace.gis.formats import output_format
from rooftrace.gis.provenance import crs_name
from rooftrace.gis.writers import (
    FeatureWriter,
    check_output,
    check_writable,
    scene_area_km2,
    scene_provenance,
    unit_metres,
)
from rooftrace.imagery.raster import DEFAULT_STRETCH, GDAL_CACHE_MB, Scene
from rooftrace.imagery.windows import DEFAULT_OVERLAP, DEFAULT_TILE, check_tiling
from rooftrace.inference.card import band_warning, gsd_warning, score_warning, size_warning
from rooftrace.inference.runtime import ModelRunner, SceneModel, check_streams, make_runner
from rooftrace.inference.tuned import SettingsArg, used_postprocessing
from rooftrace.instances.postprocess import (
    PostprocessSettings,
)
from rooftrace.scenes.blocks import (
    DEFAULT_MARGIN,
    DEFAULT_MAX_GROUP,
    block_threads,
    postprocess_blocks,
)
from rooftrace.scenes.stitch import stitch_scene

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.models.files import LoadedModel


# ---------------------------------------------------------------------------------------------
# The probabilities' temporary file


def probabilities_temp(out: str | Path, work_dir: str | Path | None = None) -> Path:
    """Where :func:`predict_scene` stitches the probabilities of the scene predicted into ``out``: a hidden
    file beside it (``.<out name>.probs.tif``, or in ``work_dir``), never the system's temp folder, so a
    killed run leaves nothing behind that the next run of the same output does not remove."""
    out = Path(out)
    return (Path(work_dir) if work_dir is not None else out.parent) / f".{out.name}.probs.tif"


def _remove_probabilities_temp(path: Path) -> None:
    for p in path.parent.glob(path.name + "*"):  # GDAL's .aux.xml and .ovr sidecars too
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The whole scene


@dataclass
class SceneResult:
    """What :func:`predict_scene` did.

    Attributes:
        scene, out: The raster and the vector file written.
        model: The model that ran (file name and device, or the callable's name).
        n_buildings: Features written.
        width, height: Scene size in pixels.
        crs: The scene's CRS (``EPSG:26914``, or WKT), ``None`` when it has none.
        pixel_size: ``(x, y)`` size of a pixel in map units.
        area_km2: Ground area of the scene.
        bands: How bands were read (:meth:`BandPlan.describe`).
        n_windows, n_windows_nodata: Windows in the grid, and those skipped for having no valid pixel.
        n_truncated: Groups of buildings larger than ``max_group`` pixels, cut there.
        seconds_inference, seconds_postprocess, seconds: Time of phase 1, phase 2 and in all.
        probabilities: Where the stitched probabilities were kept, if asked for.
        gsd_input: The scene's (the input's) pixel size in metres (``None``: unknown), and ``gsd_source`` where
            it came from (``--gsd``, ``geotiff`` or ``unknown``).
        gsd_model: The pixel size the model was trained at (``None``: not recorded). These two keep the
            names :meth:`to_json` writes (JSON summaries do not change); in code they are the input's
            and the model's pixel size, ``input_gsd`` and ``model_gsd``.
        scale: The factor the scene was resampled by before the model saw it (1.0: not resampled);
            the model then saw ``round(width * scale) x round(height * scale)`` pixels.
        notes: Lines about the pixel size, printed by :meth:`summary`.
        n_below_score: Regions the score filter (``min_score``) dropped, each counted once; most of the regions
            found dropped is a model-card warning in :attr:`notes`.
    """

    scene: Path
    out: Path
    model: str
    n_buildings: int
    width: int
    height: int
    crs: str | None
    pixel_size: tuple[float, float]
    area_km2: float | None
    bands: str
    n_windows: int
    n_windows_nodata: int
    n_truncated: int
    seconds_inference: float
    seconds_postprocess: float
    seconds: float
    probabilities: Path | None = None
    gsd_input: float | None = None
    gsd_source: str = "unknown"
    gsd_model: float | None = None
    scale: float = 1.0
    notes: list[str] = field(default_factory=list)
    n_below_score: int = 0

    @property
    def input_gsd(self) -> float | None:
        """:attr:`gsd_input` by the name the code uses for the input's pixel size."""
        return self.gsd_input

    @property
    def model_gsd(self) -> float | None:
        """:attr:`gsd_model` by the name the code uses for the model's pixel size."""
        return self.gsd_model

    def summary(self) -> str:
        """A few lines for the terminal."""
        area = f", {self.area_km2:.2f} km²" if self.area_km2 is not None else ""
        per_km2 = f" ({self.seconds / self.area_km2:.1f} s/km²)" if self.area_km2 else ""
        lines = [
            f"{self.scene}: {self.width} x {self.height} px{area}, {self.crs or 'no CRS'}; {self.bands}",
            f"{self.n_buildings} buildings written to {self.out} in {self.seconds:.1f} s{per_km2} ({self.model}): "
            f"inference {self.seconds_inference:.1f} s over {self.n_windows} windows "
            f"({self.n_windows_nodata} skipped as nodata), post-processing {self.seconds_postprocess:.1f} s",
        ]
        if self.n_truncated:
            lines.append(f"warning: {self.n_truncated} group(s) of touching buildings were larger than the largest window "
                         "and were cut there (raise max_group)")
        if self.probabilities is not None:
            lines.append(f"stitched probabilities kept in {self.probabilities}")
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_geodataframe(self) -> Any:
        """The footprints written to :attr:`out`, read back as a GeoDataFrame (``geometry``, ``score``,
        ``area_m2``), in the output's CRS (``None`` for a scene without one: pixel coordinates)."""
        import warnings

        import geopandas

        if output_format(self.out).write == "parquet":  # pyogrio's GDAL may have no Parquet driver
            return geopandas.read_parquet(self.out)
        with warnings.catch_warnings():  # a scene without a CRS was written without one on purpose
            warnings.simplefilter("ignore")
            gdf = geopandas.read_file(self.out, engine="pyogrio")
        if gdf.crs is None:
            gdf.attrs["coordinates"] = "pixel"
        return gdf

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


def no_crs_warning(scene: Path, out: Path, input_gsd: float | None) -> str:
    """The summary line for a scene without a CRS: its footprints are in its pixels, and its areas known only from ``--gsd``."""
    area = f"area_m2 is from --gsd {input_gsd:g} m" if input_gsd else "area_m2 is empty (give --gsd METRES for ground areas)"
    return (f"warning: {scene.name} has no CRS (no georeference), so {out.name} is in the scene's pixel coordinates "
            f"(x = column, y = row; a GIS would place them near 0, 0) with no CRS, and {area}. Give a georeferenced raster "
            "(a GeoTIFF, or a world file or .aux.xml beside the image) for map coordinates, or use `rooftrace predict` for tiles")


def scene_scale(scene: Scene, input_gsd: float | None, model_gsd: float | None) -> tuple[float, float | None, str, list[str]]:
    """The factor to read a scene at so that its pixels are the model's, and why.

    The rule is tiles' (:func:`rooftrace.imagery.resample.place_georef`): the scene's pixel size is ``input_gsd``
    when given, else measured on the ground from its transform and CRS at its centre
    (:func:`rooftrace.imagery.georef.pixel_size_m`: metres, degrees included), else unknown and taken to
    be the model's. Returns ``(factor, input_gsd, gsd_source, notes)`` (the input's pixel size found);
    the factor is 1.0 when the model records no pixel size or the two are within 2 %.
    """
    from rooftrace.imagery.georef import Georef
    from rooftrace.imagery.resample import place_georef

    geo = Georef(scene.crs, scene.src.transform, scene.src.width, scene.src.height, "geotiff") if scene.crs is not None else None
    place = place_georef(geo, input_gsd, model_gsd, scene.path)  # the one pixel-size rule, as for tiles and the API
    own, g_in, source, factor = place.own_gsd, place.input_gsd, place.gsd_source, place.factor
    notes: list[str] = []
    if input_gsd is not None and own is not None and not 0.5 <= input_gsd / own <= 2.0:
        notes.append(f"note: --gsd {input_gsd:g} overrides the scene's own pixel size, {own:.3g} m, which differs by more than 2x; check --gsd")
    if model_gsd is None:
        if input_gsd is not None:
            notes.append(f"note: the model records no pixel size, so --gsd {input_gsd:g} changes nothing: the scene is read as it is")
    elif g_in is None:
        notes.append(f"note: the scene has no CRS and no --gsd was given: its pixel size was taken to be the model's "
                     f"({model_gsd:.3g} m) and it was not resampled")
    elif factor != 1.0:
        notes.append(f"pixel size: {g_in:.3g} m ({source}) resampled to the model's {model_gsd:.3g} m (x{factor:.3g}): "
                     f"{scene.src.width} x {scene.src.height} px read as {max(1, round(scene.src.width * factor))} x "
                     f"{max(1, round(scene.src.height * factor))}; footprints are in the scene's CRS")
    else:
        notes.append(f"pixel size: {g_in:.3g} m ({source}), the model's {model_gsd:.3g} m; not resampled")
    return factor, g_in, source, notes


def predict_scene(
    scene: str | Path,
    out: str | Path,
    model: str | Path | LoadedModel | ModelRunner | SceneModel | None = None,
    *,
    input_gsd: float | None = None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    bands: str | Sequence[int] | None = None,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    method: str | None = None,
    settings: SettingsArg = None,
    block: int | None = None,
    margin: int = DEFAULT_MARGIN,
    max_group: int = DEFAULT_MAX_GROUP,
    probabilities: str | Path | None = None,
    normalization: Normalization | None = None,
    work_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    gsd: float | None = None,
    streams: int | None = None,
) -> SceneResult:
    """Predict the buildings of a georeferenced scene and write them in its CRS.

    Args:
        scene: The raster (any size; read window by window).
        out: ``.gpkg`` (GeoPackage, recommended), ``.fgb`` (FlatGeobuf), ``.parquet`` (GeoParquet,
            needs pyarrow), all in the scene's CRS, or ``.geojson`` (RFC 7946: reprojected to
            longitude/latitude; refused for a scene without a CRS); one polygon feature per
            building with ``score`` and ``area_m2`` (ground square metres), and the provenance
            (model file and SHA-256, post-processing, scene, rooftrace version, CRS) in the
            file's metadata (see :mod:`rooftrace.gis.writers`).
        model: A rooftrace model file (``.safetensors`` or ``.onnx``), a loaded model, a :class:`ModelRunner`, or a
            callable (see :data:`SceneModel`); default the shipped model.
        input_gsd: The scene's pixel size in metres (``--input-gsd``), for a scene without a CRS; it
            overrides what the scene's transform says. When the model records the pixel size it
            was trained at, the scene is read resampled to it (:func:`scene_scale`,
            :meth:`Scene.set_scale`): windows, overlap, blocks and the post-processing
            thresholds are then in the model's pixels, and the footprints go to the scene's CRS
            through the resampled view's transform.
        tile, overlap: Window size and overlap in pixels (of the model's pixel size).
        batch_size: Windows per forward pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        tta: Average the four flips.
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (see :mod:`rooftrace.models.autocast`).
        bands: Band mapping (see :class:`Scene`).
        stretch: Percentiles of the per-scene stretch of non-uint8 rasters.
        method, settings: Post-processing; default what ``rooftrace tune`` saved beside the
            model, else ``watershed`` with default settings. ``settings`` as a mapping (what ``--pp``
            gives) changes only the settings it names, on top of those; the summary says what was used.
        block, margin, max_group: Post-processing block geometry (module docstring); ``block`` ``None``: 2,048 px,
            smaller on a scene of fewer blocks than post-processing threads (:func:`rooftrace.scenes.blocks.block_size`).
        probabilities: Also keep the stitched probabilities here (a GeoTIFF, uint8 x 255).
        normalization: For callables: give them normalised float input instead of uint8.
        work_dir: Where the temporary probability GeoTIFF goes (default beside ``out``, as
            ``.<out name>.probs.tif``; one a killed run left is removed by the next run of ``out``).
        force: Overwrite ``out`` (and ``probabilities``).
        progress: Show progress bars.
        gsd: The older name of ``input_gsd``, still taken (``predict_scene(..., gsd=0.5)``).
        streams: Forward passes at once (``None``: 2 on a CPU, else 1; see
            :meth:`rooftrace.inference.runtime.ModelRuntime.streams`). The buildings are the same for any number
            (PyTorch fp32: probabilities within 1e-5, so a pixel at a threshold could differ).

    Raises:
        RooftraceError: Unreadable scene, a band mapping needed, an output that exists, a bad
            option, or a model whose output is not probabilities.
    """
    from rooftrace.imagery.resample import checked_input_gsd

    t0 = time.perf_counter()
    scene, out = Path(scene), Path(out)
    input_gsd = checked_input_gsd(input_gsd, gsd)
    check_tiling(tile, overlap)
    check_streams(streams)
    # Before anything runs: no output is an input or another output (resolved paths, links followed).
    check_distinct({"scene": scene, "--model": model if isinstance(model, (str, Path)) else None},
                   {"--out": out, "--probabilities": probabilities})
    check_output(out, force)
    if probabilities is not None and Path(probabilities).suffix.lower() not in (".tif", ".tiff"):
        raise RooftraceError(f"{probabilities}: --probabilities is written as a GeoTIFF, so its name must end in .tif or "
                             f".tiff (a GeoTIFF under a {Path(probabilities).suffix or 'bare'} name would mislead whoever "
                             "opens it); nothing was predicted")
    if probabilities is not None and Path(probabilities).exists() and not force:
        raise RooftraceError(f"{probabilities}: already exists; pass --force to overwrite it")
    # Before the model is loaded or the scene read: an output that cannot be written stops at once.
    check_writable(out.parent, out)
    if probabilities is not None:
        check_writable(Path(probabilities).parent, probabilities)
    prob_path = probabilities_temp(out, work_dir)
    if work_dir is not None:
        check_writable(work_dir, prob_path)
    # One run at a time writes ``out`` and its sidecars: a second stops here, before it touches the first's files.
    with OutputLock(out, what="--out"), OutputLock(probabilities, what="--probabilities") if probabilities else nullcontext():
        _remove_probabilities_temp(prob_path)  # what a killed run of this output left (no live run holds it)
        return _run_scene(scene, out, model, input_gsd, tile, overlap, batch_size, device, tta, precision, bands, stretch, method,
                          settings, block, margin, max_group, probabilities, normalization, force, progress, prob_path, t0,
                          streams)


def _run_scene(scene: Path, out: Path, model: Any, input_gsd: float | None, tile: int, overlap: int, batch_size: int, device: str,
               tta: bool, precision: str, bands: Any, stretch: tuple[float, float], method: str | None,
               settings: PostprocessSettings | None, block: int | None, margin: int, max_group: int, probabilities: str | Path | None,
               normalization: Normalization | None, force: bool, progress: bool, prob_path: Path, t0: float,
               streams: int | None = None) -> SceneResult:
    """:func:`predict_scene` once its checks have passed and its outputs are locked."""
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Scene(scene, bands=bands, percentiles=stretch) as sc:
        runner = model if isinstance(model, ModelRunner) else make_runner(model, device=device, tta=tta, normalization=normalization, precision=precision)
        used = used_postprocessing(runner.runtime, method, settings)
        method, settings = used.method, used.settings
        factor, input_gsd, gsd_source, notes = scene_scale(sc, input_gsd, runner.gsd)
        notes.insert(0, used.describe())
        if runner.runtime is not None:
            notes.insert(1, runner.runtime.runtime_line)
        if sc.crs is None:
            notes.append(no_crs_warning(scene, out, input_gsd if gsd_source == "--gsd" else None))
        notes.extend(w for w in (band_warning(sc.plan.bands, scene.name), gsd_warning(input_gsd, runner.gsd, scene.name)) if w)
        sc.set_scale(factor)
        prov = scene_provenance(runner, method, settings, scene, sc.crs)
        prov["postprocessing"].update(used.to_json())
        writer = FeatureWriter(out, sc.crs, sc.transform, force=force, provenance=prov,
                               metres_per_unit=unit_metres(sc.crs, input_gsd, sc.src.transform))
        try:
            stats = stitch_scene(sc, runner, prob_path, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress,
                                 streams=streams)
            t1 = time.perf_counter()
            truncated = below = 0
            for part in postprocess_blocks(prob_path, method=method, settings=settings, block=block, margin=margin,
                                           max_group=max_group, progress=progress, threads=block_threads()):
                writer.add(part.geoms, part.scores)
                truncated += part.n_truncated
                below += part.n_below_score
            written = writer.close()
            if runner.gsd is not None:  # a model card's sizes are of a model that knows its pixel size
                notes.extend(w for w in (size_warning(writer.area_sample, scene.name),) if w)
            notes.extend(w for w in (score_warning(writer.count, below, settings.min_score, scene.name),) if w)
            t2 = time.perf_counter()
            kept = None
            if probabilities is not None:
                kept = Path(probabilities)
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(prob_path), kept)
        except BaseException:
            writer.abort()
            raise
        finally:
            _remove_probabilities_temp(prob_path)
        crs = sc.crs
        st = sc.src.transform
        return SceneResult(
            scene=scene, out=written, model=runner.description, n_buildings=writer.count, width=sc.src.width, height=sc.src.height,
            crs=crs_name(crs) if crs is not None else None, pixel_size=(abs(st.a), abs(st.e)),
            area_km2=scene_area_km2(sc.src.width, sc.src.height, st, crs), bands=sc.plan.describe(),
            n_windows=stats.n_windows, n_windows_nodata=stats.n_skipped, n_truncated=truncated, n_below_score=below,
            seconds_inference=t1 - t0, seconds_postprocess=t2 - t1, seconds=time.perf_counter() - t0, probabilities=kept,
            gsd_input=input_gsd, gsd_source=gsd_source, gsd_model=runner.gsd, scale=factor, notes=notes,
        )
