"""The post-processing settings saved beside a model file (``<model>.postprocess.json``, written by
``rooftrace tune`` and ``rooftrace finetune``): where the file is, reading it, and the settings a new search
starts from. Torch-free; the inference paths resolve what a run uses in :mod:`rooftrace.inference.tuned`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rooftrace.core.errors import RooftraceError
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.metadata import shipped_model
from rooftrace.models.onnx import is_onnx

POSTPROCESS_SUFFIX = ".postprocess.json"


def tuned_settings_path(model_path: str | Path) -> Path:
    """Where ``rooftrace tune`` saves post-processing settings for a model: beside it (for an exported
    ``m.onnx``, the same file as for ``m.safetensors``)."""
    p = Path(model_path)
    name = p.name.removesuffix(".onnx") if is_onnx(p) else p.name.removesuffix(".safetensors")
    return p.with_name(name + POSTPROCESS_SUFFIX)


@dataclass(frozen=True)
class TunedFile:
    """What ``rooftrace tune`` saved beside a model, read once when the model is loaded, so that a run uses
    one reading of the file even if a ``tune`` rewrites it meanwhile.

    Attributes:
        method: ``watershed`` or ``seed`` (``None``: the file does not say).
        settings: The settings in full.
        file: The file's name (``None``: the settings came from an exported model's metadata).
        tta: Whether they were searched on flip-TTA probabilities (``None``: the file does not say).
    """

    method: str | None
    settings: PostprocessSettings
    file: str | None = None
    tta: bool | None = None


def read_tuned(model_path: str | Path) -> TunedFile | None:
    """The settings file ``rooftrace tune`` saved beside a model, read once, or ``None`` when there is none.

    Raises:
        RooftraceError: The file exists but is not a settings file (it is named).
    """
    p = tuned_settings_path(model_path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RooftraceError(f"{p}: cannot read the post-processing settings ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
        tta = data.get("tta")
        return TunedFile(data.get("method"), PostprocessSettings.from_dict(data["settings"]), p.name,
                         tta if isinstance(tta, bool) else None)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RooftraceError(f"{p}: not a readable post-processing settings file ({exc})") from None


def search_starts(model_path: str | Path | None, method: str) -> list[PostprocessSettings]:
    """Settings tuned before for ``method`` that a new search on ``model_path`` also starts from
    (:func:`rooftrace.evaluation.tuning.search_settings`): those saved beside the model (a retune with
    ``--force`` starts where the last one ended), then the shipped model's (models trained or fine-tuned from
    it tend to land near them). A settings file that cannot be read is no start (``tune --force`` replaces
    it), nor is an installation without the shipped model; a file for another method is skipped."""
    paths = [Path(model_path)] if model_path is not None else []
    try:
        paths.append(shipped_model())
    except RooftraceError:  # an installation without the shipped model
        pass
    starts: list[PostprocessSettings] = []
    for path in paths:
        try:
            tuned = read_tuned(path)
        except RooftraceError:
            continue
        if tuned is not None and (tuned.method or method) == method and tuned.settings not in starts:
            starts.append(tuned.settings)
    return starts
