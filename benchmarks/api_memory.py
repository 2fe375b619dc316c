"""Peak memory of the Python API on a huge array: ``Model.footprints`` on an N x N image (default 20,000).

The image is the sample's Austin scene (1,000 x 1,000 px at 0.3 m) tiled N / 1,000 times each way, held in
memory as a user's array would be (N = 20,000: 1.2 GB). The model is loaded and warmed on one 512 x 512 crop
first; then the call runs once. Printed: the buildings, the seconds, the process's peak resident memory
(``getrusage``) before and after the call, and its growth, against the array's own size. Run from the
repository root (the 20,000 case takes several minutes on 2 cores; not a test)::

    .venv/bin/python benchmarks/api_memory.py [--size 20000] [--model M.safetensors]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, cpu_name  # noqa: E402


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=20_000, help="side of the array in pixels")
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped model)")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    args = ap.parse_args(argv)

    import rasterio

    import rooftrace

    with rasterio.open(args.sample / "scenes" / "inria_austin.tif") as src:
        tile = np.moveaxis(src.read([1, 2, 3]), 0, -1)
    image = np.empty((args.size, args.size, 3), np.uint8)  # filled in place: no transient copy in the peak
    th, tw = tile.shape[:2]
    for r in range(0, args.size, th):
        for c in range(0, args.size, tw):
            image[r:r + th, c:c + tw] = tile[: min(th, args.size - r), : min(tw, args.size - c)]
    model = rooftrace.load_model(args.model, device="cpu")
    model.predict(image[:512, :512])  # warm: the network's kernels, geopandas
    before = _peak()
    t = time.perf_counter()
    found = model.footprints(image)
    seconds = time.perf_counter() - t
    after = _peak()
    gb = 2**30
    print(f"cpu: {cpu_name()}; model: {model.runtime.description}; {model.runtime.runtime_line}")
    print(f"Model.footprints on a {args.size:,} x {args.size:,} array ({image.nbytes / gb:.2f} GB): {len(found):,} buildings "
          f"in {seconds:.0f} s ({args.size ** 2 / 1e6 / seconds:.2f} MP/s)")
    print(f"peak resident memory: {before / gb:.2f} GB before the call (the array, torch, the model), {after / gb:.2f} GB "
          f"after; the call added {(after - before) / gb:.2f} GB")
    print("command: .venv/bin/python benchmarks/api_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
