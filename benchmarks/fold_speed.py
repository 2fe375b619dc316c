"""Batch norm folded into the convolutions (``rooftrace.models.fold``): the network's speed and outputs, side by side.

For the shipped network (or ``--model``), in bf16 autocast and in fp32, one 512 x 512 tile a forward pass (as
the runtime runs a CPU batch), unfolded against folded, interleaved round by round; then, on the sample
pack's validation tiles (resized to 512 x 512), how far each one's probabilities are from the unfolded fp32
network's: the largest and mean difference and the share of pixels on the other side of 0.5. Run from the
repository root::

    .venv/bin/python benchmarks/fold_speed.py [--rounds 8] [--tiles 8]
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

from rooftrace.models.files import load_model, shipped_model  # noqa: E402
from rooftrace.models.fold import fold_batchnorm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=8, help="validation tiles compared")
    args = ap.parse_args(argv)
    loaded = load_model(args.model or shipped_model())
    nets = {"unfolded": loaded.model.to(memory_format=torch.channels_last)}
    nets["folded"] = copy.deepcopy(nets["unfolded"])
    n_folded = fold_batchnorm(nets["folded"])
    print(f"{loaded.path.name}: {n_folded} batch norms folded; {cpu_name()}, {torch.get_num_threads()} threads")

    x, files = val_tiles_512(args.sample, args.tiles, loaded.mean, loaded.std)

    def probs(net: torch.nn.Module, bf16: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return torch.cat([torch.sigmoid(net(x[i : i + 1]).float()) for i in range(len(x))])

    reference = probs(nets["unfolded"], False)
    print(f"\nagainst the unfolded network in fp32, {len(files)} validation tiles:")
    print("| network | precision | max |diff| | mean |diff| | pixels across 0.5 |")
    print("|---|---|---|---|---|")
    for bf16 in (False, True):
        for name, net in nets.items():
            d = (probs(net, bf16) - reference)
            flips = ((reference + d > 0.5) != (reference > 0.5)).float().mean().item()
            print(f"| {name} | {'bf16' if bf16 else 'fp32'} | {d.abs().max().item():.2e} | {d.abs().mean().item():.2e} | {flips:.4%} |")

    one = x[:1].contiguous(memory_format=torch.channels_last)

    def forward(name: str, bf16: bool):
        def run() -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                nets[name](one)
        return run

    times = interleaved_times({(n, b): forward(n, b) for b in (True, False) for n in nets}, args.rounds)
    print(f"\none 512 x 512 tile a forward pass, median of {args.rounds} interleaved rounds:")
    print("| precision | unfolded ms | folded ms | folded vs unfolded |")
    print("|---|---|---|---|")
    for bf16 in (True, False):
        u, f = statistics.median(times[("unfolded", bf16)]), statistics.median(times[("folded", bf16)])
        print(f"| {'bf16' if bf16 else 'fp32'} | {u * 1000:.1f} | {f * 1000:.1f} | {u / f:.2f}x faster |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
