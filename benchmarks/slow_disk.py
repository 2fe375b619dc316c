"""``rooftrace predict`` on a disk whose ``fsync`` is slow (a network share, a busy drive), side by side
with the tree before.

Every file ``predict`` writes is made durable with ``fsync`` before its rename (crash safety: a tile's
record names a finished tile). On a local SSD an ``fsync`` costs well under a millisecond; on a network
share or a busy spinning disk, milliseconds to tens of them. This benchmark delays each ``fsync`` by
``--delay-ms`` (a sleep, then the real call) and runs ``predict_folder`` with its default outputs (CSV,
COCO, GeoJSON, masks, overlays: three files a tile) on the sample pack's test and val tiles resized to
512 x 512 (``benchmarks/predict_speed.py``'s tiles), each source tree in turn in its own process
(``--trees A B``: ``src`` folders put first on ``PYTHONPATH``), ``--pairs`` times, at each delay.

    .venv/bin/python benchmarks/slow_disk.py --trees /tmp/before . --delays 0 5 --pairs 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import DEFAULT_SAMPLE  # noqa: E402

CHILD = """
import json, os, shutil, sys, time
from pathlib import Path
delay = float(sys.argv[3]) / 1000
fsync = os.fsync
def slow_fsync(fd):
    time.sleep(delay)
    fsync(fd)
os.fsync = slow_fsync
from rooftrace.inference.predict import predict_folder
tiles, out = Path(sys.argv[1]), Path(sys.argv[2])
predict_folder(tiles, out, None, device="cpu", force=True, progress=False)  # warm: the runtime's choice, caches
shutil.rmtree(out)
r = predict_folder(tiles, out, None, device="cpu", force=True, progress=False)
print(json.dumps({"tiles/s": (r.n_images - r.n_skipped) / r.timings["total"], "timings": r.timings}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trees", nargs="+", type=Path, default=[HERE.parent])
    ap.add_argument("--delays", nargs="+", type=float, default=[0.0, 5.0], help="ms added to each fsync")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="copies of the tile set (default 2: 78 tiles)")
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    args = ap.parse_args(argv)
    from predict_speed import make_tiles

    rows: dict[tuple[float, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="rooftrace-slow-disk-") as tmp:
        tiles = Path(tmp) / "tiles"
        tiles.mkdir()
        n = make_tiles(args.sample, ["test", "val"], args.repeat, tiles)
        for _ in range(args.pairs):
            for delay in args.delays:
                for tree in args.trees:
                    env = dict(os.environ, PYTHONPATH=str(tree.resolve() / "src"))
                    out = subprocess.run([sys.executable, "-c", CHILD, str(tiles), str(Path(tmp) / "out"), str(delay)], env=env,
                                         capture_output=True, text=True, check=True).stdout
                    rows.setdefault((delay, str(tree)), []).append(json.loads(out.strip().splitlines()[-1])["tiles/s"])
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"{n} tiles of 512 x 512, default outputs; tiles/s of each run, steady (the model loaded)\n")
    print("| fsync delayed by | " + " | ".join(str(t) for t in args.trees) + " |")
    print("|---|" + "---|" * len(args.trees))
    for delay in args.delays:
        print(f"| {delay:g} ms | " + " | ".join(", ".join(f"{v:.2f}" for v in rows[(delay, str(t))]) for t in args.trees) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
