"""The ``prepare`` stage: turn one labelled split into training targets on disk.

``rooftrace prepare SPLIT_DIR --out DIR`` reads the split's COCO ground truth (BEGC2024 layout:
``SPLIT_DIR/<split>.json`` with ``file_name`` entries such as ``image/0007.tif``) and writes, for
every image it can read::

    DIR/targets/<stem>.png     RGB, channels footprint / boundary / contact as 0 / 255
    DIR/instances/<stem>.png   16-bit grey, instance ids (0 background, k = k-th footprint)
    DIR/masks/<stem>.png       grey, building mask as 0 / 255
    DIR/previews/<stem>.png    the image with its footprints outlined (first ``n_previews`` only)
    DIR/summary.json           what was read, repaired, dropped and skipped; the settings; a
                               manifest of the images written (written last: its presence means
                               the run finished)

PNG is used because it is lossless, small for such sparse arrays, and opened by every viewer and
training library. Every file is written atomically (a crash never leaves half a PNG). Targets are
made by :func:`rooftrace.prepare.targets.make_targets`; see there for what the channels mean.

This module does not import torch.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes
from rooftrace.core.locks import exclusive
from rooftrace.core.version import __version__
from rooftrace.imagery.draw import render_preview
from rooftrace.imagery.png import encode_instances, encode_png
from rooftrace.imagery.read import read_rgb
from rooftrace.labels.coco import read_coco
from rooftrace.labels.records import ImageLabels, LabelSet, LoadReport
from rooftrace.labels.splits import find_annotations
from rooftrace.prepare.targets import Targets, TargetSettings, make_targets

#: Sub-folders that ``prepare`` writes; their presence (non-empty) marks a folder as prepared.
OUTPUT_DIRS = ("targets", "instances", "masks", "previews")
SUMMARY_NAME = "summary.json"


@dataclass
class PrepareResult:
    """What :func:`prepare_split` did.

    Attributes:
        out_dir: The output folder.
        n_images: Images whose targets were written.
        n_footprints: Footprints in those images.
        n_skipped: Images listed in the annotations but skipped (missing or unreadable file).
        report: The reader's :class:`LoadReport` (repairs, drops, missing files, size mismatches).
        skipped: ``(file name, reason)`` of each skipped image.
        n_previews: Preview images written.
        stale_files: PNGs in the output folders that this run did not write (left over from an
            earlier run with ``force``); they are left alone, but a training loader that globs
            ``targets/*.png`` would pick them up, so they are counted here.
        per_source: Source name -> ``{"images": n, "footprints": n}`` over the images written.
    """

    out_dir: Path
    n_images: int
    n_footprints: int
    n_skipped: int
    report: LoadReport
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_previews: int = 0
    stale_files: int = 0
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the terminal: what was written, what was skipped, then the read report."""
        lines = [
            f"prepared {self.n_images} images ({self.n_footprints} footprints) into {self.out_dir}"
            f"; {self.n_previews} previews; {self.n_skipped} skipped"
        ]
        for name, reason in self.skipped[:10]:
            lines.append(f"  skipped {name}: {reason}")
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more skipped")
        if self.stale_files:
            lines.append(
                f"  warning: {self.stale_files} PNG files in {self.out_dir} were not written by this run "
                "(left from an earlier run); see summary.json's manifest for the current images"
            )
        lines.append(self.report.summary())
        return "\n".join(lines)


def _existing_outputs(out_dir: Path) -> list[str]:
    """Names of prepare outputs already in ``out_dir`` (non-empty sub-folders, summary.json)."""
    found = []
    for name in OUTPUT_DIRS:
        d = out_dir / name
        if d.is_dir() and any(d.iterdir()):
            found.append(f"{name}/")
    if (out_dir / SUMMARY_NAME).exists():
        found.append(SUMMARY_NAME)
    return found


def _count_stale(out_dir: Path, written: set[str]) -> int:
    """PNGs in the output sub-folders that are not among ``written`` (relative paths)."""
    n = 0
    for name in OUTPUT_DIRS:
        d = out_dir / name
        if d.is_dir():
            n += sum(1 for p in d.glob("*.png") if f"{name}/{p.name}" not in written)
    return n


@exclusive("out_dir")
def prepare_split(
    split_dir: str | Path,
    out_dir: str | Path,
    settings: TargetSettings = TargetSettings(),
    n_previews: int = 8,
    force: bool = False,
    progress: bool = True,
) -> PrepareResult:
    """Write targets, instance maps, masks, previews and a summary for one labelled split.

    The annotations are read with :func:`~rooftrace.labels.coco.read_coco`, which repairs invalid
    polygons, drops unusable ones and reports missing images and size mismatches (the file's size
    wins). Each image is then read in full: an image whose file is missing or cannot be decoded
    is reported and skipped *entirely* (no targets either), because a target without its pixels
    cannot train anything and would make ``targets/`` disagree with ``image/``; decoding every
    tile here also means a corrupt tile fails now, with its name, rather than mid-training.

    Args:
        split_dir: A split folder (``image/`` and ``<split>.json``).
        out_dir: Where to write; created if needed.
        settings: Band widths of the targets.
        n_previews: How many images (the first in annotation order) get a preview.
        force: Overwrite the outputs of an earlier run in ``out_dir``. Without it a folder that
            already holds prepare outputs is refused, so a run never mixes with an older one.
        progress: Show a tqdm progress bar.

    Raises:
        RooftraceError: No or ambiguous annotations, unreadable COCO, outputs already present
            without ``force``, an image with more than 65535 footprints, or an unwritable folder.
    """
    split_dir = Path(split_dir)
    out_dir = Path(out_dir)
    annotations = find_annotations(split_dir)
    existing = _existing_outputs(out_dir)
    if existing and not force:
        raise RooftraceError(
            f"{out_dir}: already holds prepare outputs ({', '.join(existing)}); "
            "pass --force to overwrite them, or choose another --out folder"
        )
    labels: LabelSet = read_coco(annotations, check_images=True)

    written: set[str] = set()
    manifest: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    per_source: dict[str, Counter] = {}
    n_footprints = n_empty = n_previews_done = 0

    bar = tqdm(labels, total=len(labels), desc=f"prepare {split_dir.name}", unit="img", disable=not progress)
    for img in bar:
        name = img.file_name or str(img.key)
        path = labels.image_path(img)
        if path is None:  # pragma: no cover - COCO records always name a file
            skipped.append((name, "no file name"))
            continue
        try:
            rgb = read_rgb(path)
        except RooftraceError as exc:
            labels.report.skip(f"{name}: {exc}; image skipped (no targets written)")
            skipped.append((name, str(exc)))
            continue
        shape = rgb.shape[:2]
        stem = Path(name).stem
        targets = make_targets(img.footprints, shape, settings)
        _write(out_dir, "instances", stem, encode_instances(targets.instances, f"{annotations}: {name}"), force, written)
        _write(out_dir, "targets", stem, encode_png(targets.rgb()), force, written)
        _write(out_dir, "masks", stem, encode_png(targets.mask * np.uint8(255)), force, written)
        if n_previews_done < n_previews:
            preview = render_preview(rgb, img.footprints, targets.contact)
            _write(out_dir, "previews", stem, encode_png(preview), force, written)
            n_previews_done += 1
        n_footprints += len(img.footprints)
        empty = _instances_without_pixels(targets, len(img.footprints))
        n_empty += empty
        src = per_source.setdefault(img.source or "unknown", Counter())
        src["images"] += 1
        src["footprints"] += len(img.footprints)
        manifest.append(_manifest_entry(img, stem, shape, targets, empty))

    stale = _count_stale(out_dir, written)
    result = PrepareResult(
        out_dir=out_dir,
        n_images=len(manifest),
        n_footprints=n_footprints,
        n_skipped=len(skipped),
        report=labels.report,
        skipped=skipped,
        n_previews=n_previews_done,
        stale_files=stale,
        per_source={k: dict(v) for k, v in per_source.items()},
    )
    summary = {
        "rooftrace_version": __version__,
        "split_dir": str(split_dir),
        "annotations": str(annotations),
        "settings": settings.to_dict(),
        "channels": ["footprint", "boundary", "contact"],
        "n_images": result.n_images,
        "n_footprints": n_footprints,
        "n_footprints_without_pixels": n_empty,
        "n_skipped": result.n_skipped,
        "n_previews": n_previews_done,
        "stale_files": stale,
        "per_source": result.per_source,
        "skipped": [{"file_name": n, "reason": r} for n, r in skipped],
        "report": {"counts": dict(labels.report.counts), "messages": list(labels.report.messages)},
        "images": manifest,
    }
    atomic_write_bytes(out_dir / SUMMARY_NAME, json.dumps(summary, indent=1).encode("utf-8"), force=force)
    return result


def _write(out_dir: Path, folder: str, stem: str, data: bytes, force: bool, written: set[str]) -> None:
    atomic_write_bytes(out_dir / folder / f"{stem}.png", data, force=force)
    written.add(f"{folder}/{stem}.png")


def _instances_without_pixels(targets: Targets, n: int) -> int:
    """Footprints that cover no pixel centre or were wholly overwritten by a later one."""
    if n == 0:
        return 0
    counts = np.bincount(targets.instances.ravel(), minlength=n + 1)[1 : n + 1]
    return int((counts == 0).sum())


def _manifest_entry(img: ImageLabels, stem: str, shape: tuple[int, int], targets: Targets, empty: int) -> dict[str, Any]:
    key = img.key if isinstance(img.key, (int, str)) else str(img.key)
    return {
        "stem": stem,
        "key": key,
        "file_name": img.file_name,
        "width": int(shape[1]),
        "height": int(shape[0]),
        "source": img.source,
        "n_footprints": len(img.footprints),
        "n_footprints_without_pixels": empty,
        "building_pixels": int(targets.mask.sum()),
    }
