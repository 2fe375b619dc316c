"""Split folders: find a split's annotation file and read a split (a folder or a :class:`SplitSpec`) into a
:class:`~rooftrace.labels.records.LabelSet`."""

from __future__ import annotations

from pathlib import Path

from rooftrace.config import SplitSpec, resolve_path
from rooftrace.core.errors import RooftraceError
from rooftrace.labels.coco import read_coco
from rooftrace.labels.records import LabelSet


def find_annotations(split_dir: Path) -> Path:
    """The COCO file of a split: ``SPLIT_DIR/<folder name>.json``, else the only ``*.json`` there.

    BEGC2024 names it after the split (``train/train.json``); a folder with one JSON of another
    name is accepted too, but two candidates are refused rather than guessed between.

    Raises:
        RooftraceError: ``split_dir`` is not a folder, or it holds no or several JSON files.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise RooftraceError(f"{split_dir}: no such folder (expected a split folder with image/ and <split>.json)")
    named = split_dir / f"{split_dir.resolve().name}.json"
    if named.is_file():
        return named
    candidates = sorted(p for p in split_dir.glob("*.json") if p.is_file() and not p.name.startswith("."))
    if not candidates:
        raise RooftraceError(
            f"{split_dir}: no annotations: expected {named.name} (or one *.json) with COCO ground truth in this folder"
        )
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise RooftraceError(
            f"{split_dir}: several JSON files ({names}) and none is named {named.name}; "
            "rename the ground truth to it or move the others away"
        )
    return candidates[0]


def open_split(split: str | Path | SplitSpec) -> LabelSet:
    """Read a split folder's COCO labels (``SPLIT/<split>.json``) and print nothing."""
    if isinstance(split, SplitSpec):
        split = split.path

    path = resolve_path(str(split))
    labels = read_coco(find_annotations(path))
    return labels
