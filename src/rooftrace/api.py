"""The Python API: load a model, give it an image, get buildings.

    import rooftrace

    model = rooftrace.load_model()                  # the shipped model; or load_model("m.safetensors" / "m.onnx")
    gdf = model.predict("tile.png")                  # a GeoDataFrame: geometry, score, area_m2, for every input kind
    gdf = model.predict("scene_chip.tif")            # georeferenced input: in the raster's CRS, area_m2 in m²
    found = model.footprints("tile.png")             # the richer result: pixel polygons, instance ids, georeference
    many = model.predict_batch(["a.png", "b.png"])   # one GeoDataFrame per image
    result = model.predict_scene("city.tif", "city.gpkg")  # a raster of any size, window by window, to a GIS file
    city = result.to_geodataframe()                  # the footprints it wrote; result.summary() says what it did

Every input gives the same kind of result, a GeoDataFrame with ``geometry``, ``score`` and ``area_m2``:

- georeferenced (a GeoTIFF, a world file, a web-map tile name, a rasterio dataset with a CRS): in its CRS,
  ``area_m2`` the ground area in square metres;
- not georeferenced (a PNG, an array): in pixel coordinates (x = column, y = row), ``crs`` ``None`` and
  ``gdf.attrs["coordinates"] == "pixel"``; ``area_m2`` from ``input_gsd=`` when given, else NaN.

Two pixel sizes, named apart: ``input_gsd``, the image's (``predict(..., input_gsd=0.15)``; ``gsd=``, its older
name, is still taken), and ``model_gsd``, the one the model was trained at (:attr:`Model.model_gsd`).

``gdf.attrs`` also holds ``postprocessing`` (the one line saying what was used) and ``warnings`` (inputs outside
the model card, also raised as :class:`rooftrace.inference.card.ModelCardWarning`).

Everything goes through the same code as the command line (:mod:`rooftrace.inference.runtime` for the
network, :mod:`rooftrace.instances.postprocess` with the model's tuned settings), so ``model.predict(path)``
gives the same buildings as ``rooftrace predict`` gives for that tile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Union

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.memory import TILE_BYTES_PER_PIXEL, check_pixels
from rooftrace.imagery.georef import Georef, locate_image
from rooftrace.imagery.read import read_rgb, stretch_to_uint8
from rooftrace.imagery.resample import check_resampled, checked_input_gsd, footprints_to_grid, place_georef
from rooftrace.inference import card
from rooftrace.inference.runtime import ModelRuntime, load_runtime, make_runner
from rooftrace.inference.tuned import SettingsArg, used_postprocessing
from rooftrace.instances.postprocess import PostprocessSettings, postprocess

if TYPE_CHECKING:  # pragma: no cover
    import geopandas
    import rasterio
    from shapely.geometry import Polygon

    from rooftrace.scenes.predict import SceneResult

#: What :meth:`Model.predict` takes: an ``(H, W, 3)`` uint8 array, an image file, or an open rasterio dataset.
ImageInput = Union[np.ndarray, str, Path, "rasterio.DatasetReader"]


@dataclass
class Footprints:
    """The buildings found in one image, in pixel coordinates: ``(column, row)`` with ``(0, 0)`` at the
    top-left corner of the top-left pixel (DESIGN.md). Iterates over ``(polygon, score)`` pairs.
    :meth:`Model.footprints` gives it; :meth:`to_geodataframe` turns it into what :meth:`Model.predict` gives."""

    polygons: list[Polygon]
    scores: list[float]
    width: int
    height: int
    #: The instance-id raster (0 = background), when post-processing made one.
    instances: np.ndarray | None = field(default=None, repr=False)
    #: Where the image lies (``None``: not georeferenced).
    georef: Georef | None = None
    #: The image's pixel size in metres when known (its georeference's, or ``input_gsd=``).
    input_gsd: float | None = None
    #: The post-processing used, in one line.
    postprocessing: str = ""
    #: Model-card warnings about this input (:mod:`rooftrace.inference.card`).
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.polygons)

    @property
    def gsd(self) -> float | None:
        """The older name of :attr:`input_gsd`, still read (and the key ``to_geodataframe`` writes into ``attrs``)."""
        return self.input_gsd

    def __iter__(self) -> Iterator[tuple[Polygon, float]]:
        return iter(zip(self.polygons, self.scores))

    def to_geodataframe(self, georef: Georef | None = None) -> geopandas.GeoDataFrame:
        """A GeoDataFrame with ``geometry``, ``score`` and ``area_m2`` per building.

        In ``georef``'s CRS (default the image's own georeference) with ``area_m2`` in ground square metres;
        for an image that is not georeferenced, in pixel coordinates with no CRS, ``attrs["coordinates"] ==
        "pixel"``, and ``area_m2`` from the pixel size when it is known (else NaN).
        """
        import geopandas

        from rooftrace.geometry.areas import area_m2
        from rooftrace.imagery.georef import pixels_to_map

        georef = georef if georef is not None else self.georef
        geoms = list(self.polygons)
        scores = np.asarray(self.scores, dtype=float)
        if georef is not None:
            coeffs = np.tile(np.asarray(tuple(georef.transform)[:6], dtype=np.float64), (len(geoms), 1))
            geoms = list(pixels_to_map(np.asarray(geoms, dtype=object), coeffs)) if geoms else []
            areas = area_m2(np.asarray(geoms, dtype=object), georef.crs) if geoms else np.zeros(0)
            gdf = geopandas.GeoDataFrame({"score": scores, "area_m2": areas}, geometry=geoms, crs=georef.crs)
            gdf.attrs["coordinates"] = "map"
        else:
            px = np.asarray([p.area for p in geoms], dtype=float)
            areas = px * self.input_gsd ** 2 if self.input_gsd else np.full(len(geoms), np.nan)
            gdf = geopandas.GeoDataFrame({"score": scores, "area_m2": areas}, geometry=geoms, crs=None)
            gdf.attrs["coordinates"] = "pixel"
            gdf.attrs["note"] = ("pixel coordinates (x = column, y = row of the image), not map coordinates; "
                                 + ("area_m2 from the given pixel size" if self.input_gsd else "area_m2 unknown (give input_gsd=)"))
        gdf.attrs.update(width=self.width, height=self.height, gsd=self.input_gsd, postprocessing=self.postprocessing,
                         warnings=list(self.warnings))
        return gdf


@dataclass
class Model:
    """A building-footprint model ready to use; made by :func:`load_model`.

    Attributes:
        runtime: The loaded network and how it runs (device, TTA, precision, tuned post-processing).
    """

    runtime: ModelRuntime

    @property
    def path(self) -> Path:
        """The model file."""
        return self.runtime.path

    @property
    def model_gsd(self) -> float | None:
        """The pixel size in metres the model was trained at; images are resampled to it (``None``: as they are)."""
        return self.runtime.gsd

    @property
    def gsd(self) -> float | None:
        """The older name of :attr:`model_gsd`, still read."""
        return self.model_gsd

    @property
    def postprocessing(self) -> tuple[str, PostprocessSettings | None]:
        """``(method, settings)`` this model's predictions are post-processed with (tuned, else defaults)."""
        return self.runtime.postprocessing()

    def __repr__(self) -> str:
        return f"rooftrace.Model({self.runtime.description}, gsd={self.model_gsd})"

    def predict(self, image: ImageInput, *, input_gsd: float | None = None, method: str | None = None,
                settings: SettingsArg = None, gsd: float | None = None) -> geopandas.GeoDataFrame:
        """Find the buildings in one image.

        Args:
            image: An ``(H, W, 3)`` uint8 RGB array (``(H, W)`` grey is repeated to three bands), an image
                file (GeoTIFF, PNG, JPEG; located by its own georeference or its web-map tile name), or
                an open rasterio dataset.
            input_gsd: The image's pixel size in metres, when it cannot be read from the image (arrays, plain
                PNGs). The image is resampled to the model's pixel size and the buildings brought back.
            method, settings: Post-processing other than the model's tuned one: complete
                :class:`PostprocessSettings`, or a mapping of the settings to change on top of the tuned
                ones (``{"regularise": True}``).
            gsd: The older name of ``input_gsd``, still taken.

        Returns:
            A GeoDataFrame with ``geometry``, ``score`` and ``area_m2`` (see the module docstring): in the image's
            CRS when it is georeferenced, else in pixel coordinates (``attrs["coordinates"] == "pixel"``).
            :meth:`footprints` gives the richer :class:`Footprints` (instance ids, georeference).
        """
        return self.footprints(image, input_gsd=input_gsd, method=method, settings=settings, gsd=gsd).to_geodataframe()

    def footprints(self, image: ImageInput, *, input_gsd: float | None = None, method: str | None = None,
                   settings: SettingsArg = None, gsd: float | None = None) -> Footprints:
        """:meth:`predict`'s buildings as :class:`Footprints`: pixel polygons, scores, the instance-id raster and
        the image's georeference; ``.to_geodataframe()`` gives what :meth:`predict` gives."""
        return self._run([image], input_gsd=checked_input_gsd(input_gsd, gsd), method=method, settings=settings)[0]

    def predict_batch(self, images: Iterable[ImageInput], *, input_gsd: float | None = None, method: str | None = None,
                      settings: SettingsArg = None, gsd: float | None = None) -> list[geopandas.GeoDataFrame]:
        """:meth:`predict` for many images, in order (a file that cannot be read raises its error)."""
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim != 4) or _is_dataset(images):
            if isinstance(images, (str, Path)):
                what = str(images)
            else:
                what = f"an array of shape {images.shape}" if isinstance(images, np.ndarray) else "one rasterio dataset"
            raise RooftraceError(f"predict_batch({what}): expected a list of images (or an (N, H, W, 3) array); "
                                 "for one image call predict()")
        input_gsd = checked_input_gsd(input_gsd, gsd)
        return [f.to_geodataframe() for f in self._run(list(images), input_gsd=input_gsd, method=method, settings=settings)]

    def predict_scene(self, raster: str | Path, out: str | Path, **options: Any) -> SceneResult:
        """Buildings of a georeferenced raster of any size, window by window with memory bounded by the
        window and block sizes, written to ``out`` (``.gpkg``, ``.geojson``, ...) in the raster's CRS.
        ``options`` are those of :func:`rooftrace.scenes.predict.predict_scene` (``bands``, ``tile``,
        ``overlap``, ``settings``, ``force``, ...).

        Returns:
            The :class:`~rooftrace.scenes.predict.SceneResult`: ``.summary()`` says what was done, and
            ``.to_geodataframe()`` reads back the footprints written (geometry, score, area_m2). Model-card
            warnings are also raised as :class:`~rooftrace.inference.card.ModelCardWarning`.
        """
        from rooftrace.scenes.predict import predict_scene

        result = predict_scene(raster, out, model=make_runner(self.runtime), **options)
        card.emit(n for n in result.notes if n.startswith("warning: outside the model card"))
        return result

    def _run(self, images: list[ImageInput], *, input_gsd: float | None, method: str | None, settings: SettingsArg) -> list[Footprints]:
        """Images through the tile engine (:class:`rooftrace.inference.engine.TileEngine`), as ``rooftrace
        predict`` runs tiles: read ahead in a thread, batched by size, post-processed in line; each result
        with its georeference, pixel size, the post-processing used and the model-card warnings. An image of
        more than :data:`rooftrace.inference.runtime.WINDOWED_ABOVE` pixels (at the model's pixel size) runs as
        ``predict-scene`` runs a raster instead (:meth:`_run_windowed`), so memory stays flat in its size.
        ``input_gsd`` is already checked (:func:`checked_input_gsd`)."""
        from rooftrace.inference.engine import TileEngine, prepare_rgb

        used = used_postprocessing(self.runtime, method, settings)
        inputs: dict[int, tuple[np.ndarray, Georef | None, str, Any]] = {}
        out: list[Any] = [None] * len(images)
        small: list[int] = []
        for i, image in enumerate(images):
            large = _windowed_input(image, input_gsd, self.model_gsd)
            if large is None:
                small.append(i)
            else:
                out[i] = self._run_windowed(large, used)

        def read(k: int) -> Any:
            i = small[k]
            image = images[i]
            rgb, georef = _read_input(image)
            where = str(image) if isinstance(image, (str, Path)) else getattr(image, "name", "the array")
            place = place_georef(georef, input_gsd, self.model_gsd, where)
            check_resampled(where, rgb.shape[1], rgb.shape[0], place.factor)  # refused before it is resized
            inputs[k] = (rgb, georef, where, place)
            return prepare_rgb(k, rgb, place)

        def finish(probs: np.ndarray, tile: Any) -> Footprints:
            (H, W), seen = tile.orig, tile.size
            rgb, georef, where, place = inputs.pop(tile.index)
            found = postprocess(probs, method=used.method, settings=used.settings)
            polygons, scores = footprints_to_grid(list(found.footprints), list(found.scores), seen, (H, W))
            return self._result(polygons, scores, (H, W), found.instances if seen == (H, W) else None, georef, where, place,
                                used, rgb, found.n_below_score)

        if small:
            engine = TileEngine(self.runtime, batch_size=8 if len(small) > 1 else 1)
            for tile, result in engine.run(len(small), read, finish):
                out[small[tile.index]] = result
        return out

    def _result(self, polygons: list, scores: Any, size: tuple[int, int], instances: np.ndarray | None, georef: Georef | None,
                where: str, place: Any, used: Any, rgb: np.ndarray | None, n_below_score: int = 0) -> Footprints:
        """One image's :class:`Footprints`, with its model-card warnings (``rgb``: the image, for the colour checks;
        ``n_below_score``: the regions the score filter dropped)."""
        H, W = size
        input_gsd = place.input_gsd if place.gsd_source != "unknown" else None
        areas = [p.area * input_gsd ** 2 for p in polygons] if input_gsd else []
        checks = [card.gsd_warning(input_gsd, self.model_gsd, where),
                  card.size_warning(areas, where) if self.model_gsd is not None else None,
                  card.score_warning(len(polygons), n_below_score, used.settings.min_score, where)]
        if rgb is not None:
            checks[:0] = [card.grey_warning(rgb, where), card.contrast_warning(rgb, where)]
        warned = card.emit(checks)
        return Footprints(polygons, [float(v) for v in scores], W, H, instances, georef=georef, input_gsd=input_gsd,
                          postprocessing=used.describe(), warnings=warned)

    def _run_windowed(self, large: _Windowed, used: Any) -> Footprints:
        """One large image as ``predict-scene`` runs a raster: its windows (512 px, 64 px overlap, batches of 4)
        stitched as uint8 probabilities into a temporary GeoTIFF (:func:`rooftrace.scenes.stitch.stitch_scene`),
        then post-processed in blocks (:func:`rooftrace.scenes.blocks.postprocess_blocks`), each building once.
        Memory is the image (an array's windows are views of it; a file's are read from disk), one strip of
        windows, one block and the buildings. There is no instance-id raster (``instances`` is ``None``)."""
        import tempfile
        import warnings

        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        from rooftrace.imagery.raster import GDAL_CACHE_MB
        from rooftrace.scenes.blocks import block_threads, postprocess_blocks
        from rooftrace.scenes.stitch import stitch_scene

        source = large.source
        polygons: list = []
        scores: list[float] = []
        below = 0
        try:
            with tempfile.TemporaryDirectory(prefix="rooftrace-") as tmp, rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # an array's probabilities are in its pixels
                prob = Path(tmp) / "probabilities.tif"
                stitch_scene(source, make_runner(self.runtime), prob, progress=False)
                for part in postprocess_blocks(prob, method=used.method, settings=used.settings, progress=False,
                                               threads=block_threads()):
                    polygons.extend(part.geoms)
                    scores.extend(part.scores.tolist())
                    below += part.n_below_score
        finally:
            if hasattr(source, "close"):
                source.close()
        polygons, scores = footprints_to_grid(polygons, scores, (source.height, source.width), large.size)
        return self._result(polygons, scores, large.size, None, large.georef, large.where, large.place, used, large.rgb, below)


@dataclass
class _Windowed:
    """An image too large to run in one piece: what :meth:`Model._run_windowed` reads its windows from (an
    :class:`~rooftrace.imagery.raster.ArrayScene`, or a :class:`~rooftrace.imagery.raster.Scene` of the file,
    both at the model's pixel size), its own size ``(H, W)``, georeference and place, and the array itself
    (for the colour checks; ``None`` for a file)."""

    source: Any
    size: tuple[int, int]
    georef: Georef | None
    where: str
    place: Any
    rgb: np.ndarray | None


def _windowed_input(image: ImageInput, input_gsd: float | None, model_gsd: float | None) -> _Windowed | None:
    """``None`` for an image that runs in one piece (:data:`rooftrace.inference.runtime.WINDOWED_ABOVE` pixels or
    fewer at the model's pixel size, or a rasterio dataset); else how to read it window by window. Decided from
    the array's shape or the file's header, before anything is read or copied."""
    from rooftrace.imagery.raster import ArrayScene, Scene
    from rooftrace.imagery.read import PIL_SUFFIXES, open_raster, read_size
    from rooftrace.imagery.resample import resample_rgb
    from rooftrace.inference.runtime import WINDOWED_ABOVE

    def seen(W: int, H: int, factor: float) -> int:
        return max(1, round(W * factor)) * max(1, round(H * factor))

    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        H, W = image.shape[:2]
        place = place_georef(None, input_gsd, model_gsd, "the array")
        if seen(W, H, place.factor) <= WINDOWED_ABOVE:
            return None
        rgb = _as_rgb(image, "the array", copy=False)
        if place.factor != 1.0:
            check_resampled("the array", W, H, place.factor, 3)
            rgb = resample_rgb(np.ascontiguousarray(rgb), place.factor)
        return _Windowed(ArrayScene(rgb), (H, W), None, "the array", place, rgb)
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            W, H = read_size(path)
        except RooftraceError:
            return None  # read as a whole, which says what is wrong with it
        try:
            georef = locate_image(path, W, H)
        except RooftraceError:
            georef = None
        place = place_georef(georef, input_gsd, model_gsd, str(path))
        if seen(W, H, place.factor) <= WINDOWED_ABOVE:
            return None
        if path.suffix.lower() in PIL_SUFFIXES:  # decoded whole (a truncated PNG is an error), then as an array
            rgb = read_rgb(path, 3)
            if place.factor != 1.0:
                check_resampled(path, W, H, place.factor, 3)
                rgb = resample_rgb(rgb, place.factor)
            return _Windowed(ArrayScene(rgb, str(path)), (H, W), georef, str(path), place, rgb)
        with open_raster(path) as src:
            bands = None if src.count >= 3 else (1, 1, 1)
        scene = Scene(path, bands=bands)
        scene.set_scale(place.factor)
        return _Windowed(scene, (H, W), georef, str(path), place, None)
    return None


def load_model(path: str | Path | None = None, *, device: str = "auto", tta: bool = False, precision: str = "auto") -> Model:
    """Load a model for :meth:`Model.predict`.

    Args:
        path: A ``.safetensors`` or ``.onnx`` model file; ``None`` for the model that ships with rooftrace.
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        tta: Average the predictions of the four flips (slower, usually a little better).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    """
    return Model(load_runtime(path, device=device, tta=tta, precision=precision))


def _read_input(image: ImageInput) -> tuple[np.ndarray, Georef | None]:
    """An RGB uint8 array and, when the input says where it lies, its georeference."""
    if isinstance(image, np.ndarray):
        if image.ndim in (2, 3):  # before any copy: the whole image's probabilities and post-processing are in memory
            check_pixels("the array", image.shape[1], image.shape[0], TILE_BYTES_PER_PIXEL,
                         "image in one piece (Model.predict; for rasters this large use predict_scene, window by window)")
        return _as_rgb(image, "the array"), None
    if isinstance(image, (str, Path)):
        path = Path(image)
        rgb = read_rgb(path, TILE_BYTES_PER_PIXEL)
        try:
            georef = locate_image(path, rgb.shape[1], rgb.shape[0])
        except RooftraceError:
            georef = None
        return rgb, georef
    if _is_dataset(image):
        return _read_dataset(image)
    raise RooftraceError(f"{type(image).__name__}: expected an (H, W, 3) uint8 array, an image file or an open rasterio dataset")


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "read") and hasattr(obj, "transform") and hasattr(obj, "count")


def _as_rgb(a: np.ndarray, what: str, copy: bool = True) -> np.ndarray:
    """``a`` as ``(H, W, 3)`` uint8 RGB; with ``copy=False`` a view whenever it can be (a grey image's bands
    repeated by a zero stride), for images read window by window."""
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2) if copy else np.broadcast_to(a[:, :, None], (*a.shape, 3))
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise RooftraceError(f"{what}: shape {a.shape}; expected (H, W, 3) RGB or (H, W) grey")
    if a.dtype != np.uint8:
        raise RooftraceError(f"{what}: dtype {a.dtype}; expected uint8 (0-255). Stretch other data first, e.g. "
                             "rooftrace.imagery.read.stretch_to_uint8(array)")
    if min(a.shape[:2]) < 1:
        raise RooftraceError(f"{what}: empty image {a.shape}")
    return np.ascontiguousarray(a[:, :, :3]) if copy else a[:, :, :3]


def _read_dataset(ds: rasterio.DatasetReader) -> tuple[np.ndarray, Georef | None]:
    """An open rasterio dataset: its first three bands (one band repeated), stretched to uint8 if they
    are not, and its georeference when it has a CRS and a transform."""
    name = getattr(ds, "name", "the dataset")
    if getattr(ds, "closed", False):
        raise RooftraceError(f"{name}: the rasterio dataset is closed; call predict inside its `with rasterio.open(...)` "
                             "block, or pass the path")
    bands = [1, 2, 3] if ds.count >= 3 else [1]
    check_pixels(name, ds.width, ds.height, TILE_BYTES_PER_PIXEL + 3 * np.dtype(ds.dtypes[0]).itemsize)
    data = ds.read(bands)
    if data.dtype != np.uint8:
        data = np.stack([stretch_to_uint8(b) for b in data])
    rgb = _as_rgb(np.moveaxis(data, 0, -1) if len(bands) == 3 else data[0], str(name))
    georef = None
    if ds.crs is not None and not ds.transform.is_identity:
        georef = Georef(ds.crs, ds.transform, ds.width, ds.height, "geotiff")
    return rgb, georef
