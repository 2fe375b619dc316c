"""The fastest runtime for ``precision="auto"``, chosen by measurement on the machine it runs on, once.

On a CPU with native bf16 (AVX512-BF16 or AMX) ``auto`` has a choice: bf16 autocast or fp32. Which is faster
depends on the network as much as on the CPU (a wide network gains about 2x from bf16 here; a narrow one can
lose, oneDNN's bf16 kernels for few channels being slower than its fp32 ones). So the first run of a network
on such a CPU times one 512 x 512 forward pass in each (after a warm-up pass each, about 3 s in all) and keeps
the faster; the choice is cached in the user's cache folder (``$ROOFTRACE_CACHE_DIR``, else
``$XDG_CACHE_HOME/rooftrace``, else ``~/.cache/rooftrace``; ``runtime.json``), keyed by the network (its
architecture and weight shapes, not the file), the CPU, the threads, and the torch version, so later runs do
not measure again. Where there is no choice (a GPU: bf16 always; a CPU without native bf16: fp32; an
explicit ``precision``; an ``.onnx`` model, which runs in ONNX Runtime) nothing is measured.

``ROOFTRACE_RUNTIME_PROBE=0`` turns the measurement off (``auto`` is then bf16 where the CPU has it, as
:mod:`rooftrace.models.autocast` decides). ``torch.compile`` is not a candidate: its compilation takes
longer than most runs (``--compile`` asks for it). The choice and its figures are in
:attr:`RuntimeChoice.describe`, which ``predict``'s summary and the GIS outputs' provenance carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rooftrace.core.files import atomic_write_text
from rooftrace.core.machine import cpu_name
from rooftrace.models.autocast import (
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    dtype_name,
)

#: Environment variables: the cache folder, and ``0`` to turn the measurement off.
CACHE_ENV, PROBE_ENV = "ROOFTRACE_CACHE_DIR", "ROOFTRACE_RUNTIME_PROBE"
CACHE_NAME = "runtime.json"
#: The input measured: one tile of the size the model card describes.
PROBE_SHAPE = (1, 3, 512, 512)


@dataclass(frozen=True)
class RuntimeChoice:
    """The precision a run uses and why: ``how`` is ``measured``, ``cached`` or ``fixed`` (no choice to make);
    ``seconds`` the measured seconds a 512 x 512 forward pass of each candidate (measured or cached)."""

    precision: str
    how: str
    seconds: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: ``runtime: bf16 (measured on this machine: bf16 0.101 s, fp32 0.205 s a 512 x 512 tile)``."""
        if not self.seconds:
            return f"runtime: {self.precision}"
        figures = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        where = "measured on this machine" if self.how == "measured" else "measured before on this machine, cached"
        return f"runtime: {self.precision} ({where}: {figures} a 512 x 512 tile)"


def cache_dir() -> Path:
    """The user's cache folder for rooftrace (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rooftrace"


def network_key(model: torch.nn.Module) -> str:
    """What the speed of a network depends on: its class and parameter shapes (not their values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


def _machine_key() -> str:
    return f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}"


@torch.inference_mode()
def _time_forward(model: torch.nn.Module, precision: str, device: torch.device, repeat: int = 2) -> float:
    x = torch.zeros(PROBE_SHAPE).contiguous(memory_format=torch.channels_last)
    amp = autocast_dtype(precision, device)

    def once() -> None:
        with autocast(device, amp):
            model(x)

    once()  # warm: oneDNN creates its kernels on the first pass
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return min(times)


def choose_precision(model: torch.nn.Module, precision: str, device: torch.device) -> RuntimeChoice:
    """The precision to run ``model`` at (see the module docstring): ``precision`` itself unless it is ``auto``
    on a CPU with native bf16, where the faster of bf16 and fp32, measured once and cached."""
    if precision != "auto" or device.type != "cpu" or not cpu_has_native_bf16() or os.environ.get(PROBE_ENV) == "0":
        return RuntimeChoice(dtype_name(autocast_dtype(precision, device)), "fixed")
    key = f"{network_key(model)} | {_machine_key()}"
    path = cache_dir() / CACHE_NAME
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("precision") in ("bf16", "fp32") and isinstance(hit.get("seconds"), dict):
        return RuntimeChoice(hit["precision"], "cached", {k: float(v) for k, v in hit["seconds"].items()})
    seconds = {p: _time_forward(model, p, device) for p in ("bf16", "fp32")}
    best = min(seconds, key=seconds.__getitem__)
    cache[key] = {"precision": best, "seconds": seconds}
    try:
        atomic_write_text(path, json.dumps(cache, indent=1), force=True)
    except Exception:  # noqa: BLE001 - a cache that cannot be written is measured again next time, nothing worse
        pass
    return RuntimeChoice(best, "measured", seconds)
