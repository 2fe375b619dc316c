"""How long post-processing takes per 512 x 512 tile, for every method (a script, not a test).

Two inputs, both perfect model outputs (the oracle's targets as float32 0/1 probabilities, see
:mod:`rooftrace.evaluation.oracle`): footprint/boundary/contact for ``watershed``, the footprint alone for
``seed``.

* **sample**: every labelled tile of the sample pack (train, val and test), brought to 512 x 512:
  tiles smaller than that (256 x 256, 300 x 300) are zero-padded at the bottom and right, larger
  ones (650 x 650) cropped to their top-left 512 x 512. Targets are made at the tile's own size,
  then padded or cropped, so no building changes shape.
* **synthetic**: one 512 x 512 tile with about 300 rectangular buildings (8-24 px sides) on a
  jittered 15 x 15 grid; 15 % of the grid's buildings have a neighbour sharing their right edge,
  15 % one 1 px from it, and 8 % a 3 x 4 px shed 2 px away (random seed 0, so the same tile
  every run).

* **model** (``--model``, ``shipped`` or a model file): the sample's val and test tiles resized to 512 x 512,
  run through the model (its runtime, ``precision="auto"``, as ``predict`` runs it), post-processed with
  the model's tuned settings: a real network's outputs, with the ties between seeds that a bf16 network's
  saturated probabilities have.

Each tile is post-processed ``--repeat`` times after one warm-up call; the table gives the mean and
95th percentile over all calls, in milliseconds per tile, and how many buildings one pass found
(the sample's 650 x 650 tiles lose the buildings outside their crop; ``1 channel`` and ``seed``
merge touching buildings, so they find fewer).

Run from the repository root::

    .venv/bin/python benchmarks/postprocess_speed.py [--sample DIR] [--repeat N] [--model shipped|FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_SAMPLE, cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from shapely.geometry import box

from rooftrace.instances.postprocess import (
    METHOD_CHANNELS,
    PostprocessSettings,
    postprocess,
)
from rooftrace.labels.formats import read_labels
from rooftrace.prepare.targets import make_targets

SIZE = 512




def to_size(stack: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Zero-pad (bottom/right) or crop (top-left) a ``(C, H, W)`` stack to ``size x size``."""
    out = np.zeros((stack.shape[0], size, size), dtype=np.float32)
    h, w = min(size, stack.shape[1]), min(size, stack.shape[2])
    out[:, :h, :w] = stack[:, :h, :w]
    return out


def sample_tiles(sample: Path) -> list[np.ndarray]:
    """Perfect three-channel outputs of every labelled sample tile, at 512 x 512."""
    tiles = []
    for split in ("train", "val", "test"):
        gt = read_labels(sample / split)
        for img in gt:
            t = make_targets(img.footprints, (int(img.height), int(img.width)))
            tiles.append(to_size(t.stack().astype(np.float32)))
    return tiles


def synthetic_tile(seed: int = 0) -> tuple[np.ndarray, int]:
    """A 512 x 512 perfect output with ~300 buildings, some touching, some 1 px apart."""
    rng = np.random.default_rng(seed)
    fps = []
    step = 34
    for gy in range(SIZE // step):
        for gx in range(SIZE // step):
            x0, y0 = gx * step + int(rng.integers(0, 3)), gy * step + int(rng.integers(0, 3))
            w, h = int(rng.integers(8, 20)), int(rng.integers(8, 24))
            fps.append(box(x0, y0, x0 + w, y0 + h))
            kind = rng.choice(4, p=[0.62, 0.15, 0.15, 0.08])  # alone, touching, 1 px apart, tiny shed beside
            if kind == 1 or kind == 2:  # a neighbour along the right edge, sharing it or 1 px away
                gap = 0 if kind == 1 else 1
                fps.append(box(x0 + w + gap, y0 + 2, x0 + w + gap + int(rng.integers(5, 10)), y0 + h - 1))
            elif kind == 3:
                fps.append(box(x0 + w + 2, y0, x0 + w + 5, y0 + 4))
    fps = [f for f in fps if f.bounds[2] <= SIZE and f.bounds[3] <= SIZE]
    t = make_targets(fps, (SIZE, SIZE))
    return t.stack().astype(np.float32), len(fps)


def model_outputs(sample: Path, model: str) -> tuple[list[np.ndarray], str, PostprocessSettings | None]:
    """The model's probabilities for the sample's val and test tiles at 512 x 512, and its tuned post-processing."""
    import cv2

    from rooftrace.imagery.read import list_images, read_rgb
    from rooftrace.inference.runtime import load_runtime, pad_normalise

    runtime = load_runtime(None if model == "shipped" else model, device="cpu")
    files = [f for split in ("val", "test") for f in list_images(sample / split / "image")]
    xs = [pad_normalise(cv2.resize(read_rgb(f), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), runtime.norm)[0] for f in files]
    probs = [p for k in range(0, len(xs), 8) for p in runtime.run(np.stack(xs[k:k + 8]))]
    method, settings = runtime.postprocessing()
    return probs, method, settings


def bench(tiles: list[np.ndarray], method: str, settings: PostprocessSettings, repeat: int) -> tuple[float, float, int]:
    """Mean and 95th percentile ms per tile, and buildings found per pass."""
    ch = METHOD_CHANNELS[method]
    inputs = [t[:ch] for t in tiles]
    times = []
    found = 0
    for p in inputs:
        postprocess(p, method, settings)  # warm-up (imports, caches)
        for _ in range(repeat):
            t0 = time.perf_counter()
            r = postprocess(p, method, settings)
            times.append(time.perf_counter() - t0)
        found += len(r)
    ms = np.asarray(times) * 1e3
    return float(ms.mean()), float(np.percentile(ms, 95)), found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE, help="sample pack folder")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per tile (default 5)")
    ap.add_argument("--model", default=None, help="also a model's outputs: 'shipped' or a model file (imports torch)")
    args = ap.parse_args(argv)

    inputs: dict[str, list[np.ndarray]] = {}
    if (args.sample / "test" / "test.json").exists():
        inputs["sample ({n} tiles)"] = sample_tiles(args.sample)
    else:
        print(f"sample pack not found at {args.sample}; synthetic tile only", file=sys.stderr)
    syn, n_syn = synthetic_tile()
    inputs[f"synthetic ({n_syn} buildings)"] = [syn]

    variants = [
        ("watershed", "defaults", PostprocessSettings()),
        ("watershed", "simplify=1", PostprocessSettings(simplify=1.0)),
        ("watershed", "simplify=1, regularise", PostprocessSettings(simplify=1.0, regularise=True)),
        ("watershed", "1 channel", None),
        ("seed", "original recipe", PostprocessSettings()),
    ]
    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    print(f"command: {' '.join([exe, *sys.argv])}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, numpy {np.__version__}")
    print(f"tiles: {SIZE} x {SIZE}, perfect outputs; {args.repeat} timed calls per tile after one warm-up\n")
    print("| input | method | settings | mean ms/tile | p95 ms/tile | buildings found |")
    print("|---|---|---|---|---|---|")
    for label, tiles in inputs.items():
        label = label.format(n=len(tiles))
        for method, name, settings in variants:
            if settings is None:  # watershed on a footprint-only output
                mean, p95, found = bench([t[:1] for t in tiles], "watershed", PostprocessSettings(), args.repeat)
            else:
                mean, p95, found = bench(tiles, method, settings, args.repeat)
            print(f"| {label} | {method} | {name} | {mean:.2f} | {p95:.2f} | {found} |")
    if args.model is not None:
        probs, method, settings = model_outputs(args.sample, args.model)
        mean, p95, found = bench(probs, method, settings, args.repeat)
        print(f"| {args.model} model's outputs ({len(probs)} val and test tiles) | {method} | the model's tuned settings | "
              f"{mean:.2f} | {p95:.2f} | {found} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
