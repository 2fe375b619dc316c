"""The post-processing settings saved beside a model file (``<model>.postprocess.json``, written by
``rooftrace tune`` and ``rooftrace finetune``): where the file is, reading it, and the settings a new search
starts from. Torch-free; the inference paths resolve what a run uses in :mod:`rooftrace.inference.tuned`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rooftrace.core.errors import RooftraceError
from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.metadata import shipped_model
from rooftrace.models.onnx import is_onnx

POSTPROCESS_SUFFIX = ".postprocess.json"
#: What ``by`` says in the settings file a training run saves beside its ``best.safetensors`` (the settings its
#: validation found, :mod:`rooftrace.training.validation`); ``rooftrace tune``'s files say nothing.
WRITTEN_BY_TRAINING = "rooftrace train"


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
        by: Who wrote the file when not ``rooftrace tune``: :data:`WRITTEN_BY_TRAINING` for the settings a
            training run's validation found (``None``: the file does not say).
    """

    method: str | None
    settings: PostprocessSettings
    file: str | None = None
    tta: bool | None = None
    by: str | None = None


def read_tuned(model_path: str | Path) -> TunedFile | None:
    """The settings file ``rooftrace tune`` saved beside a model, read once, or ``None`` when there is none.

    Raises:
        RooftraceError: The file exists but is not a settings file (it is named).
    """
    return read_settings_file(tuned_settings_path(model_path), missing_ok=True)


def read_settings_file(p: Path, missing_ok: bool = False) -> TunedFile | None:
    """A ``.postprocess.json`` settings file read by its own path (``None`` when it is missing and ``missing_ok``).

    Raises:
        RooftraceError: The file cannot be read or is not a settings file (it is named).
    """
    try:
        text = p.read_text()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RooftraceError(f"{p}: no such post-processing settings file") from None
    except OSError as exc:
        raise RooftraceError(f"{p}: cannot read the post-processing settings ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
        tta, by = data.get("tta"), data.get("by")
        return TunedFile(data.get("method"), PostprocessSettings.from_dict(data["settings"]), p.name,
                         tta if isinstance(tta, bool) else None, by if isinstance(by, str) else None)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RooftraceError(f"{p}: not a readable post-processing settings file ({exc})") from None


def written_by_training(path: Path) -> bool:
    """Whether the settings file ``path`` is one a training run saved beside its best weights."""
    try:
        tuned = read_settings_file(path, missing_ok=True)
    except RooftraceError:
        return False
    return tuned is not None and tuned.by == WRITTEN_BY_TRAINING


def _tuned_beside(model_path: str | Path | None, method: str) -> Iterator[tuple[Path, PostprocessSettings]]:
    """``(model file, its settings)`` for ``model_path``, then for the shipped model, where the settings beside
    the file are readable and for ``method``. A settings file that cannot be read is passed over (``tune
    --force`` replaces it), as is an installation without the shipped model."""
    paths = [Path(model_path)] if model_path is not None else []
    try:
        paths.append(shipped_model())
    except RooftraceError:  # an installation without the shipped model
        pass
    for path in paths:
        try:
            tuned = read_tuned(path)
        except RooftraceError:
            continue
        if tuned is not None and (tuned.method or method) == method:
            yield path, tuned.settings


def search_starts(model_path: str | Path | None, method: str) -> list[PostprocessSettings]:
    """Settings tuned before for ``method`` that a new search on ``model_path`` also starts from
    (:func:`rooftrace.evaluation.tuning.search_settings`): those saved beside the model (a retune with
    ``--force`` starts where the last one ended), then the shipped model's (models trained or fine-tuned from
    it tend to land near them), each once (:func:`_tuned_beside` says which files count)."""
    starts: list[PostprocessSettings] = []
    for _, settings in _tuned_beside(model_path, method):
        if settings not in starts:
            starts.append(settings)
    return starts


def validation_start(spec: str, init_from: str | Path | None) -> tuple[PostprocessSettings, str]:
    """The ``watershed`` settings a training run's validation starts from (``train.val_settings``), and where
    they came from, in words.

    ``start``: the settings saved beside ``init_from`` (the model the run continues), else the shipped
    model's (a model trained with the default recipe lands near them), else the defaults. ``defaults``: the
    defaults. Anything else is a path: a ``.postprocess.json`` file, or a model file whose settings file is
    beside it. Tuned validation F1 is what decides which file ships, and its climb from the start model's
    settings follows it better than the F1 at the defaults does (MODEL_CARD.md, session 10).

    Raises:
        RooftraceError: The path names no settings, or settings for another method (``seed``).
    """
    if spec == "defaults":
        return PostprocessSettings(), "the default settings"
    if spec == "start":
        first = next(_tuned_beside(init_from or None, "watershed"), None)
        if first is None:
            return PostprocessSettings(), "the default settings (neither train.init_from nor the shipped model has tuned ones)"
        path, settings = first
        if init_from and path == Path(init_from):
            return settings, f"the settings beside train.init_from ({tuned_settings_path(path)})"
        return settings, "the shipped model's tuned settings"
    path = Path(spec).expanduser()
    if path.name.endswith(POSTPROCESS_SUFFIX):
        source, tuned = path, read_settings_file(path)
    else:
        source = tuned_settings_path(path)
        if not path.is_file():
            raise RooftraceError(f"train.val_settings {spec}: no such file (give start, defaults, a model file or a "
                                 f"{POSTPROCESS_SUFFIX} file)")
        tuned = read_tuned(path)
        if tuned is None:
            raise RooftraceError(f"train.val_settings {spec}: the model has no tuned settings beside it "
                                 f"({tuned_settings_path(path).name}); run rooftrace tune on it, or give start or defaults")
    assert tuned is not None
    if (tuned.method or "watershed") != "watershed":
        raise RooftraceError(f"train.val_settings {spec}: settings for the {tuned.method} method; "
                             "validation post-processes with watershed")
    return tuned.settings, f"the settings in {source}"
