"""Inference on a folder of tiles: batched, optionally with flip TTA, then post-processing and files.

``predict_folder`` reads every tile in a folder (any size; each tile is zero-padded on the bottom and
right to a multiple of 32), runs the model under ``torch.inference_mode`` (channels_last; autocast as
:mod:`rooftrace.precision` decides: bf16 on GPUs and on CPUs with native bf16; optionally
``torch.compile``), or an exported ``.onnx`` model with ONNX Runtime,
averages flipped predictions when asked, turns probabilities into one polygon per building
(:mod:`rooftrace.postprocess`, with the thresholds ``rooftrace tune`` saved beside the model when there
are any), and writes into the output folder:

- ``submission.csv``: BEGC2024 format, one row for every image of the folder, sorted by ImageID;
- ``predictions.coco.json``: COCO results (``image_id`` is the image key);
- georeferenced tiles (a GeoTIFF's own transform, or a web-map tile name such as
  ``OAM-<x>-<y>-<z>.png``): ``predictions.geojson`` in longitude/latitude (RFC 7946, EPSG:4326) and
  ``predictions.gpkg`` in the tiles' CRS, ``image_id``, ``file_name`` and ``score`` per feature;
  the other tiles of a mixed folder in pixels in ``predictions-pixels.geojson``;
- no tile georeferenced: ``predictions.geojson`` in pixel coordinates, ``image_id`` per feature,
  marked ``"rooftrace": {"coordinates": "pixel", ...}`` at the top level;
- ``masks/<stem>.png``: 16-bit instance ids; ``overlays/<stem>.png``: the tile with its polygons.

When the model records the pixel size it was trained at, each tile is resampled to it first and
its footprints are brought back to the tile's own pixels (see :func:`predict_folder`).

Unreadable tiles are reported and skipped, and still get their (empty) row in the submission.

The work is a pipeline whose stages overlap: DataLoader worker processes read, normalise and pad
tiles; the main thread groups tiles of the same padded size into batches (so a 256 x 256 tile is never
padded to a 672 x 672 neighbour's size, and a tile's probabilities depend on nothing but the tile: the
same as at batch size 1) and runs the model (on the CPU, one 512 x 512 tile's worth of pixels per
forward pass, which is faster per tile there than larger batches); a small pool of threads
post-processes each tile and encodes and writes its mask and overlay while the next batch runs.
Post-processing releases the GIL in its heavy parts (OpenCV, numpy, scikit-image, shapely, zlib), so
the threads run alongside inference. On a CPU of up to 4 cores, where inference already fills every
core, the default is to post-process in line instead (a thread beside PyTorch's slows it more than
it saves; see ``benchmarks/predict_speed.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .dataset import Normalization, resize_image
from .export import OnnxModel, is_onnx, load_onnx, onnx_postprocess_settings
from .formats import atomic_write_bytes, atomic_write_text, write_begc_csv, write_coco_results, write_geojson
from .georef import Georef, locate_image
from .imagery import list_images, read_rgb
from .labels import ImageKey, LabelSet, LoadReport, RooftraceError, image_key
from .postprocess import PostprocessSettings, postprocess
from .precision import autocast, autocast_dtype, normalise_precision
from .weights import LoadedModel, load_model

POSTPROCESS_SUFFIX = ".postprocess.json"

#: Largest number of pixels in one PyTorch forward pass on the CPU (one 512 x 512 tile): measured
#: with ``benchmarks/model_speed.py``, every shipped architecture runs as fast or faster per tile at
#: batch 1 than at batch 4 on 512 x 512 tiles there, EfficientNet-B0 twice as fast as at batch 8.
CPU_PIXELS_PER_FORWARD = 512 * 512


def tuned_settings_path(model_path: str | Path) -> Path:
    """Where ``rooftrace tune`` saves post-processing settings for a model: beside it (for an exported
    ``m.onnx``, the same file as for ``m.safetensors``)."""
    p = Path(model_path)
    name = p.name.removesuffix(".onnx") if is_onnx(p) else p.name.removesuffix(".safetensors")
    return p.with_name(name + POSTPROCESS_SUFFIX)


def load_tuned(model_path: str | Path) -> tuple[str | None, PostprocessSettings | None]:
    """``(method, settings)`` saved beside a model by ``rooftrace tune``, or ``(None, None)``."""
    p = tuned_settings_path(model_path)
    if not p.exists():
        return None, None
    try:
        data = json.loads(p.read_text())
        return data.get("method"), PostprocessSettings.from_dict(data["settings"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RooftraceError(f"{p}: not a readable post-processing settings file ({exc})") from None


#: Pixel sizes within this fraction of the model's are used as they are (no resampling).
GSD_TOLERANCE = 0.02


def check_gsd(gsd: float | None) -> float | None:
    """``gsd`` (metres a pixel, from ``--gsd``) checked: ``None`` or a finite number > 0.

    Raises:
        RooftraceError: Zero, negative, infinite or NaN.
    """
    if gsd is None:
        return None
    try:
        value = float(gsd)
    except (TypeError, ValueError):
        raise RooftraceError(f"--gsd {gsd!r}: expected a pixel size in metres, such as 0.3") from None
    if not (np.isfinite(value) and value > 0):
        raise RooftraceError(f"--gsd {gsd:g}: the pixel size must be a number of metres greater than 0, such as 0.3")
    return value


def resample_factor(gsd_in: float | None, gsd_model: float | None, tolerance: float = GSD_TOLERANCE) -> float:
    """How much to scale an image of pixel size ``gsd_in`` so that its pixels are ``gsd_model``:
    ``gsd_in / gsd_model``, or exactly 1.0 when either is unknown or they differ by at most
    ``tolerance`` (2 %)."""
    if not gsd_in or not gsd_model:
        return 1.0
    f = float(gsd_in) / float(gsd_model)
    return 1.0 if abs(f - 1.0) <= tolerance else f


def resample_rgb(rgb: np.ndarray, factor: float) -> np.ndarray:
    """An ``(H, W, 3)`` image scaled by ``factor`` to ``round(W * f) x round(H * f)`` pixels (at
    least 1), as training resamples tiles (:func:`rooftrace.dataset.resize_image`: area averaging when
    shrinking, bilinear when enlarging)."""
    if factor == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    return resize_image(rgb, (max(1, round(h * factor)), max(1, round(w * factor))))


def footprints_to_grid(footprints: list, scores: list, from_size: tuple[int, int],
                       to_size: tuple[int, int]) -> tuple[list, list]:
    """Footprints traced on a resampled image of ``from_size = (h, w)`` pixels brought back to the
    image's own grid of ``to_size = (H, W)`` pixels: scaled by ``(W / w, H / h)`` about the origin
    (the top-left corner), clipped to the image, empty ones dropped (with their scores)."""
    import shapely

    (h, w), (H, W) = from_size, to_size
    if not footprints or (h, w) == (H, W):
        return list(footprints), list(scores)
    arr = np.asarray(footprints, dtype=object)
    scale = np.array([W / w, H / h])
    arr = shapely.transform(arr, lambda xy: xy * scale)
    b = shapely.bounds(arr)
    out = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > W) | (b[:, 3] > H)  # floating-point rounding at the far edges
    if out.any():
        arr[out] = shapely.clip_by_rect(arr[out], 0.0, 0.0, float(W), float(H))
    keep = ~shapely.is_empty(arr) & (shapely.area(arr) > 0)
    return list(arr[keep]), [v for v, k in zip(scores, keep) if k]


@dataclass(frozen=True)
class TilePlace:
    """Where a tile lies and the pixel size it was predicted at.

    Attributes:
        georef: Its georeference (:func:`rooftrace.georef.locate_image`), ``None`` when it has none.
        gsd: Metres a pixel of the input, ``None`` when unknown.
        gsd_source: ``--gsd``, ``geotiff``, ``tile-name`` or ``unknown``.
        own_gsd: The tile's own pixel size from its georeference (also when ``--gsd`` overrides it).
        factor: The scale it was resampled by before the model saw it (1.0: not resampled).
    """

    georef: Georef | None
    gsd: float | None
    gsd_source: str
    own_gsd: float | None
    factor: float


def place_tile(path: Path, width: int, height: int, gsd: float | None = None, model_gsd: float | None = None,
               tms: bool = False) -> TilePlace:
    """Locate a tile and decide its input pixel size and resampling factor (see :func:`predict_folder`)."""
    try:
        geo = locate_image(path, width, height, tms=tms)
    except RooftraceError:
        geo = None
    own = None
    if geo is not None:
        try:
            own = float(geo.gsd())
            own = own if np.isfinite(own) and own > 0 else None
        except Exception:  # noqa: BLE001 - pyproj raises several types for CRSs it cannot bring to WGS84
            own = None
    if gsd is not None:
        g_in, source = gsd, "--gsd"
    elif own is not None:
        g_in, source = own, geo.origin  # type: ignore[union-attr]
    else:
        g_in, source = None, "unknown"
    return TilePlace(geo, g_in, source, own, resample_factor(g_in, model_gsd))


class _Tiles(Dataset):
    """Tiles of a folder as normalised tensors zero-padded (bottom, right) to a multiple of 32; an
    unreadable tile yields its error instead. ``rgb`` (for overlays) only when asked.

    Each tile is located (:func:`place_tile`) and, when its pixel size differs from the model's,
    resampled to it; ``size`` is then the resampled size and ``orig`` the tile's own."""

    def __init__(self, files: list[Path], norm: Normalization, keep_rgb: bool = True, gsd: float | None = None,
                 model_gsd: float | None = None, tms: bool = False):
        self.files, self.norm, self.keep_rgb = files, norm, keep_rgb
        self.gsd, self.model_gsd, self.tms = gsd, model_gsd, tms

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.files[i])
        except RooftraceError as exc:
            return {"index": i, "error": str(exc)}
        H, W = rgb.shape[:2]
        place = place_tile(self.files[i], W, H, self.gsd, self.model_gsd, self.tms)
        seen = resample_rgb(rgb, place.factor)
        h, w = seen.shape[:2]
        x = torch.zeros(3, -(-h // 32) * 32, -(-w // 32) * 32)
        x[:, :h, :w] = torch.from_numpy(self.norm.apply(seen))
        return {"index": i, "image": x, "size": (h, w), "orig": (H, W), "place": place, "rgb": rgb if self.keep_rgb else None}


def _one(tile: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate function for single tiles: as they are (no conversion of ``rgb``)."""
    return tile


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Tiles of one padded size (or several: each is zero-padded to the largest) as one batch."""
    ok = [b for b in batch if "image" in b]
    out: dict[str, Any] = {"errors": [(b["index"], b["error"]) for b in batch if "error" in b], "index": [b["index"] for b in ok],
                           "rgb": [b["rgb"] for b in ok], "size": [tuple(b["size"]) for b in ok],
                           "orig": [tuple(b.get("orig", b["size"])) for b in ok], "place": [b.get("place") for b in ok]}
    if ok:
        H = max(b["image"].shape[1] for b in ok)
        W = max(b["image"].shape[2] for b in ok)
        if all(tuple(b["image"].shape[1:]) == (H, W) for b in ok):
            out["image"] = torch.stack([b["image"] for b in ok])
        else:
            x = torch.zeros(len(ok), 3, H, W)
            for n, b in enumerate(ok):
                x[n, :, : b["image"].shape[1], : b["image"].shape[2]] = b["image"]
            out["image"] = x
    return out


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the GPU when there is one; asking for cuda without one, or for a device torch does
    not know (``gpu``), is a clear error."""
    from .config import check_device

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooftraceError("--device cuda: no CUDA GPU is available here")
    return torch.device(device)


@torch.inference_mode()
def predict_probabilities(loaded: LoadedModel | OnnxModel, x: torch.Tensor, device: torch.device, tta: bool = False,
                          precision: str = "auto") -> np.ndarray:
    """Sigmoid probabilities ``(N, C, H, W)`` for a normalised batch; with ``tta`` the mean over
    identity, horizontal, vertical and both flips. ``loaded`` is a PyTorch model
    (:func:`rooftrace.weights.load_model`) or an exported one (:func:`rooftrace.export.load_onnx`,
    run by ONNX Runtime on its own providers; ``device`` and ``precision`` are not used then).
    ``precision``: see :mod:`rooftrace.precision` (``auto``: bf16 autocast on GPUs and on CPUs with
    native bf16, else fp32)."""
    if isinstance(loaded, OnnxModel):
        onnx = loaded
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))

        def run(inp: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(onnx.predict(inp.numpy()))
    else:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        amp = autocast_dtype(precision, device)
        # On the CPU, forward passes of more than about one 512 x 512 tile are slower per tile (the
        # activations leave the caches), so a batch runs in chunks of at most that many pixels.
        chunk = x.shape[0] if device.type != "cpu" else max(1, CPU_PIXELS_PER_FORWARD // max(1, x.shape[2] * x.shape[3]))

        def forward(inp: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                logits = loaded.model(inp)
            return torch.sigmoid(logits.float())

        def run(inp: torch.Tensor) -> torch.Tensor:
            if inp.shape[0] <= chunk:
                return forward(inp)
            return torch.cat([forward(inp[i : i + chunk]) for i in range(0, inp.shape[0], chunk)])

    if not tta:
        return run(x).cpu().numpy()
    total = run(x)
    for dims in ((3,), (2,), (2, 3)):
        total += run(torch.flip(x, dims)).flip(dims)
    return (total / 4).cpu().numpy()


def load_any(model: str | Path, device: str = "auto", onnx_spinning: bool = True) -> LoadedModel | OnnxModel:
    """A ``.safetensors`` model on ``device`` (channels_last), or an ``.onnx`` model in ONNX Runtime."""
    if is_onnx(model):
        return load_onnx(model, device=device, spinning=onnx_spinning)
    loaded = load_model(model, device=pick_device(device))
    loaded.model.to(memory_format=torch.channels_last)
    return loaded


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
    #: Seconds per stage, summed over tiles: ``wait`` (main thread waiting for tiles), ``inference``,
    #: ``postprocess`` and ``write`` (masks and overlays; summed over the post-processing threads,
    #: which run alongside inference; ``*_cpu``: the same in those threads' CPU time, which does not
    #: count time the thread waited for a core), ``outputs`` (submission, GeoJSON, COCO), ``total``.
    timings: dict[str, float] = field(default_factory=dict)
    #: Tiles an earlier, unfinished run had done (``resume=True``), taken from ``.partial``.
    n_resumed: int = 0
    #: The pixel size in metres the model was trained at (``None``: not recorded; tiles used as they are).
    gsd_model: float | None = None
    #: Per tile (by key): ``gsd`` (metres a pixel of the input, ``None`` when unknown), ``gsd_source``
    #: (``--gsd``, ``geotiff``, ``tile-name``, ``unknown``), ``own_gsd`` and ``factor`` (the scale
    #: it was resampled by before the model saw it; 1.0 when it was not).
    tile_gsd: dict[ImageKey, dict[str, Any]] = field(default_factory=dict)
    #: Where the footprints went in map coordinates: see :class:`MapOutputs` (``None``: no tile is georeferenced).
    map_outputs: MapOutputs | None = None
    #: Lines about pixel sizes and coordinates, printed by :meth:`summary`.
    notes: list[str] = field(default_factory=list)

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


PARTIAL = ".partial"  #: per-tile results of an unfinished run, inside the output folder
#: Output names: footprints in longitude/latitude (or, when no tile is georeferenced, in pixels), in
#: the tiles' CRS, and in pixels for the tiles of a mixed folder that are not georeferenced.
GEOJSON_NAME = "predictions.geojson"
GPKG_NAME = "predictions.gpkg"
PIXEL_GEOJSON_NAME = "predictions-pixels.geojson"
#: Decimals of longitude/latitude in the GeoJSON: 1e-8 degrees is about a millimetre.
LONLAT_DECIMALS = 8


@dataclass
class MapOutputs:
    """The map-coordinate outputs of a folder of tiles (see :func:`write_map_outputs`)."""

    files: list[Path]
    n_located: int  #: tiles with a georeference (each tile that could be read)
    n_unlocated: int  #: readable tiles without one (pixel coordinates only)
    n_features: int
    crs: str  #: the GeoPackage's CRS (the first georeferenced tile's)
    origins: dict[str, int]  #: tiles by where their georeference came from (``geotiff``, ``tile-name``)
    reprojected: list[str] = field(default_factory=list)  #: other tile CRSs, reprojected into ``crs``


def _crs_label(crs: Any) -> str:
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.name


def write_map_outputs(labels: LabelSet, georefs: dict[ImageKey, Georef], out_dir: Path) -> MapOutputs | None:
    """Write the footprints of the georeferenced tiles in map coordinates, atomically.

    - ``predictions.geojson``: RFC 7946 GeoJSON, longitude/latitude (EPSG:4326, no ``crs`` member),
      exterior rings counter-clockwise, 8 decimals; per feature ``image_id``, ``file_name`` and ``score``.
    - ``predictions.gpkg``: a GeoPackage (layer ``predictions``, same fields) in the first
      georeferenced tile's CRS; tiles in another CRS are reprojected into it.

    Footprints go from each tile's pixels through its own affine transform
    (:func:`rooftrace.georef.pixels_to_map`, vectorised over every vertex), then from each CRS to
    the output's (pyproj, x = east). Returns ``None`` (and writes nothing) when no tile is located.
    """
    import pyogrio
    import shapely

    from .georef import WGS84, pixels_to_map, reproject_geoms

    order = [img.key for img in labels if img.key in georefs]
    if not order:
        return None
    first_crs = georefs[order[0]].crs
    groups: dict[str, list[ImageKey]] = {}
    for k in order:
        groups.setdefault(georefs[k].crs.to_wkt(), []).append(k)
    parts_ll, parts_crs, keys_out, scores_out = [], [], [], []
    reprojected = []
    for keys in groups.values():
        crs = georefs[keys[0]].crs
        if crs != first_crs:
            reprojected.append(_crs_label(crs))
        geoms, transforms = [], []
        for k in keys:
            img = labels[k]
            if not img.footprints:
                continue
            t = georefs[k].transform
            geoms.extend(img.footprints)
            transforms.extend([(t.a, t.b, t.c, t.d, t.e, t.f)] * len(img.footprints))
            keys_out.extend([k] * len(img.footprints))
            scores_out.extend(img.scores or [1.0] * len(img.footprints))
        if not geoms:
            continue
        in_crs = pixels_to_map(np.asarray(geoms, dtype=object), np.asarray(transforms))
        parts_crs.append(reproject_geoms(in_crs, crs, first_crs))
        parts_ll.append(reproject_geoms(in_crs, crs, WGS84))
    # features in the tiles' file order (the groups above are by CRS)
    empty = np.empty(0, dtype=object)
    g_crs = np.concatenate(parts_crs) if parts_crs else empty
    g_ll = np.concatenate(parts_ll) if parts_ll else empty
    rank = {k: n for n, k in enumerate(order)}
    sort = np.argsort(np.asarray([rank[k] for k in keys_out], dtype=np.int64), kind="stable")
    g_crs, g_ll = g_crs[sort], g_ll[sort]
    keys_out = [keys_out[n] for n in sort]
    scores = np.asarray([round(float(scores_out[n]), 4) for n in sort], dtype=np.float64)
    names = [labels[k].file_name or "" for k in keys_out]

    # GeoJSON (RFC 7946): lon/lat, right-hand rule, no crs member.
    g_ll = shapely.orient_polygons(shapely.transform(g_ll, lambda xy: np.round(xy, LONLAT_DECIMALS)), exterior_cw=False)
    texts = shapely.to_geojson(g_ll).tolist() if len(g_ll) else []
    feats = [f'{{"type": "Feature", "properties": {{"image_id": {json.dumps(k)}, "file_name": {json.dumps(n)}, '
             f'"score": {sc}}}, "geometry": {t}}}' for k, n, sc, t in zip(keys_out, names, scores.tolist(), texts)]
    head = {"type": "FeatureCollection", "name": "predictions",
            "rooftrace": {"coordinates": "EPSG:4326", "note": "longitude, latitude (RFC 7946); image_id names the tile"}}
    text = json.dumps(head)[:-1] + ', "features": [\n' + ",\n".join(feats) + "\n]}\n"
    files = [atomic_write_text(out_dir / GEOJSON_NAME, text, force=True)]

    # GeoPackage in the (first) tiles' CRS.
    gpkg = out_dir / GPKG_NAME
    tmp = out_dir / f".{gpkg.stem}.{os.getpid()}.tmp.gpkg"
    ids = np.asarray(keys_out, dtype=np.int64) if all(isinstance(k, int) for k in keys_out) else np.asarray([str(k) for k in keys_out], dtype=object)
    kinds = set(shapely.get_type_id(g_crs).tolist()) if len(g_crs) else {3}
    try:
        pyogrio.raw.write(tmp, shapely.to_wkb(g_crs) if len(g_crs) else np.empty(0, dtype=object),
                          [ids, np.asarray(names, dtype=object), scores], ["image_id", "file_name", "score"],
                          layer="predictions", driver="GPKG", geometry_type="Polygon" if kinds == {3} else "Unknown",
                          crs=first_crs.to_wkt())
        os.replace(tmp, gpkg)
    except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:  # a full disk: name the output
        raise RooftraceError(f"{gpkg}: cannot write it ({getattr(exc, 'strerror', None) or str(exc).splitlines()[0]})") from None
    finally:
        for q in tmp.parent.glob(tmp.name + "*"):
            q.unlink(missing_ok=True)
    files.append(gpkg)
    origins: dict[str, int] = {}
    for k in order:
        origins[georefs[k].origin] = origins.get(georefs[k].origin, 0) + 1
    return MapOutputs(files, len(order), 0, len(g_crs), _crs_label(first_crs), origins, reprojected)


def _check_out_dir(out_dir: Path, force: bool, resume: bool = False) -> None:
    partial = out_dir / PARTIAL
    if resume:
        if not (partial / "run.json").exists():
            raise RooftraceError(f"{out_dir}: holds no unfinished predict run to resume (no {PARTIAL}/run.json)")
    elif out_dir.exists() and out_dir.is_dir() and any(out_dir.iterdir()) and not force:
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


def _run_record(model: str | Path, method: str, settings: PostprocessSettings | None, tta: bool, precision: str,
                images: Path, masks: bool, overlays: bool, gsd: float | None = None, tms: bool = False) -> dict[str, Any]:
    """What a resumed run must share with the run it continues."""
    from .models import sha256_file

    return {"model_sha256": sha256_file(Path(model)), "method": method, "settings": (settings or PostprocessSettings()).to_dict(),
            "tta": tta, "precision": precision, "images": str(images.resolve()), "masks": masks, "overlays": overlays,
            "gsd": gsd, "tms": tms}


def _file_stamp(path: Path) -> dict[str, int] | None:
    """What a resumed run compares to tell that a tile changed since its result was recorded."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _tile_record(w: int, h: int, footprints: list, scores: list, place: TilePlace | None = None,
                 stamp: dict[str, int] | None = None) -> str:
    """A finished tile's result (footprints in the tile's own pixels), the pixel size it was predicted
    at, and the size and modification time its file had when it was read (``stamp``)."""
    import shapely

    wkb = shapely.to_wkb(np.asarray(footprints, dtype=object), hex=True).tolist() if footprints else []
    rec: dict[str, Any] = {"width": w, "height": h, "wkb": wkb, "scores": [float(v) for v in scores], "file": stamp}
    if place is not None:
        rec.update(gsd=place.gsd, gsd_source=place.gsd_source, own_gsd=place.own_gsd, factor=place.factor)
    return json.dumps(rec)


def _read_tile_record(path: Path) -> tuple[int, int, list, list, dict[str, Any]] | None:
    """A finished tile's result, or None when there is none or it is unreadable (the tile is then redone)."""
    import shapely

    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        fps = list(shapely.from_wkb(rec["wkb"])) if rec["wkb"] else []
        return int(rec["width"]), int(rec["height"]), fps, [float(v) for v in rec["scores"]], rec
    except (OSError, ValueError, KeyError, TypeError, shapely.errors.GEOSException):
        return None


def _default_threads(device: torch.device) -> int:
    """Post-processing threads: none (in line, after each batch) for inference on a CPU of up to 4
    cores, where PyTorch's threads already fill the cores and a thread beside them slows inference
    more than it saves; else half the cores, at most 8."""
    cores = os.cpu_count() or 2
    if device.type == "cpu" and cores <= 4:
        return 0
    return max(1, min(8, cores // 2))


def _encode_overlay(rgb: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 overlay, at zlib level 1: the same pixels as
    :func:`rooftrace.prepare.encode_png` writes, five times faster (aerial imagery hardly compresses:
    the file is about 3 % larger)."""
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB array
        from .prepare import encode_png

        return encode_png(rgb)
    return buf.tobytes()


def _resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An id map resized to ``size = (H, W)`` by nearest neighbour (pixel centres), any integer dtype."""
    h, w = ids.shape
    H, W = size
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return ids[rows[:, None], cols[None, :]]


def _finish_tile(probs: np.ndarray, rgb: np.ndarray | None, stem: str, out_dir: Path, method: str,
                 settings: PostprocessSettings | None, write_masks: bool, write_overlays: bool,
                 size: tuple[int, int] | None = None) -> tuple[list, list, tuple[float, ...]]:
    """Post-process one tile and write its mask and overlay (runs in a worker thread).

    ``probs`` are at the model's pixel size; ``size`` is the tile's own ``(H, W)`` when it was
    resampled, and the footprints and the mask are brought back to it (post-processing itself,
    whose thresholds were tuned at the model's pixel size, runs at the model's).

    Returns the footprints, their scores, and the seconds taken (wall and this thread's CPU time)
    by post-processing and by writing."""
    from .prepare import encode_instances, render_preview

    t0, c0 = time.perf_counter(), time.thread_time()
    found = postprocess(probs, method=method, settings=settings)
    footprints, scores, instances = list(found.footprints), list(found.scores), found.instances
    seen = tuple(probs.shape[1:])
    if size is not None and tuple(size) != seen:
        footprints, scores = footprints_to_grid(footprints, scores, seen, tuple(size))  # type: ignore[arg-type]
        if instances is not None:
            instances = _resize_nearest(instances, tuple(size))  # type: ignore[arg-type]
    t1, c1 = time.perf_counter(), time.thread_time()
    if write_masks and instances is not None:
        atomic_write_bytes(out_dir / "masks" / f"{stem}.png", encode_instances(instances, stem), force=True)
    if write_overlays and rgb is not None:
        atomic_write_bytes(out_dir / "overlays" / f"{stem}.png", _encode_overlay(render_preview(rgb, footprints)), force=True)
    return footprints, scores, (t1 - t0, c1 - c0, time.perf_counter() - t1, time.thread_time() - c1)


def predict_folder(
    images: str | Path,
    out_dir: str | Path,
    model: str | Path,
    *,
    batch_size: int = 8,
    tta: bool = False,
    device: str = "auto",
    workers: int = 2,
    method: str | None = None,
    settings: PostprocessSettings | None = None,
    write_masks: bool = True,
    write_overlays: bool = True,
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
    compile: bool = False,
    precision: str = "auto",
    resume: bool = False,
    gsd: float | None = None,
    tms: bool = False,
) -> PredictResult:
    """Predict footprints for every tile of ``images`` and write the outputs into ``out_dir``.

    Args:
        model: A ``.safetensors`` model file written by rooftrace, or an ``.onnx`` file written by
            ``rooftrace export`` (run with ONNX Runtime: CUDA when available and ``device`` allows,
            else the CPU).
        method, settings: Post-processing; default: what ``rooftrace tune`` saved beside the
            model, else (ONNX) what travelled in its metadata, else the default method with default
            settings.
        batch_size: Tiles per forward pass; tiles are batched with others of the same padded size.
        workers: Tile-reading processes (0: read in the main thread).
        threads: Post-processing and writing threads (0: in the main thread, after each batch;
            default: 0 for inference on a CPU of up to 4 cores, else half the cores, at most 8).
        compile: ``torch.compile`` the PyTorch model (pays off on long runs on a GPU; the first
            batches of each tile size wait for compilation). Ignored for ONNX models.
        precision: ``auto`` (bf16 autocast on GPUs and on CPUs with native bf16, else fp32),
            ``fp32``, ``bf16`` or ``fp16``; see :mod:`rooftrace.precision`. Ignored for ONNX models.
        resume: Finish the unfinished run in ``out_dir`` (killed or crashed): tiles it finished
            are taken from ``out_dir/.partial`` and not predicted again. The model, images,
            post-processing and outputs must be the first run's.
        gsd: The tiles' pixel size in metres, for tiles that do not say (``--gsd``); it overrides
            what a tile's georeference says (a tile whose own differs by more than 2x is noted).
        tms: Read web-map tile names as TMS (``y`` counted from the bottom) instead of XYZ.

    Pixel size: when the model records the pixel size it was trained at (``gsd`` in its
    metadata), each tile is resampled to it before the model sees it (OpenCV area averaging when
    shrinking, bilinear when enlarging; not when they differ by 2 % or less), post-processed at
    that size (where its tuned thresholds hold), and its footprints are scaled back to the tile's
    own pixel grid. A tile's pixel size is ``gsd`` when given, else its georeference's (a GeoTIFF
    transform or an XYZ tile name; measured on the ground at the tile's centre, so in metres for
    degrees too), else taken to be the model's (said once in the summary). A model without one:
    tiles are used as they are.

    Coordinates: ``submission.csv`` and ``predictions.coco.json`` are in each tile's pixels. When
    tiles are georeferenced (:func:`rooftrace.georef.locate_image`), ``predictions.geojson`` is
    in longitude/latitude (RFC 7946) and ``predictions.gpkg`` in the tiles' CRS
    (:func:`write_map_outputs`); the readable tiles that are not georeferenced then go, in pixels,
    to ``predictions-pixels.geojson``. When no tile is georeferenced, ``predictions.geojson`` is in
    pixels and says so in its top-level ``"rooftrace"`` member.

    Crash safety: each finished tile's result is written to ``out_dir/.partial/<stem>.json``
    (atomically) as it finishes; the submission, GeoJSON and COCO files are written once at the
    end, each to a temporary name and renamed, and then ``.partial`` is removed. A run killed at
    any moment leaves no half-written file, and ``resume=True`` finishes it.
    """
    images, out_dir = Path(images), Path(out_dir)
    gsd = check_gsd(gsd)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise RooftraceError(f"--workers {workers}: must be 0 (read tiles in the main process) or more")
    pick_device(device)  # a device torch does not know is refused before anything is read or written
    files = list_images(images)
    if not files:
        raise RooftraceError(f"{images}: no image files (.tif, .png, .jpg) in this folder")
    _check_unique_keys(images, files)
    _check_out_dir(out_dir, force, resume)
    precision = normalise_precision(precision)
    dev = pick_device(device)
    n_threads = _default_threads(dev) if threads is None else max(0, int(threads))
    loaded = load_any(model, device=device, onnx_spinning=n_threads == 0 and workers == 0)
    if compile and isinstance(loaded, LoadedModel):
        loaded.model = torch.compile(loaded.model)
    tuned_method, tuned = load_tuned(model)
    if tuned is None and isinstance(loaded, OnnxModel):
        tuned_method, tuned = onnx_postprocess_settings(loaded.meta)
    method = method or tuned_method or "watershed"
    settings = settings or tuned
    partial = out_dir / PARTIAL
    record = _run_record(model, method, settings, tta, precision, images, write_masks, write_overlays, gsd, tms)
    model_gsd = loaded.gsd
    done: dict[int, tuple[int, int, list, list, dict[str, Any]]] = {}
    changed: list[str] = []  # tiles whose file changed since the unfinished run recorded them
    if resume:
        try:
            before = json.loads((partial / "run.json").read_text())
        except (OSError, ValueError):
            raise RooftraceError(f"{partial / 'run.json'}: unreadable; start again with --force") from None
        differ = [k for k in record if before.get(k) != record[k]]
        if differ:
            raise RooftraceError(f"{out_dir}: the unfinished run used other {', '.join(differ)}; resume it with the same "
                                 "model, images and options, or start again with --force")
        for n, f in enumerate(files):
            got = _read_tile_record(partial / f"{f.stem}.json")
            if got is None:
                continue
            if got[4].get("file") is None or got[4]["file"] != _file_stamp(f):  # the tile changed: predicted again
                changed.append(f.name)
                continue
            done[n] = got
    else:
        if partial.exists():
            shutil.rmtree(partial)
        atomic_write_text(partial / "run.json", json.dumps(record, indent=1), force=True)
    norm = Normalization(loaded.mean, loaded.std)
    report = LoadReport(path=str(images))
    labels = LabelSet(report=report, root=images, format="predictions")
    keys: list[ImageKey] = [image_key(f) for f in files]
    for f, k in zip(files, keys):  # file order, whatever order the batches finish in
        labels.get_or_add(k).file_name = f.name
    places: dict[int, TilePlace] = {}
    for n, (w, h, fps, scores, rec) in done.items():
        img = labels[keys[n]]
        img.width, img.height, img.footprints, img.scores = w, h, fps, scores
        if "gsd_source" in rec:  # where it lies is read again at the end; the pixel size it was predicted at is kept
            places[n] = TilePlace(None, rec.get("gsd"), rec["gsd_source"], rec.get("own_gsd"), float(rec.get("factor", 1.0)))
    todo_index = [n for n in range(len(files)) if n not in done]  # loader index -> files index
    stamps = {n: _file_stamp(files[n]) for n in todo_index}  # taken before the tile is read
    changed_note = (f"{len(changed)} tile(s) changed since the unfinished run recorded them (size or modification time) "
                    f"and were predicted again: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}") if changed else None
    # One tile at a time out of the loader (batch_size=None); batches are formed below, by padded size.
    tiles = _Tiles([files[n] for n in todo_index], norm, keep_rgb=write_overlays, gsd=gsd, model_gsd=model_gsd, tms=tms)
    loader = DataLoader(tiles, batch_size=None, num_workers=workers, collate_fn=_one,
                        pin_memory=dev.type == "cuda", prefetch_factor=max(2, batch_size) if workers else None)
    timings = {"wait": 0.0, "inference": 0.0, "postprocess": 0.0, "postprocess_cpu": 0.0, "write": 0.0, "write_cpu": 0.0}
    t0 = time.perf_counter()
    skipped = 0
    bar = tqdm(total=len(files), initial=len(done), desc="predict", unit="tile", disable=not progress, dynamic_ncols=True)
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="rooftrace-post") if n_threads else None
    pending: deque[tuple[int, int, int, Future | tuple]] = deque()
    max_pending = max(2 * batch_size, 4 * max(n_threads, 1))

    def settle(limit: int) -> None:
        # Finished tiles are taken (and their .partial record written) at once, in order; wait
        # for unfinished ones only beyond ``limit``.
        while pending and (len(pending) > limit or not isinstance(pending[0][3], Future) or pending[0][3].done()):
            i, h, w, job = pending.popleft()
            fps, scores, seconds = job.result() if isinstance(job, Future) else job
            img = labels[keys[i]]
            img.width, img.height = w, h
            img.footprints, img.scores = fps, scores
            atomic_write_text(partial / f"{files[i].stem}.json", _tile_record(w, h, fps, scores, places.get(i), stamps.get(i)), force=True)
            for name, value in zip(("postprocess", "postprocess_cpu", "write", "write_cpu"), seconds):
                timings[name] += value
            bar.update(1)

    def run_batch(tiles: list[dict[str, Any]]) -> None:
        batch = _collate(tiles)
        t = time.perf_counter()
        probs = predict_probabilities(loaded, batch["image"], dev, tta=tta, precision=precision)
        timings["inference"] += time.perf_counter() - t
        for n, j in enumerate(batch["index"]):
            i = todo_index[j]
            h, w = batch["size"][n]  # as the model saw it
            H, W = batch["orig"][n]  # the tile's own
            if batch["place"][n] is not None:
                places[i] = batch["place"][n]
            args = (probs[n, :, :h, :w], batch["rgb"][n], files[i].stem, out_dir, method, settings, write_masks, write_overlays, (H, W))
            pending.append((i, H, W, pool.submit(_finish_tile, *args) if pool is not None else _finish_tile(*args)))
        settle(max_pending)

    buckets: dict[tuple[int, int], list[dict[str, Any]]] = {}
    try:
        it = iter(loader)
        while True:
            t = time.perf_counter()
            tile = next(it, None)
            timings["wait"] += time.perf_counter() - t
            if tile is None:
                break
            if "error" in tile:
                report.skip(tile["error"])
                skipped += 1
                bar.update(1)
                continue
            shape = tuple(tile["image"].shape[1:])
            bucket = buckets.setdefault(shape, [])
            bucket.append(tile)
            if len(bucket) >= batch_size:
                run_batch(buckets.pop(shape))
        for shape in list(buckets):
            run_batch(buckets.pop(shape))
        settle(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    seconds = time.perf_counter() - t0
    readable = [n for n in range(len(files)) if n in done or n in places]
    georefs: dict[ImageKey, Georef] = {}
    for n in readable:
        geo = places[n].georef if n in places else None
        if geo is None and n in done:  # a resumed tile: where it lies is read again (its header only)
            w, h = done[n][0], done[n][1]
            geo = place_tile(files[n], w, h, tms=tms).georef
        if geo is not None:
            georefs[keys[n]] = geo
    written = [write_begc_csv(labels, out_dir / "submission.csv", image_keys=keys, force=True)]
    maps = write_map_outputs(labels, georefs, out_dir) if georefs else None
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
    shutil.rmtree(partial, ignore_errors=True)  # the run is complete
    timings["outputs"] = time.perf_counter() - t0 - seconds
    timings["total"] = time.perf_counter() - t0
    tile_gsd = {keys[n]: {"gsd": pl.gsd, "gsd_source": pl.gsd_source, "own_gsd": pl.own_gsd, "factor": pl.factor}
                for n, pl in sorted(places.items())}
    notes = _gsd_notes(tile_gsd, model_gsd, gsd, report, [files[n].name for n in sorted(places)])
    notes.extend(_coordinate_notes(maps, len(readable)))
    if changed_note:
        notes.insert(0, "note: " + changed_note)
    return PredictResult(out_dir, labels, len(files), skipped, seconds, report, written, timings, n_resumed=len(done),
                         gsd_model=model_gsd, tile_gsd=tile_gsd, map_outputs=maps, notes=notes)


def _gsd_notes(tile_gsd: dict[ImageKey, dict[str, Any]], model_gsd: float | None, gsd: float | None, report: LoadReport,
               names: list[str]) -> list[str]:
    """Summary lines on pixel sizes: what was resampled, what was assumed (once), where --gsd disagrees."""
    lines: list[str] = []
    if not tile_gsd:
        return lines
    info = list(tile_gsd.values())
    if model_gsd is None:
        if gsd is not None:
            lines.append(f"note: the model records no pixel size, so --gsd {gsd:g} changes nothing: tiles are used as they are")
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
    if gsd is not None:
        off = [(n, d["own_gsd"]) for n, d in zip(names, info) if d["own_gsd"] and not 0.5 <= gsd / d["own_gsd"] <= 2.0]
        if off:
            name, own = off[0]
            msg = (f"--gsd {gsd:g} overrides the pixel size of {len(off)} georeferenced tile(s) whose own differs by more "
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
    if maps.n_unlocated:
        lines.append(f"note: {maps.n_unlocated} tile(s) are not georeferenced: their footprints are in pixels only "
                     f"({PIXEL_GEOJSON_NAME}, submission.csv, predictions.coco.json)")
    return lines
