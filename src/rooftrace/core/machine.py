"""What machine this is, for the records of measured choices and benchmarks, and how much a CPU forward pass
should hold."""

from __future__ import annotations

import platform
from pathlib import Path

#: Largest number of pixels in one PyTorch forward pass on the CPU (one 512 x 512 tile; more, smaller images):
#: larger passes are slower per pixel there, their activations leaving the caches. Measured with
#: ``benchmarks/model_speed.py``: every shipped architecture runs as fast or faster per tile at batch 1 than at
#: batch 4 on 512 x 512 tiles, EfficientNet-B0 twice as fast as at batch 8. Inference
#: (:mod:`rooftrace.inference.runtime`) and training's validation (:mod:`rooftrace.training.loop`) both keep to it.
CPU_PIXELS_PER_FORWARD = 512 * 512


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
