"""Numeric precision for training and inference: which autocast dtype a device gets.

``auto`` means mixed precision wherever the hardware computes it natively:

* on a CUDA GPU, bf16 when the GPU has it (Ampere and later), else fp16 (training then adds a
  gradient scaler);
* on a CPU with native bf16 instructions (AVX512-BF16, e.g. AMD Zen 4 or Intel Cooper Lake and
  later, or AMX), bf16 autocast through oneDNN: convolutions run in bf16 with fp32 accumulation,
  while losses, sigmoids and the optimiser stay in fp32;
* elsewhere fp32.

``fp32`` (alias ``off``) turns autocast off; ``bf16`` and ``fp16`` ask for that dtype on any device
(on a CPU without native support they are emulated and slower than fp32).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch

from rooftrace.core.errors import RooftraceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"off": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        fn = getattr(torch.cpu, name, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a torch build without the probe
            continue
    return False


def normalise_precision(precision: str) -> str:
    """The canonical name of ``precision`` (``off`` -> ``fp32``); an unknown name is a clear error."""
    p = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if p not in PRECISIONS:
        raise RooftraceError(f"precision {precision!r}: must be one of {', '.join(PRECISIONS)} (or off)")
    return p


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    p = normalise_precision(precision)
    dev = torch.device(device)
    if p == "fp32":
        return None
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        return torch.float16
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``'s type, or a no-op for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
