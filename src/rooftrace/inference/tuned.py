"""A model's tuned post-processing settings: the ``<model>.postprocess.json`` file beside it, written by
``rooftrace tune`` and read by every inference path."""

from __future__ import annotations

import json
from pathlib import Path

from rooftrace.core.errors import RooftraceError
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.onnx import (
    is_onnx,
)

POSTPROCESS_SUFFIX = ".postprocess.json"


def tuned_settings_path(model_path: str | Path) -> Path:
    """Where ``rooftrace tune`` saves post-processing settings for a model: beside it (for an exported
    ``m.onnx``, the same file as for ``m.safetensors``)."""
    p = Path(model_path)
    name = p.name.removesuffix(".onnx") if is_onnx(p) else p.name.removesuffix(".safetensors")
    return p.with_name(name + POSTPROCESS_SUFFIX)


def load_tuned(model_path: str | Path) -> tuple[str | None, PostprocessSettings | None]:
    """``(method, settings)`` saved beside a model by ``rooftrace tune``, or ``(None, None)``."""
    p = tuned_settings_path(model_path)
    if not p.exists():
        return None, None
    try:
        data = json.loads(p.read_text())
        return data.get("method"), PostprocessSettings.from_dict(data["settings"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RooftraceError(f"{p}: not a readable post-processing settings file ({exc})") from None
