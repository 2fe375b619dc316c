"""The decoder's upsampling as transposed convolutions (``rooftrace.models.upsample_conv``): speed and outputs, side by side.

Three measurements, each decoder "as written" (nearest 2x upsampling, concatenation, 3 x 3 convolution)
against "transposed" (one stride-2 transposed convolution and the skip's own convolution), interleaved
round by round in one process:

1. inference: the shipped network (or ``--model``) as ``rooftrace predict`` loads it (batch norms folded,
   channels-last), one 512 x 512 tile a forward pass, in bf16 autocast and in fp32;
2. outputs: on the sample pack's validation tiles, each path's probabilities against the as-written fp32
   network's (largest and mean difference, share of footprint pixels on the other side of 0.5);
3. training: one step of the default recipe's network as ``rooftrace train`` builds it (smp U-Net,
   depthwise convolutions in fp32, channels-last, bf16 autocast, fused AdamW) on a batch of 8 crops of
   256 x 256, forward, backward and optimizer.

Run from the repository root::

    .venv/bin/python benchmarks/upsample_conv_speed.py [--rounds 8] [--train-rounds 6] [--tiles 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_SAMPLE, cpu_name, interleaved_times, val_tiles_512  # noqa: E402

from rooftrace.config import load_config  # noqa: E402
from rooftrace.inference.runtime import load_any  # noqa: E402
from rooftrace.models.architectures import build_model  # noqa: E402
from rooftrace.models.autocast import depthwise_in_fp32  # noqa: E402
from rooftrace.models.files import shipped_model  # noqa: E402
from rooftrace.models.upsample_conv import use_transposed_upsampling  # noqa: E402

PATHS = ("as written", "transposed")


def _set(net: torch.nn.Module, transposed: bool) -> None:
    for block in net.decoder.blocks:
        block.upsample_transposed = transposed


def _inference(args: argparse.Namespace) -> None:
    loaded = load_any(args.model or shipped_model(), device="cpu")
    net = loaded.model
    x, files = val_tiles_512(args.sample, args.tiles, loaded.mean, loaded.std)

    def probs(transposed: bool, bf16: bool) -> torch.Tensor:
        _set(net, transposed)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return torch.cat([torch.sigmoid(net(x[i : i + 1]).float()) for i in range(len(x))])

    reference = probs(False, False)[:, :1]
    print(f"\n{loaded.path.name}, {len(files)} validation tiles, footprint channel, against the decoder as written in fp32:")
    print("| decoder | precision | max |diff| | mean |diff| | pixels across 0.5 |")
    print("|---|---|---|---|---|")
    for bf16 in (False, True):
        for transposed in (False, True):
            d = probs(transposed, bf16)[:, :1] - reference
            flips = ((reference + d > 0.5) != (reference > 0.5)).float().mean().item()
            print(f"| {PATHS[transposed]} | {'bf16' if bf16 else 'fp32'} | {d.abs().max().item():.2e} | "
                  f"{d.abs().mean().item():.2e} | {flips:.4%} |")

    one = x[:1].contiguous(memory_format=torch.channels_last)

    def forward(transposed: bool, bf16: bool):
        def run() -> None:
            _set(net, transposed)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(one)
        return run

    times = interleaved_times({(t, b): forward(t, b) for b in (True, False) for t in (False, True)}, args.rounds)
    print(f"\ninference, one 512 x 512 tile a forward pass (batch norms folded), median of {args.rounds} interleaved rounds:")
    print("| precision | as written ms | transposed ms | transposed vs as written |")
    print("|---|---|---|---|")
    for bf16 in (True, False):
        a, b = statistics.median(times[(False, bf16)]), statistics.median(times[(True, bf16)])
        print(f"| {'bf16' if bf16 else 'fp32'} | {a * 1000:.1f} | {b * 1000:.1f} | {a / b:.2f}x faster |")


def _training(args: argparse.Namespace) -> None:
    cfg = load_config(Path("configs/unet-lite0.yaml"))
    torch.manual_seed(0)
    base = build_model(cfg.model, len(cfg.data.channels))
    steps = {}
    for transposed in (False, True):
        model = copy.deepcopy(base)
        depthwise_in_fp32(model)
        if transposed:
            use_transposed_upsampling(model)
        model = model.to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        xb = torch.randn(cfg.data.batch_size, 3, cfg.data.crop_size, cfg.data.crop_size).contiguous(memory_format=torch.channels_last)
        yb = (torch.rand(cfg.data.batch_size, len(cfg.data.channels), cfg.data.crop_size, cfg.data.crop_size) > 0.7).float()

        def step(model=model, opt=opt, xb=xb, yb=yb) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[transposed] = step
    times = interleaved_times(steps, args.train_rounds)
    a, b = statistics.median(times[False]), statistics.median(times[True])
    n = cfg.data.batch_size
    print(f"\ntraining step of configs/unet-lite0.yaml's network ({n} crops of {cfg.data.crop_size} x {cfg.data.crop_size}, "
          f"bf16, depthwise fp32, fused AdamW), median of {args.train_rounds} interleaved rounds:")
    print("| as written ms (crops/s) | transposed ms (crops/s) | transposed vs as written |")
    print("|---|---|---|")
    print(f"| {a * 1000:.0f} ({n / a:.1f}) | {b * 1000:.0f} ({n / b:.1f}) | {a / b:.2f}x faster |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--rounds", type=int, default=8, help="interleaved inference rounds")
    ap.add_argument("--train-rounds", type=int, default=6, help="interleaved training rounds (0: skip training)")
    ap.add_argument("--tiles", type=int, default=8, help="validation tiles compared")
    args = ap.parse_args(argv)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    _inference(args)
    if args.train_rounds:
        _training(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
