"""Importing checkpoints from elsewhere (``import-weights``): pickles are read only with
``torch.load(weights_only=True)`` and only with ``--trust-pickle``; names and shapes must fit the config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load

from rooftrace.config import Config
from rooftrace.core.errors import RooftraceError
from rooftrace.core.hashing import sha256_file
from rooftrace.models.architectures import build_model
from rooftrace.models.files import named_as, save_model, sniff_weights

_STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a state_dict, or one under a usual key (``state_dict``, ``model``, ...)."""
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return {str(k): v for k, v in inner.items()}
    raise RooftraceError(f"{path}: holds no state_dict (a mapping of names to tensors, at the top or under one of "
                         f"{', '.join(_STATE_KEYS)})")


def import_checkpoint(src: str | Path, out: str | Path, cfg: Config, *, trust_pickle: bool = False,
                      half: bool = False, force: bool = False) -> Path:
    """Turn another program's checkpoint into a rooftrace model file (safetensors + SHA-256 + config).

    ``src`` is a ``.safetensors`` file of bare tensors, or a pickle checkpoint (``.pth``, ``.pt``, ...)
    holding a state_dict, e.g. the original pipeline's ``torch.save(model.state_dict(), ...)`` of
    ``smp.Unet("resnet34", classes=1)``. A pickle is only read with ``trust_pickle``, and then with
    ``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
    ``cfg`` names the architecture and outputs (e.g. ``configs/unet-r34.yaml`` with
    ``data.channels=[footprint]``); the weights must fit it exactly (``module.`` prefixes of
    DistributedDataParallel are removed).
    """
    import pickle

    src, out = Path(src), Path(out)
    if not src.exists():
        raise RooftraceError(f"{src}: no such checkpoint")
    if out.exists() and not force:
        raise RooftraceError(f"{out}: already exists; pass --force to overwrite it")
    kind = sniff_weights(src)
    if kind == "safetensors" or (kind == "unknown" and src.suffix.lower() == ".safetensors"):
        try:
            state = st_load(src.read_bytes())
        except (SafetensorError, ValueError) as exc:
            raise RooftraceError(f"{src}: not a readable safetensors file ({exc})") from None
    else:
        if not trust_pickle:
            raise RooftraceError(f"{src}: a pickle checkpoint{named_as(src, 'pickle') if kind == 'pickle' else ''}, and unpickling a file runs whatever code it contains; "
                                 "pass --trust-pickle if you trust where it comes from (it is then read with "
                                 "torch.load(weights_only=True), which accepts tensors and plain containers only)")
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message goes on to suggest weights_only=False; name only what was refused.
            what = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln or "GLOBAL" in ln), "")
            raise RooftraceError(f"{src}: refused by torch.load(weights_only=True): it holds objects other than tensors "
                                 f"and plain containers{f' ({what})' if what else ''}; nothing in it was run") from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise RooftraceError(f"{src}: not a readable PyTorch checkpoint ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        state = _find_state_dict(obj, src)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    model = build_model(cfg.model, len(cfg.data.channels))
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if tuple(want[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:3])})")
        raise RooftraceError(f"{src}: its weights do not fit {cfg.model.arch} / {cfg.model.encoder} with "
                             f"{len(cfg.data.channels)} output channel(s): " + "; ".join(parts)
                             + ". Pass the config (and --set data.channels=...) it was trained with")
    model.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()}, strict=True)
    return save_model(out, model.eval(), cfg, extra={"imported_from": src.name, "imported_sha256": sha256_file(src)},
                      half=half, force=True)
