"""What one label format declares: :class:`LabelFormat`, the entry of the label-format registry.

Each format module (``coco``, ``begc``, ``spacenet``, ``geojson``, ``masks``) declares its entry as a
module-level ``FORMAT = LabelFormat(...)``: its name, the suffixes it is read from, a sniffing function
that says whether a file looks like it, a reader and a writer (or ``None``). The registry itself, in
data-flow order, is :data:`rooftrace.labels.formats.LABEL_FORMATS`, filled there by one
:func:`~rooftrace.labels.formats.register` line per entry; :func:`~rooftrace.labels.formats.read_labels`
detects a file's format through it and ``rooftrace convert`` picks its writer, its ``--to`` choices and
its help from it.

A sniffing function and a reader get a :class:`Probe` of the path, which reads the file at most once
(as text, or as JSON) however many entries look at it. This module imports no format module, so that
every format module can import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from rooftrace.core.files import read_json, read_text
from rooftrace.labels.records import LabelSet


class Probe:
    """A label file or folder being identified: its path and suffix, and its content read once, on demand.

    Attributes:
        path: The file or folder.
        suffix: Its suffix in lower case (``""`` for a folder).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.is_dir = self.path.is_dir()
        self.suffix = "" if self.is_dir else self.path.suffix.lower()

    @cached_property
    def text(self) -> str:
        """The file as text (a clear error naming it when it cannot be read)."""
        return read_text(self.path)

    @cached_property
    def first_line(self) -> str:
        """The text's first line as written (a CSV's header), ``""`` for a blank file."""
        return self.text.splitlines()[0] if self.text.strip() else ""

    @cached_property
    def header(self) -> str:
        """:attr:`first_line` in lower case, for sniffing."""
        return self.first_line.lower()

    @cached_property
    def data(self) -> Any:
        """The file parsed as JSON (a clear error naming it, with line and column, when it is not JSON)."""
        return read_json(self.path)


@dataclass(frozen=True)
class ReadOptions:
    """What a reader may need beside the file; each reader takes what its format uses and ignores the rest.

    Attributes:
        raster: For labels in map coordinates: the GeoTIFF they belong to.
        images: For a folder of masks: the folder of the images they belong to.
        check_images: For COCO: check that image files exist and match their recorded size.
        crs: For map-coordinate files: the CRS of the coordinates when the file declares none or a wrong one.
        crs_option: The command-line option that gave ``crs``, for messages.
    """

    raster: str | Path | None = None
    images: str | Path | None = None
    check_images: bool = True
    crs: str | None = None
    crs_option: str = "--labels-crs"


#: A reader of a registry entry: the probed path and the options -> the labels.
Reader = Callable[[Probe, ReadOptions], LabelSet]
#: A writer of a registry entry: ``(labels, path, images=folder or None, force=bool) -> the path written``.
Writer = Callable[..., Path]


@dataclass(frozen=True)
class LabelFormat:
    """One label format, as the registry knows it.

    Attributes:
        name: Its name (``LabelSet.format`` of what it reads, ``convert --to`` of what it writes).
        title: Its name for people (``"BEGC2024 CSV"``), in help texts.
        content: What its content looks like, for the message when a file looks like no format
            (``"COCO (images/annotations)"``).
        sniff: Whether a probed file (of one of ``suffixes``, or a folder when ``folder``) looks like this
            format. Entries that share a suffix must not claim each other's files; the first that claims a
            file in registration order reads it.
        read: The reader.
        suffixes: File suffixes (lower case, with the dot) it is read from.
        folder: It is read from a folder.
        write: The writer, ``None`` for a format rooftrace reads only.
        write_suffixes: Suffixes a file written in this format may have (a file's suffix is what a GIS, a
            spreadsheet or a browser opens it by).
        default_for: Suffixes for which ``convert`` writes this format when no ``--to`` is given.
        map_coordinates: It can hold labels in map coordinates and records their CRS (else it is in pixels).
    """

    name: str
    title: str
    content: str
    sniff: Callable[[Probe], bool]
    read: Reader
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    write: Writer | None = None
    write_suffixes: tuple[str, ...] = ()
    default_for: tuple[str, ...] = ()
    map_coordinates: bool = False

    def reads(self, probe: Probe) -> bool:
        """Whether this format is read from a path like ``probe``'s (a folder, or one of its suffixes)."""
        return self.folder if probe.is_dir else probe.suffix in self.suffixes


__all__ = ["LabelFormat", "Probe", "ReadOptions", "Reader", "Writer"]
