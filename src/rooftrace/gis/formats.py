"""The GIS output formats rooftrace writes, one :class:`OutputFormat` entry each, in one registry.

An entry says everything the rest of rooftrace asks about a format: its name (``--format``) and
suffixes, how it is written (an OGR driver appended to in chunks, an OGR driver that cannot be
appended to and is staged, pyarrow, or streamed GeoJSON text), its CRS rule (the scene's CRS, or
always longitude/latitude), where its provenance is kept, and what it needs installed. The streaming
writer (:class:`rooftrace.gis.writers.FeatureWriter`), the output checks
(:func:`rooftrace.gis.writers.check_output`, :func:`output_format`), the provenance reader
(:func:`rooftrace.gis.provenance.read_provenance`), ``predict-scene``'s ``--format`` choices and its
help text all read this registry; none of them names a format.

To add a format, add one :func:`register` call below (or in a module that is imported with this one);
if none of the existing ``write`` kinds fits, add one branch to the writer. Every registered format
then runs the contract tests of ``tests/gis/test_gis_formats_contract.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rooftrace.core.errors import RooftraceError

#: How a format's features are written: appended to an OGR layer in chunks (``ogr``), staged in a
#: hidden GeoPackage and converted once at the end (``ogr-staged``: formats that cannot be appended
#: to), one Parquet row group per chunk with pyarrow (``parquet``), or streamed as GeoJSON text (``geojson``).
WRITE_KINDS = ("ogr", "ogr-staged", "parquet", "geojson")


@dataclass(frozen=True)
class OutputFormat:
    """One GIS output format."""

    name: str  #: the ``--format`` value (and the suffix of a folder's outputs, with a dot)
    suffixes: tuple[str, ...]  #: the suffixes that choose it, lower case, the usual one first
    title: str  #: what the user knows it as (``GeoPackage``), in messages
    driver: str  #: the OGR driver (``Parquet``: written and read with pyarrow, not GDAL)
    write: str  #: one of :data:`WRITE_KINDS`
    lonlat: bool  #: always written in EPSG:4326 longitude/latitude (reprojected), else in the scene's CRS
    provenance: str  #: where the file keeps its provenance, in words (DESIGN.md, the writers' docs)
    needs: str | None = None  #: a module to import before writing (an optional extra), else ``None``
    install: str = ""  #: how to install :attr:`needs`, for the message when it is missing

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    @property
    def appendable(self) -> bool:
        """Whether features can be added to a file of this format in chunks (else they are staged)."""
        return self.write != "ogr-staged"

    @property
    def through_ogr(self) -> bool:
        """Whether it is written through GDAL's OGR (pyogrio); GeoJSON and GeoParquet are written without it."""
        return self.write in ("ogr", "ogr-staged")

    @property
    def keeps_crs(self) -> bool:
        """Whether the features are written in the scene's own CRS (a scene without one: CRS left unknown)."""
        return not self.lonlat

    @property
    def label(self) -> str:
        """``.gpkg (GeoPackage)``; a longitude/latitude format says so instead of its title."""
        return f"{self.suffix} ({'longitude/latitude' if self.lonlat else self.title})"


#: The registered formats by name, in the order messages list them.
FORMATS: dict[str, OutputFormat] = {}


def register(fmt: OutputFormat) -> OutputFormat:
    """Add ``fmt`` to :data:`FORMATS` (a name or suffix already taken is an error)."""
    if fmt.write not in WRITE_KINDS:
        raise ValueError(f"{fmt.name}: write kind {fmt.write!r} is not one of {WRITE_KINDS}")
    taken = {s for f in FORMATS.values() for s in f.suffixes}
    if fmt.name in FORMATS or taken & set(fmt.suffixes):
        raise ValueError(f"{fmt.name}: its name or a suffix ({', '.join(fmt.suffixes)}) is registered already")
    FORMATS[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove a format (a test's toy format, after the test)."""
    FORMATS.pop(name, None)


def format_for(path: str | Path) -> OutputFormat | None:
    """The format ``path``'s suffix chooses, ``None`` for a suffix no format has."""
    suffix = Path(path).suffix.lower()
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def output_format(path: str | Path) -> OutputFormat:
    """The format ``path``'s suffix chooses.

    Raises:
        RooftraceError: A suffix no format has, naming ``path`` and the formats there are.
    """
    fmt = format_for(path)
    if fmt is None:
        path = Path(path)
        raise RooftraceError(f"{path}: unknown output format {path.suffix!r}; use {formats_text()}")
    return fmt


def by_name(name: str) -> OutputFormat:
    """The format called ``name`` (``--format``).

    Raises:
        RooftraceError: A name no format has.
    """
    if name not in FORMATS:
        raise RooftraceError(f"--format {name!r}: choose {_or(list(FORMATS))}")
    return FORMATS[name]


def names() -> tuple[str, ...]:
    """The ``--format`` choices."""
    return tuple(FORMATS)


def output_drivers() -> dict[str, str]:
    """Every suffix and its OGR driver name (``Parquet``: pyarrow)."""
    return {s: f.driver for f in FORMATS.values() for s in f.suffixes}


def _or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def formats_text() -> str:
    """``.gpkg (GeoPackage), .fgb (FlatGeobuf), ... or .geojson (longitude/latitude)``, for messages."""
    return _or([f.label for f in FORMATS.values()])


def out_names(stem: str = "OUT") -> str:
    """``OUT.gpkg, OUT.fgb, OUT.parquet or OUT.geojson``, for help texts and messages."""
    return _or([f"{stem}{f.suffix}" for f in FORMATS.values()])


def titles() -> str:
    """``GeoPackage, FlatGeobuf, GeoParquet or GeoJSON``, for help texts."""
    return _or([f.title for f in FORMATS.values()])


#: The format of a folder's outputs when none is chosen, and of the merged layer of many scenes.
DEFAULT_FORMAT = "gpkg"

register(OutputFormat(
    "gpkg", (".gpkg",), "GeoPackage", "GPKG", "ogr", lonlat=False,
    provenance="layer metadata ``rooftrace`` (GDAL metadata, ``gpkg_metadata`` tables) and a one-line "
               "``DESCRIPTION`` (``gpkg_contents``)"))
register(OutputFormat(
    "fgb", (".fgb",), "FlatGeobuf", "FlatGeobuf", "ogr-staged", lonlat=False,
    provenance="layer metadata ``rooftrace`` and ``DESCRIPTION`` (the FlatGeobuf header's ``metadata`` and ``description``)"))
register(OutputFormat(
    "parquet", (".parquet",), "GeoParquet", "Parquet", "parquet", lonlat=False,
    provenance="GeoParquet 1.1 (``geo`` key: WKB, PROJJSON CRS) and a ``rooftrace`` key in the Parquet file's "
               "key-value metadata",
    needs="pyarrow.parquet", install="pip install 'rooftrace[parquet]' (or pyarrow)"))
register(OutputFormat(
    "geojson", (".geojson", ".json"), "GeoJSON", "GeoJSON", "geojson", lonlat=True,
    provenance="the top-level ``description`` member, which GDAL reads as layer metadata ``DESCRIPTION``, and the "
               "same as an object in a ``rooftrace`` foreign member"))


def lonlat_format() -> OutputFormat | None:
    """The first format that is always longitude/latitude (GeoJSON), for messages that point to one."""
    return next((f for f in FORMATS.values() if f.lonlat), None)


def coordinates_text() -> str:
    """``.gpkg, .fgb or .parquet in the scene's CRS, or .geojson in longitude/latitude (EPSG:4326)``."""
    own = [f.suffix for f in FORMATS.values() if f.keeps_crs]
    lonlat = [f.suffix for f in FORMATS.values() if f.lonlat]
    parts = ([f"{_or(own)} in the scene's CRS"] if own else []) + (
        [f"{_or(lonlat)} in longitude/latitude (EPSG:4326)"] if lonlat else [])
    return ", or ".join(parts)
