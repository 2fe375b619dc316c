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
from typing import TYPE_CHECKING, ContextManager

from rooftrace.config import DEPTHWISE_FP32_MODES
from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"off": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles)."""
    import torch

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
    import torch

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
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def dtype_name(dtype: torch.dtype | None) -> str:
    import torch

    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def is_depthwise(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a depthwise convolution: a ``Conv2d`` with one group per input channel."""
    import torch

    return isinstance(module, torch.nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def bf16_depthwise_is_slow(conv: torch.nn.Conv2d) -> bool:
    """Whether oneDNN's bf16 kernels for this depthwise convolution train slower than its fp32 ones on a CPU.

    Measured per layer of the default network (forward and backward, 8 x 256 x 256 crops, 2 threads:
    ``benchmarks/train_profile.py --layers``, session 15): every kernel larger than 3 x 3 and every strided one
    is slower in bf16 (5 x 5 by 2.2-8.3x, strided 3 x 3 by 2.3-7.7x), while the 3 x 3 ones of stride 1 are
    1.3-1.9x faster in bf16 than computed in fp32 with their input cast."""
    return max(conv.kernel_size) > 3 or max(conv.stride) > 1


def depthwise_in_fp32(model: torch.nn.Module, which: str = "all") -> int:
    """Make depthwise convolutions of ``model`` compute in fp32 under autocast; returns how many.

    ``which`` (:data:`rooftrace.config.DEPTHWISE_FP32_MODES`, what ``train.depthwise_fp32`` reads as): ``all`` of
    them, the ``slow`` ones (:func:`bf16_depthwise_is_slow`: larger than 3 x 3 or strided), the others left to
    autocast's bf16, or ``none``. On CPUs, oneDNN's bf16 depthwise convolution backward
    (above all the 5 x 5 kernels of EfficientNet's later stages) is several times slower than its fp32 one,
    while dense convolutions gain from bf16 (``benchmarks/train_profile.py`` measures both). Each chosen
    depthwise ``Conv2d`` gets a subclass whose forward casts its input to fp32 with autocast off; parameter
    names, shapes and the saved file do not change, so a model trained this way loads as any other.
    """
    from rooftrace.models.swap import swap_forward

    if which not in DEPTHWISE_FP32_MODES:
        raise ValueError(f"depthwise_in_fp32: which={which!r}, must be one of {DEPTHWISE_FP32_MODES}")
    count = 0
    for module in model.modules():
        if is_depthwise(module) and (which == "all" or (which == "slow" and bf16_depthwise_is_slow(module))):
            count += swap_forward(module, _FP32Depthwise, _fp32_forward)
    return count


class _FP32Depthwise:
    """Marker base of the fp32 depthwise classes (:func:`depthwise_in_fp32`)."""


def _fp32_forward(cls: type):
    import torch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return cls.forward(self, x.float())

    return forward
