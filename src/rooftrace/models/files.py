"""Model files and resume states: safetensors only, never pickle.

A model file (``*.safetensors``) holds the weights and, in its metadata under ``"rooftrace"``, the
JSON of everything needed to use them: the full training config, the output channels and the input
normalisation. Its SHA-256 is written beside it (``<file>.sha256``) and checked on load, so a
truncated or altered file is refused. Pickle checkpoints (``.pt``, ``.pth``, ``.ckpt``) are refused:
unpickling a file runs whatever code it contains.

A resume state (``resume.safetensors`` in a run folder) holds the optimizer's tensors and the RNG
states as tensors, and the scheduler, grad scaler, epoch, counters and the rest as JSON metadata,
in one file written atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from rooftrace.config import Config, ModelConfig, config_from_dict
from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.core.hashing import sha256_file
from rooftrace.models.architectures import build_model
from rooftrace.models.metadata import (
    FORMAT_VERSION,
    check_model_meta,
    check_model_path,
    model_gsd,
    parse_model_metadata,
    shipped_model,  # noqa: F401  (callers name it from here, with load_model)
    verify_sidecar,
)

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


@dataclass
class LoadedModel:
    """A network ready for inference, with what it expects and gives."""

    model: nn.Module
    config: Config
    channels: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict[str, Any]
    path: Path

    @property
    def gsd(self) -> float | None:
        """The pixel size in metres the model was trained at (``None``: not recorded; use images as they are)."""
        return model_gsd(self.path, self.meta)


def save_model(path: str | Path, model: nn.Module, cfg: Config, extra: dict[str, Any] | None = None,
               half: bool = False, force: bool = True) -> Path:
    """Write ``model``'s weights with their config and normalisation, then its SHA-256 beside it.

    Args:
        half: Store floating-point weights as fp16 (half the size; loaded back as fp32).
    """
    state = {k: v.detach().to("cpu").contiguous() for k, v in unwrap(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "channels": list(cfg.data.channels),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
        "gsd": cfg.data.gsd or None,
        **(extra or {}),
    }
    path = atomic_write_bytes(path, st_save(state, metadata={"rooftrace": json.dumps(meta)}), force=force)
    atomic_write_text(Path(str(path) + ".sha256"), f"{sha256_file(path)}  {path.name}\n", force=True)
    return path


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def refuse_pickle(path: Path, by_content: bool = False) -> None:
    """Raise a clear error for pickle checkpoints (they can run arbitrary code when loaded): files
    named as one or, with ``by_content``, a file whose first bytes are a pickle's, whatever its name."""
    if by_content or path.suffix.lower() in PICKLE_SUFFIXES:
        named = named_as(path, "pickle") if by_content else ""
        raise RooftraceError(
            f"{path}: a pickle checkpoint{named}; rooftrace loads weights from .safetensors only, because unpickling "
            "a file runs whatever code it contains. If you trust where it comes from, convert it once: "
            f"rooftrace import-weights {path} --config configs/NAME.yaml --out model.safetensors --trust-pickle "
            "(it is then read with torch.load(weights_only=True), which accepts tensors and plain containers only)"
        )


def sniff_weights(path: Path) -> str:
    """What a weights file holds, by its first bytes, whatever its name says: ``"safetensors"`` (an
    8-byte little-endian header length, then the JSON header's ``{``), ``"pickle"`` (a pickle's 0x80
    protocol byte, or ``PK``: torch.save's zip) or ``"unknown"``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return "unknown"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" or head[:2] == b"PK":
        return "pickle"
    return "unknown"


def named_as(path: Path, kind: str) -> str:
    """`` (named .pth)``-style words when a file's name says another kind than its content."""
    suffix = path.suffix.lower()
    says = "pickle" if suffix in PICKLE_SUFFIXES else "safetensors" if suffix == ".safetensors" else None
    return f", though its name ends in {path.suffix}" if says is not None and says != kind else ""


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and rooftrace metadata of a model file, after checking its hash."""
    path = Path(path)
    if not path.exists():
        refuse_pickle(path)
        raise RooftraceError(f"{path}: no such model file")
    check_model_path(path)
    kind = sniff_weights(path)
    if kind == "pickle":
        refuse_pickle(path, by_content=True)
    elif kind == "unknown" and path.suffix.lower() in PICKLE_SUFFIXES:
        raise RooftraceError(f"{path}: neither a safetensors file nor a pickle checkpoint (by its first bytes); "
                             "not a model file")
    verify_sidecar(path)
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta_raw = (f.metadata() or {}).get("rooftrace")
    except (SafetensorError, ValueError, OSError) as exc:
        raise RooftraceError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta_raw is None:
        raise RooftraceError(f"{path}: no rooftrace metadata; not a model file written by rooftrace")
    meta = parse_model_metadata(path, meta_raw)
    missing = [k for k in ("config", "channels", "mean", "std") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise RooftraceError(f"{path}: its rooftrace metadata lacks {', '.join(missing)}; not a model file written by rooftrace")
    check_model_meta(path, meta)
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not _finite(v)), None)
    if bad is not None:
        raise RooftraceError(f"{path}: weight {bad} holds NaN or infinite values (a training run that diverged?); "
                             "the model cannot be used")
    return tensors, meta


def _finite(v: torch.Tensor) -> bool:
    """No NaN or infinity in ``v``; through numpy where it can (0.03 s for the shipped model, against 0.5 s
    or more for torch's first operations at start-up), torch for bfloat16, which numpy lacks."""
    if v.dtype == torch.bfloat16:
        return bool(torch.isfinite(v).all())
    import numpy as np

    return bool(np.isfinite(v.numpy()).all())


def network_from_state(cfg: ModelConfig, classes: int, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The network ``cfg`` names, built for inference (:func:`rooftrace.models.architectures.build_model`) without
    downloading anything (``state`` holds every weight), with ``state`` loaded in fp32: what :func:`load_model` builds
    from a file, and :func:`rooftrace.models.inference_form.inference_copy` from a training run's weights.

    Raises:
        RooftraceError: An architecture or encoder ``cfg`` does not know, or weights that do not fit the architecture.
    """
    from dataclasses import replace

    model = build_model(replace(cfg, encoder_weights=None), classes=classes, inference=True)
    try:
        model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise RooftraceError(f"weights do not fit the architecture it names ({str(exc).splitlines()[0]})") from None
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network a model file describes and load its weights (in eval mode, fp32)."""
    path = Path(path)
    tensors, meta = read_model_file(path)
    try:
        cfg = config_from_dict(meta["config"]) if isinstance(meta["config"], dict) else None
        if cfg is None:
            raise RooftraceError("its config is not a mapping")
        model = network_from_state(cfg.model, len(meta["channels"]), tensors)
    except RooftraceError as exc:
        raise RooftraceError(f"{path}: {exc}") from None
    model.eval().to(device)
    return LoadedModel(model, cfg, tuple(meta["channels"]), tuple(meta["mean"]), tuple(meta["std"]), meta, path)


# --- resume state -----------------------------------------------------------------------------


