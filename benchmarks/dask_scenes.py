"""Scenes per minute on a local Dask cluster with 1 and 2 worker processes (not a test).

    .venv/bin/python benchmarks/dask_scenes.py [--scenes 8] [--size 1000] [--model M.safetensors] [--workers 0,1,2]

``--workers 0`` runs the same scenes through the single-process path (``rooftrace.scenes.batch.predict_scenes``),
so that the time Dask adds (scheduling, transfer, the merge) is the difference to the 1-worker row.

Copies of the sample's Austin scene (cropped to --size px) go through
``rooftrace.scenes.distributed.predict_scenes_dask`` on a LocalCluster of N processes with one thread
each; the time is from submission to the merged layer (the cluster's start, including each
worker's import of torch, is timed apart). Default model: the shipped one, on the CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "buildings-sample" / "scenes" / "inria_austin.tif"


def make_scenes(folder: Path, n: int, size: int) -> list[Path]:
    with rasterio.open(SAMPLE) as src:
        w = Window(0, 0, min(size, src.width), min(size, src.height))
        data, profile = src.read(window=w), src.profile | {"width": int(w.width), "height": int(w.height),
                                                            "transform": src.window_transform(w)}
    paths = []
    for k in range(n):
        p = folder / f"austin_{k:03d}.tif"
        with rasterio.open(p, "w", **profile) as dst:
            dst.write(data)
        paths.append(p)
    return paths


def main() -> None:
    import distributed

    from rooftrace.scenes.distributed import predict_scenes_dask

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU node")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rooftrace-dask-bench-"))
    try:
        scenes = make_scenes(tmp, args.scenes, args.size)
        print("| workers | scenes | cluster start s | run s | scenes/minute |\n|---|---|---|---|---|")
        for n in (int(v) for v in args.workers.split(",")):
            if n == 0:  # the single-process path, for the share of time Dask adds
                from rooftrace.scenes.batch import predict_scenes

                t1 = time.perf_counter()
                predict_scenes(scenes, tmp / "out0", args.model, device=args.device)
                t2 = time.perf_counter()
                print(f"| 0 (no Dask: predict_scenes in one process) | {len(scenes)} | - | {t2 - t1:.1f} | "
                      f"{60 * len(scenes) / (t2 - t1):.1f} |", flush=True)
                continue
            t0 = time.perf_counter()
            with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                    distributed.Client(cluster) as client:
                t1 = time.perf_counter()
                done = predict_scenes_dask(scenes, tmp / f"out{n}", args.model, client=client, device=args.device)
                t2 = time.perf_counter()
            if done.failed:
                sys.exit(f"failed: {done.failed}")
            print(f"| {n} | {len(scenes)} | {t1 - t0:.1f} | {t2 - t1:.1f} | {60 * len(scenes) / (t2 - t1):.1f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
