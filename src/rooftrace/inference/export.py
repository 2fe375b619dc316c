"""ONNX export of a rooftrace model, and running an exported model with ONNX Runtime.

:func:`export_onnx` turns a ``.safetensors`` model file into one self-contained ``.onnx`` file:

- input ``image``: ``(batch, 3, height, width)`` float32, normalised with the model's mean and std
  (height and width multiples of 32; every axis is dynamic);
- output ``probabilities``: ``(batch, C, height, width)`` float32, the sigmoid of the network's
  logits (the sigmoid is part of the graph), channels as the model file names them;
- ``metadata_props["rooftrace"]``: the JSON of the model file's metadata (the full training config,
  the output channels, the input normalisation, epoch and metrics) plus an ``"onnx"`` entry saying
  how the file was made and verified, and the post-processing settings ``rooftrace tune`` saved
  beside the source model, when there are any. ``channels``, ``mean``, ``std`` and ``gsd`` (the
  pixel size in metres the model was trained at, ``null`` when not recorded) are also stored as
  keys of their own (``rooftrace.channels``, ...) so other tools can read them without parsing the
  config. ``rooftrace predict --model OUT.onnx`` needs nothing else.

The export is verified before it is written: ONNX Runtime and PyTorch run the same random inputs
(two shapes, batch 1 at 256 x 256 and batch 2 at 320 x 384, so the dynamic axes are exercised) and
their probabilities must agree within ``tolerance`` (default 1e-4, absolute). The random inputs are
uniform RGB noise blurred with a Gaussian of sigma 2 px, then normalised: unblurred white noise is
far outside what an aerial-imagery model has seen, and there a trained network amplifies rounding
differences (PyTorch's own contiguous and channels_last results disagree by up to 0.05 on it).

``int8=True`` writes a statically quantised model instead (QDQ format, per-channel int8 weights,
uint8 activations, calibrated with min/max on a few real tiles). Only convolutions are quantised
by default; the final sigmoid never is. The fp32 graph is verified first, with the tolerance
above; the int8 graph's difference from PyTorch is measured and printed but not held to it (its
accuracy is a matter of object F1 on a validation split: see ``benchmarks/model_speed.py``). It is
experimental: the trained EfficientNet-B0 U-Net lost 0.028 object F1 on the sample's val split in
int8 (0.3895 to 0.3614 with its tuned post-processing), more than the 0.01 it may lose, for no
speed-up at one tile per call; untrained ResNet U-Nets ran 2.2-2.6 times faster than fp32 on the
CPU, but no trained one was there to measure what they lose. Dynamic quantisation (``quantize_dynamic``) is not offered: ONNX Runtime runs dynamically
quantised convolutions as ``ConvInteger``, about nine times slower than fp32 on the CPU here.

The ONNX is written by PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no other
package and handles the smp/timm encoders with fully dynamic height and width. PyTorch has
deprecated it in favour of the ``torch.export``-based exporter (which needs ``onnxscript``); when it
goes, :func:`rooftrace.models.onnx_graph.export_graph` is the one place to change.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from rooftrace.config import Config
from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.core.hashing import sha256_file
from rooftrace.inference.runtime import PAD_MULTIPLE, pad_normalise
from rooftrace.models.onnx import (
    INPUT_NAME,
    METADATA_KEY,
    ONNX_SUFFIX,
    OUTPUT_NAME,
    is_onnx,
    onnx_session,
    require_onnx_module,
)
from rooftrace.models.onnx_graph import DEFAULT_OPSET, export_graph, with_sigmoid

#: Maximum absolute difference of probabilities between ONNX Runtime (fp32) and PyTorch.
DEFAULT_TOLERANCE = 1e-4
#: (batch, height, width) of the verification inputs: two shapes, so the dynamic axes are tested.
VERIFY_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 256, 256), (2, 320, 384))
#: Operator types quantised by ``int8=True`` unless told otherwise.
DEFAULT_INT8_OPS: tuple[str, ...] = ("Conv",)


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how well it agrees with PyTorch.

    Attributes:
        path: The ONNX file (a ``<path>.sha256`` is written beside it).
        source: The ``.safetensors`` model it came from.
        max_abs_diff: Largest absolute difference of probabilities, ONNX Runtime fp32 vs PyTorch,
            over the verification inputs.
        int8_max_abs_diff, int8_mean_abs_diff: The same for the int8 graph (``int8`` only).
    """

    path: Path
    source: Path
    opset: int
    int8: bool
    tolerance: float
    max_abs_diff: float
    shapes: list[tuple[int, int, int, int]]
    seconds: float
    size_bytes: int
    channels: tuple[str, ...]
    int8_max_abs_diff: float | None = None
    int8_mean_abs_diff: float | None = None
    calibration: list[str] = field(default_factory=list)

    def summary(self) -> str:
        shapes = ", ".join("x".join(map(str, s)) for s in self.shapes)
        lines = [
            f"exported {self.source} to {self.path} ({self.size_bytes / 1e6:.1f} MB, opset {self.opset}, "
            f"{'int8 QDQ' if self.int8 else 'fp32'}, output {OUTPUT_NAME} = sigmoid, channels {', '.join(self.channels)}) "
            f"in {self.seconds:.1f} s",
            f"verified: ONNX Runtime fp32 vs PyTorch on random inputs {shapes}: max |diff| of probabilities "
            f"{self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e})",
        ]
        if self.int8:
            lines.append(f"int8 vs PyTorch on the same inputs: max |diff| {self.int8_max_abs_diff:.3f}, mean |diff| "
                         f"{self.int8_mean_abs_diff:.2e} (not held to the tolerance; calibrated on {len(self.calibration)} tiles)")
        return "\n".join(lines)


def _newest_opset() -> int | None:
    """The newest ONNX opset this PyTorch's exporter writes (``None`` when it does not say)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET

        return int(ONNX_MAX_OPSET)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def _check_writable(out: Path) -> None:
    """``out``'s folder (made if missing) must take a new file; else an error naming ``out``."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rooftrace-", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RooftraceError(f"{out}: cannot write it ({exc.strerror or exc}); nothing was exported") from None


def _random_inputs(mean: Sequence[float], std: Sequence[float], shapes: Sequence[tuple[int, int, int]], seed: int = 0) -> list[np.ndarray]:
    """Normalised batches of blurred uniform RGB noise (see the module docstring)."""
    import cv2

    from rooftrace.imagery.normalize import Normalization

    rng = np.random.default_rng(seed)
    norm = Normalization(tuple(mean), tuple(std))
    out = []
    for n, h, w in shapes:
        tiles = [norm.apply(cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2.0)) for _ in range(n)]
        out.append(np.stack(tiles).astype(np.float32))
    return out


def calibration_tiles(folder: str | Path, n: int, mean: Sequence[float], std: Sequence[float]) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``n`` readable tiles of ``folder`` (evenly spread over its sorted files), normalised and
    padded, each as a batch of one; and their file names."""
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.imagery.read import list_images, read_rgb

    files = list_images(folder)
    if not files:
        raise RooftraceError(f"{folder}: no image files to calibrate the int8 model on")
    picks = [files[int(i)] for i in np.unique(np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int))]
    norm = Normalization(tuple(mean), tuple(std))
    batches, names = [], []
    for f in picks:
        try:
            batches.append(pad_normalise(read_rgb(f), norm))
            names.append(f.name)
        except RooftraceError:
            continue
    if not batches:
        raise RooftraceError(f"{folder}: none of its tiles could be read for calibration")
    return batches, names


def default_calibration_folder(cfg: Config) -> Path | None:
    """The training split's image folder the config names, when it exists here."""
    from rooftrace.config import resolve_path

    for spec in (*cfg.data.train, *cfg.data.val):
        if spec.path:
            folder = resolve_path(spec.path) / "image"
            if folder.is_dir():
                return folder
    return None


class _Reader:
    """onnxruntime CalibrationDataReader over a list of input batches."""

    def __init__(self, batches: list[np.ndarray]):
        self.batches = batches
        self.it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.it, None)
        return None if x is None else {INPUT_NAME: x}

    def rewind(self) -> None:
        self.it = iter(self.batches)


def quantize_int8(src: Path, dst: Path, batches: list[np.ndarray], op_types: Sequence[str] = DEFAULT_INT8_OPS,
                  per_channel: bool = True) -> None:
    """Static QDQ quantisation of an fp32 ONNX file (min/max calibration on ``batches``).

    The graph is pre-processed first (shape inference, ONNX Runtime's graph optimisations), as
    ONNX Runtime recommends; the last node (the sigmoid that makes probabilities) is left in fp32.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        # ONNX's own shape inference is enough for convolutions; ONNX Runtime's symbolic one fails on
        # these graphs and then leaves sym_shape_infer_temp.onnx and its data in the working folder.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        last = [n.name for n in onnx.load(str(pre), load_external_data=False).graph.node if OUTPUT_NAME in n.output]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(str(pre), str(dst), _Reader(batches), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            op_types_to_quantize=list(op_types), nodes_to_exclude=last,
                            calibrate_method=CalibrationMethod.MinMax)
    finally:
        pre.unlink(missing_ok=True)
        for extra in dst.parent.glob(pre.name + "*"):
            extra.unlink(missing_ok=True)


def export_onnx(
    model: str | Path,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_tiles_n: int = 8,
    int8_ops: Sequence[str] = DEFAULT_INT8_OPS,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
) -> ExportResult:
    """Export a rooftrace ``.safetensors`` model to ONNX (see the module docstring), verified.

    Args:
        model: The model file (``.safetensors``, written by rooftrace).
        out: The ``.onnx`` file to write; refused when it exists unless ``force``.
        opset: ONNX opset, at least 17.
        int8: Write a statically quantised int8 (QDQ) model instead of the fp32 one.
        calibration: Folder of tiles to calibrate int8 activations on; default: the ``image/``
            folder of the training split named in the model's config, when it exists here.
        calibration_tiles_n: How many of its tiles to use (evenly spread over the folder).
        int8_ops: ONNX operator types to quantise.
        tolerance: Largest allowed absolute difference of probabilities, fp32 ONNX Runtime vs PyTorch.

    Raises:
        RooftraceError: ``out`` exists without ``force``, a wrong suffix or opset, an unreadable model,
            no calibration tiles for ``int8``, or a verification that fails the tolerance (nothing is
            written then).
    """
    import torch

    from rooftrace.inference.tuned import load_tuned

    onnx = require_onnx_module("onnx")
    require_onnx_module("onnxruntime")
    from rooftrace.models.files import load_model

    t0 = time.perf_counter()
    model, out = Path(model), Path(out)
    if not is_onnx(out):
        raise RooftraceError(f"{out}: the exported file must end in {ONNX_SUFFIX}")
    if out.exists() and not force:
        raise RooftraceError(f"{out}: already exists; pass --force to overwrite it")
    if opset < 17:
        raise RooftraceError(f"--opset {opset}: must be at least 17")
    newest = _newest_opset()
    if newest is not None and opset > newest:  # found now, not by the exporter after the model is loaded and run
        raise RooftraceError(f"--opset {opset}: this PyTorch ({torch.__version__}) exports ONNX opsets 17 to {newest}; "
                             "nothing was exported")
    if not tolerance > 0:
        raise RooftraceError(f"--tolerance {tolerance}: must be > 0")
    if is_onnx(model):
        raise RooftraceError(f"{model}: already an ONNX model; export takes a .safetensors model file")
    _check_writable(out)  # a read-only folder is named by the .onnx meant, before the model is loaded
    loaded = load_model(model, device="cpu")
    net = with_sigmoid(loaded.model)
    calib_names: list[str] = []
    calib: list[np.ndarray] = []
    if int8:
        folder = Path(calibration) if calibration is not None else default_calibration_folder(loaded.config)
        if folder is None:
            raise RooftraceError("--int8: pass --calibration DIR, a folder of a few training tiles to calibrate on "
                                 "(the training split named in the model's config is not here)")
        calib, calib_names = calibration_tiles(folder, calibration_tiles_n, loaded.mean, loaded.std)

    inputs = _random_inputs(loaded.mean, loaded.std, VERIFY_SHAPES)
    with torch.inference_mode():
        expected = [net(torch.from_numpy(x)).numpy() for x in inputs]

    try:
        staging = tempfile.TemporaryDirectory(prefix=".rooftrace-export-", dir=out.parent)
    except OSError as exc:
        raise RooftraceError(f"{out}: cannot write it ({exc.strerror or exc})") from None
    with staging as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        try:
            export_graph(net, fp32, opset)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds; say which model failed
            why = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
            if isinstance(why, OSError) and why.errno is not None:  # a full disk while staging: the .onnx meant is named
                raise RooftraceError(f"{out}: cannot write it ({why.strerror}); nothing was exported") from None
            raise RooftraceError(f"{model}: ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        sess = onnx_session(str(fp32))
        got = [sess.run(None, {INPUT_NAME: x})[0] for x in inputs]
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        if not diff <= tolerance:
            raise RooftraceError(f"{model}: ONNX Runtime and PyTorch disagree by {diff:.2e} (tolerance {tolerance:.0e}); "
                                 f"nothing written")
        final = fp32
        q_max = q_mean = None
        if int8:
            final = Path(tmp) / "int8.onnx"
            quantize_int8(fp32, final, calib, op_types=int8_ops)
            qs = onnx_session(str(final))
            qgot = [qs.run(None, {INPUT_NAME: x})[0] for x in inputs]
            q_max = max(float(np.abs(g - e).max()) for g, e in zip(qgot, expected))
            q_mean = float(np.mean([np.abs(g - e).mean() for g, e in zip(qgot, expected)]))

        proto = onnx.load(str(final))
        meta = dict(loaded.meta)
        method, settings = load_tuned(model)
        if settings is not None:
            meta["postprocess"] = {"method": method, "settings": settings.to_dict()}
        meta["onnx"] = {
            "source": model.name,
            "source_sha256": sha256_file(model),
            "opset": opset,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "output_kind": "sigmoid probabilities",
            "layout": "NCHW",
            "pad_multiple": PAD_MULTIPLE,
            "int8": bool(int8),
            "quantization": ({"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8", "calibration": "minmax",
                              "op_types": list(int8_ops), "calibration_tiles": calib_names} if int8 else None),
            "verified_max_abs_diff": diff,
            "int8_max_abs_diff": q_max,
            "tolerance": tolerance,
            "torch": torch.__version__,
        }
        entries = {
            METADATA_KEY: json.dumps(meta),
            f"{METADATA_KEY}.channels": json.dumps(list(loaded.channels)),
            f"{METADATA_KEY}.mean": json.dumps(list(loaded.mean)),
            f"{METADATA_KEY}.std": json.dumps(list(loaded.std)),
            f"{METADATA_KEY}.gsd": json.dumps(loaded.gsd),
        }
        del proto.metadata_props[:]
        for k, v in entries.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "rooftrace"
        proto.doc_string = (f"rooftrace model {model.name}: input {INPUT_NAME} (N, 3, H, W) float32 normalised with mean "
                            f"{list(loaded.mean)} and std {list(loaded.std)}, H and W multiples of {PAD_MULTIPLE}; output "
                            f"{OUTPUT_NAME} (N, {len(loaded.channels)}, H, W) sigmoid probabilities of {', '.join(loaded.channels)}.")
        data = proto.SerializeToString()
    path = atomic_write_bytes(out, data, force=force)
    atomic_write_text(Path(str(path) + ".sha256"), f"{sha256_file(path)}  {path.name}\n", force=True)
    shapes = [(n, 3, h, w) for n, h, w in VERIFY_SHAPES]
    return ExportResult(path, model, opset, bool(int8), tolerance, diff, shapes, time.perf_counter() - t0, len(data),
                        tuple(loaded.channels), q_max, q_mean, calib_names)


# ---------------------------------------------------------------------------------------------
# Loading and running


__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "ExportResult",
    "INPUT_NAME",
    "METADATA_KEY",
    "OUTPUT_NAME",
    "calibration_tiles",
    "default_calibration_folder",
    "export_onnx",
    "is_onnx",
    "quantize_int8",
]
