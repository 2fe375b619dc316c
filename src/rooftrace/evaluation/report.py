"""An HTML report of predictions against ground truth: what was found, what was wrong, what was missed.

``build_report`` scores predictions (any format, or a ``rooftrace predict`` output folder) against
ground truth and writes ``REPORT/index.html`` with a summary table (overall and per source), the
per-image scores worst first, and for each tile the image with its true positives (green), false
positives (red) and missed buildings (orange) outlined, as PNGs in ``REPORT/tiles/``. It needs no
server and no JavaScript: open the file in a browser.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.evaluation.metrics import Score, evaluate_labels, match_footprints
from rooftrace.imagery.draw import draw_outlines
from rooftrace.imagery.png import encode_png
from rooftrace.imagery.read import list_images, read_rgb
from rooftrace.labels.formats import align_keys, read_labels
from rooftrace.labels.records import ImageKey, LabelSet

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


def build_report(pred: str | Path, gt: str | Path, out: str | Path | None = None, *, images: str | Path | None = None,
                 iou: float = 0.5, matching: str = "one-to-one", title: str = "rooftrace report", force: bool = False,
                 max_tiles: int = 500) -> ReportResult:
    """Score ``pred`` against ``gt`` and write an HTML report with a picture of every tile.

    Args:
        pred: Predictions in any format, or a ``rooftrace predict`` output folder.
        gt: Ground truth in any format (COCO gives the image files too).
        out: Report folder (default: ``PRED/report`` for a predict folder, else ``report`` beside PRED).
        images: Folder of the tiles when the ground truth does not say where they are.
        max_tiles: Draw at most this many tiles (the worst first); the table lists all.
    """
    pred, gt = Path(pred), Path(gt)
    out = Path(out) if out is not None else (pred / "report" if pred.is_dir() else pred.parent / "report")
    if (out / "index.html").exists() and not force:
        raise RooftraceError(f"{out}: already holds a report; pass --force to replace it")
    gt_ls = read_labels(gt)
    pred_ls = align_keys(gt_ls, read_labels(_pred_path(pred), check_images=False))
    if gt_ls.crs is not None:
        raise RooftraceError(f"{gt}: map-coordinate labels; pass them with their raster to `evaluate` instead (reports draw tiles)")
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
        tp = [p[j] for j in sorted(pj)]
        fp = [p[j] for j in range(len(p)) if j not in pj]
        fn = [g[i] for i in range(len(g)) if i not in gi]
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
            rel = f"tiles/{n:04d}.png"
            atomic_write_bytes(out / rel, encode_png(np.ascontiguousarray(pic)), force=True)
            figures.append(f"<figure id='t{n}'><img src='{rel}' alt='{name}' loading='lazy'><figcaption><b>{name}</b> "
                           f"F1 {_fmt(s.f1)}: {s.tp} TP, {s.fp} FP, {s.fn} missed</figcaption></figure>")
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
figure img{{max-width:600px;image-rendering:pixelated;border:1px solid #999}} figcaption{{font-size:.9em}}
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
<div class="grid">{''.join(figures)}</div>
</body></html>
"""
    path = atomic_write_text(out / "index.html", doc, force=True)
    atomic_write_text(out / "scores.json", json.dumps(score.to_json(), indent=2), force=True)
    return ReportResult(path, score, len(figures))
