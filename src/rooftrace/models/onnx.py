"""ONNX model files at inference time: reading the rooftrace metadata, choosing execution providers and
running a session through onnxruntime, with the same interface as a PyTorch model."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rooftrace.config import Config, config_from_dict
from rooftrace.core.errors import RooftraceError
from rooftrace.models.metadata import (
    check_model_meta,
    check_model_path,
    model_gsd,
    parse_model_metadata,
    verify_sidecar,
)

ONNX_SUFFIX = ".onnx"


METADATA_KEY = "rooftrace"


INPUT_NAME = "image"


OUTPUT_NAME = "probabilities"


def require_onnx_module(module: str):
    """Import ``onnx`` or ``onnxruntime``, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RooftraceError(f"ONNX export and ONNX models need the {module} package: pip install 'rooftrace[onnx]' (or {module})") from None


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model (by its suffix)."""
    return Path(path).suffix.lower() == ONNX_SUFFIX


def onnx_session(source: bytes | str, threads: int = 0, providers: list | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime session on ``source`` (a file name or the model's bytes), every graph optimisation on;
    ``providers`` default to the CPU's. ``spinning=False`` stops idle intra-op threads spinning (other work
    shares the cores). Errors are ONNX Runtime's own (:func:`load_onnx` names the file in them)."""
    ort = require_onnx_module("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(source, so, providers=providers or ["CPUExecutionProvider"])


def _check_file(path: Path) -> None:
    """An exported model's file: it exists, is a non-empty file, and matches its ``.sha256`` when there is one."""
    if not path.exists():
        raise RooftraceError(f"{path}: no such model file")
    check_model_path(path)
    verify_sidecar(path)


def _checked_metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """The rooftrace metadata among an ONNX file's metadata properties, bounded, parsed and checked."""
    if METADATA_KEY not in props:
        raise RooftraceError(f"{path}: no rooftrace metadata; export it with rooftrace export")
    meta = parse_model_metadata(path, props[METADATA_KEY])
    check_model_meta(path, meta)
    return meta


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The rooftrace metadata of an exported model (after checking its ``.sha256`` when present), read with the
    ``onnx`` package, without starting a session.

    Raises:
        RooftraceError: No such file, a damaged file, or an ONNX file rooftrace did not write.
    """
    onnx = require_onnx_module("onnx")
    path = Path(path)
    _check_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common type
        raise RooftraceError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    return _checked_metadata(path, {p.key: p.value for p in proto.metadata_props})


@dataclass
class OnnxModel:
    """An exported model in an ONNX Runtime session, with what it expects and gives.

    Has the fields of :class:`rooftrace.models.files.LoadedModel` that inference reads (``config``,
    ``channels``, ``mean``, ``std``, ``meta``, ``path``); call :meth:`predict` instead of ``model``.
    """

    session: Any
    config: Config
    channels: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict[str, Any]
    path: Path
    providers: list[str]
    #: What the session was opened from (the file's name, or the graph's bytes), to open it again with other
    #: thread counts (:meth:`on_threads`); ``None``: it cannot be.
    source: str | bytes | None = None
    _sessions: dict[int, Any] = field(default_factory=dict, repr=False)

    @property
    def cpu_only(self) -> bool:
        """Whether the session runs on the CPU alone (no GPU provider)."""
        return list(self.providers) == ["CPUExecutionProvider"]

    def on_threads(self, threads: int) -> Any:
        """A session of the same graph on the CPU with ``threads`` intra-op threads, idle threads not spinning
        (opened once per count, then kept). Sessions of one graph give the same outputs, bit for bit, whatever
        their thread count (checked on the shipped network)."""
        if self.source is None:
            raise RooftraceError(f"{self.path}: this ONNX model cannot be reopened with other thread counts")
        if threads not in self._sessions:
            self._sessions[threads] = _inference_session(self.source, self.path, ["CPUExecutionProvider"], threads, False)
        return self._sessions[threads]

    @property
    def int8(self) -> bool:
        return bool(self.meta.get("onnx", {}).get("int8"))

    @property
    def gsd(self) -> float | None:
        """The pixel size in metres the model was trained at (``None``: not recorded; use images as they are)."""
        return model_gsd(self.path, self.meta)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C, H, W)`` float32 for a normalised ``(N, 3, H, W)`` batch (H, W multiples of 32)."""
        return self.session.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def onnx_providers(device: str = "auto") -> list[str]:
    """ONNX Runtime execution providers for a ``--device`` value: CUDA first when asked for (or
    ``auto``) and available in this onnxruntime build, then the CPU."""
    ort = require_onnx_module("onnxruntime")
    available = ort.get_available_providers()
    want_cuda = device == "auto" or device.startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in available:
        if device.startswith("cuda:"):
            return [("CUDAExecutionProvider", {"device_id": int(device.split(":", 1)[1])}), "CPUExecutionProvider"]  # type: ignore[list-item]
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        raise RooftraceError(f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
                             "(install onnxruntime-gpu, or use --device cpu)")
    return ["CPUExecutionProvider"]


def _inference_session(source: str | bytes, path: Path, providers: list, threads: int, spinning: bool) -> Any:
    """:func:`onnx_session`, an error naming ``path`` when ONNX Runtime cannot load the model."""
    try:
        return onnx_session(source, threads, providers, spinning)
    except RooftraceError:
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise RooftraceError(f"{path}: not a readable ONNX file (ONNX Runtime cannot load it: {str(exc).splitlines()[0]})") from None


def onnx_model_like(model_bytes: bytes, like: Any, threads: int = 0, spinning: bool = True) -> OnnxModel:
    """A PyTorch model exported in memory (``model_bytes``), run on the CPU by ONNX Runtime, with the metadata
    of the loaded model it was exported from (``like``: a :class:`rooftrace.models.files.LoadedModel`; its
    ``path`` stays the model file's). Made when ``precision="auto"`` finds ONNX Runtime the fastest
    (:mod:`rooftrace.inference.choice`)."""
    sess = _inference_session(model_bytes, Path(like.path), ["CPUExecutionProvider"], threads, spinning)
    return OnnxModel(sess, like.config, tuple(like.channels), tuple(like.mean), tuple(like.std), like.meta, Path(like.path),
                     list(sess.get_providers()), source=model_bytes)


def load_onnx(path: str | Path, device: str = "auto", threads: int = 0, spinning: bool = True) -> OnnxModel:
    """Open an exported model for inference (its metadata read through ONNX Runtime: neither torch nor the
    ``onnx`` package is imported).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when this onnxruntime has it).
        threads: Intra-op threads; 0 = ONNX Runtime's default (one per physical core).
        spinning: Let idle intra-op threads spin; turn off when other work (post-processing
            threads) shares the cores.

    Raises:
        RooftraceError: No such file, a damaged file, or an ONNX file rooftrace did not write.
    """
    require_onnx_module("onnxruntime")
    path = Path(path)
    _check_file(path)
    sess = _inference_session(str(path), path, onnx_providers(device), threads, spinning)
    meta = _checked_metadata(path, sess.get_modelmeta().custom_metadata_map)
    try:
        cfg = config_from_dict(meta["config"])
        channels, mean, std = tuple(meta["channels"]), tuple(meta["mean"]), tuple(meta["std"])
    except (KeyError, TypeError) as exc:
        raise RooftraceError(f"{path}: incomplete rooftrace metadata ({exc})") from None
    shape = sess.get_outputs()[0].shape
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != len(channels)):
        raise RooftraceError(f"{path}: the network's output has shape {list(shape)}, but its metadata names "
                             f"{len(channels)} channels ({', '.join(channels)}); not a model rooftrace exported, or edited")
    return OnnxModel(sess, cfg, channels, mean, std, meta, path, list(sess.get_providers()), source=str(path))


def onnx_postprocess_settings(meta: dict[str, Any]):
    """``(method, settings)`` that travelled in an exported model's metadata, or ``(None, None)``."""
    from rooftrace.instances.postprocess import PostprocessSettings

    pp = meta.get("postprocess")
    if not pp:
        return None, None
    try:
        return pp.get("method"), PostprocessSettings.from_dict(pp["settings"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RooftraceError(f"post-processing settings in the ONNX metadata are unreadable ({exc})") from None
