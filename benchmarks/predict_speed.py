"""End-to-end throughput of ``rooftrace predict`` against the original one-tile loop, same weights, same tiles.

The tiles: every tile of the sample pack's chosen splits (default test and val: 39 tiles of 256 x 256,
300 x 300, 650 x 650 and others), each **resized** to 512 x 512 (``cv2.resize``, bilinear) and written
as PNG into a temporary folder, ``--repeat`` times over (copies under new names), so that both
pipelines push exactly the same pixels through the model: the original loop's own resize to 512
is then the identity, and ``predict`` sees 512 x 512 tiles (no padding).

Pipelines, each given the whole folder, one after the other, ``--rounds`` times (the table gives
the median round; the ratio to the original loop is taken within this one run):

* ``original loop``: ``benchmarks/original_loop.py`` (read, resize, batch-1 forward, seed recipe,
  CSV row; one tile at a time), writing its CSV;
* ``predict (PyTorch)``: ``rooftrace.inference.predict.predict_folder`` on the ``.safetensors`` model, writing
  the submission, GeoJSON and COCO results (``--no-masks --no-overlays``), and once more with every
  output (masks and overlays), at ``--precision auto`` (bf16 autocast on a CPU with native bf16,
  as the AVX512-BF16 EPYC here, and on GPUs), and once more at ``--precision fp32``, the original
  loop's precision;
* ``predict, PyTorch, torch.compile`` with ``--compile`` (compiling, or loading inductor's cache of an
  earlier run, happens in the run and counts);
* ``predict (ONNX Runtime)`` and ``predict (ONNX Runtime int8)``: the same on the model exported by
  ``rooftrace.inference.export.export_onnx`` (into the temporary folder; ``--no-onnx`` / ``--no-int8`` to skip).

``tiles/s`` counts the whole call, the model's loading included; ``steady tiles/s`` leaves the
loading out (from the first tile read to the last file written). Post-processing (watershed by
default, or the method ``rooftrace tune`` saved beside the model; the original loop: its seed recipe)
is timed per tile inside each pipeline in CPU time of the thread that runs it (its wall time is
given in brackets: it also counts waiting for a core, which inflates it on a busy machine). Its
share of end-to-end time is that CPU time over the run's wall time: for ``predict``, where it runs
in threads alongside inference, what it would add if it ran in line. Its share of CPU time is over
the CPU time of the benchmark process (all its threads; the tile-reading processes are not
counted). The last column does the same for all per-tile output work (post-processing, and the
mask and overlay PNGs when written).

Run from the repository root (the model defaults to the shipped one in ``models/``)::

    .venv/bin/python benchmarks/predict_speed.py [--model M.safetensors] [--repeat 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, REPO, cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from original_loop import run_original_loop  # noqa: E402

from rooftrace.imagery.read import list_images  # noqa: E402
from rooftrace.inference.export import export_onnx  # noqa: E402
from rooftrace.inference.predict import predict_folder  # noqa: E402
from rooftrace.models.autocast import autocast_dtype, dtype_name  # noqa: E402

SIZE = 512




def default_model() -> Path | None:
    """The shipped model (``rooftrace.models.files.shipped_model()``), else the newest ``runs/*/best.safetensors``."""
    from rooftrace.core.errors import RooftraceError
    from rooftrace.models.files import shipped_model

    try:
        return shipped_model()
    except RooftraceError:
        found = sorted(REPO.glob("runs/*/best.safetensors"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None


def make_tiles(sample: Path, splits: list[str], repeat: int, folder: Path, limit: int = 0) -> int:
    """Every tile of ``splits`` resized to 512 x 512 as PNG in ``folder``, ``repeat`` times over."""
    from rooftrace.imagery.read import read_rgb

    sources = [f for s in splits for f in list_images(sample / s / "image")]
    if limit:
        sources = sources[:limit]
    tiles = [cv2.resize(read_rgb(f), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for f in sources]
    n = 0
    for _ in range(repeat):
        for t in tiles:
            cv2.imwrite(str(folder / f"{n:05d}.png"), cv2.cvtColor(t, cv2.COLOR_RGB2BGR))
            n += 1
    return n


def run_predict(images: Path, model: Path, out: Path, args: argparse.Namespace, all_outputs: bool, compile: bool = False,
                precision: str = "auto") -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    r = predict_folder(images, out, model, batch_size=args.batch_size, device=args.device, workers=args.workers,
                       threads=args.threads, write_masks=all_outputs, write_overlays=all_outputs, force=True, progress=False,
                       compile=compile, precision=precision)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = r.n_images - r.n_skipped
    t = r.timings
    return {"wall": wall, "steady": t["total"], "n": n, "buildings": r.labels.n_footprints,
            "pp_ms": t["postprocess_cpu"] / n * 1e3, "pp_wall_ms": t["postprocess"] / n * 1e3,
            "pp_share": t["postprocess_cpu"] / wall, "pp_cpu_share": t["postprocess_cpu"] / cpu,
            "out_share": (t["postprocess_cpu"] + t.get("encode_cpu", t.get("write_cpu", 0.0))) / wall}  # "write" before session 15


def run_original(images: Path, model: Path, out: Path, args: argparse.Namespace) -> dict:
    c0 = time.process_time()
    r = run_original_loop(images, model, out / "original.csv", device=args.device)
    cpu = time.process_time() - c0
    busy = sum(r.steps.values())
    pp = r.steps_cpu["postprocess"]
    return {"wall": r.seconds, "steady": busy, "n": r.n_tiles, "buildings": r.n_buildings,
            "pp_ms": pp / r.n_tiles * 1e3, "pp_wall_ms": r.steps["postprocess"] / r.n_tiles * 1e3,
            "pp_share": pp / r.seconds, "pp_cpu_share": pp / cpu, "out_share": (pp + r.steps["write"]) / r.seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="rooftrace .safetensors model (default: the shipped model, else the newest runs/*/best.safetensors)")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="sample pack folder")
    ap.add_argument("--splits", default="test,val", help="sample splits whose tiles are used (default test,val)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N source tiles (quick checks)")
    ap.add_argument("--repeat", type=int, default=3, help="copies of the tile set (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="times each pipeline runs; the median is shown (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="predict's tile-reading processes (default 2, as the CLI)")
    ap.add_argument("--threads", type=int, default=None,
                    help="predict's post-processing threads (default: its own: 0 on a CPU of up to 4 cores, else half the cores)")
    ap.add_argument("--compile", action="store_true", help="also run predict with torch.compile (its compile time counts)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime pipelines")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX pipeline")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    model = args.model or default_model()
    if model is None or not model.exists():
        ap.error("no model: pass --model M.safetensors (or train one into runs/)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")

    work = Path(tempfile.mkdtemp(prefix="rooftrace-predict-speed-")) if args.keep is None else args.keep
    try:
        tiles = work / "tiles"
        tiles.mkdir(parents=True, exist_ok=True)
        for old in tiles.glob("*.png"):
            old.unlink()
        n = make_tiles(args.sample, args.splits.split(","), args.repeat, tiles, args.limit)
        auto = dtype_name(autocast_dtype("auto", torch.device(args.device)))
        pipelines: list[tuple[str, object]] = [
            ("original loop (one tile at a time)", lambda: run_original(tiles, model, work, args)),
            (f"predict, PyTorch ({auto}: --precision auto)", lambda: run_predict(tiles, model, work / "pt", args, False)),
            (f"predict, PyTorch ({auto}), all outputs", lambda: run_predict(tiles, model, work / "pt-all", args, True)),
        ]
        if auto != "fp32":
            pipelines.append(("predict, PyTorch (fp32: --precision fp32)",
                              lambda: run_predict(tiles, model, work / "pt32", args, False, precision="fp32")))
        if args.compile:
            pipelines.append(("predict, PyTorch, torch.compile (compiling included)",
                              lambda: run_predict(tiles, model, work / "pt-c", args, False, compile=True)))
        exported = []
        import onnxruntime

        if args.device.startswith("cuda") and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            print("ONNX Runtime pipelines skipped: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)",
                  file=sys.stderr)
            args.no_onnx = True
        if not args.no_onnx:
            onnx_path = work / "model.onnx"
            exported.append(export_onnx(model, onnx_path, force=True))
            pipelines.append(("predict, ONNX Runtime", lambda: run_predict(tiles, onnx_path, work / "ox", args, False)))
            pipelines.append(("predict, ONNX Runtime, all outputs", lambda: run_predict(tiles, onnx_path, work / "ox-all", args, True)))
            if not args.no_int8 and not args.device.startswith("cuda"):
                int8_path = work / "model-int8.onnx"
                calib = args.sample / "train" / "image"
                exported.append(export_onnx(model, int8_path, force=True, int8=True, calibration=calib if calib.is_dir() else None))
                pipelines.append(("predict, ONNX Runtime int8", lambda: run_predict(tiles, int8_path, work / "q", args, False)))

        # Warm-up (imports, allocator, OpenCV/ONNX Runtime initialisation), not timed.
        warm = work / "warm"
        warm.mkdir(exist_ok=True)
        for f in sorted(tiles.glob("*.png"))[:2]:
            shutil.copy(f, warm / f.name)
        run_original_loop(warm, model, None, device=args.device)
        predict_folder(warm, work / "warm-out", model, device=args.device, workers=0, force=True, progress=False)

        results: dict[str, list[dict]] = {name: [] for name, _ in pipelines}
        for _ in range(args.rounds):
            for name, fn in pipelines:
                results[name].append(fn())  # type: ignore[operator]
        med = {name: sorted(rs, key=lambda r: r["wall"])[len(rs) // 2] for name, rs in results.items()}

        exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
        print(f"command: {' '.join([exe, *sys.argv])}")
        where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name()
        print(f"machine: {where}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
              f"load average at the end {os.getloadavg()[0]:.1f}")
        print(f"model: {model} ({model.stat().st_size / 1e6:.1f} MB); device {args.device}")
        print(f"tiles: {n} = {n // args.repeat} sample tiles ({args.splits}) resized to {SIZE} x {SIZE}, x {args.repeat}; "
              f"predict batch {args.batch_size}, {args.workers} reading processes, post-processing threads "
              f"{'default' if args.threads is None else args.threads}; median of {args.rounds} round(s)")
        for e in exported:
            print(f"export: {e.summary().splitlines()[1].removeprefix('verified: ')}" if not e.int8 else
                  f"export int8: {e.summary().splitlines()[-1]}")
        base = med[pipelines[0][0]]
        print("\n| pipeline | tiles | buildings | s (load included) | tiles/s | steady tiles/s | vs original | "
              "post-processing CPU ms/tile (wall) | post-processing share of end-to-end time | of CPU time | "
              "all per-tile output work, share of time |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for name, _ in pipelines:
            r = med[name]
            print(f"| {name} | {r['n']} | {r['buildings']} | {r['wall']:.1f} | {r['n'] / r['wall']:.2f} | {r['n'] / r['steady']:.2f} | "
                  f"{base['wall'] / r['wall']:.2f}x | {r['pp_ms']:.1f} ({r['pp_wall_ms']:.1f}) | {r['pp_share']:.1%} | "
                  f"{r['pp_cpu_share']:.1%} | {r['out_share']:.1%} |")
        if args.rounds > 1:
            spread = {name: statistics.pstdev([x["wall"] for x in rs]) / statistics.mean([x["wall"] for x in rs]) for name, rs in results.items()}
            print("\nround-to-round spread (std/mean of wall time): " + ", ".join(f"{k}: {v:.1%}" for k, v in spread.items()))
        print("\nbuildings differ between the original loop (seed recipe on the footprint channel) and predict "
              "(watershed on three channels, or the tuned method): same pixels in, different post-processing.")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
