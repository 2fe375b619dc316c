"""The fastest runtime for ``precision="auto"``, chosen by measurement on the machine it runs on, once.

On a CPU ``auto`` chooses among up to three candidates: PyTorch in bf16 autocast (where the CPU has native
bf16: AVX512-BF16 or AMX), PyTorch in fp32, and ONNX Runtime in fp32 (where onnxruntime is installed, the
``onnx`` extra). Which is fastest depends on the network as much as on the CPU (a wide network gains about
2x from bf16 here; a narrow one can lose, oneDNN's bf16 kernels for few channels being slower than its fp32
ones; on this project's CPU ONNX Runtime ran the shipped network in 0.72-0.89x PyTorch fp32's time, and
PyTorch bf16 in 0.56-0.61x ONNX Runtime's, two runs of ``benchmarks/runtime_choice.py``). So the first run of a network
on a CPU times one 512 x 512 forward pass of each candidate (after a warm-up pass each, the network exported
to ONNX in memory first; for the shipped network the first load took 0.7-0.9 s longer than a cached one, the
same script; each candidate's fastest of :data:`PROBE_ROUNDS` passes, one candidate after another) and keeps the
fastest. The choice is cached in the user's
cache folder (``$ROOFTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/rooftrace``, else ``~/.cache/rooftrace``;
``runtime.json``), keyed by the network (its architecture and weight shapes, not the file), the CPU, the
threads, the torch version and the candidates, so later runs do not measure again, with the load average it
was measured at: a choice measured while other work held the CPU (a load average of at least one runnable
thread a core) is measured again by the first run that finds the machine quieter. Where there is no choice
(a GPU: bf16 always; one candidate left; an explicit ``precision``; an ``.onnx`` model, which runs in ONNX
Runtime) nothing is measured.

A network the exporter cannot take, or exports wrongly (checked against PyTorch), stays in PyTorch. When ONNX
Runtime is chosen, it runs the graph exported from the loaded network (batch norms folded, sigmoid
included: the same probabilities as PyTorch fp32 up to rounding). The graph is kept in the cache folder too
(``onnx/<weights hash>.onnx``, keyed by the weights themselves, so another model or retrained weights never
reuse it) and checked against PyTorch on a small input whenever it is loaded: a graph that disagrees (an
edited or damaged cache file) is exported again, so the cache cannot change a result.

``ROOFTRACE_RUNTIME_PROBE=0`` turns the measurement off (``auto`` is then bf16 where the CPU has it, else
fp32, in PyTorch, as :mod:`rooftrace.models.autocast` decides). ``torch.compile`` is not a candidate: its
compilation takes longer than most runs repay (on the shipped network here it ran a tile in 40.1 against 42.9 ms
for eager bf16, after 24 s compiling: ``benchmarks/runtime_choice.py --compile``; ``--compile`` asks for it, and
keeps the run in PyTorch). The
choice and its figures are in :attr:`RuntimeChoice.describe`, which ``predict``'s summary and the GIS
outputs' provenance carry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.core.machine import cpu_name
from rooftrace.models.autocast import (
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    dtype_name,
)

if TYPE_CHECKING:
    from rooftrace.models.files import LoadedModel
    from rooftrace.models.onnx import OnnxModel

#: Environment variables: the cache folder, and ``0`` to turn the measurement off.
CACHE_ENV, PROBE_ENV = "ROOFTRACE_CACHE_DIR", "ROOFTRACE_RUNTIME_PROBE"
CACHE_NAME = "runtime.json"
#: The input measured: one tile of the size the model card describes.
PROBE_SHAPE = (1, 3, 512, 512)
#: The candidate that runs in ONNX Runtime (the others are PyTorch precisions).
ONNX = "onnx"
#: How many exported graphs the cache keeps (the newest).
MAX_CACHED_GRAPHS = 8
#: Largest difference of probabilities a cached ONNX graph may have from PyTorch fp32 on the check input.
ONNX_CHECK_TOLERANCE = 1e-3
#: Part of the cache key: raised when rooftrace's own code changes how fast the candidates run (2: the decoder's
#: upsampling as transposed convolutions, ``models/upsample_conv.py``), so timings cached before are measured again.
RUNTIME_REVISION = 2


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a run uses and why: ``precision`` (``bf16``, ``fp32``, ...) and ``engine`` (``torch`` or
    ``onnxruntime``, fp32); ``how`` is ``measured``, ``cached`` or ``fixed`` (no choice to make); ``seconds`` the
    measured seconds a 512 x 512 forward pass of each candidate (measured or cached)."""

    precision: str
    how: str
    seconds: dict[str, float] = field(default_factory=dict)
    engine: str = "torch"

    @property
    def name(self) -> str:
        """``bf16``, ``fp32`` (PyTorch) or ``ONNX Runtime fp32``."""
        return f"ONNX Runtime {self.precision}" if self.engine == "onnxruntime" else self.precision

    def describe(self) -> str:
        """One line: ``runtime: bf16 (measured on this machine: bf16 0.101 s, fp32 0.205 s a 512 x 512 tile)``."""
        if not self.seconds:
            return f"runtime: {self.name}"
        figures = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
        where = "measured on this machine" if self.how == "measured" else "measured before on this machine, cached"
        return f"runtime: {self.name} ({where}: {figures} a 512 x 512 tile)"


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


def weights_key(model: torch.nn.Module) -> str:
    """What a network computes: its class, and every parameter's and buffer's name, shape and values."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _machine_key() -> str:
    return f"{cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def candidates(device: torch.device, onnx: bool = True) -> list[str]:
    """What ``auto`` chooses among on ``device``: bf16 where the CPU has it natively, fp32, and ONNX Runtime
    where it is installed (and ``onnx``); on a GPU, nothing to choose (bf16)."""
    if device.type != "cpu":
        return []
    found = ["bf16"] if cpu_has_native_bf16() else []
    found.append("fp32")
    if onnx:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            pass
        else:
            found.append(ONNX)
    return found


#: Timed passes of each candidate in the probe (after a warm-up pass); each keeps its fastest. The candidates are
#: timed one after another, not in interleaved rounds: ONNX Runtime's and OpenMP's threads keep spinning for a while
#: after a pass, and on session 6's machine that slowed the next candidate's pass from 77 to 125 ms.
PROBE_ROUNDS = 3


def _load() -> float:
    """The machine's one-minute load average (0 where the system does not say)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def _busy(load: float) -> bool:
    """Whether other work held the CPU: a load average of at least one runnable thread per core."""
    return load >= (os.cpu_count() or 1)


def _time_calls(calls: dict[str, Callable[[], object]], rounds: int = PROBE_ROUNDS) -> dict[str, float]:
    """Seconds of one call of each candidate: the fastest of ``rounds`` calls, after one warm-up call (oneDNN and
    ONNX Runtime prepare their kernels on the first pass); the candidates one after another."""
    best = {}
    for name, once in calls.items():
        once()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            once()
            times.append(time.perf_counter() - t)
        best[name] = min(times)
    return best


def _forward_call(model: torch.nn.Module, precision: str, device: torch.device) -> Callable[[], object]:
    """One forward pass of the probe tile in ``precision``."""
    x = torch.zeros(PROBE_SHAPE).contiguous(memory_format=torch.channels_last)
    amp = autocast_dtype(precision, device)

    @torch.inference_mode()
    def once() -> None:
        with autocast(device, amp):
            model(x)

    return once


def _onnx_call(onnx: OnnxModel) -> Callable[[], object]:
    """One pass of the probe tile in ONNX Runtime."""
    import numpy as np

    x = np.zeros(PROBE_SHAPE, dtype=np.float32)
    return lambda: onnx.predict(x)


@torch.inference_mode()
def _agrees(onnx: OnnxModel, model: torch.nn.Module) -> bool:
    """Whether the ONNX graph gives PyTorch fp32's probabilities on a small fixed input."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 3, 64, 64), generator=g) * 2 - 1
    ref = torch.sigmoid(model(x)).numpy()
    try:
        out = onnx.predict(x.numpy())
    except Exception:  # noqa: BLE001 - a graph that cannot run on the input does not agree
        return False
    return out.shape == ref.shape and float(abs(out - ref).max()) <= ONNX_CHECK_TOLERANCE


def _cached_graph(loaded: LoadedModel) -> Path:
    return cache_dir() / "onnx" / f"{weights_key(loaded.model)}-r{RUNTIME_REVISION}.onnx"


def _export(loaded: LoadedModel, spinning: bool) -> tuple[OnnxModel, bytes]:
    """``loaded``'s network exported to ONNX in memory and opened in ONNX Runtime (checked against PyTorch)."""
    from rooftrace.models.onnx import onnx_model_like
    from rooftrace.models.onnx_graph import graph_bytes

    data = graph_bytes(loaded.model)
    onnx = onnx_model_like(data, loaded, torch.get_num_threads(), spinning)
    if not _agrees(onnx, loaded.model):  # the exporter got this network wrong: the caller keeps PyTorch
        from rooftrace.core.errors import RooftraceError

        raise RooftraceError(f"{loaded.path}: the network exported to ONNX does not give PyTorch's probabilities")
    return onnx, data


def _keep_graph(loaded: LoadedModel, data: bytes) -> None:
    """Cache the graph; the cache keeps the :data:`MAX_CACHED_GRAPHS` graphs written last (each is the size of
    its model's weights in fp32, 21 MB for the shipped one), so many fine-tuned models do not fill the disk."""
    path = _cached_graph(loaded)
    try:
        atomic_write_bytes(path, data, force=True)
        graphs = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in graphs[MAX_CACHED_GRAPHS:]:
            if old != path:
                old.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - a cache that cannot be written is exported again next time, nothing worse
        pass


def onnx_runtime_for(loaded: LoadedModel, spinning: bool = True) -> OnnxModel:
    """``loaded``'s network in ONNX Runtime: the cached graph when it exists and agrees with PyTorch, else
    exported again in memory (and cached). The model's metadata and path stay those of its file; ONNX Runtime
    gets as many threads as PyTorch has."""
    from rooftrace.models.onnx import onnx_model_like

    path = _cached_graph(loaded)
    if path.exists():
        try:
            cached = onnx_model_like(path.read_bytes(), loaded, torch.get_num_threads(), spinning)
        except Exception:  # noqa: BLE001 - a damaged cache file is made again
            cached = None
        if cached is not None and _agrees(cached, loaded.model):
            return cached
    onnx, data = _export(loaded, spinning)
    _keep_graph(loaded, data)
    return onnx


def choose_runtime(loaded: LoadedModel, precision: str, device: torch.device, onnx: bool = True,
                   spinning: bool = True) -> tuple[RuntimeChoice, OnnxModel | None]:
    """How to run ``loaded`` (see the module docstring): ``precision`` itself unless it is ``auto`` on a CPU with
    more than one candidate, where the fastest of them, measured once and cached. Returns the choice and, when it
    is ONNX Runtime, the network in ONNX Runtime (else ``None``). ``onnx=False`` keeps the run in PyTorch."""
    cands = candidates(device, onnx) if precision == "auto" and os.environ.get(PROBE_ENV) != "0" else []
    if len(cands) < 2:
        return RuntimeChoice(dtype_name(autocast_dtype(precision, device)), "fixed"), None
    key = f"{network_key(loaded.model)} | {_machine_key()} | {','.join(cands)} | r{RUNTIME_REVISION}"
    path = cache_dir() / CACHE_NAME
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and _busy(float(hit.get("load") or 0.0)) and not _busy(_load()):
        hit = None  # measured while other work held the CPU, which it no longer does: measured again
    if isinstance(hit, dict) and hit.get("choice") in cands and isinstance(hit.get("seconds"), dict):
        best, how, seconds = hit["choice"], "cached", {k: float(v) for k, v in hit["seconds"].items()}
        runner = None
        if best == ONNX:
            try:
                runner = onnx_runtime_for(loaded, spinning)
            except Exception:  # noqa: BLE001 - the graph cannot be made now: the fastest PyTorch candidate
                torch_only = {k: v for k, v in seconds.items() if k != ONNX and k in cands}
                best = min(torch_only, key=torch_only.__getitem__) if torch_only else "fp32"
    else:
        calls, runner, graph = {}, None, b""
        for c in cands:
            if c == ONNX:
                try:
                    runner, graph = _export(loaded, spinning)
                    calls[c] = _onnx_call(runner)
                except Exception:  # noqa: BLE001 - a network the exporter cannot take (or gets wrong) stays in PyTorch
                    runner = None
                    continue
            else:
                calls[c] = _forward_call(loaded.model, c, device)
        load = _load()
        seconds = _time_calls(calls)
        best, how = min(seconds, key=seconds.__getitem__), "measured"
        if best == ONNX:
            _keep_graph(loaded, graph)  # the graph is kept only when it is the one that runs
        else:
            runner = None
        cache[key] = {"choice": best, "seconds": seconds, "load": round(max(load, _load()), 2)}
        try:
            atomic_write_text(path, json.dumps(cache, indent=1), force=True)
        except Exception:  # noqa: BLE001 - a cache that cannot be written is measured again next time, nothing worse
            pass
    if best == ONNX:
        return RuntimeChoice("fp32", how, seconds, engine="onnxruntime"), runner
    return RuntimeChoice(best, how, seconds), None
