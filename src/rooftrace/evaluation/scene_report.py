"""An HTML report of one scene's buildings: figures, a quicklook, and an interactive map that works offline.

:func:`write_scene_report` takes what ``rooftrace predict-scene`` wrote (a GeoPackage or GeoJSON of building
polygons in map coordinates, with whatever fields the file has: ``score``, ``area``, ``area_m2``, ...), the
scene's raster and, optionally, labels in map coordinates (GeoJSON or GeoPackage in any CRS; reprojected to
the raster's). It writes ``OUT/index.html`` with

- the summary figures: with labels, object precision, recall and F1 at IoU 0.5 (one-to-one matching, as
  :mod:`rooftrace.evaluation.metrics` scores them); without, the number of buildings and their scores;
- a quicklook: the whole scene at screen size (``quicklook_size`` px on the longest side) with the
  footprints outlined (true positives green, false positives red, missed buildings orange when labels are
  given, else yellow);
- an interactive map (Leaflet, bundled, copied to ``OUT/leaflet/``): the scene as one image overlay and the
  footprints as a vector layer; pan and zoom; a click on a building shows its id, score, area, its other
  fields and, with labels, whether it is a true or false positive (and its IoU).

Everything the page loads is beside it (``scene.jpg``, ``quicklook.jpg``, ``footprints.js``, ``leaflet/``):
it opens from the file system, offline, and fetches nothing. It stays small and fast for large scenes:

- The raster is read once, decimated by GDAL (``out_shape``, average resampling) to ``map_size`` px on the
  longest side, never at full size; the quicklook is that image shrunk again.
- Display geometry is simplified by ``simplify`` pixels *of the map image* (``shapely.simplify``, topology
  kept) and rounded to 0.1 raster pixel; the footprint file keeps its full detail.
- The map uses ``L.CRS.Simple`` in raster pixel coordinates (``lng`` = column, ``lat`` = -row), so it needs no
  basemap and works for any CRS; the pointer's position is shown in the raster's CRS.
- Buildings are drawn as SVG paths up to ``svg_limit`` features, on a canvas above that.

A 10,000 x 10,000 px scene with 3,000 buildings gives a report of about 2 MB that loads in headless
Chromium in about a quarter of a second (see ``benchmarks/scene_report.py``).
"""

from __future__ import annotations

import html
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.evaluation.metrics import Score, evaluate_labels, match_footprints
from rooftrace.evaluation.webmap import (
    LEAFLET_HEAD,
    LEAFLET_VERSION,
    copy_leaflet,
    write_js_data,
)
from rooftrace.labels.records import LabelSet, LoadReport, image_key

TP_RGB = (40, 220, 60)
FP_RGB = (255, 40, 40)
FN_RGB = (255, 160, 0)
#: Outline colour without labels (yellow shows on roofs, roads, vegetation and shadow alike).
PRED_RGB = (255, 255, 0)
CLASS_RGB = {"true positive": TP_RGB, "false positive": FP_RGB, "missed": FN_RGB, "building": PRED_RGB}

#: Longest side of the map image (px): the scene is decimated to this once.
MAP_SIZE = 2048
#: Longest side of the quicklook (px): a screen's width.
QUICKLOOK_SIZE = 1024
#: JavaScript variable ``footprints.js`` assigns.
JS_VARIABLE = "ROOFTRACE_SCENE"


@dataclass
class SceneReportResult:
    """What was written and what it shows."""

    path: Path
    n_footprints: int
    n_labels: int | None
    score: Score | None
    map_shape: tuple[int, int]
    bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        head = f"scene report of {self.n_footprints} buildings: {self.path} ({self.bytes / 1e6:.2f} MB, {self.seconds:.1f} s)"
        if self.score is not None:
            s = self.score
            head += (f"\nagainst {self.n_labels} labels: object F1 {s.f1_pooled:.4f} (precision {s.precision:.4f}, "
                     f"recall {s.recall:.4f}; {s.tp} TP, {s.fp} FP, {s.fn} missed)")
        return head + "".join(f"\nnote: {n}" for n in self.notes)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Features:
    geoms: np.ndarray  # pixel coordinates of the raster
    ids: list[Any]
    fields: dict[str, np.ndarray]


def _read_footprints(path: Path, raster_crs: CRS | None, transform: Affine, crs: str | None, notes: list[str]) -> _Features:
    """Every feature of a vector file, its fields and its id, in the raster's pixel coordinates."""
    import pyogrio.errors
    import pyogrio.raw

    from rooftrace.labels.geojson import geoms_from_wkb, parse_crs_option, read_vector_raw, reproject

    if not path.exists():
        raise RooftraceError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Non closed ring detected")
            meta, fids, wkb, values = read_vector_raw(path, return_fids=True)
    except pyogrio.errors.DataSourceError as exc:
        raise RooftraceError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    report = LoadReport(path=str(path))
    geoms = geoms_from_wkb(wkb, report)
    _add_notes(notes, path.name, report)
    file_crs = parse_crs_option(crs, "--pred-crs") if crs else (CRS.from_user_input(meta["crs"]) if meta.get("crs") else None)
    if file_crs is not None and raster_crs is None:
        notes.append(f"the raster has no CRS: {path.name}'s coordinates ({file_crs.to_string()}) are taken to be in the "
                     "raster's own map coordinates")
    if file_crs is not None and raster_crs is not None and file_crs != raster_crs:
        notes.append(f"{path.name} is in {file_crs.to_string()}, the raster in {raster_crs.to_string()}: reprojected for display")
        ok = ~shapely.is_missing(geoms)
        geoms[ok] = reproject(geoms[ok], file_crs, raster_crs)
    fields = dict(zip(meta.get("fields", []), values))
    if "id" in fields:
        ids = [_plain(v) for v in fields["id"]]
    elif fids is not None and len(fids) == len(geoms):
        ids = [int(f) for f in fids]
    else:
        ids = list(range(len(geoms)))
    keep = np.flatnonzero(~shapely.is_missing(geoms) & ~shapely.is_empty(geoms))
    if len(keep) < len(geoms):
        notes.append(f"{path.name}: {len(geoms) - len(keep)} feature(s) without a geometry left out")
    geoms = shapely.transform(geoms[keep], lambda xy: _apply(~transform, xy))
    geoms = np.where(shapely.is_valid(geoms), geoms, shapely.make_valid(geoms))
    return _Features(geoms, [ids[k] for k in keep], {k: np.asarray(v, dtype=object)[keep] for k, v in fields.items()})


def _add_notes(notes: list[str], name: str, report: LoadReport, most: int = 5) -> None:
    """A reader's messages as report notes, the first ``most`` of them."""
    notes.extend(f"{name}: {m}" for m in report.messages[:most])
    if report.counts["problems"] > most:
        notes.append(f"{name}: {report.counts['problems'] - most} more problem(s) of the same kinds")


def _apply(t: Affine, xy: np.ndarray) -> np.ndarray:
    x, y = xy[:, 0], xy[:, 1]
    return np.column_stack((t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f))


def _plain(v: Any) -> Any:
    """A field value as JSON can hold it (``None`` for NaN)."""
    if v is None:
        return None
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(f"{float(v):.6g}")
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _geodesic_areas(pixel_geoms: np.ndarray, transform: Affine, crs: CRS | None) -> np.ndarray | None:
    """Area of each footprint in m² on the WGS84 ellipsoid (``None`` without a CRS)."""
    if crs is None or len(pixel_geoms) == 0:
        return None
    to_ll = Transformer.from_crs(crs, CRS.from_epsg(4326), always_xy=True)
    geod = Geod(ellps="WGS84")

    def lonlat(xy: np.ndarray) -> np.ndarray:
        m = _apply(transform, xy)
        return np.column_stack(to_ll.transform(m[:, 0], m[:, 1]))

    ll = shapely.transform(pixel_geoms, lonlat)
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in ll])


# ---------------------------------------------------------------------------------------------
# The image


def _read_overview(raster: Path, size: int, bands: str | Sequence[int] | None) -> tuple[np.ndarray, float]:
    """The whole scene as ``(h, w, 3)`` uint8 with ``size`` px on its longest side (never larger than the
    raster), read decimated by GDAL; returns it and the scale (overview px per raster px)."""
    import rasterio

    from rooftrace.imagery.raster import GDAL_CACHE_MB

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):  # GDAL's block cache would otherwise hold much of the raster
        return _read_overview_in_env(raster, size, bands)


def _read_overview_in_env(raster: Path, size: int, bands: str | Sequence[int] | None) -> tuple[np.ndarray, float]:
    import rasterio
    from rasterio.windows import Window

    from rooftrace.imagery.raster import Scene

    if bands is None:
        with rasterio.open(raster) as src:
            if src.count == 1:
                bands = (1, 1, 1)
            elif src.count not in (3, 4):
                bands = (1, 2, 3)
    with Scene(raster, bands=bands) as scene:
        w, h = scene.src.width, scene.src.height
        f = min(1.0, size / max(w, h))
        scene.set_scale(f)
        rgb, _ = scene.read(Window(0, 0, scene.width, scene.height))
        return rgb, scene.width / w


def _encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _shrink(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    from PIL import Image

    h, w = rgb.shape[:2]
    f = min(1.0, size / max(h, w))
    if f == 1.0:
        return rgb, 1.0
    img = Image.fromarray(rgb).resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
    return np.asarray(img), img.width / w


# ---------------------------------------------------------------------------------------------
# Display geometry


def _display_geojson(geom: Any, decimals: int = 1) -> dict:
    """A pixel-coordinate geometry as a GeoJSON geometry in Leaflet ``CRS.Simple`` units: ``[col, -row]``."""

    def ring(coords: Any) -> list:
        a = np.round(np.asarray(coords)[:, :2] * (1.0, -1.0), decimals) + 0.0  # no -0.0
        return a.astype(np.int64).tolist() if np.all(a == np.round(a)) else a.tolist()

    polys = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon" and not p.is_empty]
    rings = [[ring(p.exterior.coords)] + [ring(r.coords) for r in p.interiors] for p in polys]
    if len(rings) == 1:
        return {"type": "Polygon", "coordinates": rings[0]}
    return {"type": "MultiPolygon", "coordinates": rings}


def _fmt(v: float) -> str:
    return f"{v:.4f}"


# ---------------------------------------------------------------------------------------------
# The report


def write_scene_report(footprints: str | Path, raster: str | Path, out_dir: str | Path, labels: str | Path | None = None, *,
                       bands: str | Sequence[int] | None = None, labels_crs: str | None = None, iou: float = 0.5,
                       matching: str = "one-to-one", title: str | None = None, map_size: int = MAP_SIZE,
                       quicklook_size: int = QUICKLOOK_SIZE, simplify: float = 0.5, svg_limit: int = 10_000,
                       force: bool = False) -> SceneReportResult:
    """Write ``OUT_DIR/index.html``: a scene's buildings with figures, a quicklook and an offline interactive map.

    Args:
        footprints: The buildings (``rooftrace predict-scene`` output: GeoPackage or GeoJSON, any CRS).
        raster: The scene they were found in (any raster GDAL reads).
        out_dir: Report folder (created; it must not hold a report unless ``force``).
        labels: Ground truth in map coordinates (GeoJSON or GeoPackage, any CRS), to score against.
        bands: Band mapping for rasters that are not RGB (default ``1,1,1`` for a single band).
        labels_crs: CRS of the labels when their file declares none or a wrong one.
        iou, matching: How predictions are matched to labels (see :mod:`rooftrace.evaluation.metrics`).
        map_size: Longest side (px) of the map image; ``quicklook_size`` that of the quicklook.
        simplify: Display-geometry tolerance in map-image pixels.
        svg_limit: Above this many shapes the map draws on a canvas instead of SVG.

    Raises:
        RooftraceError: An existing report without ``force``; unreadable inputs.
    """
    from rooftrace.imagery.draw import draw_outlines
    from rooftrace.labels.geojson import raster_georeference, read_geojson

    t0 = time.perf_counter()
    footprints, raster, out = Path(footprints), Path(raster), Path(out_dir)
    if (out / "index.html").exists() and not force:
        raise RooftraceError(f"{out}: already holds a report; pass --force to replace it")
    transform, crs, width, height = raster_georeference(raster)
    notes: list[str] = []
    feats = _read_footprints(footprints, crs, transform, None, notes)
    n = len(feats.geoms)
    frame = shapely.box(0, 0, width, height)
    where = (f"the raster {raster} ({width} x {height} px, {crs.to_string() if crs else 'no CRS'}"
             f"{', not georeferenced' if crs is None and transform.is_identity else ''})")
    if n and not shapely.intersects(feats.geoms, frame).any():
        raise RooftraceError(f"{footprints}: none of its {n} buildings lies on {where}; is it the scene they were "
                             "predicted on, and is it georeferenced?")

    # Classes: with labels, match predictions to them in pixel coordinates (IoU does not depend on the unit).
    classes = ["building"] * n
    ious: list[float | None] = [None] * n
    score: Score | None = None
    gt: list = []
    if labels is not None:
        gt_ls = read_geojson(labels, raster=raster, crs=labels_crs)
        _add_notes(notes, Path(labels).name, gt_ls.report)
        key = image_key(raster)
        gt = list(gt_ls[key].footprints) if key in gt_ls else []
        if not gt:
            notes.append(f"{Path(labels).name} holds no labels on this raster: every building counts as a false positive")
        elif not shapely.intersects(np.asarray(gt, dtype=object), frame).any():
            raise RooftraceError(f"{labels}: none of its {len(gt)} labels lies on {where}; are they of this scene, and in the "
                                 "CRS their file declares (else give it with --labels-crs)?")
        pred_ls = LabelSet(format="geojson")
        img = pred_ls.get_or_add(key)
        img.footprints, img.width, img.height = list(feats.geoms), width, height
        gt_img = gt_ls.get_or_add(key)
        gt_img.width, gt_img.height = width, height
        score = evaluate_labels(gt_ls, pred_ls, iou=iou, matching=matching, pixel=False)
        _, _, _, pairs = match_footprints(gt, list(feats.geoms), iou=iou, matching=matching)
        classes = ["false positive"] * n
        for _, j, v in pairs:
            classes[j] = "true positive"
            ious[j] = max(v, ious[j] or 0.0)
        matched_gt = {i for i, _, _ in pairs}
        missed = [g for i, g in enumerate(gt) if i not in matched_gt]
    else:
        missed = []

    # Images: one decimated read; the quicklook is the map image shrunk again.
    rgb, scale = _read_overview(raster, map_size, bands)
    mh, mw = rgb.shape[:2]
    atomic_write_bytes(out / "scene.jpg", _encode_jpeg(rgb), force=True)
    small, s2 = _shrink(rgb, quicklook_size)
    q = scale * s2
    def shrunk(gs: list) -> list:
        return [shapely.transform(g, lambda xy: xy * q) for g in gs]

    groups = [(shrunk(missed), FN_RGB)] if missed else []
    for cls in ("false positive", "true positive", "building"):
        sel = [g for g, c in zip(feats.geoms, classes) if c == cls]
        if sel:
            groups.append((shrunk(sel), CLASS_RGB[cls]))
    ql = draw_outlines(small, groups, width=1)
    atomic_write_bytes(out / "quicklook.jpg", _encode_jpeg(ql, 88), force=True)

    # Properties shown on click: the file's fields, plus a geodesic area in m² when the file has none.
    area_m2 = feats.fields.get("area_m2")
    computed_area = None
    if area_m2 is None:
        computed_area = _geodesic_areas(feats.geoms, transform, crs)
    tol = simplify / scale  # raster pixels
    decimals = 0 if tol >= 2 else 1  # coordinates to a quarter of the tolerance or better
    disp = shapely.simplify(feats.geoms, tol, preserve_topology=True)
    centres = shapely.transform(shapely.point_on_surface(feats.geoms), lambda xy: _apply(transform, xy))
    feature_list = []
    for k in range(n):
        props: dict[str, Any] = {"id": feats.ids[k]}
        for name, vals in feats.fields.items():
            if name != "id":
                props[name] = _plain(vals[k])
        if computed_area is not None:
            props["area_m2"] = round(float(computed_area[k]), 2)
        if labels is not None:
            props["class"] = classes[k]
            props["iou"] = None if ious[k] is None else round(ious[k], 3)
        c = shapely.get_coordinates(centres[k])[0]
        props["x"], props["y"] = float(round(c[0], 3)), float(round(c[1], 3))
        feature_list.append({"type": "Feature", "properties": props, "geometry": _display_geojson(disp[k], decimals)})
    missed_list = []
    if missed:
        gt_index = {id(g): i for i, g in enumerate(gt)}
        mdisp = shapely.simplify(np.asarray(missed, dtype=object), tol, preserve_topology=True)
        marea = _geodesic_areas(np.asarray(missed, dtype=object), transform, crs)
        for k, g in enumerate(missed):
            props = {"label": gt_index[id(g)], "class": "missed"}
            if marea is not None:
                props["area_m2"] = round(float(marea[k]), 2)
            missed_list.append({"type": "Feature", "properties": props, "geometry": _display_geojson(mdisp[k], decimals)})
    data = {
        "title": title or f"rooftrace scene report: {raster.name}",
        "width": width, "height": height, "image": {"src": "scene.jpg", "width": mw, "height": mh},
        "crs": crs.to_string() if crs else None, "transform": list(transform)[:6],
        "colors": {k: "rgb({},{},{})".format(*v) for k, v in CLASS_RGB.items()},
        "svg": n + len(missed_list) <= svg_limit, "labels": labels is not None,
        "buildings": {"type": "FeatureCollection", "features": feature_list},
        "missed": {"type": "FeatureCollection", "features": missed_list},
    }
    write_js_data(out / "footprints.js", JS_VARIABLE, data)
    copy_leaflet(out)
    if score is not None:
        atomic_write_text(out / "scores.json", json.dumps(score.to_json(), indent=2), force=True)
    doc = _page(data["title"], footprints, raster, labels, score, feats, classes, n, len(gt), (mw, mh), small.shape[:2], iou, matching, notes)
    path = atomic_write_text(out / "index.html", doc, force=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return SceneReportResult(path, n, len(gt) if labels is not None else None, score, (mh, mw), size,
                             time.perf_counter() - t0, notes)


def _page(title: str, footprints: Path, raster: Path, labels: str | Path | None, score: Score | None, feats: _Features,
          classes: list[str], n: int, n_gt: int, map_wh: tuple[int, int], ql_hw: tuple[int, int], iou: float,
          matching: str, notes: list[str]) -> str:
    e = html.escape
    if score is not None:
        figures = (f"<p>Against <code>{e(str(labels))}</code>: object-wise figures at IoU "
                   f"{'&gt;' if matching == 'spacenet' else '&ge;'} {iou}, {e(matching)} matching.</p>"
                   "<table id='figures'><tr><th>buildings</th><th>labels</th><th>true positives</th><th>false positives</th>"
                   "<th>missed</th><th>precision</th><th>recall</th><th>F1</th></tr>"
                   f"<tr><td>{n}</td><td>{n_gt}</td><td>{score.tp}</td><td>{score.fp}</td><td>{score.fn}</td>"
                   f"<td>{_fmt(score.precision)}</td><td>{_fmt(score.recall)}</td><td><b>{_fmt(score.f1_pooled)}</b></td></tr></table>")
        legend = "".join(f"<span class='k' style='background:rgb{CLASS_RGB[c]}'></span>{c}"
                         for c in ("true positive", "false positive", "missed"))
    else:
        sc = feats.fields.get("score")
        vals = np.array([v for v in (_plain(x) for x in sc) if isinstance(v, float)]) if sc is not None else np.array([])
        extra = (f"<td>{vals.mean():.3f}</td><td>{np.median(vals):.3f}</td>" if vals.size else "<td></td><td></td>")
        figures = ("<table id='figures'><tr><th>buildings</th><th>mean score</th><th>median score</th></tr>"
                   f"<tr><td>{n}</td>{extra}</tr></table>")
        legend = f"<span class='k' style='background:rgb{PRED_RGB}'></span>building"
    note_html = "".join(f"<li>{e(x)}</li>" for x in notes)
    qh, qw = ql_hw
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
{LEAFLET_HEAD}<script src="footprints.js"></script>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f0f0f0}}
#map{{height:75vh;min-height:420px;border:1px solid #999;background:#333}}
.k{{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}}
.legend{{background:rgba(255,255,255,.9);padding:4px 8px;border-radius:4px;font:12px system-ui,sans-serif}}
.popup td,.popup th{{border:none;padding:1px 6px 1px 0;text-align:left;font-size:12px}}
#quicklook img{{max-width:100%;border:1px solid #999}}
</style></head><body>
<h1>{e(title)}</h1>
<p>Buildings <code>{e(str(footprints))}</code> found in <code>{e(str(raster))}</code>.</p>
{figures}
{'<ul class="notes">' + note_html + '</ul>' if notes else ''}
<h2>Map</h2>
<p>{legend} &mdash; drag to pan, scroll to zoom, click a building for its id, score and area. The image is the
scene decimated to {map_wh[0]} x {map_wh[1]} px; outlines are simplified for display (the footprint file keeps full detail).</p>
<div id="map"></div>
<h2>Quicklook</h2>
<figure id="quicklook"><a href="quicklook.jpg"><img src="quicklook.jpg" width="{qw}" height="{qh}" alt="the whole scene with its buildings outlined"></a>
<figcaption>The whole scene at {qw} x {qh} px. {legend}</figcaption></figure>
<p><small>Map: Leaflet {LEAFLET_VERSION} (BSD-2-Clause, bundled in <code>leaflet/</code>).</small></p>
<script>
(function () {{
  "use strict";
  var D = window.{JS_VARIABLE};
  var W = D.width, H = D.height;
  var bounds = L.latLngBounds([[-H, 0], [0, W]]);
  var map = L.map("map", {{crs: L.CRS.Simple, minZoom: -10, maxZoom: 4, zoomSnap: 0.25, zoomDelta: 0.5,
                          maxBounds: bounds.pad(0.5), preferCanvas: !D.svg}});
  map.attributionControl.setPrefix("Leaflet");
  L.imageOverlay(D.image.src, bounds, {{className: "scene-image"}}).addTo(map);
  map.fitBounds(bounds);
  function esc(v) {{
    return String(v).replace(/[&<>"']/g, function (c) {{ return {{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}}[c]; }});
  }}
  function fmt(k, v) {{
    if (v === null || v === undefined) return "";
    if (typeof v === "number") {{
      if (Number.isInteger(v)) return String(v);
      if (k === "x" || k === "y") return v.toFixed(2);
      return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
    }}
    return esc(v);
  }}
  function popup(p, what) {{
    var rows = "<tr><th colspan=2>" + what + "</th></tr>";
    Object.keys(p).forEach(function (k) {{
      var name = k === "area_m2" ? "area (m\\u00b2)" : k === "area" ? "area (CRS units\\u00b2)" : k === "x" || k === "y" ? k + " (" + esc(D.crs || "map") + ")" : k;
      rows += "<tr><td>" + esc(name) + "</td><td>" + fmt(k, p[k]) + "</td></tr>";
    }});
    return "<table class='popup'>" + rows + "</table>";
  }}
  var renderer = D.svg ? L.svg() : L.canvas();
  var buildings = L.geoJSON(D.buildings, {{
    renderer: renderer,
    style: function (f) {{ return {{color: D.colors[f.properties["class"] || "building"], weight: 2, fillOpacity: 0.1}}; }},
    onEachFeature: function (f, layer) {{ layer.bindPopup(popup(f.properties, "building " + esc(f.properties.id))); }}
  }}).addTo(map);
  var overlays = {{"buildings": buildings}};
  if (D.labels) {{
    var missed = L.geoJSON(D.missed, {{
      renderer: renderer,
      style: function () {{ return {{color: D.colors.missed, weight: 2, dashArray: "4 3", fillOpacity: 0.1}}; }},
      onEachFeature: function (f, layer) {{ layer.bindPopup(popup(f.properties, "missed label " + esc(f.properties.label))); }}
    }}).addTo(map);
    overlays["missed labels"] = missed;
  }}
  L.control.layers(null, overlays, {{collapsed: false}}).addTo(map);
  var pos = L.control({{position: "bottomleft"}});
  pos.onAdd = function () {{ this._div = L.DomUtil.create("div", "legend"); this._div.id = "pointer"; this._div.textContent = "point at the map for coordinates"; return this._div; }};
  pos.addTo(map);
  var t = D.transform;
  map.on("mousemove", function (ev) {{
    var col = ev.latlng.lng, row = -ev.latlng.lat;
    var x = t[0] * col + t[1] * row + t[2], y = t[3] * col + t[4] * row + t[5];
    pos._div.textContent = "x " + x.toFixed(2) + ", y " + y.toFixed(2) + (D.crs ? " (" + D.crs + ")" : "") +
      " | pixel " + Math.floor(col) + ", " + Math.floor(row);
  }});
  window.rooftraceMap = {{map: map, bounds: bounds, buildings: buildings, count: buildings.getLayers().length,
                         missed: D.labels ? overlays["missed labels"].getLayers().length : 0}};
  window.rooftraceReady = true;
}})();
</script>
</body></html>
"""
