"""A model's tuned post-processing settings: the ``<model>.postprocess.json`` file beside it, written by
``rooftrace tune`` and read by every inference path."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Union

from rooftrace.instances.postprocess import PostprocessSettings
from rooftrace.models.onnx import OnnxModel, onnx_postprocess_settings
from rooftrace.models.tuned_file import (  # noqa: F401  (re-exported: the settings file is read there)
    POSTPROCESS_SUFFIX,
    TunedFile,
    read_tuned,
    search_starts,
    tuned_settings_path,
)


def load_tuned(model_path: str | Path) -> tuple[str | None, PostprocessSettings | None]:
    """``(method, settings)`` saved beside a model by ``rooftrace tune``, or ``(None, None)``."""
    tuned = read_tuned(model_path)
    return (tuned.method, tuned.settings) if tuned is not None else (None, None)


def tuned_postprocessing(loaded: Any) -> TunedFile | None:
    """The post-processing settings ``rooftrace tune`` saved beside a loaded model's file (read once), else those
    an exported model (:class:`rooftrace.models.onnx.OnnxModel`) carries in its metadata, else ``None``."""
    tuned = read_tuned(loaded.path)
    if tuned is None and isinstance(loaded, OnnxModel):
        method, settings = onnx_postprocess_settings(loaded.meta)
        if settings is not None:
            tuned = TunedFile(method, settings)
    return tuned


#: What a run is given as post-processing settings: complete settings (used as they are), or a mapping of
#: the settings to change on top of the model's tuned ones (``--pp key=value``, a partial settings file).
SettingsArg = Union[PostprocessSettings, Mapping[str, Any], None]


@dataclass(frozen=True)
class Postprocessing:
    """The post-processing a run used, and where it came from.

    Attributes:
        method: ``watershed`` or ``seed``.
        settings: The settings in full.
        base: Where the settings started: ``tuned`` (``rooftrace tune``'s file beside the model, or an ONNX
            model's metadata), ``defaults`` (no tuned settings) or ``given`` (complete settings passed in).
        base_file: The tuned-settings file, when ``base`` is ``tuned`` and the settings came from one.
        changed: The settings the user changed on top of ``base`` (``--pp``, a partial settings file).
        tta_note: Set when the tuned settings were searched with flip TTA and the run does not use it, or the
            other way round: flip TTA averages four predictions, so its probabilities are less extreme and
            thresholds tuned for one fit the other less well.
    """

    method: str
    settings: PostprocessSettings
    base: str = "defaults"
    base_file: str | None = None
    changed: dict[str, Any] = field(default_factory=dict)
    tta_note: str | None = None

    def describe(self) -> str:
        """One line: the method, where the settings came from, what was changed, and every value that is
        not the default."""
        if self.base == "tuned":
            src = f"the model's tuned settings ({self.base_file})" if self.base_file else "the model's tuned settings"
        elif self.base == "given":
            src = "the settings given"
        else:
            src = "the default settings (the model has no tuned ones)"
        if self.changed:
            src += " with " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.changed.items()) + " changed"
        default = PostprocessSettings().to_dict()
        values = {k: v for k, v in self.settings.to_dict().items() if v != default[k]}
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()) if values else "all at their defaults"
        line = f"post-processing: {self.method}, {src}: {shown}" + ("; the rest at their defaults" if values else "")
        return line + (f"; {self.tta_note}" if self.tta_note else "")

    def to_json(self) -> dict[str, Any]:
        """What the outputs record beside the full settings."""
        return {"from": self.base, "file": self.base_file, "changed": {k: _plain(v) for k, v in self.changed.items()}}


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else (f"{v:g}" if isinstance(v, float) else str(v))


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def resolve_postprocessing(method: str | None, settings: SettingsArg, tuned_method: str | None,
                           tuned: PostprocessSettings | None, tuned_file: str | Path | None = None) -> Postprocessing:
    """The post-processing a run uses: ``method`` (else the tuned one, else the default), and ``settings``:
    complete :class:`PostprocessSettings` are used as they are; a mapping changes only the settings it names, on
    top of the model's tuned settings (else the defaults). So ``--pp regularise=true`` keeps the tuned
    thresholds.

    Raises:
        RooftraceError: An unknown setting or a value of the wrong kind.
    """
    from rooftrace.instances.postprocess import DEFAULT_METHOD

    method = method or tuned_method or DEFAULT_METHOD
    base_kind = "tuned" if tuned is not None else "defaults"
    base = tuned if tuned is not None else PostprocessSettings()
    name = Path(tuned_file).name if tuned_file is not None and tuned is not None else None
    if isinstance(settings, PostprocessSettings):
        if tuned is not None and settings == tuned:
            return Postprocessing(method, settings, "tuned", name)
        return Postprocessing(method, settings, "given")
    if not settings:
        return Postprocessing(method, base, base_kind, name)
    merged = PostprocessSettings.from_dict({**base.to_dict(), **dict(settings)})
    return Postprocessing(method, merged, base_kind, name, dict(settings))


def used_postprocessing(runtime: Any, method: str | None = None, settings: SettingsArg = None) -> Postprocessing:
    """:func:`resolve_postprocessing` for a :class:`rooftrace.inference.runtime.ModelRuntime` (or ``None``: no
    tuned settings), from the settings file as the runtime read it when the model was loaded."""
    if runtime is None:
        return resolve_postprocessing(method, settings, None, None)
    tuned: TunedFile | None = runtime.tuned
    used = resolve_postprocessing(method, settings, tuned.method if tuned else None, tuned.settings if tuned else None,
                                  tuned.file if tuned else None)
    tuned_with = tuned.tta if tuned is not None and used.base == "tuned" and tuned.file is not None else None
    if tuned_with is None or tuned_with == bool(runtime.tta):
        return used
    note = ("its settings were tuned without flip TTA, which this run uses; `rooftrace tune --tta` tunes them for it"
            if runtime.tta else "its settings were tuned with flip TTA, which this run does not use; run with --tta, or "
            "`rooftrace tune` without it")
    return replace(used, tta_note=note)
