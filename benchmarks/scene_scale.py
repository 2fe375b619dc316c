"""How `predict-scene` scales: peak memory and time per km² on large GeoTIFFs made from the sample scene.

The sample's Inria Austin scene (1000 x 1000 px, 0.3 m, EPSG:26914) is tiled into an N x N GeoTIFF
(20,000 px by default: 6 km x 6 km, 36 km²; tiled 512 x 512, DEFLATE, as large orthophotos are
shipped), and ``rooftrace.scenes.predict.predict_scene`` runs on it in a child process, whose peak resident
memory (``ru_maxrss`` from ``os.wait4``: torch allocates natively, so tracemalloc would miss it) and
wall time are reported. Two models, because an untrained network finds no buildings:

``oracle``
    The mosaic is made of the scene's *perfect targets* (footprint, boundary, contact rasterised from
    inria_austin.geojson) and the model is the identity: it measures reading, stitching,
    post-processing and writing at the sample's real density of buildings (about 1,500 per km²),
    with no network cost.
``baseline-unet``
    The RGB mosaic and an untrained ``configs/baseline-unet.yaml`` with 8 base channels and three
    outputs, saved with ``weights.save_model`` and loaded from that file: the network's share of the
    time on the CPU. Untrained, it finds no buildings, so post-processing costs next to nothing.
``unet-effb0``
    As above with ``configs/unet-effb0.yaml`` (slow on a CPU: about 2 s a window here).

``--oracle-f1`` instead measures what stitching and block post-processing lose on the real scene:
the perfect targets of inria_austin go through ``predict_scene`` (tile 512, overlap 64), the
GeoPackage is scored against inria_austin.geojson in map coordinates with
``metrics.evaluate_labels``, and its polygons are compared with one post-processing pass over the
whole scene.

Generated rasters go to ``--work`` (default ``$TMPDIR/rooftrace-scene-scale``), never into the
repository, and are reused by later runs.

    .venv/bin/python benchmarks/scene_scale.py                          # 4,000 and 20,000 px, oracle and baseline-unet
    .venv/bin/python benchmarks/scene_scale.py --sizes 4000 --models oracle
    .venv/bin/python benchmarks/scene_scale.py --oracle-f1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rooftrace.labels.geojson import read_geojson
from rooftrace.prepare.targets import make_targets  # noqa: E402

CHILD = r"""
import json, sys
from rooftrace.scenes.predict import predict_scene
a = json.loads(sys.argv[1])
model = a.pop("model")
if model == "identity":
    def model(x):
        return x.float() / 255
r = predict_scene(a.pop("scene"), a.pop("out"), model, force=True, progress=False, **a)
print("RESULT " + json.dumps(r.to_json()))
"""


def sample_dir() -> Path:
    return Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample"))


def austin_targets(sample: Path) -> np.ndarray:
    """Perfect targets of the Austin scene as ``(3, H, W)`` uint8 0/255."""
    scene = sample / "scenes" / "inria_austin.tif"
    img = next(iter(read_geojson(sample / "scenes" / "inria_austin.geojson", raster=scene)))
    return make_targets(img.footprints, (img.height, img.width)).stack() * np.uint8(255)


def build_mosaic(src_data: np.ndarray, profile: dict, size: int, path: Path) -> Path:
    """An N x N GeoTIFF tiling ``src_data`` (written band of rows by band of rows), same origin and pixel size."""
    if path.exists():
        return path
    _, h, w = src_data.shape
    prof = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=profile["crs"],
                transform=profile["transform"], tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                BIGTIFF="IF_SAFER")
    tmp = path.with_suffix(".part.tif")
    reps = -(-size // w)
    row = np.tile(src_data, (1, 1, reps))[:, :, :size]
    with rasterio.open(tmp, "w", **prof) as dst:
        for r in range(0, size, h):
            n = min(h, size - r)
            dst.write(row[:, :n], window=Window(0, r, size, n))
    tmp.rename(path)
    return path


def model_file(work: Path, name: str) -> Path:
    """An untrained three-channel model from configs/, saved as rooftrace writes model files."""
    path = work / f"{name}-untrained.safetensors"
    if path.exists():
        return path
    import torch

    from rooftrace.config import load_config
    from rooftrace.models.architectures import build_model
    from rooftrace.models.files import save_model

    torch.manual_seed(0)
    overrides = {"baseline-unet": ["model.base_channels=8", "data.channels=[footprint, boundary, contact]",
                                   "loss.channel_weights=[1, 0.5, 0.5]"], "unet-effb0": []}[name]
    cfg = load_config(REPO / "configs" / f"{name}.yaml", overrides)
    return save_model(path, build_model(cfg.model, 3).eval(), cfg)


#: Starts the measured process and reports its peak RSS. On Linux a child's ``ru_maxrss`` starts
#: from the high-water mark of the process it was forked from (it survives ``exec``), so the child
#: is started from this small launcher, not from this script, which holds the mosaics it built.
LAUNCHER = r"""
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True)
out = p.stdout.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss, "wall": time.perf_counter() - t0,
                  "out": out}))
"""


def run_child(args: dict) -> tuple[dict, float, float]:
    """Run predict_scene in a child process: (its result, wall seconds, peak RSS in MB)."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", CHILD, json.dumps(args)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    if done.returncode != 0:
        raise SystemExit(f"launcher failed: {done.stderr}")
    report = json.loads(done.stdout)
    if report["exit"] != 0:
        raise SystemExit(f"predict_scene failed (exit {report['exit']}) for {args}: {done.stderr[-2000:]}")
    line = next(ln for ln in report["out"].splitlines() if ln.startswith("RESULT "))
    return json.loads(line[7:]), report["wall"], report["maxrss_kb"] / 1024  # KB on Linux


def scale(opts: argparse.Namespace) -> None:
    sample = sample_dir()
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    with rasterio.open(sample / "scenes" / "inria_austin.tif") as src:
        rgb, profile = src.read(), src.profile
    targets = austin_targets(sample) if "oracle" in opts.models else None
    rows = []
    for size in opts.sizes:
        for name in opts.models:
            if name == "oracle":
                scene = build_mosaic(targets, profile, size, work / f"austin_targets_{size}.tif")
                model = "identity"
            else:
                scene = build_mosaic(rgb, profile, size, work / f"austin_rgb_{size}.tif")
                model = str(model_file(work, name))
            args = dict(scene=str(scene), out=str(work / f"out_{name}_{size}.gpkg"), model=model, tile=opts.tile,
                        overlap=opts.overlap, batch_size=opts.batch_size, device="cpu", work_dir=str(work))
            if opts.block:
                args["block"] = opts.block
            res, wall, rss = run_child(args)
            res_truncated = res["n_truncated"]
            rows.append(dict(size=size, model=name, km2=res["area_km2"], windows=res["n_windows"], buildings=res["n_buildings"],
                             inference_s=res["seconds_inference"], postprocess_s=res["seconds_postprocess"], wall_s=wall,
                             s_per_km2=wall / res["area_km2"], peak_rss_mb=rss,
                             truncated=res_truncated))
            r = rows[-1]
            print(f"{size} px {name}: {r['wall_s']:.1f} s, {r['peak_rss_mb']:.0f} MB peak, {r['buildings']} buildings", flush=True)
    print()
    print(f"tile {opts.tile}, overlap {opts.overlap}, batch {opts.batch_size}, CPU ({os.cpu_count()} cores); "
          "wall time includes starting Python and importing torch")
    print()
    print("| scene (px) | km² | model | windows | buildings | inference s | post-processing s | total s | s per km² | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']:,} x {r['size']:,} | {r['km2']:.2f} | {r['model']} | {r['windows']:,} | {r['buildings']:,} | "
              f"{r['inference_s']:.1f} | {r['postprocess_s']:.1f} | {r['wall_s']:.1f} | {r['s_per_km2']:.1f} | {r['peak_rss_mb']:.0f} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2))


def oracle_f1(opts: argparse.Namespace) -> None:
    import pyogrio
    import shapely

    from rooftrace.evaluation.metrics import evaluate_labels
    from rooftrace.geometry.shapes import pixel_to_map
    from rooftrace.instances.postprocess import postprocess
    from rooftrace.labels.formats import align_keys, read_labels
    from rooftrace.scenes.predict import predict_scene

    sample = sample_dir()
    work = Path(opts.work)
    work.mkdir(parents=True, exist_ok=True)
    labels = sample / "scenes" / "inria_austin.geojson"
    with rasterio.open(sample / "scenes" / "inria_austin.tif") as src:
        profile = src.profile
    targets = austin_targets(sample)
    scene = work / "austin_targets.tif"
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(targets)
    whole = postprocess(targets.astype(np.float32) / 255)
    one_pass = set(shapely.to_wkb(shapely.normalize(pixel_to_map(np.asarray(whole.footprints, dtype=object), profile["transform"]))))
    print(f"perfect targets of {labels.name} -> predict_scene (identity model, tile {opts.tile}, overlap {opts.overlap}) "
          "-> GeoPackage -> metrics.evaluate_labels in map coordinates (EPSG:26914)")
    print()
    print("| post-processing blocks | buildings | object F1 (IoU >= 0.5, one-to-one) | TP / FP / FN | same polygons as one pass over the scene |")
    print("|---|---|---|---|---|")
    for block, margin in ((2048, 128), (256, 16), (128, 8)):
        out = work / f"austin_oracle_{block}.gpkg"
        predict_scene(scene, out, lambda x: x.float() / 255, tile=opts.tile, overlap=opts.overlap, block=block, margin=margin,
                      force=True, progress=False)
        gt = read_labels(labels)
        pred = align_keys(gt, read_labels(out))
        score = evaluate_labels(gt, pred, pixel=False)
        _, _, wkb, _ = pyogrio.raw.read(out)
        same = set(shapely.to_wkb(shapely.normalize(shapely.from_wkb(wkb)))) == one_pass
        print(f"| {block} + {margin} margin | {pred.n_footprints} | {score.f1:.4f} | {score.tp} / {score.fp} / {score.fn} | "
              f"{'yes' if same else 'no'} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4000, 20000], help="mosaic sides in pixels (default 4000 20000)")
    p.add_argument("--models", nargs="+", default=["oracle", "baseline-unet"], choices=["oracle", "baseline-unet", "unet-effb0"])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block", type=int, default=None, help="post-processing core size (default: predict_scene's)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "rooftrace-scene-scale"), help="folder for the generated rasters")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--oracle-f1", action="store_true", help="measure the seam check on inria_austin instead")
    opts = p.parse_args()
    print("command: " + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/scene_scale.py", *sys.argv[1:]]))
    print()
    oracle_f1(opts) if opts.oracle_f1 else scale(opts)


if __name__ == "__main__":
    main()
