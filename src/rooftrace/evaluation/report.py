"""An HTML report of predictions against ground truth: what was found, what was wrong, what was missed.

``build_report`` scores predictions (any format, or a ``rooftrace predict`` output folder) against
ground truth and writes ``REPORT/index.html`` with a summary table (overall and per source), the
per-image scores worst first, and for each tile the image with its true positives (green), false
positives (red) and missed buildings (orange) outlined and each predicted building's score written inside
it, as PNGs in ``REPORT/tiles/``. Each tile links to its full-size picture and, for a ``rooftrace predict``
folder, to predict's own overlay of it; a click on a building shows its score, whether it is a true or false
positive (and its IoU) or a missed label. It needs no server and nothing from the network: open the file in
a browser.

Given the scene's raster, ``build_report`` writes a scene report instead (map-coordinate predictions and
labels, an interactive offline map): see :mod:`rooftrace.evaluation.scene_report`.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text, probe_writable
from rooftrace.core.locks import OutputLock
from rooftrace.core.paths import check_distinct
from rooftrace.evaluation.metrics import Score, evaluate_labels, match_footprints
from rooftrace.imagery.draw import draw_outlines, draw_scores
from rooftrace.imagery.png import encode_png
from rooftrace.imagery.read import list_images, read_rgb
from rooftrace.labels.formats import align_keys, read_labels
from rooftrace.labels.records import ImageKey, LabelSet

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.evaluation.scene_report import SceneReportResult

TP_RGB = (40, 220, 60)
FP_RGB = (255, 40, 40)
FN_RGB = (255, 160, 0)
#: What a predict folder's report reads: the pixel-coordinate GeoJSON (it has scores) when the tiles
#: were not georeferenced, else the submission CSV (a georeferenced run's GeoJSON is in longitude/latitude).
PRED_FILES = ("predictions.geojson", "submission.csv", "predictions.coco.json")


def _is_pixel_geojson(path: Path) -> bool:
    """Whether ``path`` is rooftrace's pixel-coordinate GeoJSON (its top-level ``rooftrace`` marker says so)."""
    import json

    from rooftrace.labels.geojson import is_pixel_geojson

    try:
        return is_pixel_geojson(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


@dataclass
class ReportResult:
    """Where the report is and the score it shows."""

    path: Path
    score: Score
    n_tiles: int

    def summary(self) -> str:
        return f"report of {self.n_tiles} tiles: {self.path}\n(object F1 {self.score.f1:.4f} mean over images, {self.score.f1_pooled:.4f} pooled)"


def _pred_path(pred: Path) -> Path:
    if pred.is_dir():
        for name in PRED_FILES:
            if (pred / name).exists() and (name != "predictions.geojson" or _is_pixel_geojson(pred / name)):
                return pred / name
    return pred


def _image_paths(gt: LabelSet, images: Path | None) -> dict[ImageKey, Path]:
    from rooftrace.labels.records import image_key

    paths: dict[ImageKey, Path] = {}
    if images is not None:
        paths.update({image_key(p): p for p in list_images(images)})
    for img in gt:
        p = gt.image_path(img)
        if img.key not in paths and p is not None and p.exists():
            paths[img.key] = p
    return paths


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def _svg_path(fp) -> str:
    """An SVG path ``d`` of a footprint's rings, in tile pixels."""
    from rooftrace.imagery.draw import footprint_rings

    def num(v: float) -> str:
        return f"{v:.1f}".rstrip("0").rstrip(".")

    return " ".join("M" + " L".join(f"{num(x)} {num(y)}" for x, y in ring[:-1]) + " Z" for ring in footprint_rings(fp) if len(ring) > 2)


def _tile_svg(w: int, h: int, shapes: list[tuple[object, str, str]]) -> str:
    """An SVG laid over a tile's picture, one clickable path per building (``(footprint, css class, what it
    shows on click)``), in the tile's pixel coordinates."""
    paths = "".join(f"<path class='b {k}' d='{_svg_path(fp)}' data-info='{html.escape(info, quote=True)}'>"
                    f"<title>{html.escape(info)}</title></path>" for fp, k, info in shapes)
    return f"<svg viewBox='0 0 {w} {h}' preserveAspectRatio='none'>{paths}</svg>"


def _score_text(scores: list[float] | None, j: int) -> str:
    return f"score {scores[j]:.3f}" if scores is not None and j < len(scores) else "no score"


def build_report(pred: str | Path, gt: str | Path | None = None, out: str | Path | None = None, *,
                 images: str | Path | None = None, raster: str | Path | None = None, bands: str | None = None,
                 labels_crs: str | None = None, iou: float = 0.5, matching: str = "one-to-one",
                 title: str | None = None, force: bool = False, max_tiles: int = 500) -> ReportResult | SceneReportResult:
    """Score ``pred`` against ``gt`` and write an HTML report: of tiles, or, given ``raster``, of a scene.

    Tiles (no ``raster``): ``OUT/index.html`` with the figures, per-image scores worst first, and a picture
    of every tile with its true positives, false positives and missed buildings outlined and each predicted
    building's score; each picture links to its full-size PNG and, for a predict folder, to predict's overlay.

    Scene (``raster`` given): :func:`rooftrace.evaluation.scene_report.write_scene_report` with ``pred`` the
    scene's buildings (``rooftrace predict-scene`` output), ``gt`` optional labels in map coordinates.

    Args:
        pred: Predictions in any format, or a ``rooftrace predict`` output folder; for a scene, its
            GeoPackage or GeoJSON.
        gt: Ground truth in any format (COCO gives the image files too); optional for a scene.
        out: Report folder (default: ``PRED/report`` for a predict folder, else ``report`` beside PRED).
        images: Folder of the tiles when the ground truth does not say where they are.
        raster: The scene's raster: makes this a scene report.
        bands, labels_crs: For a scene report: the raster's band mapping, the labels' CRS when their
            file declares none or a wrong one.
        max_tiles: Draw at most this many tiles (the worst first); the table lists all.

    Raises:
        RooftraceError: An existing report without ``force``; tile labels in map coordinates without
            ``raster``; unreadable inputs.
    """
    pred = Path(pred)
    out = Path(out) if out is not None else (pred / "report" if pred.is_dir() else pred.parent / "report")
    if not (isinstance(iou, (int, float)) and 0.0 < iou <= 1.0):  # NaN fails too
        raise RooftraceError(f"--iou {iou}: must be in (0, 1], the IoU from which a prediction matches a label (e.g. 0.5)")
    inputs = {"--pred": pred, "--gt": gt, "--raster": raster, "--images": images}
    _check_report_out(out, inputs, force)
    created = not out.exists()
    try:
        probe_writable(out, out, "; nothing was reported")
        with OutputLock(out, folder=True, what="--out"):  # one report at a time is written into a folder
            return _build_report(pred, gt, out, images=images, raster=raster, bands=bands, labels_crs=labels_crs, iou=iou,
                                 matching=matching, title=title, force=force, max_tiles=max_tiles)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # the folder this run made, when it stopped before writing into it
        raise


#: What a report writes into its folder (tile and scene reports), and the folders it fills.
REPORT_FILES = ("index.html", "scores.json", "scene.jpg", "quicklook.jpg", "footprints.js")
REPORT_FOLDERS = ("tiles", "leaflet")


def _check_report_out(out: Path, inputs: dict[str, Any], force: bool) -> None:
    """Before anything is read: ``out`` is no input, no file the report writes is one, and (without ``force``) it
    holds no report yet."""
    check_distinct(inputs, {"--out": out})
    check_distinct(inputs, {f"--out {name}": out / name for name in REPORT_FILES},
                   folders={f"--out {name}": out / name for name in REPORT_FOLDERS})
    if out.exists() and not out.is_dir():
        raise RooftraceError(f"{out}: --out is a file; the report is a folder (index.html and its pictures): choose a "
                             "folder; nothing was reported")
    if (out / "index.html").exists() and not force:
        raise RooftraceError(f"{out}: already holds a report; pass --force to replace it")


def _build_report(pred: Path, gt: str | Path | None, out: Path, *, images: str | Path | None, raster: str | Path | None,
                  bands: str | None, labels_crs: str | None, iou: float, matching: str, title: str | None, force: bool,
                  max_tiles: int) -> ReportResult | SceneReportResult:
    """:func:`build_report` once its output is checked and locked."""
    if raster is not None:
        from rooftrace.evaluation.scene_report import write_scene_report

        return write_scene_report(pred, raster, out, labels=gt, bands=bands, labels_crs=labels_crs, iou=iou,
                                  matching=matching, title=title, force=force)
    if gt is None:
        raise RooftraceError("a tile report needs the ground truth (--gt); a scene report needs the scene (--raster)")
    gt = Path(gt)
    title = title or "rooftrace report"
    if (out / "index.html").exists() and not force:
        raise RooftraceError(f"{out}: already holds a report; pass --force to replace it")
    gt_ls = read_labels(gt)
    if gt_ls.crs is not None:
        raise RooftraceError(f"{gt}: map-coordinate labels; pass the scene's raster with --raster SCENE for a scene "
                             "report (tile reports draw tiles in pixel coordinates)")
    pred_ls = align_keys(gt_ls, read_labels(_pred_path(pred), check_images=False))
    score = evaluate_labels(gt_ls, pred_ls, iou=iou, matching=matching)
    paths = _image_paths(gt_ls, Path(images) if images else None)
    order = sorted(score.per_image, key=lambda s: (s.f1, str(s.image_id)))
    rows, figures = [], []
    for n, s in enumerate(order):
        key = s.image_id
        g = gt_ls.images[key].footprints if key in gt_ls.images else []
        p = pred_ls.images[key].footprints if key in pred_ls.images else []
        _, _, _, pairs = match_footprints(g, p, iou=iou, matching=matching)
        gi, pj = {a for a, _, _ in pairs}, {b for _, b, _ in pairs}
        scores = pred_ls.images[key].scores if key in pred_ls.images else None
        tp_j = sorted(pj)
        fp_j = [j for j in range(len(p)) if j not in pj]
        tp, fp = [p[j] for j in tp_j], [p[j] for j in fp_j]
        fn = [g[i] for i in range(len(g)) if i not in gi]
        best_iou: dict[int, float] = {}
        for _, j, v in pairs:
            best_iou[j] = max(v, best_iou.get(j, 0.0))
        name = html.escape(str(key))
        rows.append(f"<tr><td><a href='#t{n}'>{name}</a></td><td>{html.escape(s.source or '')}</td><td>{s.tp}</td><td>{s.fp}</td>"
                    f"<td>{s.fn}</td><td>{_fmt(s.precision)}</td><td>{_fmt(s.recall)}</td><td><b>{_fmt(s.f1)}</b></td></tr>")
        if n < max_tiles and key in paths:
            try:
                rgb = read_rgb(paths[key])
            except RooftraceError as exc:
                figures.append(f"<figure id='t{n}'><figcaption>{name}: {html.escape(str(exc))}</figcaption></figure>")
                continue
            pic = draw_outlines(rgb, [(fn, FN_RGB), (fp, FP_RGB), (tp, TP_RGB)], width=2 if max(rgb.shape[:2]) <= 400 else 1)
            if scores is not None:
                pic = draw_scores(pic, p, scores, pic.shape[0] / rgb.shape[0])
            rel = f"tiles/{n:04d}.png"
            atomic_write_bytes(out / rel, encode_png(np.ascontiguousarray(pic)), force=True)
            h, w = rgb.shape[:2]
            shapes = ([(g[i], "fn", f"missed building (label {i})") for i in range(len(g)) if i not in gi]
                      + [(p[j], "fp", f"prediction {j}: {_score_text(scores, j)}, false positive") for j in fp_j]
                      + [(p[j], "tp", f"prediction {j}: {_score_text(scores, j)}, true positive (IoU {best_iou[j]:.2f})")
                         for j in tp_j])
            links = f"<a href='{rel}'>full size</a>"
            overlay = pred / "overlays" / f"{paths[key].stem}.png" if pred.is_dir() else None
            if overlay is not None and overlay.exists():
                links += f" &middot; <a href='{html.escape(Path(os.path.relpath(overlay, out)).as_posix())}'>predict's overlay</a>"
            figures.append(f"<figure id='t{n}' class='tile'><figcaption><b>{name}</b> F1 {_fmt(s.f1)}: {s.tp} TP, {s.fp} FP, "
                           f"{s.fn} missed ({links})</figcaption><div class='pic'><a href='{rel}'><img src='{rel}' alt='{name}' "
                           f"width='{w}' height='{h}' loading='lazy'></a>{_tile_svg(w, h, shapes)}</div>"
                           "<div class='info'>click a building for its score</div></figure>")
    src_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{len(v.per_image)}</td><td>{_fmt(v.f1)}</td><td>{_fmt(v.f1_pooled)}</td>"
        f"<td>{_fmt(v.precision)}</td><td>{_fmt(v.recall)}</td><td>{_fmt(v.pixel.iou) if v.pixel else ''}</td></tr>"
        for k, v in sorted(score.per_source.items()))
    px = score.pixel
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
th{{background:#f0f0f0}} .grid{{display:flex;flex-wrap:wrap;gap:12px}} figure{{margin:0;max-width:620px}}
figure img{{max-width:600px;width:100%;height:auto;image-rendering:pixelated;border:1px solid #999;display:block}}
figcaption{{font-size:.9em}} .pic{{position:relative;max-width:600px}}
.pic svg{{position:absolute;left:1px;top:1px;width:calc(100% - 2px);height:calc(100% - 2px);pointer-events:none}}
.pic path{{pointer-events:all;fill:transparent;stroke:none;fill-rule:evenodd;cursor:pointer}}
.pic path:hover,.pic path.sel{{fill:rgba(255,255,255,.25);stroke:#fff;stroke-width:1px;vector-effect:non-scaling-stroke}}
.info{{min-height:1.2em;color:#555}}
.k{{display:inline-block;width:1em;height:.8em;margin:0 .3em 0 1em;vertical-align:middle}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Predictions <code>{html.escape(str(pred))}</code> against <code>{html.escape(str(gt))}</code>: object-wise F1 at
IoU {'&gt;' if matching == 'spacenet' else '&ge;'} {iou}, {matching} matching.</p>
<table><tr><th>images</th><th>object F1 (mean over images)</th><th>object F1 (pooled)</th><th>precision</th><th>recall</th>
<th>TP</th><th>FP</th><th>FN</th><th>pixel IoU</th></tr>
<tr><td>{score.n_images}</td><td><b>{_fmt(score.f1)}</b></td><td>{_fmt(score.f1_pooled)}</td><td>{_fmt(score.precision)}</td>
<td>{_fmt(score.recall)}</td><td>{score.tp}</td><td>{score.fp}</td><td>{score.fn}</td><td>{_fmt(px.iou) if px else ''}</td></tr></table>
{'<h2>By source</h2><table><tr><th>source</th><th>images</th><th>F1 mean</th><th>F1 pooled</th><th>precision</th><th>recall</th><th>pixel IoU</th></tr>' + src_rows + '</table>' if len(score.per_source) > 1 else ''}
<h2>Per image (worst first)</h2>
<table><tr><th>image</th><th>source</th><th>TP</th><th>FP</th><th>FN</th><th>precision</th><th>recall</th><th>F1</th></tr>{''.join(rows)}</table>
<h2>Tiles</h2>
<p><span class="k" style="background:rgb{TP_RGB}"></span>true positive<span class="k" style="background:rgb{FP_RGB}"></span>false positive
<span class="k" style="background:rgb{FN_RGB}"></span>missed building</p>
<p>Numbers inside predicted buildings are their scores. Click a building for what it is; click a picture for
it at full size.</p>
<div class="grid">{''.join(figures)}</div>
<script>
document.addEventListener("click", function (ev) {{
  var el = ev.target.closest && ev.target.closest("path.b");
  if (!el) return;
  var fig = el.closest("figure");
  fig.querySelectorAll("path.sel").forEach(function (p) {{ p.classList.remove("sel"); }});
  el.classList.add("sel");
  fig.querySelector(".info").textContent = el.getAttribute("data-info");
}});
</script>
</body></html>
"""
    path = atomic_write_text(out / "index.html", doc, force=True)
    atomic_write_text(out / "scores.json", json.dumps(score.to_json(), indent=2), force=True)
    return ReportResult(path, score, len(figures))
