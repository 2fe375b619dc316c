"""How big a scene report is and how fast it opens: a synthetic 10,000 x 10,000 px scene with 3,000 buildings.

    .venv/bin/python benchmarks/scene_report.py [--size 10000] [--buildings 3000] [--work /tmp/rooftrace-scene-report]

Writes a synthetic RGB GeoTIFF (UTM, 0.3 m, tiled and compressed, written strip by strip), a GeoPackage of
building polygons with ``score`` and ``area`` fields (each ~40 vertices, as ``predict-scene`` writes them) and
labels (GeoJSON in EPSG:4326: most buildings, a few missing, a few extra), then times
``write_scene_report`` and opens the report in headless Chromium (system Chromium via Playwright; see
``rooftrace.evaluation.browser``), reporting the size of the report folder, the page's load time (to the map's
ready flag) and how many shapes the map drew. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_scene(tif: Path, gpkg: Path, labels: Path, size: int, n: int, seed: int = 0) -> None:
    """A ``size`` x ``size`` RGB GeoTIFF with ``n`` bright buildings, their polygons, and labels."""
    import pyogrio.raw
    import rasterio
    import shapely
    from affine import Affine
    from pyproj import CRS
    from rasterio.features import rasterize
    from rasterio.windows import Window

    from rooftrace.labels.geojson import reproject

    rng = np.random.default_rng(seed)
    transform = Affine(0.3, 0, 500_000.0, 0, -0.3, 5_000_000.0)
    crs = CRS.from_epsg(32633)
    # Buildings: jittered rotated rectangles, pixel coordinates first.
    cx, cy = rng.uniform(30, size - 30, n), rng.uniform(30, size - 30, n)
    w, h, a = rng.uniform(8, 25, n), rng.uniform(8, 25, n), rng.uniform(0, np.pi, n)
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    polys = []
    for k in range(n):
        r = 1 + rng.normal(0, 0.03, t.size)
        x = np.clip(np.cos(t) * 1.3, -1, 1) * w[k] * r
        y = np.clip(np.sin(t) * 1.3, -1, 1) * h[k] * r
        xr = cx[k] + x * np.cos(a[k]) - y * np.sin(a[k])
        yr = cy[k] + x * np.sin(a[k]) + y * np.cos(a[k])
        polys.append(shapely.make_valid(shapely.Polygon(np.column_stack([xr, yr]))))
    px = np.asarray(polys, dtype=object)
    tif.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs.to_wkt(), transform=transform,
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate", predictor=2)
    strip = 1024
    tree = shapely.STRtree(px)
    with rasterio.open(tif, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            hgt = min(strip, size - r0)
            yy, xx = np.mgrid[r0:r0 + hgt, 0:size].astype(np.float32)
            base = (60 + 30 * np.sin(xx / 300.0) * np.cos(yy / 410.0)).astype(np.float32)
            noise = rng.integers(0, 12, (hgt, size), dtype=np.uint8)
            sel = tree.query(shapely.box(0, r0, size, r0 + hgt))
            mask = (rasterize([(shapely.affinity.translate(px[i], 0, -r0), 1) for i in sel], out_shape=(hgt, size), dtype="uint8")
                    if len(sel) else np.zeros((hgt, size), np.uint8))
            for b, tint in enumerate((1.0, 0.95, 0.85)):
                band = base * tint + noise + mask * 110
                dst.write(np.clip(band, 0, 255).astype(np.uint8), b + 1, window=Window(0, r0, size, hgt))
    to_map = lambda g: shapely.transform(g, lambda xy: np.column_stack((transform.c + 0.3 * xy[:, 0], transform.f - 0.3 * xy[:, 1])))
    geoms = np.asarray([to_map(g) for g in px], dtype=object)
    scores = rng.uniform(0.3, 0.99, n)
    pyogrio.raw.write(gpkg, shapely.to_wkb(geoms), [scores, shapely.area(geoms)], ["score", "area"], layer=gpkg.stem,
                      driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())
    # Labels: 90 % of the buildings, plus 5 % elsewhere, in longitude/latitude.
    keep = geoms[rng.random(n) < 0.9]
    extra = shapely.buffer(shapely.points(transform.c + 0.3 * rng.uniform(0, size, n // 20),
                                          transform.f - 0.3 * rng.uniform(0, size, n // 20)), 4.0, quad_segs=2)
    lab = reproject(np.concatenate([keep, extra]), crs, CRS.from_epsg(4326))
    pyogrio.raw.write(labels, shapely.to_wkb(lab), [], [], driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--buildings", type=int, default=3_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rooftrace-scene-report"))
    ap.add_argument("--screenshot", type=Path, default=None, help="also save a screenshot of the map here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from rooftrace.evaluation import browser
    from rooftrace.evaluation.scene_report import write_scene_report

    tif, gpkg, labels = args.work / "scene.tif", args.work / "scene.gpkg", args.work / "labels.geojson"
    t0 = time.perf_counter()
    if not (tif.exists() and gpkg.exists() and labels.exists()):
        synthetic_scene(tif, gpkg, labels, args.size, args.buildings)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = write_scene_report(gpkg, tif, args.work / "report", labels=labels, force=True)
    write_s = time.perf_counter() - t0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # includes making the scene when it was made here
    out: dict = {"scene_px": args.size, "buildings": result.n_footprints, "scene_file_mb": round(tif.stat().st_size / 1e6, 1),
                 "synthetic_s": round(made, 1), "write_s": round(write_s, 2), "peak_rss_mb": round(peak),
                 "report_mb": round(result.bytes / 1e6, 2),
                 "files_kb": {p.name: round(p.stat().st_size / 1e3) for p in sorted(result.path.parent.iterdir()) if p.is_file()},
                 "map_image_px": list(result.map_shape), "f1": round(result.score.f1_pooled, 4) if result.score else None}
    why = browser.unavailable()
    if why:
        out["browser"] = f"skipped: {why}"
    else:
        loads = []
        for _ in range(3):
            with browser.open_report(result.path, ready="window.rooftraceReady === true") as opened:
                loads.append(opened.load_s)
                shapes = opened.page.locator("#map path.leaflet-interactive").count()
                nav = opened.page.evaluate("performance.now()")
                outside = opened.outside_requests()
        out.update({"load_s": [round(v, 3) for v in loads], "page_ms_at_ready": round(nav), "svg_paths": shapes,
                    "requests_outside_file_system": len(outside)})
        if args.screenshot:
            browser.screenshot_scene_map(result.path, args.screenshot)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
