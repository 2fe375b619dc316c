"""The whole path, stage by stage, with the network's own forward throughput measured in the same run.

For tiles and for scenes this prints, side by side in one run:

* **start-up** (child processes, median of ``--startup-runs``): ``rooftrace --help``, and
  ``rooftrace predict`` on one tile (the whole process: imports, model loading, the first forward,
  every output file);
* **stages in isolation** (per 512 x 512 tile, wall and CPU time of this process): read and decode,
  place and resample, normalise and pad, the forward pass, post-processing (instances and polygon
  tracing), and writing each output format (``submission.csv``, COCO results, GeoJSON, the mask and
  overlay PNGs);
* **the reference**: the network alone (the same weights, precision and batch size as the
  pipeline, through ``ModelRuntime.run`` on tiles already in memory, normalised and padded): tiles/s;
  and, where ``predict`` runs two forward passes at once (``--streams``, the default for a PyTorch
  network on a CPU), the network alone run that way too: the network's best throughput here;
* **tiles end to end**: ``rooftrace.inference.predict.predict_folder`` on the same tiles with the
  default outputs (submission, COCO, GeoJSON, masks, overlays), steady state (the model loaded
  and warm; from the first tile read to the last file written): tiles/s and its ratio to the
  reference, and the pipeline's own per-stage timings;
* **the original loop** (``benchmarks/original_loop.py``) on the same tiles: the end-to-end ratio;
* **a scene**: the sample's Austin scene tiled into an ``--scene-size`` square GeoTIFF,
  ``predict_scene`` to a GeoPackage, megapixels/s against the network alone on the same windows; the
  process's first ``predict_scene`` (lazy imports, memory touched for the first time) runs before the
  rounds and is reported on its own line, as ``predict``'s warm-up tile is left out of its figure.

Rounds alternate the reference and the pipelines (``--rounds``), and the median round is shown,
so a machine whose speed drifts moves both. Within each round the network alone is also timed again
just after ``predict`` and after ``predict_scene``, and each round's ratio against the mean of the two
timings around it is printed with their median: this machine's speed drifts by several per cent from
minute to minute, more than the margin of the ratio asked for. The tiles: every tile of the sample pack's test and
val splits resized to 512 x 512 (as ``benchmarks/predict_speed.py`` makes them), ``--repeat`` times
over. Run from the repository root::

    .venv/bin/python benchmarks/pipeline_speed.py [--repeat 2] [--rounds 3] [--scene-size 2048] [--device cpu] [--streams N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, cpu_name  # noqa: E402

SIZE = 512


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def startup(runs: int, tile_dir: Path, work: Path) -> dict[str, float]:
    """Median wall seconds of ``rooftrace --help`` and ``rooftrace predict`` on one tile, each a fresh process."""
    exe = [sys.executable, "-m", "rooftrace"]
    out: dict[str, list[float]] = {"help": [], "one tile": []}
    for r in range(runs + 1):  # the first run of each warms the page cache and is not counted
        for name, cmd in (("help", [*exe, "--help"]),
                          ("one tile", [*exe, "predict", "--images", str(tile_dir), "--out", str(work / "one-out"), "--force"])):
            t = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            dt = time.perf_counter() - t
            if p.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
            if r:
                out[name].append(dt)
    return {k: _median(v) for k, v in out.items()}


def _by_round(what: str, ratios: list[float]) -> str:
    """A table row: each round's ratio against the network timed just before and after it, and their median."""
    return (f"| {what}, each round against the network timed just before and after it | | median {_median(ratios):.2f} "
            f"({', '.join(f'{r:.2f}' for r in ratios)}) |")


def timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    t, c = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t, time.process_time() - c


def stages(files: list[Path], runtime, batch_size: int, work: Path) -> dict[str, tuple[float, float]]:
    """Each stage alone over every tile: ``{stage: (wall s, cpu s)}`` per tile."""
    from rooftrace.imagery.draw import render_overlay
    from rooftrace.imagery.read import read_rgb
    from rooftrace.imagery.resample import place_tile, resample_rgb
    from rooftrace.inference.runtime import pad_normalise
    from rooftrace.instances.postprocess import postprocess
    from rooftrace.labels.begc import write_begc_csv
    from rooftrace.labels.coco import write_coco_results
    from rooftrace.labels.geojson import write_geojson
    from rooftrace.labels.records import LabelSet, LoadReport, image_key

    n = len(files)
    res: dict[str, tuple[float, float]] = {}
    rgbs, w, c = timed(lambda: [read_rgb(f) for f in files])
    res["read and decode"] = (w / n, c / n)
    seen, w, c = timed(lambda: [resample_rgb(rgb, place_tile(f, rgb.shape[1], rgb.shape[0], None, runtime.gsd).factor)
                                for f, rgb in zip(files, rgbs)])
    res["place and resample"] = (w / n, c / n)
    # As the engine does it: each tile normalised straight into its batch (channels-last), no copy after, and
    # one batch alive at a time, so that its memory is reused. Holding every batch (250 MB for 78 tiles) would
    # time fresh pages instead: on a virtual machine that hands freed memory back to its host, 15 ms a tile
    # against 0.4 ms.
    probs: list[np.ndarray] = []
    norm_w = norm_c = fwd_w = fwd_c = 0.0
    for k in range(0, n, batch_size):
        x, w, c = timed(pad_normalise, seen[k:k + batch_size], runtime.norm)
        norm_w, norm_c = norm_w + w, norm_c + c
        out, w, c = timed(runtime.run, x)
        fwd_w, fwd_c = fwd_w + w, fwd_c + c
        probs.extend(out)
        del x
    res["normalise and pad"] = (norm_w / n, norm_c / n)
    res["forward"] = (fwd_w / n, fwd_c / n)
    method, settings = runtime.postprocessing()
    postprocess(probs[0], method=method, settings=settings)  # its lazy imports (scikit-image), paid once a process
    found, w, c = timed(lambda: [postprocess(p, method=method, settings=settings) for p in probs])
    res["post-process and trace"] = (w / n, c / n)
    labels = LabelSet(report=LoadReport(path=str(work)), root=work, format="predictions")
    for f, rgb, b in zip(files, rgbs, found):
        img = labels.get_or_add(image_key(f))
        img.file_name, img.height, img.width = f.name, rgb.shape[0], rgb.shape[1]
        img.footprints, img.scores = list(b.footprints), list(b.scores)
    out = work / "stage-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name, fn in (("write submission.csv", lambda: write_begc_csv(labels, out / "submission.csv", force=True)),
                     ("write predictions.coco.json", lambda: write_coco_results(labels, out / "p.coco.json", force=True)),
                     ("write predictions.geojson", lambda: write_geojson(labels, out / "p.geojson", force=True)),
                     ("write masks (PNG)", lambda: [(out / f"{f.stem}.m.png").write_bytes(_mask_png(b.instances, f.stem))
                                                    for f, b in zip(files, found) if b.instances is not None]),
                     ("write overlays (PNG)", lambda: [(out / f"{f.stem}.o.png").write_bytes(_overlay_png(render_overlay(
                         rgb, list(b.footprints), list(b.scores)))) for f, rgb, b in zip(files, rgbs, found)])):
        _, w, c = timed(fn)
        res[name] = (w / n, c / n)
    return res


def _mask_png(instances: np.ndarray, stem: str) -> bytes:
    try:
        from rooftrace.inference.predict import _encode_mask
    except ImportError:  # pragma: no cover - a tree from before the quick PNG writer
        from rooftrace.imagery.png import encode_instances

        return encode_instances(instances, stem)
    return _encode_mask(instances, stem)


def _overlay_png(rgb: np.ndarray) -> bytes:
    try:
        from rooftrace.inference.predict import _encode_overlay
    except ImportError:  # pragma: no cover
        from rooftrace.imagery.png import encode_png as _encode_overlay
    return _encode_overlay(rgb)


def reference(runtime, n: int, batch_size: int, h: int = SIZE, w: int = SIZE) -> float:
    """Seconds the network alone takes for ``n`` inputs of ``h x w`` in batches of ``batch_size``."""
    x = np.random.default_rng(0).standard_normal((batch_size, 3, h, w)).astype(np.float32)
    runtime.run(x[:1])  # warm
    t = time.perf_counter()
    done = 0
    while done < n:
        k = min(batch_size, n - done)
        runtime.run(x[:k])
        done += k
    return time.perf_counter() - t


def reference_streams(runtime, n: int, batch_size: int, h: int = SIZE, w: int = SIZE, streams: int | None = None
                      ) -> tuple[float, int]:
    """``(seconds, streams)``: the network alone for ``n`` inputs as ``predict`` runs it, in the runtime's
    default streams (:meth:`ModelRuntime.streams`), each running the forward passes one stream would run;
    ``streams`` 1 (an older tree, ONNX Runtime, a GPU): the same as :func:`reference`."""
    if not hasattr(runtime, "streams"):
        return reference(runtime, n, batch_size, h, w), 1
    from concurrent.futures import ThreadPoolExecutor

    x = np.random.default_rng(0).standard_normal((batch_size, 3, h, w)).astype(np.float32)
    with runtime.streams(streams) as k:
        if k == 1:
            return reference(runtime, n, batch_size, h, w), 1
        step = runtime.stream_batch(batch_size, h, w)
        parts = [min(step, n - i) for i in range(0, n, step)]
        with ThreadPoolExecutor(k) as pool:
            list(pool.map(lambda m: runtime.run(x[:m]), [1] * k))  # warm each thread
            t = time.perf_counter()
            list(pool.map(lambda m: runtime.run(x[:m]), parts))
            return time.perf_counter() - t, k


def run_tiles(tiles: Path, model: Path | None, work: Path, args: argparse.Namespace) -> dict:
    from rooftrace.inference.predict import predict_folder

    out = work / "pipe-out"
    shutil.rmtree(out, ignore_errors=True)
    t, c = time.perf_counter(), time.process_time()
    extra = {"streams": args.streams} if args.streams is not None else {}  # older trees have no streams
    r = predict_folder(tiles, out, model, batch_size=args.batch_size, device=args.device, force=True, progress=False,
                       precision=args.precision, **extra)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    n = r.n_images - r.n_skipped
    return {"wall": wall, "cpu": cpu, "steady": r.timings["total"], "n": n, "buildings": r.labels.n_footprints,
            "timings": dict(r.timings), "runtime": next((n for n in r.notes if n.startswith("runtime:")), "")}


def make_scene(sample: Path, size: int, path: Path) -> Path:
    """The Austin scene tiled into a ``size`` x ``size`` GeoTIFF (tiled 512, DEFLATE), same origin and pixel size."""
    import rasterio
    from rasterio.windows import Window

    if path.exists():
        return path
    with rasterio.open(sample / "scenes" / "inria_austin.tif") as src:
        data, prof = src.read([1, 2, 3]), src.profile
    _, h, w = data.shape
    row = np.tile(data, (1, 1, -(-size // w)))[:, :, :size]
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=prof["crs"],
                       transform=prof["transform"], tiled=True, blockxsize=512, blockysize=512, compress="deflate") as dst:
        for r in range(0, size, h):
            dst.write(row[:, :min(h, size - r)], window=Window(0, r, size, min(h, size - r)))
    return path


def run_scene(scene: Path, runner, work: Path, args: argparse.Namespace) -> dict:
    from rooftrace.scenes.predict import predict_scene

    out = work / "scene.gpkg"
    t = time.perf_counter()
    extra = {"streams": args.streams} if args.streams is not None else {}
    r = predict_scene(scene, out, runner, force=True, progress=False, batch_size=args.scene_batch_size, **extra)
    return {"wall": time.perf_counter() - t, "n_windows": r.n_windows, "buildings": r.n_buildings, "mp": r.width * r.height / 1e6,
            "inference": r.seconds_inference, "postprocess": r.seconds_postprocess}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--splits", default="test,val")
    ap.add_argument("--repeat", type=int, default=2, help="copies of the tile set (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of reference and pipelines; the median is shown")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--scene-batch-size", type=int, default=4)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--streams", type=int, default=None, help="predict's --streams (default: its own default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scene-size", type=int, default=2048, help="side of the scene in pixels (0: no scene)")
    ap.add_argument("--startup-runs", type=int, default=3, help="fresh processes per start-up figure (0: skip)")
    ap.add_argument("--no-original", action="store_true", help="skip the original loop")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from predict_speed import make_tiles

    work = Path(tempfile.mkdtemp(prefix="rooftrace-pipeline-speed-"))
    figures: dict = {"command": " ".join([os.path.relpath(sys.executable), *sys.argv]), "machine": f"{cpu_name()}, {os.cpu_count()} CPUs"}
    try:
        tiles = work / "tiles"
        tiles.mkdir()
        n = make_tiles(args.sample, args.splits.split(","), args.repeat, tiles)
        one = work / "one"
        one.mkdir()
        shutil.copy(sorted(tiles.glob("*.png"))[0], one)
        if args.startup_runs:
            figures["startup"] = startup(args.startup_runs, one, work)
        t0 = time.perf_counter()
        from rooftrace.inference.runtime import load_runtime, make_runner

        runtime = load_runtime(args.model, device=args.device, precision=args.precision)
        figures["load s"] = time.perf_counter() - t0
        figures["runtime"] = f"{runtime.description}; {runtime.runtime_line}"
        model = args.model or runtime.path
        files = sorted(tiles.glob("*.png"))
        figures["stages"] = stages(files, runtime, args.batch_size, work)
        run_tiles(one, model, work, args)  # warm-up: allocator, OpenCV and the network's first call
        scene = make_scene(args.sample, args.scene_size, work / "scene.tif") if args.scene_size else None
        runner = make_runner(runtime) if scene else None
        if scene:
            from rooftrace.imagery.windows import DEFAULT_OVERLAP, DEFAULT_TILE, Grid

            n_win = Grid.make(args.scene_size, args.scene_size, DEFAULT_TILE, DEFAULT_OVERLAP).n_windows
            # the process's first predict_scene pays for lazy imports (scikit-image, the GeoPackage driver) and
            # memory touched for the first time; reported apart, as predict's first tile is by its warm-up
            figures["scene first"] = run_scene(scene, runner, work, args)
        rounds: dict[str, list] = {"reference": [], "reference streams": [], "tiles": [], "original": [], "scene reference": [],
                                   "scene": [], "reference after": [], "scene reference after": []}
        for _ in range(args.rounds):
            rounds["reference"].append(reference(runtime, n, args.batch_size))
            seconds, figures["streams"] = reference_streams(runtime, n, args.batch_size, streams=args.streams)
            rounds["reference streams"].append(seconds)
            rounds["tiles"].append(run_tiles(tiles, model, work, args))
            rounds["reference after"].append(reference(runtime, n, args.batch_size))
            if not args.no_original:
                from original_loop import run_original_loop

                rounds["original"].append(run_original_loop(tiles, model or runtime.path, work / "orig.csv", device=args.device).seconds)
                rounds["tiles-whole"] = rounds.get("tiles-whole", []) + [rounds["tiles"][-1]["wall"]]
            if scene:
                rounds["scene reference"].append(reference(runtime, n_win, args.scene_batch_size, DEFAULT_TILE, DEFAULT_TILE))
                rounds.setdefault("scene reference streams", []).append(
                    reference_streams(runtime, n_win, args.scene_batch_size, DEFAULT_TILE, DEFAULT_TILE, streams=args.streams)[0])
                rounds["scene"].append(run_scene(scene, runner, work, args))
                rounds["scene reference after"].append(reference(runtime, n_win, args.scene_batch_size, DEFAULT_TILE, DEFAULT_TILE))
        ref = _median(rounds["reference"])
        tile_runs = sorted(rounds["tiles"], key=lambda r: r["steady"])
        med = tile_runs[len(tile_runs) // 2]
        figures["reference tiles/s"] = n / ref
        figures["tiles"] = med
        figures["tiles/s steady"] = n / med["steady"]
        figures["tiles vs reference"] = (n / med["steady"]) / (n / ref)
        # each round's predict against the network timed just before and just after it: the machine's own speed
        # drifts by several per cent from minute to minute here, more than the figure's margin
        figures["tiles vs reference, by round"] = [(b + a) / 2 / r["steady"] for r, b, a in
                                                   zip(rounds["tiles"], rounds["reference"], rounds["reference after"])]
        figures["reference streams tiles/s"] = n / _median(rounds["reference streams"])
        figures["tiles vs reference streams"] = (n / med["steady"]) / figures["reference streams tiles/s"]
        if rounds["original"]:
            figures["original s"] = _median(rounds["original"])
            figures["vs original"] = figures["original s"] / _median(rounds["tiles-whole"])
        if scene:
            sref = _median(rounds["scene reference"])
            sc = sorted(rounds["scene"], key=lambda r: r["wall"])[len(rounds["scene"]) // 2]
            figures["scene"] = sc
            figures["scene reference MP/s"] = sc["mp"] / sref
            figures["scene MP/s"] = sc["mp"] / sc["wall"]
            figures["scene vs reference"] = figures["scene MP/s"] / figures["scene reference MP/s"]
            figures["scene vs reference, by round"] = [(b + a) / 2 / r["wall"] for r, b, a in
                                                       zip(rounds["scene"], rounds["scene reference"], rounds["scene reference after"])]
            figures["scene reference streams MP/s"] = sc["mp"] / _median(rounds["scene reference streams"])

        import torch

        print(f"command: {figures['command']}")
        print(f"machine: {figures['machine']}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
              f"load average at the end {os.getloadavg()[0]:.1f}")
        print(f"model: {runtime.path.name}; {figures['runtime']}; precision {args.precision}; batch {args.batch_size}; "
              f"{n} tiles of {SIZE} x {SIZE}; median of {args.rounds} round(s)")
        if "startup" in figures:
            s = figures["startup"]
            print(f"\nstart-up (whole process, median of {args.startup_runs}): rooftrace --help {s['help']:.2f} s; "
                  f"rooftrace predict on one tile {s['one tile']:.2f} s; model loading in process {figures['load s']:.2f} s")
        print("\n| stage (alone, per tile) | wall ms | CPU ms |")
        print("|---|---|---|")
        for k, (w, c) in figures["stages"].items():
            print(f"| {k} | {w * 1e3:.1f} | {c * 1e3:.1f} |")
        print("\n| run | tiles/s | vs the network alone |")
        print("|---|---|---|")
        print(f"| the network alone (forward, batch {args.batch_size}) | {figures['reference tiles/s']:.2f} | 1.00 |")
        if figures["streams"] > 1:
            print(f"| the network alone in {figures['streams']} streams, as predict runs it | {figures['reference streams tiles/s']:.2f} | "
                  f"{figures['reference streams tiles/s'] / figures['reference tiles/s']:.2f} |")
        print(f"| predict, default outputs, steady | {figures['tiles/s steady']:.2f} | {figures['tiles vs reference']:.2f}"
              + (f" ({figures['tiles vs reference streams']:.2f} of the network in streams)" if figures["streams"] > 1 else "") + " |")
        print(_by_round("predict", figures["tiles vs reference, by round"]))
        if "original s" in figures:
            print(f"| original loop (whole call) | {n / figures['original s']:.2f} | predict (whole call, model load included) "
                  f"is {figures['vs original']:.2f}x the original loop |")
        t = med["timings"]
        print("\npredict's own timings (s, summed over tiles; threads overlap): " +
              ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in t.items()))
        if scene:
            sc = figures["scene"]
            print(f"\n| scene {args.scene_size} x {args.scene_size} ({sc['n_windows']} windows of {DEFAULT_TILE}) | MP/s | vs the network alone |")
            print("|---|---|---|")
            print(f"| the network alone on the same windows (batch {args.scene_batch_size}) | {figures['scene reference MP/s']:.2f} | 1.00 |")
            if figures["streams"] > 1:
                print(f"| the network alone on the same windows in {figures['streams']} streams | "
                      f"{figures['scene reference streams MP/s']:.2f} | {figures['scene reference streams MP/s'] / figures['scene reference MP/s']:.2f} |")
            print(f"| predict_scene to .gpkg ({sc['buildings']} buildings) | {figures['scene MP/s']:.2f} | {figures['scene vs reference']:.2f} |")
            print(_by_round("predict_scene", figures["scene vs reference, by round"]))
            print(f"\nscene seconds (median round): inference and stitching {sc['inference']:.2f}, post-processing {sc['postprocess']:.2f}")
            first = figures["scene first"]
            print(f"the process's first predict_scene (before the rounds, not in the figures above): {first['wall']:.2f} s, "
                  f"{first['mp'] / first['wall'] / figures['scene reference MP/s']:.2f} of the network alone; inference and "
                  f"stitching {first['inference']:.2f}, post-processing {first['postprocess']:.2f}")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
