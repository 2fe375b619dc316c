"""Training throughput (images/s) of each shipped config: forward, loss, backward, optimizer step.

Measures the model's training step on random tensors of the stated size, so data loading is left
out (it runs in DataLoader workers beside the step), channels_last, at each precision of
``--precision`` (default: fp32 and what ``rooftrace train`` uses, ``train.amp: auto``: bf16 autocast
on GPUs that have it, else fp16 with a grad scaler; bf16 on CPUs with native bf16; else fp32). The
ratio column is against the first config at the first precision.

    .venv/bin/python benchmarks/train_speed.py                       # CPU, 256 x 256 crops, batch 8
    .venv/bin/python benchmarks/train_speed.py --device cuda --size 512 --batch 16
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from rooftrace.config import load_config
from rooftrace.models.architectures import build_model, count_parameters
from rooftrace.models.autocast import autocast, autocast_dtype, dtype_name
from rooftrace.training.losses import SegmentationLoss

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("baseline-unet", "unet-effb0", "unet-r18", "unet-r34")


def bench(name: str, device: torch.device, size: int, batch: int, steps: int, warmup: int, precision: str) -> dict:
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    classes = len(cfg.data.channels)
    model = build_model(cfg.model, classes).to(device).to(memory_format=torch.channels_last).train()
    loss_fn = SegmentationLoss(cfg.loss, classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, classes, size, size, device=device) > 0.7).float()

    def step() -> None:
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"config": name, "params_m": count_parameters(model) / 1e6, "images_per_s": steps * batch / dt,
            "precision": dtype_name(amp)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--precision", nargs="+", default=["fp32", "auto"], help="precisions to measure (default fp32 auto)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"device: {device} ({where}); torch {torch.__version__}; input {args.batch} x 3 x {args.size} x {args.size}, channels_last")
    precisions = list(dict.fromkeys(dtype_name(autocast_dtype(p, device)) for p in args.precision))
    rows = [bench(c, device, args.size, args.batch, args.steps, args.warmup, p) for c in args.configs for p in precisions]
    base = rows[0]["images_per_s"]
    print(f"\n| config | parameters (M) | precision | train images/s | vs {rows[0]['config']} |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['params_m']:.2f} | {r['precision']} | {r['images_per_s']:.1f} | {r['images_per_s'] / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
