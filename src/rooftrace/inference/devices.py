"""Device choice (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``) and the CPU thread count for inference."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:
    import torch


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is the GPU when there is one; asking for cuda without one, or for a device torch does
    not know (``gpu``), is a clear error."""
    import torch

    from rooftrace.config import check_device

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RooftraceError("--device cuda: no CUDA GPU is available here")
    if device.startswith("cuda:") and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise RooftraceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise RooftraceError("--device mps: Apple's Metal (MPS) is not available in this build of PyTorch or on this machine; "
                             "use cpu or auto")
    return torch.device(device)


def default_threads(device: torch.device | str) -> int:
    """Post-processing threads: none (in line, after each batch) for inference on a CPU of up to 4
    cores, where the network's threads already fill the cores and a thread beside them slows inference
    more than it saves; else half the cores, at most 8. ``device``: a torch device, or its type
    (``"cpu"``, ``"cuda"``)."""
    cores = os.cpu_count() or 2
    kind = device if isinstance(device, str) else device.type
    if kind == "cpu" and cores <= 4:
        return 0
    return max(1, min(8, cores // 2))
