"""THE ORIGINAL PROJECT'S INFERENCE LOOP, re-implemented faithfully as a baseline: one tile at a time.

This is *not* rooftrace's ``predict``. It re-creates the loop the original project ran, so that
``benchmarks/predict_speed.py`` can set rooftrace's pipeline side by side with it on the same weights
and the same tiles. Per tile, in one process, nothing overlapped:

1. read the file with OpenCV (``cv2.imread``, BGR turned to RGB; PIL when OpenCV cannot decode it);
2. resize to 512 x 512 (``cv2.resize``, bilinear);
3. scale to [0, 1] and normalise with the ImageNet mean and std;
4. forward pass at batch size 1 under ``torch.no_grad()`` (fp32, contiguous NCHW; on CUDA the same,
   no autocast);
5. sigmoid, then footprint channel > 0.5;
6. resize the mask back to the tile's size, nearest neighbour;
7. 3 x 3 morphological close, then open;
8. ``cv2.findContours`` (``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``);
9. drop contours whose ``cv2.contourArea`` is under 100 px;
10. ``cv2.approxPolyDP`` with epsilon ``max(1, 0.01 x arc length)``, integer vertices;
11. one CSV row per tile: ``ImageID,Coordinates`` (BEGC2024, rings as ``[(x, y), ...]``).

It takes the same model file as rooftrace (``.safetensors``, loaded with
:func:`rooftrace.models.files.load_model`) and uses its footprint channel (channel 0); the other
channels of a three-channel model are computed and ignored, as they would be. Steps 5-10 are the
recipe ``rooftrace predict --postprocess seed`` keeps for comparison.

Run from the repository root::

    .venv/bin/python benchmarks/original_loop.py --model MODEL.safetensors --images DIR --out OUT.csv [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from rooftrace.imagery.read import list_images
from rooftrace.labels.records import image_key
from rooftrace.models.files import load_model

SIZE = 512
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
THRESHOLD = 0.5
MIN_CONTOUR_AREA = 100.0


@dataclass
class LoopResult:
    """What the original loop did, with seconds per step summed over tiles (wall clock, and the
    main thread's CPU time, which leaves out time spent waiting for a core)."""

    n_tiles: int
    n_buildings: int
    seconds: float
    out: Path | None
    steps: dict[str, float] = field(default_factory=dict)
    steps_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / max(self.seconds, 1e-9)


def read_tile(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB, as the original read it."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def polygons_from_mask(mask: np.ndarray) -> list[np.ndarray]:
    """Steps 7-10: close, open, external contours, area filter, approxPolyDP; ``(K, 2)`` int arrays."""
    kernel = np.ones((3, 3), np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if cv2.contourArea(c) < MIN_CONTOUR_AREA:
            continue
        eps = max(1.0, 0.01 * cv2.arcLength(c, True))
        approx = cv2.approxPolyDP(c, eps, True).reshape(-1, 2)
        if len(approx) >= 3:
            polys.append(approx.astype(np.int64))
    return polys


def coordinates_cell(polys: list[np.ndarray]) -> str:
    """BEGC2024 ``Coordinates``: ``[[(x, y), ...], ...]``, open rings, ``[]`` for none."""
    return "[" + ", ".join("[" + ", ".join(f"({int(x)}, {int(y)})" for x, y in p) + "]" for p in polys) + "]"


def run_original_loop(images: str | Path, model: str | Path, out: str | Path | None = None, device: str = "cpu",
                      limit: int = 0) -> LoopResult:
    """Run the original loop over every tile of ``images``; write ``out`` (CSV) unless ``None``.

    The clock starts before the model is loaded and stops after the CSV is written.
    """
    dev = torch.device(device)
    t_start = time.perf_counter()
    loaded = load_model(model, device=dev)
    net = loaded.model.eval()
    files = list_images(images)
    if limit:
        files = files[:limit]
    steps = dict.fromkeys(("read", "preprocess", "forward", "postprocess", "write"), 0.0)
    steps_cpu = dict.fromkeys(steps, 0.0)
    rows: list[tuple[str, str]] = []
    n_buildings = 0
    for path in files:
        t0 = time.perf_counter()
        rgb = read_tile(path)
        t1 = time.perf_counter()
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
        tensor = torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0).to(dev)
        t2 = time.perf_counter()
        with torch.no_grad():
            prob = torch.sigmoid(net(tensor))[0, 0].cpu().numpy()  # .cpu() waits for the GPU
        t3, c3 = time.perf_counter(), time.thread_time()
        mask = (prob > THRESHOLD).astype(np.uint8)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        polys = polygons_from_mask(mask)
        t4 = time.perf_counter()
        steps_cpu["postprocess"] += time.thread_time() - c3
        rows.append((str(image_key(path)), coordinates_cell(polys)))
        n_buildings += len(polys)
        t5 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            steps[name] += dt
    t5 = time.perf_counter()
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["ImageID", "Coordinates"])
            writer.writerows(rows)
    steps["write"] += time.perf_counter() - t5
    return LoopResult(len(files), n_buildings, time.perf_counter() - t_start, out, steps, steps_cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="rooftrace model file (.safetensors)")
    ap.add_argument("--images", type=Path, required=True, help="folder of tiles")
    ap.add_argument("--out", type=Path, default=None, help="submission CSV to write (default: none)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--limit", type=int, default=0, help="only the first N tiles")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    print(f"command: {' '.join([exe, *sys.argv])}")
    print(f"the ORIGINAL one-tile-at-a-time loop (a re-implementation; see its docstring); device {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    r = run_original_loop(args.images, args.model, args.out, args.device, args.limit)
    print("\n| tiles | buildings | seconds (model load included) | tiles/s |")
    print("|---|---|---|---|")
    print(f"| {r.n_tiles} | {r.n_buildings} | {r.seconds:.2f} | {r.tiles_per_s:.2f} |")
    print("\n| step | ms/tile | share |")
    print("|---|---|---|")
    for name, s in r.steps.items():
        print(f"| {name} | {s / max(r.n_tiles, 1) * 1e3:.2f} | {s / r.seconds:.1%} |")
    if r.out:
        print(f"\nsubmission written to {r.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
