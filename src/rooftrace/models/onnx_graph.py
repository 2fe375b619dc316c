"""A PyTorch network as an ONNX graph: the one place rooftrace calls PyTorch's ONNX exporter.

:func:`export_graph` writes ``sigmoid(network(image))`` with a dynamic batch, height and width, input
``image`` and output ``probabilities``, by PyTorch's TorchScript-based exporter (``dynamo=False``: it needs no
other package and handles the smp/timm encoders with fully dynamic height and width; PyTorch has deprecated
it in favour of the ``torch.export``-based exporter, which needs ``onnxscript``; when it goes, this is the one
function to change). ``rooftrace export`` (:mod:`rooftrace.inference.export`) adds metadata, verification and
int8 around it; the runtime's choice (:mod:`rooftrace.inference.choice`) exports in memory to time ONNX
Runtime against PyTorch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import IO

import torch

from rooftrace.models.onnx import INPUT_NAME, OUTPUT_NAME
from rooftrace.models.upsample_conv import as_written

#: The ONNX opset written unless asked otherwise.
DEFAULT_OPSET = 17


def with_sigmoid(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` wrapped so that its output (and the exported graph's) is ``sigmoid(logits)``."""

    class WithSigmoid(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.net(x))

    return WithSigmoid(model).eval()


def export_graph(net: torch.nn.Module, target: Path | IO[bytes], opset: int = DEFAULT_OPSET) -> None:
    """Write ``net`` (already returning probabilities: :func:`with_sigmoid`) as ONNX to a file or a binary stream."""
    dummy = torch.zeros(1, 3, 256, 256)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), as_written(net):  # ONNX Runtime runs the plain decoder faster
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(net, (dummy,), str(target) if isinstance(target, Path) else target, dynamo=False,
                          opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, do_constant_folding=True)


def graph_bytes(model: torch.nn.Module, opset: int = DEFAULT_OPSET) -> bytes:
    """``sigmoid(model(image))`` as ONNX bytes, exported in memory (no metadata: the caller holds the model's)."""
    import io

    buf = io.BytesIO()
    export_graph(with_sigmoid(model), buf, opset)
    return buf.getvalue()
