"""Inputs are never outputs, and paths read from label files stay inside their split.

- :func:`check_distinct` compares every output path of a run with every input and every other
  output, as resolved paths (links followed, ``..`` removed), before anything runs.
- :func:`inside` resolves a path written in a label file (a COCO ``file_name``) against its split
  folder and refuses ``..`` that climbs out of it and absolute paths, unless
  :func:`allow_outside_paths` is on (the CLI's ``--allow-outside-paths``).
- :func:`plain_name` says whether an image id can be a file name of its own (no folder, no ``..``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator, Mapping

from rooftrace.core.errors import RooftraceError

_ALLOW_OUTSIDE: ContextVar[bool] = ContextVar("rooftrace_allow_outside_paths", default=False)


@contextmanager
def allow_outside_paths(on: bool = True) -> Iterator[None]:
    """Within this block, image paths in label files may be absolute or climb out of their split folder."""
    token = _ALLOW_OUTSIDE.set(on)
    try:
        yield
    finally:
        _ALLOW_OUTSIDE.reset(token)


def outside_allowed() -> bool:
    return _ALLOW_OUTSIDE.get()


def _resolved(p: str | Path) -> Path:
    try:
        return Path(p).expanduser().resolve(strict=False)
    except (OSError, RuntimeError):  # a symlink loop: compared as written
        return Path(os.path.abspath(p))


def check_distinct(inputs: Mapping[str, str | Path | None], outputs: Mapping[str, str | Path | None],
                   folders: Mapping[str, str | Path | None] | None = None) -> None:
    """Refuse a run whose outputs would overwrite an input or each other.

    Args:
        inputs: Label (an option name or ``SCENE``) -> input path; ``None`` values are ignored.
        outputs: Label -> output file.
        folders: Label -> output folder: no input may lie inside it, and it may not be an input file.

    Raises:
        RooftraceError: Naming both paths and what each is.
    """
    ins = {k: _resolved(v) for k, v in inputs.items() if v is not None}
    outs = {k: _resolved(v) for k, v in outputs.items() if v is not None}
    for ko, po in outs.items():
        for ki, pi in ins.items():
            if po == pi:
                raise RooftraceError(f"{outputs[ko]}: {ko} is also the {ki} ({inputs[ki]}); an input is never overwritten, "
                                     f"choose another {ko}")
    names = list(outs)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            if outs[names[a]] == outs[names[b]]:
                raise RooftraceError(f"{outputs[names[a]]}: given as both {names[a]} and {names[b]}; each output needs its own file")
    for kf, pf in ((k, _resolved(v)) for k, v in (folders or {}).items() if v is not None):
        for ki, pi in ins.items():
            if pf == pi or pf in pi.parents:
                raise RooftraceError(f"{folders[kf]}: the {kf} folder holds (or is) the {ki} ({inputs[ki]}); "  # type: ignore[index]
                                     f"write the outputs to another folder, so that no input is overwritten")


def inside(root: Path, name: str) -> Path | None:
    """``root / name`` when ``name`` stays inside ``root`` (lexically: no absolute path, no ``..`` that
    climbs out), else ``None``; always the joined path when :func:`allow_outside_paths` is on."""
    p = Path(name)
    if outside_allowed():
        return p if p.is_absolute() else root / p
    if p.is_absolute() or p.drive or name.startswith(("/", "\\")):
        return None
    norm = os.path.normpath(name.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return None
    return root / norm


def plain_name(key: object) -> bool:
    """Whether an image id can be used as a file name as it is: no folder separator, not ``.``/``..``,
    not empty."""
    s = str(key)
    return bool(s) and "/" not in s and "\\" not in s and s not in (".", "..") and "\x00" not in s
