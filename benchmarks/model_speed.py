"""Model-only inference throughput per backend and architecture, with FLOPs and the share of the machine's peak.

For every config (``configs/NAME.yaml``; the network built untrained by ``models.build_model`` and saved
with ``weights.save_model``, as many output channels as the config says), every backend and every
batch size in ``--batch`` (default 1 and 4: on the CPU the best batch size depends on the network:
PyTorch runs EfficientNet-B0 fastest one tile at a time, the ResNets at 4 or more), random tiles of
``--size`` x ``--size`` run forward ``--iters`` times after ``--warmup`` calls; the table gives tiles/s, ms per batch, GFLOPs per tile (convolutions and matrix products,
counted by ``torch.utils.flop_counter.FlopCounterMode``, 2 FLOPs per multiply-add), the GFLOP/s this
reaches, and that as a share of the machine's peak, measured with a large fp32 matrix product in torch
before and after the runs (and, on CUDA, a bf16 one, the precision inference runs in there; on the
CPU also with ONNX Runtime's MatMul, because PyTorch's MKL takes a slower path on some CPUs: on the
2-core AMD EPYC here torch.mm reached 220 GFLOP/s and ONNX Runtime 460). The share is of the largest.

Backends:

* ``eager``: PyTorch, ``inference_mode``, channels_last, fp32 (``rooftrace predict --precision fp32``);
* ``bf16``: the same under bf16 autocast (``--precision bf16``; what ``--precision auto``, the
  default, runs on GPUs and on CPUs with native bf16 such as the AVX512-BF16 EPYC here);
* ``compile``: PyTorch at ``--precision auto`` through ``torch.compile`` (default mode); the first
  call's time (compiling, or loading inductor's on-disk cache of an earlier run) is given apart;
* ``onnx``: ``rooftrace.inference.export.export_onnx`` (fp32, verified) run by ONNX Runtime (CPU, or CUDA when
  asked and available);
* ``int8``: the statically quantised export (QDQ, calibrated on ``--calibration`` tiles), CPU only.

Each backend's figure is taken in the same process, one after the other. The int8 share of peak is
against the fp32 peak, so it can exceed what int8 arithmetic alone would give.

With ``--model M.safetensors --split DIR`` it also scores each backend on a labelled split, tile by
tile at the tile's own size (padded to a multiple of 32): object F1 (one-to-one, IoU 0.5, mean over
images) after the same post-processing, and the largest difference of probabilities from eager.

Run from the repository root::

    .venv/bin/python benchmarks/model_speed.py [--device cpu|cuda] [--batch 4] [--configs unet-effb0 unet-r18]
    .venv/bin/python benchmarks/model_speed.py --configs --backends eager bf16 onnx int8 --model models/rooftrace-baseline-unet.safetensors --split ../shared/data/buildings-sample/val
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_SAMPLE, REPO, cpu_name  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from rooftrace.config import load_config
from rooftrace.inference.export import DEFAULT_INT8_OPS, export_onnx
from rooftrace.models.architectures import build_model, count_parameters
from rooftrace.models.autocast import (
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    dtype_name,
)
from rooftrace.models.files import load_model, save_model
from rooftrace.models.onnx import load_onnx

CONFIGS = ("baseline-unet", "unet-effb0", "unet-r18", "unet-r34")
BACKENDS = ("eager", "bf16", "compile", "onnx", "int8")




def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, seconds: float = 2.0) -> float:
    """GFLOP/s of a large square matrix product (``n`` x ``n``), best of the repetitions in ``seconds``."""
    n = n or (8192 if device.type == "cuda" else 2048)
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def measure_peak_onnxruntime(n: int = 2048, seconds: float = 2.0) -> float:
    """GFLOP/s of the same fp32 matrix product run by ONNX Runtime on the CPU (its MLAS kernels; on
    some CPUs, AMD's among them, the MKL that PyTorch uses for torch.mm takes a slower path)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec,
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {k: rng.random((n, n), dtype=np.float32) for k in "ab"}
    sess.run(None, feed)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def gflops_per_tile(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.cpu()(x)
    return counter.get_total_flops() / 1e9


def time_calls(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Mean seconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def torch_runner(model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision: str):
    amp = autocast_dtype(precision, device)

    def run():
        with torch.inference_mode():
            with autocast(device, amp):
                logits = model(x)
            return torch.sigmoid(logits.float())

    return run


def onnx_on(device: torch.device) -> bool:
    """Whether ONNX Runtime can run on ``device`` here."""
    import onnxruntime

    return device.type == "cpu" or "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def calibration_folder(args: argparse.Namespace) -> Path | None:
    folder = args.calibration or (DEFAULT_SAMPLE / "train" / "image")
    return folder if folder.is_dir() else None


def bench_config(name: str, args: argparse.Namespace, device: torch.device, work: Path, peak: float) -> list[dict]:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    torch.manual_seed(0)
    classes = len(cfg.data.channels)
    net = build_model(cfg.model, classes).eval()
    path = save_model(work / f"{name}.safetensors", net, cfg)
    gf = gflops_per_tile(net, args.size)
    params = count_parameters(net) / 1e6
    xs = {b: torch.randn(b, 3, args.size, args.size) for b in args.batch}
    auto = dtype_name(autocast_dtype("auto", device))
    rows = []

    def row(backend: str, batch: int, seconds: float, note: str = "") -> None:
        tps = batch / seconds
        precision = {"eager": "fp32", "bf16": "bf16", "compile": auto, "onnx": "fp32", "int8": "int8"}[backend]
        rows.append({"config": name, "params": params, "gflops": gf, "backend": backend, "precision": precision, "batch": batch, "ms": seconds * 1e3,
                     "tps": tps, "gflops_s": gf * tps, "peak": gf * tps / peak, "note": note})
        print(f"  {name} {backend} batch {batch}: {tps:.2f} tiles/s {note}", file=sys.stderr, flush=True)

    def torch_rows(backend: str, net_: torch.nn.Module, precision: str, first_note: bool = False) -> None:
        for n, (b, x_cpu) in enumerate(xs.items()):
            x = x_cpu.to(device).contiguous(memory_format=torch.channels_last)
            run = torch_runner(net_, x, device, precision)
            note = ""
            if first_note and n == 0:
                t0 = time.perf_counter()
                run()
                sync(device)
                note = f"(first call, compiling: {time.perf_counter() - t0:.0f} s)"
            row(backend, b, time_calls(run, device, args.iters, max(1, args.warmup) if first_note else args.warmup), note)

    def onnx_rows(backend: str, m, note: str) -> None:
        for b, x_cpu in xs.items():
            xn = x_cpu.numpy()
            row(backend, b, time_calls(lambda: m.predict(xn), device, args.iters, args.warmup), note)

    model = net.to(device).to(memory_format=torch.channels_last)
    if "eager" in args.backends:
        torch_rows("eager", model, "fp32")
    if "bf16" in args.backends:
        torch_rows("bf16", model, "bf16")
    if "compile" in args.backends:
        torch_rows("compile", torch.compile(model), "auto", first_note=True)
    if "onnx" in args.backends and not onnx_on(device):
        print(f"  {name} onnx: skipped (this onnxruntime has no CUDAExecutionProvider; install onnxruntime-gpu)", file=sys.stderr)
    elif "onnx" in args.backends:
        m = load_onnx(export_onnx(path, work / f"{name}.onnx", force=True).path, device=args.device)
        onnx_rows("onnx", m, f"({m.providers[0]})")
    if "int8" in args.backends and device.type == "cpu":
        calib = calibration_folder(args)
        if calib is None:
            print(f"  {name} int8: skipped (no calibration tiles; pass --calibration DIR)", file=sys.stderr)
        else:
            q_path = export_onnx(path, work / f"{name}-int8.onnx", force=True, int8=True, calibration=calib,
                                 int8_ops=args.int8_ops).path
            onnx_rows("int8", load_onnx(q_path, device="cpu"), f"(QDQ: {'+'.join(args.int8_ops)})")
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def accuracy(args: argparse.Namespace, device: torch.device, work: Path) -> list[dict]:
    """Object F1 on a labelled split per backend, the same post-processing for all."""
    from rooftrace.evaluation.metrics import evaluate_labels
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.imagery.read import read_rgb
    from rooftrace.inference.runtime import pad_normalise, predict_probabilities
    from rooftrace.inference.tuned import load_tuned
    from rooftrace.instances.postprocess import postprocess
    from rooftrace.labels.records import LabelSet
    from rooftrace.labels.splits import open_split

    labels = open_split(args.split)
    backends: dict[str, object] = {"eager": load_model(args.model, device=device)}
    backends["eager"].model.to(memory_format=torch.channels_last)  # type: ignore[attr-defined]
    precisions = {"eager": "fp32"}
    if "bf16" in args.backends:
        backends["bf16"], precisions["bf16"] = backends["eager"], "bf16"
    if "onnx" in args.backends and onnx_on(device):
        backends["onnx"] = load_onnx(export_onnx(args.model, work / "acc.onnx", force=True).path, device=args.device)
    if "int8" in args.backends and device.type == "cpu":
        calib = calibration_folder(args)
        q = export_onnx(args.model, work / "acc-int8.onnx", force=True, int8=True, calibration=calib, int8_ops=args.int8_ops)
        backends["int8"] = load_onnx(q.path, device="cpu")
    method, settings = load_tuned(args.model)
    method = method or "watershed"
    norm = Normalization(backends["eager"].mean, backends["eager"].std)  # type: ignore[attr-defined]
    gt = LabelSet()
    preds = {k: LabelSet() for k in backends}
    diffs = {k: 0.0 for k in backends}
    seconds = {k: 0.0 for k in backends}
    for img in labels:
        path = labels.image_path(img)
        if path is None or not path.exists():
            continue
        rgb = read_rgb(path)
        h, w = rgb.shape[:2]
        g = gt.get_or_add(img.key)
        g.footprints, g.width, g.height, g.source = img.footprints, w, h, img.source
        x = torch.from_numpy(pad_normalise(rgb, norm))
        ref = None
        for k, m in backends.items():
            t0 = time.perf_counter()
            p = predict_probabilities(m, x, device, precision=precisions.get(k, "fp32"))[0, :, :h, :w]  # type: ignore[arg-type]
            seconds[k] += time.perf_counter() - t0
            ref = p if ref is None else ref
            diffs[k] = max(diffs[k], float(np.abs(p - ref).max()))
            found = postprocess(p, method=method, settings=settings)
            preds[k].get_or_add(img.key).footprints = found.footprints
    rows = []
    for k in backends:
        s = evaluate_labels(gt, preds[k], pixel=False)
        rows.append({"backend": k, "f1": s.f1, "n": preds[k].n_footprints, "diff": diffs[k], "seconds": seconds[k]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), help=f"configs to build (default: {' '.join(CONFIGS)})")
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="tiles per forward pass, one or more (default 1 4)")
    ap.add_argument("--size", type=int, default=512, help="tile side (default 512)")
    ap.add_argument("--iters", type=int, default=5, help="timed calls (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--calibration", type=Path, default=None, help="int8 calibration tiles (default: the sample's train/image)")
    ap.add_argument("--int8-ops", nargs="*", default=list(DEFAULT_INT8_OPS), help="ONNX op types to quantise (default: Conv)")
    ap.add_argument("--model", type=Path, default=None, help="a trained model: also score each backend on --split")
    ap.add_argument("--split", type=Path, default=None, help="labelled split folder for --model (e.g. the sample's val)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU here")
    if (args.model is None) != (args.split is None):
        ap.error("--model and --split go together")
    if args.threads:
        torch.set_num_threads(args.threads)

    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) else sys.executable
    print(f"command: {' '.join([exe, *sys.argv])}")
    import onnxruntime

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} CPUs"
    print(f"machine: {where}; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {onnxruntime.__version__}; "
          f"load average {os.getloadavg()[0]:.1f}")
    peak = measure_peak(device)  # measured again at the end; the larger is used
    native_bf16 = device.type == "cuda" or cpu_has_native_bf16()
    bf16 = measure_peak(device, torch.bfloat16) if native_bf16 else None
    with tempfile.TemporaryDirectory(prefix="rooftrace-model-speed-") as tmp:
        work = Path(tmp)
        rows = [r for name in args.configs for r in bench_config(name, args, device, work, peak)]
        if rows:
            again = measure_peak(device)
            ort_peak = measure_peak_onnxruntime() if device.type == "cpu" else 0.0
            best = max(peak, again, ort_peak)
            for r in rows:
                r["peak"] *= peak / best
            print(f"peak: {max(peak, again):,.0f} GFLOP/s fp32 with torch.mm ({'8192' if device.type == 'cuda' else '2048'}^2 matrices, "
                  f"best of 2 s, the larger of {peak:,.0f} before and {again:,.0f} after the runs)"
                  + (f"; {ort_peak:,.0f} GFLOP/s with ONNX Runtime's MatMul on the same matrices" if ort_peak else "")
                  + (f"; {bf16:,.0f} GFLOP/s bf16 with torch.mm" if bf16 else ""))
            print(f"share of peak below: of {best:,.0f} GFLOP/s (the largest fp32 figure) for fp32 and int8 rows"
                  + (f", of the bf16 peak {bf16:,.0f} GFLOP/s for rows that run in bf16" if bf16 else ""))
            if bf16:
                for r in rows:
                    if r["precision"] == "bf16":
                        r["peak"] = r["gflops_s"] / bf16
            peak = best
            print(f"\ninput batch x 3 x {args.size} x {args.size}, {args.iters} timed calls after {args.warmup}; "
                  "vs eager: against eager at the same batch size\n")
            print("| config | parameters (M) | GFLOPs/tile | backend | batch | ms/batch | tiles/s | vs eager | GFLOP/s | share of peak | note |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            eager = {(r["config"], r["batch"]): r["tps"] for r in rows if r["backend"] == "eager"}
            for r in rows:
                key = (r["config"], r["batch"])
                vs = f"{r['tps'] / eager[key]:.2f}x" if key in eager else "-"
                print(f"| {r['config']} | {r['params']:.1f} | {r['gflops']:.1f} | {r['backend']} | {r['batch']} | {r['ms']:.0f} | "
                      f"{r['tps']:.2f} | {vs} | {r['gflops_s']:.0f} | {r['peak']:.1%} | {r['note']} |")
            if any(r["peak"] > 1 and r["backend"] != "int8" for r in rows):
                print("\nshares above 100 %: the matrix products reach less of this machine's peak than the convolution "
                      "kernels do (or use fewer multiplications, e.g. Winograd), so the measured peak understates it")
        if args.model is not None:
            acc = accuracy(args, device, work)
            print(f"\nscored on {args.split} with {args.model} (tile by tile at its own size; int8 op types: {'+'.join(args.int8_ops)})\n")
            print("| backend | object F1 (mean over images) | vs eager | buildings | max abs diff of probabilities vs eager | model s |")
            print("|---|---|---|---|---|---|")
            for r in acc:
                print(f"| {r['backend']} | {r['f1']:.4f} | {r['f1'] - acc[0]['f1']:+.4f} | {r['n']} | {r['diff']:.2e} | {r['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
