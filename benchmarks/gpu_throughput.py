"""One call on a lent GPU: predict and predict-scene throughput at 512 x 512, side by side with the network alone.

Prepared to run as one short script on one GPU (an H100 when lent), so that the device time goes to
measuring, not to setting up. In one process it prints:

* the machine (GPU, CPU cores, torch), and the network alone: forward passes of ``--batch-size`` tiles
  of 512 x 512 in bf16 autocast, channels_last, from pinned host memory copied without blocking
  (what ``predict`` does), after a warm-up; tiles/s (the reference);
* ``predict_folder`` on ``--tiles`` 512 x 512 PNG tiles written to a temporary folder (the sample
  pack's test and val tiles resized to 512, repeated), with ``--readers`` reading threads and
  ``--threads`` post-processing threads (16 CPU cores: post-processing must keep up with the GPU),
  default outputs without overlays (``--overlays`` adds them); steady tiles/s and the ratio to the
  network alone, and the engine's own stage times (the network waiting for tiles shows as ``wait``);
* ``predict_scene`` on a ``--scene-size`` square GeoTIFF made from the Austin sample scene: MP/s
  against the network alone on the same windows.

``--dry-run`` runs the same code on the CPU, tiny (a few tiles, a 1,024-pixel scene, batch 2), so the
script is checked where no GPU is lent (``tests/inference/test_predict.py`` runs it so, without the packages
the GPU machine lacks and the wheels below do not bring).

The GPU machine has PyTorch, timm, OpenCV, scikit-image and Pillow, but not rasterio, pyproj, shapely or
affine, and not the sample pack. ``--pack`` (here) copies the sample tiles and the Austin scene the run
reads into ``out/gpu-throughput`` and those wheels, for its Python 3.12, into ``.whl-predict/``; checks that
they and the working tree fit one device call (64 MiB: rasterio 1.3.11, whose wheel is 21 MB where 1.4's
is 36 MB); and prints the one ``run`` call. pyogrio (a 33 MB wheel) does not fit beside them, so the scene
is written as GeoJSON, which rooftrace writes without it::

    .venv/bin/python benchmarks/gpu_throughput.py --pack      # here; prints the device call
    # there, what it prints runs:
    python3 benchmarks/gpu_throughput.py --sample out/gpu-throughput --tiles 2048 --batch-size 64 --readers 8 --threads 12 --scene-size 8192
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, cpu_name  # noqa: E402


def network_alone(runtime, n: int, batch: int, size: int = 512) -> float:
    """Tiles/s of the network alone on ``n`` tiles: pinned host batches, copied without blocking."""
    import torch

    x = torch.randn(batch, 3, size, size)
    if runtime.device.type == "cuda":
        x = x.pin_memory()
    runtime.run(x[:1])
    runtime.run(x)  # warm: kernels chosen, memory pooled
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    done = 0
    while done < n:
        runtime.run(x[: min(batch, n - done)])  # returns host arrays: the copy back is counted, as in predict
        done += min(batch, n - done)
    return n / (time.perf_counter() - t)


#: The wheels the GPU machine lacks for ``predict`` and ``predict_scene`` (its image lists what it has:
#: the device README's KINDS.md); rasterio's other needs (attrs, certifi, click, numpy, pyparsing, setuptools) are there.
WHEELS = ("rasterio==1.3.11", "snuggs==1.4.7", "affine", "cligj", "click-plugins", "pyproj", "shapely")
REPO = Path(__file__).resolve().parents[1]
#: Where ``--pack`` writes, relative to the repository (what the device call carries).
PACK, WHEEL_DIR = "out/gpu-throughput", ".whl-predict"


def pack(sample: Path, out: Path = REPO / PACK, wheels: Path | None = REPO / WHEEL_DIR, force: bool = False) -> dict[str, int]:
    """Copy what the GPU run reads (the sample's test and val tiles, the Austin scene) to ``out`` and fetch the
    wheels into ``wheels`` (``None``: not); returns the bytes carried, and raises if over a device call's limit.
    Folders already there are replaced only with ``force``."""
    from gpu_sprint import CARRY_LIMIT, carried_bytes, fetch_wheels

    for folder in (out, wheels):
        if folder is not None and folder.exists() and any(folder.iterdir()):
            if not force:
                raise SystemExit(f"{folder}: exists and is not empty (use --force to replace it)")
            shutil.rmtree(folder)  # the wheels too: one version of each, as two stop the install there
    for split in ("test", "val"):
        shutil.copytree(sample / split / "image", out / split / "image")
    (out / "scenes").mkdir(parents=True)
    shutil.copy2(sample / "scenes" / "inria_austin.tif", out / "scenes" / "inria_austin.tif")
    if wheels is not None:
        fetch_wheels(wheels, WHEELS)
    sizes = carried_bytes(out, wheels or out / "no-wheels")
    total = sum(sizes.values())
    if total > CARRY_LIMIT:
        raise SystemExit(f"{total / 2**20:.1f} MiB would travel ({', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in sizes.items())}), "
                         f"over the device call's {CARRY_LIMIT / 2**20:g} MiB")
    return sizes


def device_command(extra: str = "--tiles 2048 --batch-size 64 --readers 8 --threads 12 --scene-size 8192") -> str:
    from gpu_sprint import install_wheels_command

    return install_wheels_command(WHEEL_DIR) + f"python3 benchmarks/gpu_throughput.py --sample {PACK} {extra} 2>&1 | tail -40"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--tiles", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=12)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--scene-size", type=int, default=8192)
    ap.add_argument("--overlays", action="store_true", help="also write masks and overlays")
    ap.add_argument("--dry-run", action="store_true", help="tiny, on the CPU: checks the script where no GPU is lent")
    ap.add_argument("--pack", action="store_true", help="here: copy the data and fetch the wheels the GPU run needs, "
                    "check they fit a device call, print the call")
    ap.add_argument("--force", action="store_true", help="with --pack: replace the folders it writes")
    args = ap.parse_args(argv)
    if args.pack:
        sizes = pack(args.sample, force=args.force)
        print("carried: " + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items())
              + f"; {sum(sizes.values()) / 2**20:.1f} MiB in all")
        print(f"run(command={device_command()!r}, carry=['{PACK}', '{WHEEL_DIR}'], timeout_s=600)")
        return 0
    if args.dry_run:
        args.tiles, args.batch_size, args.readers, args.threads, args.scene_size = 4, 2, 1, 0, 1024
        device = "cpu"
    else:
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA GPU here (use --dry-run to check the script on the CPU)")
        device = "cuda"

    from pipeline_speed import make_scene
    from predict_speed import make_tiles

    from rooftrace.inference.predict import predict_folder
    from rooftrace.inference.runtime import load_runtime, make_runner
    from rooftrace.scenes.predict import predict_scene

    work = Path(tempfile.mkdtemp(prefix="rooftrace-gpu-"))
    try:
        import torch

        tiles = work / "tiles"
        tiles.mkdir()
        n_src = len(list((args.sample / "test" / "image").iterdir())) + len(list((args.sample / "val" / "image").iterdir()))
        n = make_tiles(args.sample, ["test", "val"], max(1, -(-args.tiles // n_src)), tiles, limit=0)
        for extra in sorted(tiles.glob("*.png"))[args.tiles:]:
            extra.unlink()
        n = min(n, args.tiles)
        runtime = load_runtime(args.model, device=device, precision=args.precision)
        where = torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()
        print(f"machine: {where}; {os.cpu_count()} CPU cores; torch {torch.__version__}; model {runtime.path.name}; "
              f"precision {args.precision}; batch {args.batch_size}")
        ref = network_alone(runtime, n, args.batch_size)
        model = args.model or runtime.path
        predict_folder(tiles, work / "warm", model, device=device, precision=args.precision, batch_size=args.batch_size,
                       workers=args.readers, threads=args.threads, write_masks=False, write_overlays=False, force=True,
                       progress=False)  # warm: the pipeline's first batches
        r = predict_folder(tiles, work / "out", model, device=device, precision=args.precision, batch_size=args.batch_size,
                           workers=args.readers, threads=args.threads, write_masks=args.overlays, write_overlays=args.overlays,
                           force=True, progress=False)
        steady = (r.n_images - r.n_skipped) / r.timings["total"]
        print("\n| run | tiles/s of 512 x 512 | vs the network alone |")
        print("|---|---|---|")
        print(f"| the network alone (batch {args.batch_size}, pinned, non-blocking copies) | {ref:.1f} | 1.00 |")
        print(f"| predict ({args.readers} readers, {args.threads} post-processing threads; {r.labels.n_footprints} buildings) | "
              f"{steady:.1f} | {steady / ref:.2f} |")
        print("predict's stage times (s, summed over tiles): " + ", ".join(f"{k} {v:.2f}" for k, v in r.timings.items()))
        scene = make_scene(args.sample, args.scene_size, work / "scene.tif")
        runner = make_runner(runtime)
        from rooftrace.imagery.windows import DEFAULT_OVERLAP, DEFAULT_TILE, Grid

        n_win = Grid.make(args.scene_size, args.scene_size, DEFAULT_TILE, DEFAULT_OVERLAP).n_windows
        sref = network_alone(runtime, n_win, args.batch_size) * args.scene_size ** 2 / 1e6 / n_win
        t = time.perf_counter()
        # GeoJSON: the GPU machine has no pyogrio, whose wheel does not fit beside rasterio's in one device call
        s = predict_scene(scene, work / "scene.geojson", runner, batch_size=args.batch_size, force=True, progress=False)
        mps = args.scene_size ** 2 / 1e6 / (time.perf_counter() - t)
        print(f"\n| scene {args.scene_size} x {args.scene_size} ({n_win} windows) | MP/s | vs the network alone |")
        print("|---|---|---|")
        print(f"| the network alone on the same windows | {sref:.1f} | 1.00 |")
        print(f"| predict_scene ({s.n_buildings} buildings) | {mps:.1f} | {mps / sref:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
