"""The candidates of ``precision="auto"`` on this CPU, side by side: PyTorch bf16 autocast, PyTorch fp32 and ONNX
Runtime fp32, on the shipped network (or ``--model``) as the runtime loads it (batch norms folded), one 512 x 512
tile a forward pass (as the runtime runs CPU batches), interleaved round by round; then what ``auto`` chooses on
this machine and on one without native bf16, each in a fresh cache folder, and how long the first (measuring)
and the second (cached) load take. With ``--compile``, also PyTorch bf16 through ``torch.compile`` (not a
candidate of ``auto``; ``predict --compile`` asks for it), with how long its first call took, compiling
into an empty inductor cache. Run from the repository root::

    .venv/bin/python benchmarks/runtime_choice.py [--rounds 8] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name, interleaved_times  # noqa: E402

from rooftrace.inference import choice  # noqa: E402
from rooftrace.inference.runtime import load_runtime  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="also PyTorch bf16 through torch.compile")
    args = ap.parse_args(argv)
    os.environ[choice.PROBE_ENV] = "1"
    scratch = tempfile.TemporaryDirectory()  # nothing of this script is left in the user's cache folder
    os.environ[choice.CACHE_ENV] = scratch.name
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    bf16 = load_runtime(args.model, device="cpu", precision="bf16")
    fp32 = load_runtime(args.model, device="cpu", precision="fp32")
    onnx = choice.onnx_runtime_for(fp32.net)
    x = np.zeros((1, 3, 512, 512), dtype=np.float32)
    runs = {"PyTorch bf16": lambda: bf16.run(x), "PyTorch fp32": lambda: fp32.run(x), "ONNX Runtime fp32": lambda: onnx.predict(x)}
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch.name, "inductor")  # compiled from nothing
        compiled = load_runtime(args.model, device="cpu", precision="bf16")
        compiled.net.model = torch.compile(compiled.net.model)
        t = time.perf_counter()
        same = np.array_equal(compiled.run(x), bf16.run(x))
        print(f"torch.compile: first call {time.perf_counter() - t:.1f} s (compiling); probabilities equal to eager bf16: {same}")
        runs["PyTorch bf16, torch.compile"] = lambda: compiled.run(x)
    times = interleaved_times(runs, args.rounds)
    fastest = min(statistics.median(v) for v in times.values())
    print(f"\none 512 x 512 tile a forward pass, median of {args.rounds} interleaved rounds:")
    print("| runtime | ms a tile | against the fastest |")
    print("|---|---|---|")
    for name, v in times.items():
        m = statistics.median(v)
        print(f"| {name} | {m * 1000:.1f} | {m / fastest:.2f}x the time |")

    print("\nwhat auto chooses (a fresh cache folder each):")
    print("| CPU | first load s (measures) | second load s (cached) | runtime line |")
    print("|---|---|---|---|")
    native = choice.cpu_has_native_bf16
    for label, has_bf16 in (("this one", native()), ("the same without native bf16", False)):
        with tempfile.TemporaryDirectory() as cache:
            os.environ[choice.CACHE_ENV] = cache
            choice.cpu_has_native_bf16 = lambda has_bf16=has_bf16: has_bf16
            t = time.perf_counter()
            load_runtime(args.model, device="cpu")
            first = time.perf_counter() - t
            t = time.perf_counter()
            rt = load_runtime(args.model, device="cpu")
            second = time.perf_counter() - t
            choice.cpu_has_native_bf16 = native
        print(f"| {label} | {first:.2f} | {second:.2f} | {rt.runtime_line} |")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
