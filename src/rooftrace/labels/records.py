"""The one in-memory form of building labels that every reader produces and every stage consumes.

A :class:`LabelSet` is an ordered mapping from an image *key* to :class:`ImageLabels`: the image's
file, its size and its building footprints in pixel coordinates (see :mod:`rooftrace.geometry.shapes` for
the convention). Keys are how images are matched across formats: the integer of the file stem when
the stem is a number (``0007.tif`` -> ``7``, as BEGC2024's ``ImageID``), else the stem itself
(``inria_austin1_4``); SpaceNet's ``ImageId`` is used as it is.

Readers record what they repaired, dropped or could not resolve in a :class:`LoadReport`, which
names the file and the record for every problem, so that a user can fix the source.

This module does not import torch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from rooftrace.core.errors import STRICT, RooftraceError, count_skip
from rooftrace.geometry.shapes import Cleaned, Footprint, Outcome, clean_footprint

ImageKey = int | str


def image_key(name: str | Path) -> ImageKey:
    """The key of an image from its file name or stem: ``int(stem)`` if the stem is all digits."""
    stem = Path(str(name)).stem
    return int(stem) if stem.isascii() and stem.isdigit() else stem


@dataclass
class ImageLabels:
    """Labels of one image.

    Attributes:
        key: The image key (see module docstring).
        footprints: One valid areal geometry per building, in pixel coordinates (or, for labels
            read without their raster, in the map coordinates of ``LabelSet.crs``).
        file_name: The image file, relative to ``LabelSet.root`` when that is set.
        width, height: Image size in pixels, when known.
        scores: One confidence per footprint for predictions, else ``None``.
        source: Where the image comes from (BEGC2024 COCO ``source``), for per-part scores.
        record_id: The id the image had in its file (a COCO image ``id``), when it had one.
        gsd: Ground sample distance (metres a pixel), when known (COCO image ``gsd``).
        group: The area the image belongs to (COCO image ``area_group``); images of one group
            overlap or touch, so they are kept on one side of a train/validation split.
    """

    key: ImageKey
    footprints: list[Footprint] = field(default_factory=list)
    file_name: str | None = None
    width: int | None = None
    height: int | None = None
    scores: list[float] | None = None
    source: str | None = None
    record_id: int | str | None = None
    gsd: float | None = None
    group: str | None = None


@dataclass
class LoadReport:
    """What a reader found: counts by outcome and messages that name the file and the record.

    Two kinds of problem: :meth:`note` records one that was handled without losing anything (a
    repaired ring, a size taken from the file, labels reprojected), :meth:`skip` one where an item
    (a record, a row, a ring, a tile) was left out. Commands exit with status 1 when anything was
    skipped. Under :func:`strict_mode` the first skip raises :class:`RooftraceError` instead.
    """

    path: str
    counts: Counter = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)
    max_messages: int = 50

    def note(self, message: str) -> None:
        """Record one problem that lost nothing, naming its record; the file is added when printed."""
        self.counts["problems"] += 1
        if len(self.messages) < self.max_messages:
            self.messages.append(message)

    def skip(self, message: str, counter: str = "skipped") -> None:
        """Record an item left out, naming it, under ``counter`` (a ``dropped: ...`` counter for
        footprints); under :func:`strict_mode` stop here instead."""
        if STRICT.get():
            raise RooftraceError(f"{self.path}: {message} (--strict stops at the first problem)")
        self.counts[counter] += 1
        count_skip()
        self.note(message)

    def add_outcome(self, outcome: str, where: str) -> None:
        """Count what cleaning did to one footprint and, unless it was kept as is, say where; a
        dropped footprint is a skip (:meth:`skip`)."""
        if outcome.startswith("dropped"):
            self.skip(f"{where}: {outcome}", counter=outcome)
            return
        self.counts[outcome] += 1
        if outcome != Outcome.KEPT:
            self.note(f"{where}: {outcome}")

    @property
    def repaired(self) -> int:
        return self.counts[Outcome.REPAIRED]

    @property
    def dropped(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("dropped"))

    @property
    def skipped(self) -> int:
        """Items left out: records, rows, tiles (:meth:`skip`) and footprints dropped by cleaning."""
        return self.counts["skipped"] + self.dropped

    @property
    def problems(self) -> int:
        return self.counts["problems"]

    def summary(self) -> str:
        """A few lines for the terminal: totals, then the first problems found."""
        kept = self.counts[Outcome.KEPT] + self.repaired
        lines = [
            f"{self.path}: {self.counts['images']} images, {kept} footprints kept "
            f"({self.repaired} repaired), {self.dropped} dropped"
        ]
        for k, v in sorted(self.counts.items()):
            if k.startswith("dropped") and v:
                lines.append(f"  {v} {k}")
        if self.counts["skipped"]:
            lines.append(f"  {self.counts['skipped']} records or items skipped")
        for k in ("unknown image ids", "missing image files", "size mismatches"):
            if self.counts[k]:
                lines.append(f"  {self.counts[k]} {k}")
        if self.messages:
            lines.append("  first problems:")
            lines.extend(f"    {m}" for m in self.messages[:10])
            hidden = self.problems - min(10, len(self.messages))
            if hidden > 0:
                lines.append(f"    ... and {hidden} more")
        return "\n".join(lines)


@dataclass
class LabelSet:
    """Labels of many images, in file order, with where they came from.

    Attributes:
        images: Image key -> labels, in the order the source listed them.
        root: Folder that ``ImageLabels.file_name`` is relative to (a split folder), if any.
        crs: CRS of the coordinates when they are map coordinates (labels read without a
            raster), as a string rasterio/pyproj understand; ``None`` for pixel coordinates.
        report: What the reader repaired, dropped or could not resolve.
        format: Name of the format it was read from (``coco``, ``begc-csv``, ``spacenet-csv``,
            ``coco-results``, ``geojson``, ``masks``).
    """

    images: dict[ImageKey, ImageLabels] = field(default_factory=dict)
    root: Path | None = None
    crs: str | None = None
    report: LoadReport = field(default_factory=lambda: LoadReport(path="<memory>"))
    format: str = "memory"

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[ImageLabels]:
        return iter(self.images.values())

    def __getitem__(self, key: ImageKey) -> ImageLabels:
        return self.images[key]

    def __contains__(self, key: object) -> bool:
        return key in self.images

    def get_or_add(self, key: ImageKey) -> ImageLabels:
        """The labels of ``key``, created empty when the image is new."""
        if key not in self.images:
            self.images[key] = ImageLabels(key=key)
        return self.images[key]

    def add(self, key: ImageKey, geom, where: str, score: float | None = None) -> bool:
        """Clean ``geom`` and append it to image ``key``; count the outcome in the report.

        Returns whether the footprint was kept.
        """
        cleaned: Cleaned = clean_footprint(geom)
        self.report.add_outcome(cleaned.outcome, where)
        if cleaned.footprint is None:
            return False
        img = self.get_or_add(key)
        img.footprints.append(cleaned.footprint)
        if score is not None:
            if img.scores is None:
                img.scores = [1.0] * (len(img.footprints) - 1)
            img.scores.append(float(score))
        elif img.scores is not None:
            img.scores.append(1.0)
        return True

    def image_path(self, img: ImageLabels) -> Path | None:
        """Absolute path of an image's file, when the set knows it."""
        if img.file_name is None:
            return None
        if self.root is None:
            return Path(img.file_name)
        from rooftrace.core.paths import inside

        p = inside(self.root, img.file_name)
        if p is None:  # read from a label file: stays inside its split unless allowed (--allow-outside-paths)
            raise RooftraceError(f"{self.root}: image {img.key!r} has file_name {img.file_name!r}, outside this folder; "
                                 "pass --allow-outside-paths to read it")
        return p

    @property
    def n_footprints(self) -> int:
        return sum(len(i.footprints) for i in self)


def note_unplain_key(key: ImageKey, where: str, report: LoadReport) -> None:
    """Note an image id that is not a plain name (``../x``, ``/etc/passwd``, ``a/b``): a file name made from
    it (a COCO ``file_name``, ``image/<id>.tif``) would point into another folder."""
    from rooftrace.core.paths import plain_name

    if not plain_name(key):
        report.note(f"{where} {key!r} is not a plain name (it holds a folder, '..' or is absolute); a file name made "
                    "from it, such as a COCO file_name, would point outside the image folder")
        report.counts["image ids that are not plain names"] += 1


def check_image_file(path: Path | None, img: ImageLabels, where: str, report: LoadReport) -> None:
    """Report a missing or unreadable image, and fill in or check its size against the record."""
    from rooftrace.imagery.read import read_size

    if path is None:
        return
    if not path.exists():
        report.note(f"{where}: image file {path} is missing")
        report.counts["missing image files"] += 1
        return
    try:
        width, height = read_size(path)
    except RooftraceError as exc:
        report.note(f"{where}: {exc}")
        report.counts["unreadable image files"] += 1
        return
    if img.width is None or img.height is None:
        img.width, img.height = width, height
    elif (img.width, img.height) != (width, height):
        report.note(f"{where}: record says {img.width} x {img.height} but {path.name} is {width} x {height}; the file's size is used")
        report.counts["size mismatches"] += 1
        img.width, img.height = width, height
