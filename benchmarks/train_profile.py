"""Where a training step's time goes on this machine, and what each speed-up is worth, side by side.

For the default recipe's network (``configs/unet-lite0.yaml``) it measures, in one run:

1. the machine's limit: a 2048^3 bf16 (and fp32) matrix product with the threads training uses;
2. the network's FLOPs per step (forward + backward, ``torch.utils.flop_counter``);
3. per variant, the step split into forward, backward and optimizer (with gradient clipping),
   interleaved round by round so that other load on the machine hits every variant alike, with
   the GFLOP/s each reaches against the matmul limit;
4. the data pipeline: one sample's decode-free cost (tiles are cached) with the recipe's crops and
   augmentation, on one core, against the step's time per crop;
5. optionally (``--validation``) one validation pass over the recipe's validation tiles;
6. optionally (``--loop``) the whole training loop (data workers, step, validation) of the recipe as
   it was before this change and as it is now, epoch by epoch in turn, with the crops/s of each
   recipe over a 150-step epoch with its validation (``train.val_every``) counted in.

Variants (``--variants``; the first is the reference of the ratio column):

- ``before``: bf16 autocast, channels_last, AdamW ``foreach`` (the recipe until issue 21);
- ``dw-fp32-all``: every depthwise convolution computed in fp32 (``train.depthwise_fp32: all``), the rest
  bf16 (the recipe from issue 21 until session 15);
- ``dw-fp32``: only the depthwise convolutions that bf16 trains slower here computed in fp32, those larger
  than 3 x 3 or strided (``train.depthwise_fp32: slow``: the recipe now);
- ``dw-fp32+fused``: and fused AdamW (``optim.fused``; off in the recipe, as a resumed run did not
  reproduce the uninterrupted one with it);
- ``fp32``: no autocast; ``dw-fp32+fused+bn-frozen``: and the encoder's BatchNorm statistics frozen
  (not in the recipe: it changes what is learnt; measured for the record);
- ``dw-fp32+fused+b16``: batch 16 instead of 8;
- ``dw-fp32+freezeN`` (N = 1..5, not in the default list): the recipe with ``train.freeze_encoder: N``, the
  encoder layers at 1/2 .. 1/2^N of the input's size frozen (``rooftrace.training.freezing``).

Every variant but ``before`` computes each decoder block's upsampling and first convolution as one
transposed convolution, as the recipe does (``train.transposed_upsampling``). Each variant's first step is
also compared with an fp32 step from the same weights on the same batch (the cosine of all gradients
together, and their relative error): a faster step must compute the same gradients to bf16's precision.
``--layers`` times every depthwise convolution of the network alone, forward and backward from a bf16 input
as in the network, computed in bf16 and computed in fp32: the measurement behind ``slow``.

    .venv/bin/python benchmarks/train_profile.py                 # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/train_profile.py --validation --json out/bench/train-profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, cpu_name  # noqa: E402

from rooftrace.config import load_config  # noqa: E402
from rooftrace.models.architectures import build_model  # noqa: E402
from rooftrace.models.autocast import bf16_depthwise_is_slow, depthwise_in_fp32, is_depthwise  # noqa: E402
from rooftrace.models.upsample_conv import use_transposed_upsampling  # noqa: E402
from rooftrace.training.losses import SegmentationLoss  # noqa: E402

FROZEN = tuple(f"dw-fp32+freeze{n}" for n in range(1, 6))
VARIANTS = ("before", "dw-fp32-all", "dw-fp32", "dw-fp32+fused", "fp32", "dw-fp32+fused+bn-frozen", "dw-fp32+fused+b16", *FROZEN)


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


class Variant:
    """One way of running the recipe's training step."""

    def __init__(self, name: str, cfg, batch: int, size: int):
        torch.manual_seed(0)
        self.name = name
        self.batch = 16 if "b16" in name else batch
        self.amp = name != "fp32"
        model = build_model(cfg.model, len(cfg.data.channels))
        if "dw-fp32" in name:
            depthwise_in_fp32(model, "all" if name.startswith("dw-fp32-all") else "slow")
        if name != "before" and cfg.train.transposed_upsampling:
            use_transposed_upsampling(model)
        self.model = model.to(memory_format=torch.channels_last).train()
        if "+freeze" in name:  # the model stays in train mode, so the frozen BatchNorms are held once
            from rooftrace.training.freezing import encoder_layers_up_to, freeze, hold_norms

            hold_norms(freeze(encoder_layers_up_to(self.model, int(name.rsplit("freeze", 1)[1]))))
        if "bn-frozen" in name:
            for m in self.model.encoder.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        kw = {"fused": True} if "fused" in name else {"foreach": True}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=1e-4, **kw)
        self.loss_fn = SegmentationLoss(cfg.loss, len(cfg.data.channels))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.batch, 3, size, size, generator=g).contiguous(memory_format=torch.channels_last)
        self.y = (torch.rand(self.batch, len(cfg.data.channels), size, size, generator=g) > 0.7).float()
        self.times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def gradients(self) -> torch.Tensor:
        """One forward and backward on the variant's batch, without an optimizer step: all gradients, flat, fp64."""
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(self.x)
        self.loss_fn(logits.float(), self.y).backward()
        grads = [p.grad.double().flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
                 for p in self.model.parameters()]
        self.opt.zero_grad(set_to_none=True)
        return torch.cat(grads)

    def step(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.model(self.x)
        loss = self.loss_fn(logits.float(), self.y)
        t1 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        t3 = time.perf_counter()
        if record:
            for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
                self.times[k].append(v)

    def summary(self, flops_per_crop: float) -> dict:
        parts = {k: statistics.median(v) for k, v in self.times.items()}
        step = sum(parts.values())
        return {"variant": self.name, "batch": self.batch, "step_s": step, "crops_per_s": self.batch / step,
                **{f"{k}_s": v for k, v in parts.items()}, "gflops": flops_per_crop * self.batch / step / 1e9}


def step_flops(cfg, size: int) -> float:
    """FLOPs of one crop's training step: 3x the forward's convolution FLOPs (the backward computes the
    gradients of the inputs and of the weights, each about one forward), counted per ``Conv2d`` with its
    groups (a depthwise convolution does ``1 / channels`` of a dense one's work)."""
    model = build_model(cfg.model, len(cfg.data.channels)).eval()
    total = [0.0]

    def hook(m: torch.nn.Conv2d, _inp, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2.0 * out.shape[1] * out.shape[2] * out.shape[3] * (m.in_channels // m.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    return 3.0 * total[0]


def gradient_agreement(variants: list[Variant], cfg, batch: int, size: int) -> dict[str, tuple[float, float]]:
    """Each variant's first gradients against an fp32 step's from the same weights and batch (every variant is
    built from seed 0): (cosine, relative error ``|g - g32| / |g32|``). Variants of another batch size are left out."""
    g32 = Variant("fp32", cfg, batch, size).gradients()
    out = {}
    for v in variants:
        if v.batch != batch:
            continue
        g = v.gradients()
        out[v.name] = (float(torch.nn.functional.cosine_similarity(g, g32, dim=0)), float((g - g32).norm() / g32.norm()))
    return out


def depthwise_layers(cfg, batch: int, size: int, rounds: int = 5) -> list[dict]:
    """Every depthwise convolution of the recipe's network alone: forward and backward (input and weight
    gradients) from a bf16 channels-last input of the size it sees in the network, computed in bf16 under
    autocast and computed in fp32 (input cast, as ``depthwise_in_fp32`` does); medians in ms."""
    model = build_model(cfg.model, len(cfg.data.channels))
    shapes: dict[str, tuple] = {}
    convs = {n: m for n, m in model.named_modules() if is_depthwise(m)}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(i[0].shape))) for n, m in convs.items()]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    rows = []
    for name, conv in convs.items():
        conv.train()
        x = torch.randn(batch, *shapes[name][1:]).to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)

        def run(fp32: bool) -> float:
            times = []
            for i in range(rounds + 2):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    if fp32:
                        with torch.autocast("cpu", enabled=False):
                            y = torch.nn.Conv2d.forward(conv, x.float())
                    else:
                        y = torch.nn.Conv2d.forward(conv, x)
                torch.autograd.grad(y, (x, conv.weight), torch.ones_like(y))
                if i >= 2:
                    times.append(time.perf_counter() - t)
            return statistics.median(times) * 1e3

        rows.append({"layer": name.split("model.", 1)[-1], "channels": conv.in_channels, "size": shapes[name][2],
                     "kernel": conv.kernel_size[0], "stride": conv.stride[0], "bf16_ms": run(False), "fp32_ms": run(True),
                     "slow": bf16_depthwise_is_slow(conv)})
    return rows


def data_cost(cfg, n: int) -> dict:
    """Seconds per training sample (crop, scale, augmentation, normalisation) from cached tiles, one core."""
    from rooftrace.labels.records import LoadReport
    from rooftrace.labels.splits import open_split
    from rooftrace.training.dataset import TileDataset, select_tiles

    torch.set_num_threads(1)
    labels = [open_split(s) for s in cfg.data.train]
    ds = TileDataset(select_tiles(cfg.data.train, labels), cfg.data, cfg.augment, seed=0)
    ds.drop_unreadable(LoadReport("data.train"))
    if cfg.augment.focus or cfg.data.sampling == "balanced":
        for i in range(len(ds)):
            ds.stats(i)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), n)
    for i in idx[:10]:
        ds[int(i)]
    t = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return {"tiles": len(ds), "sample_s": (time.perf_counter() - t) / n}


def validation_cost(cfg) -> dict:
    """One validation pass of the recipe (all its validation tiles), seconds."""
    from rooftrace.training.loop import Env, Trainer

    env = Env(device=torch.device("cpu"), amp_dtype=torch.bfloat16)
    trainer = Trainer(cfg, None, env)
    t = time.perf_counter()
    trainer.validate(0)
    return {"val_tiles": len(trainer.val_ds), "val_s": time.perf_counter() - t}


#: The recipe before this change, as config overrides of today's (the code paths are the old ones
#: when these options are off), and today's.
#: The recipes of the loop's comparison. ``before`` is the recipe as it was before issue 21's speed work, run by
#: the code as it was too where that code changed since (albumentations' own fog; validation batches in order,
#: each padded to its largest tile): :func:`loop_cost` sets those two back for it.
LOOP_RECIPES = {
    "before": ["train.depthwise_fp32=false", "optim.fused=false", "data.workers=2", "data.sampling=uniform", "augment.pan=0",
               "augment.focus=0", "augment.gray=0.1", "train.val_every=1"],
    "now": [],
    "now, data in the main process": ["data.workers=0"],
}


def loop_cost(config: str, steps: int, rounds: int) -> list[dict]:
    """The real training loop of each recipe in :data:`LOOP_RECIPES`, ``steps`` steps an epoch, in turn."""
    from rooftrace.training.loop import Env, Trainer

    import albumentations as A

    from rooftrace.training import augment

    trainers = {}
    for name, over in LOOP_RECIPES.items():
        cfg = load_config(config, [*over, f"train.steps_per_epoch={steps}", "train.epochs=100"])
        quick = augment.QuickFog
        if name == "before":  # the code before too: albumentations' own fog (the same samples, drawn slower)
            augment.QuickFog = A.RandomFog
        try:
            trainer = Trainer(cfg, None, Env(device=torch.device("cpu"), amp_dtype=torch.bfloat16))
        finally:
            augment.QuickFog = quick
        if name == "before":  # and its validation batches: in order, padded to the largest tile of each
            n, b = len(trainer.val_ds), max(1, cfg.data.batch_size // 2)
            trainer._val_batches = [list(range(k, min(k + b, n))) for k in range(0, n, b)]
        trainers[name] = (cfg, trainer)
    times: dict[str, dict[str, list[float]]] = {n: {"rate": [], "val": []} for n in trainers}
    for r in range(rounds):
        for name, (cfg, tr) in trainers.items():
            t = time.perf_counter()
            tr.train_epoch(r)
            times[name]["rate"].append(steps * cfg.data.batch_size / (time.perf_counter() - t))
            t = time.perf_counter()
            tr.validate(r)
            times[name]["val"].append(time.perf_counter() - t)
    rows = []
    for name, (cfg, _) in trainers.items():
        rate, val = statistics.median(times[name]["rate"]), statistics.median(times[name]["val"])
        crops = 150 * cfg.data.batch_size
        rows.append({"recipe": name, "loop_crops_per_s": rate, "val_s": val, "val_every": cfg.train.val_every,
                     "recipe_crops_per_s": crops / (crops / rate + val / cfg.train.val_every), "workers": cfg.data.workers})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "unet-lite0.yaml"))
    ap.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v not in FROZEN], choices=VARIANTS)
    ap.add_argument("--rounds", type=int, default=4, help="rounds of one step a variant, interleaved (default 4)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=200, help="samples timed for the data pipeline (default 200)")
    ap.add_argument("--validation", action="store_true", help="also time one validation pass")
    ap.add_argument("--loop", type=int, default=0, metavar="STEPS",
                    help="also run the whole loop of the recipe before and now, STEPS steps an epoch (e.g. 40)")
    ap.add_argument("--loop-rounds", type=int, default=3)
    ap.add_argument("--layers", action="store_true", help="also time each depthwise convolution in bf16 and in fp32")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    os.environ.setdefault("ROOFTRACE_EXTRA_DIR", str(REPO.parent / "shared" / "data" / "buildings-extra"))
    cfg = load_config(args.config)
    size, batch = cfg.data.crop_size, cfg.data.batch_size
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"cpu: {cpu_name()}, {args.threads} threads; torch {torch.__version__}; crops {size} x {size}, batch {batch}")
    limit = {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}
    print(f"matmul 2048^3: bf16 {limit['bf16']:.0f} GFLOP/s, fp32 {limit['fp32']:.0f} GFLOP/s")
    flops = step_flops(cfg, size)
    print(f"network: {flops / 1e9:.2f} GFLOP per crop and step (3x the forward's convolutions, groups counted)")
    variants = [Variant(v, cfg, batch, size) for v in args.variants]
    agreement = gradient_agreement(variants, cfg, batch, size)
    for v in variants:
        v.step(record=False)
        v.step(record=False)
    for _ in range(args.rounds):
        for v in variants:
            v.step()
    rows = [v.summary(flops) for v in variants]
    ref = rows[0]["crops_per_s"]
    for r in rows:
        r["grad_cosine"], r["grad_rel_error"] = agreement.get(r["variant"], (float("nan"), float("nan")))
    print(f"\n| variant | batch | forward s | backward s | optimizer s | step s | crops/s | vs {rows[0]['variant']} | GFLOP/s | of bf16 matmul "
          "| gradients against fp32: cosine, relative error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['batch']} | {r['forward_s']:.3f} | {r['backward_s']:.3f} | {r['optimizer_s']:.3f} | {r['step_s']:.3f} "
              f"| {r['crops_per_s']:.1f} | {r['crops_per_s'] / ref:.2f}x | {r['gflops']:.0f} | {r['gflops'] / limit['bf16']:.0%} "
              f"| {r['grad_cosine']:.4f}, {r['grad_rel_error']:.3f} |")
    layers = depthwise_layers(cfg, batch, size) if args.layers else None
    if layers:
        print("\n| depthwise layer | channels | input size | kernel | stride | bf16 ms | fp32 ms | fp32 / bf16 | in fp32 under `slow` |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in layers:
            print(f"| {r['layer']} | {r['channels']} | {r['size']} | {r['kernel']} | {r['stride']} | {r['bf16_ms']:.1f} | {r['fp32_ms']:.1f} "
                  f"| {r['fp32_ms'] / r['bf16_ms']:.2f} | {'yes' if r['slow'] else 'no'} |")
        print(f"sum: bf16 {sum(r['bf16_ms'] for r in layers):.1f} ms, fp32 {sum(r['fp32_ms'] for r in layers):.1f} ms, "
              f"`slow` {sum(r['fp32_ms'] if r['slow'] else r['bf16_ms'] for r in layers):.1f} ms, the faster of each "
              f"{sum(min(r['fp32_ms'], r['bf16_ms']) for r in layers):.1f} ms")
    data = data_cost(cfg, args.samples)
    torch.set_num_threads(args.threads)
    best = max(rows, key=lambda r: r["crops_per_s"])
    print(f"\ndata: {data['sample_s'] * 1e3:.1f} ms a sample on one core ({data['tiles']} cached tiles, the recipe's sampling "
          f"and augmentation) = {data['sample_s'] * best['crops_per_s']:.0%} of a core at the fastest variant's rate")
    out = {"matmul_gflops": limit, "flops_per_crop": flops, "variants": rows, "data": data, "depthwise_layers": layers}
    if args.validation:
        val = validation_cost(cfg)
        out["validation"] = val
        epoch = cfg.train.steps_per_epoch * batch
        print(f"validation: {val['val_s']:.1f} s for {val['val_tiles']} tiles, every {cfg.train.val_every} epoch(s) of {epoch} crops "
              f"= {val['val_s'] / cfg.train.val_every / (epoch / best['crops_per_s'] + val['val_s'] / cfg.train.val_every):.0%} of the run")
    if args.loop:
        rows = loop_cost(args.config, args.loop, args.loop_rounds)
        out["loop"] = rows
        print("\n| recipe | data workers | loop crops/s | validation s | validated every | crops/s over a 150-step epoch with validation | vs before |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['recipe']} | {r['workers']} | {r['loop_crops_per_s']:.1f} | {r['val_s']:.1f} | {r['val_every']} | "
                  f"{r['recipe_crops_per_s']:.1f} | {r['recipe_crops_per_s'] / rows[0]['recipe_crops_per_s']:.2f}x |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
