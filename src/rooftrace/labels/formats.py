"""Readers and writers of building labels, one module per format, and the registry that knows them.

:data:`LABEL_FORMATS` holds one :class:`~rooftrace.labels.registry.LabelFormat` per format, each declared
in its own module (``FORMAT`` in :mod:`~rooftrace.labels.coco`, :mod:`~rooftrace.labels.begc`, ...) and
registered below, one line each. :func:`read_labels` detects the format from the content through it, so
every command takes labels in any of them: COCO ground truth, COCO results, the BEGC2024 CSV, SpaceNet
CSVs, GeoJSON/GeoPackage (with or without their GeoTIFF), and folders of binary masks.
:func:`writer_for` and :func:`write_labels` choose and run a writer (``rooftrace convert``), and the
``*_text`` functions say in words what the registry holds, for help texts.
"""

from __future__ import annotations

from pathlib import Path

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
)
from rooftrace.labels import begc, coco, geojson, masks, spacenet
from rooftrace.labels.begc import keys_of_folder, read_begc_csv, write_begc_csv
from rooftrace.labels.coco import (
    read_coco,
    read_coco_results,
    write_coco,
    write_coco_results,
)
from rooftrace.labels.geojson import is_pixel_geojson, read_geojson, write_geojson
from rooftrace.labels.masks import read_mask_folder
from rooftrace.labels.records import LabelSet
from rooftrace.labels.registry import LabelFormat, Probe, ReadOptions
from rooftrace.labels.spacenet import read_spacenet_csv, write_spacenet_csv

#: Every label format rooftrace reads, by name, in registration order (the order detection tries them in,
#: and the order help texts list them in).
LABEL_FORMATS: dict[str, LabelFormat] = {}


def register(fmt: LabelFormat) -> LabelFormat:
    """Add a label format to :data:`LABEL_FORMATS`; :func:`read_labels`, :func:`writer_for` and ``convert`` know
    it from then on. Returns it.

    Raises:
        ValueError: A format of that name is registered already.
    """
    if fmt.name in LABEL_FORMATS:
        raise ValueError(f"label format {fmt.name!r} is registered already")
    LABEL_FORMATS[fmt.name] = fmt
    return fmt


register(coco.FORMAT)
register(coco.RESULTS_FORMAT)
register(begc.FORMAT)
register(spacenet.FORMAT)
register(geojson.FORMAT)
register(masks.FORMAT)

#: The names of the formats registered here (a format registered later is in :data:`LABEL_FORMATS` only).
FORMATS = tuple(LABEL_FORMATS)

#: Suffixes of files that are no labels convert writes, besides those of formats it reads only: other GIS vector
#: files and rasters.
OTHER_SUFFIXES = (".kml", ".gml", ".tif", ".tiff", ".png", ".jpg")


def _join(words: list[str], last: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def read_labels(path: str | Path, raster: str | Path | None = None, images: str | Path | None = None, check_images: bool = True,
                crs: str | None = None, crs_option: str = "--labels-crs") -> LabelSet:
    """Read labels from any registered format, detected from the content.

    A folder holding exactly one JSON file is a split folder: that file is read. Otherwise the formats read
    from a path like this one (a folder, or a file of its suffix) are asked in registration order whether the
    file looks like them (their ``sniff``), and the first that says yes reads it.

    Args:
        path: A file (``.json``, ``.geojson``, ``.gpkg``, ``.csv``), a split folder holding one
            COCO JSON, or a folder of masks.
        raster: For GeoJSON/GeoPackage in map coordinates: the GeoTIFF they belong to.
        images: For a folder of masks: the folder of the images they belong to.
        check_images: For COCO: check that image files exist and match their recorded size.
        crs: For GeoJSON/GeoPackage: the CRS of the coordinates when the file declares none or a
            wrong one (``crs_option`` names the option that gave it, for messages).

    Raises:
        RooftraceError: The path does not exist or is in no format rooftrace knows.
    """
    path = Path(path)
    if not path.exists():
        raise RooftraceError(f"{path}: no such file or folder")
    if path.is_dir():
        jsons = sorted(path.glob("*.json"))
        if len(jsons) == 1:
            return read_labels(jsons[0], check_images=check_images)
    probe = Probe(path)
    candidates = [f for f in LABEL_FORMATS.values() if f.reads(probe)]
    if not candidates:
        suffixes = list(dict.fromkeys(s for f in LABEL_FORMATS.values() for s in f.suffixes))
        if any(f.folder for f in LABEL_FORMATS.values()):
            suffixes.append("a folder")
        raise RooftraceError(f"{path}: unknown label format (suffix {path.suffix!r}); expected {_join(suffixes, 'or')}")
    options = ReadOptions(raster=raster, images=images, check_images=check_images, crs=crs, crs_option=crs_option)
    for fmt in candidates:
        if fmt.sniff(probe):
            return fmt.read(probe, options)
    kind = probe.suffix[1:].upper() or "a folder"
    lead = f"CSV header {probe.first_line!r} is" if probe.suffix == ".csv" else f"{kind} that is"
    raise RooftraceError(f"{path}: {lead} neither {_join([f.content for f in candidates], 'nor')}")


def writers() -> list[LabelFormat]:
    """The registered formats that have a writer, in registration order."""
    return [f for f in LABEL_FORMATS.values() if f.write is not None]


def writer_names() -> tuple[str, ...]:
    """The names ``convert --to`` takes."""
    return tuple(f.name for f in writers())


def _home(fmt: LabelFormat) -> str:
    """The suffix a writer's files are named by: the first it is the default for, else the first it may have."""
    return (fmt.default_for or fmt.write_suffixes)[0]


def titles_text() -> str:
    """``COCO, COCO results, ...``: every registered format for people."""
    return ", ".join(f.title for f in LABEL_FORMATS.values())


def suffix_rules_text() -> str:
    """``.csv begc-csv or spacenet-csv, .geojson geojson, ...``: the formats a file of each suffix may be written in."""
    suffixes = sorted({s for f in writers() for s in f.write_suffixes})
    return ", ".join(f"{s} {_join([f.name for f in writers() if s in f.write_suffixes], 'or')}" for s in suffixes)


def suffix_defaults_text() -> str:
    """``.csv BEGC2024 CSV, .geojson GeoJSON, ...``: the format written for each suffix when none is named."""
    return ", ".join(f"{s} {f.title}" for s, f in sorted((s, f) for f in writers() for s in f.default_for))


def not_written_suffixes() -> tuple[str, ...]:
    """Suffixes of files convert does not write: formats read only (GeoPackage, FlatGeobuf, ...), and
    :data:`OTHER_SUFFIXES`."""
    written = {s for f in writers() for s in f.write_suffixes}
    read_only = [s for f in LABEL_FORMATS.values() for s in f.suffixes if s not in written]
    return tuple(dict.fromkeys(read_only + list(OTHER_SUFFIXES)))


def _written_text() -> str:
    """``GeoJSON (.geojson), BEGC2024 CSV or SpaceNet CSV (.csv) and ...``: each writer under its home suffix,
    those that carry map coordinates first."""
    homes = sorted(dict.fromkeys(_home(f) for f in writers()),
                   key=lambda s: (not any(f.map_coordinates for f in writers() if _home(f) == s), s))
    return _join([f"{_join([f.title for f in writers() if _home(f) == s], 'or')} ({s})" for s in homes], "and")


def writer_for(dst: str | Path, to: str | None = None) -> LabelFormat:
    """The format ``convert`` writes DST in: ``to``, else the one DST's suffix names.

    Raises:
        RooftraceError: DST's suffix is that of a file convert does not write (a GeoPackage, a raster), or
            names no format and ``to`` is not given, or names another format than ``to`` (``--to geojson
            out.parquet`` would give a GIS text it cannot open); ``to`` is no writer's name.
    """
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix in not_written_suffixes():
        home = next((_home(f) for f in writers() if f.map_coordinates), ".geojson")
        raise RooftraceError(f"{dst}: convert writes {_written_text()}, not {suffix}; write a {home} and turn it into {suffix} "
                             f"with a GIS (ogr2ogr {dst.name} {dst.with_suffix(home).name}), or use predict-scene --out for "
                             "buildings found in a scene")
    fits = [f.name for f in writers() if suffix in f.write_suffixes]
    if to is None:
        default = next((f for f in writers() if suffix in f.default_for), None)
        if default is None:
            raise RooftraceError(f"{dst}: cannot tell the output format from the suffix; pass --to")
        return default
    if to not in writer_names():
        raise RooftraceError(f"--to {to}: not a format convert writes ({', '.join(writer_names())})")
    if fits and to not in fits:
        raise RooftraceError(f"{dst}: --to {to} does not fit the name's suffix {suffix} (it takes {', '.join(fits)}); "
                             "name the file for the format written, so that what opens it can read it")
    return LABEL_FORMATS[to]


def write_labels(ls: LabelSet, path: str | Path, fmt: str | LabelFormat, images: str | Path | None = None,
                 force: bool = False, source: str | Path | None = None) -> Path:
    """Write ``ls`` to ``path`` in ``fmt`` (a registered writer or its name), atomically.

    Args:
        images: An image folder: a BEGC2024 CSV gets a row for every image in it.
        force: Overwrite an existing file.
        source: The file the labels came from, named in the error below (default ``path``).

    Raises:
        RooftraceError: The labels are in map coordinates and the format holds pixels only.
    """
    entry = fmt if isinstance(fmt, LabelFormat) else writer_for(path, fmt)
    if entry.write is None:
        raise RooftraceError(f"{path}: rooftrace reads {entry.name} but does not write it")
    if ls.crs is not None and not entry.map_coordinates:
        raise RooftraceError(f"{source or path}: labels are in map coordinates; pass --raster to convert them to pixels "
                             f"for {entry.name}")
    return entry.write(ls, path, images=images, force=force)


def align_keys(gt: LabelSet, pred: LabelSet) -> LabelSet:
    """Re-key ``pred`` so that its images match ``gt``'s; returns ``pred`` (changed in place).

    COCO results name images by the ground truth's COCO image ``id``: those are mapped to the
    ground truth's keys. Two single-scene sets in map coordinates are the same scene whatever
    their file names; the prediction is reprojected to the ground truth's CRS if needed.
    """
    if pred.format == "coco-results":
        by_record = {img.record_id: img.key for img in gt if img.record_id is not None}
        if by_record and all(k in by_record for k in pred.images):
            pred.images = {by_record[k]: _rekey(img, by_record[k]) for k, img in pred.images.items()}
    if gt.crs is not None and pred.crs is not None and len(gt) == 1 and len(pred) == 1:
        (gk,), (pk,) = list(gt.images), list(pred.images)
        img = pred.images.pop(pk)
        pred.images[gk] = _rekey(img, gk)
        from pyproj import CRS

        if CRS.from_user_input(gt.crs) != CRS.from_user_input(pred.crs):
            import numpy as np

            from rooftrace.labels.geojson import reproject

            img.footprints = list(reproject(np.asarray(img.footprints, dtype=object), CRS.from_user_input(pred.crs), CRS.from_user_input(gt.crs)))
            pred.crs = gt.crs
    elif (gt.crs is None) != (pred.crs is None):
        which, other = ("ground truth", "predictions") if gt.crs is not None else ("predictions", "ground truth")
        raise RooftraceError(
            f"the {which} are in map coordinates and the {other} in pixels: pass the GeoTIFF they belong to (--gt-raster / --pred-raster)"
        )
    return pred


def _rekey(img, key):
    img.key = key
    return img


__all__ = [
    "FORMATS", "LABEL_FORMATS", "LabelFormat", "OTHER_SUFFIXES", "not_written_suffixes", "register", "suffix_defaults_text",
    "suffix_rules_text", "titles_text", "write_labels", "writer_for", "writer_names", "writers", "align_keys",
    "atomic_write_bytes", "atomic_write_text", "keys_of_folder", "read_begc_csv", "read_coco",
    "read_coco_results", "read_geojson", "read_json", "read_labels", "read_mask_folder", "read_spacenet_csv",
    "write_begc_csv", "write_coco", "write_coco_results", "write_geojson", "write_spacenet_csv", "is_pixel_geojson",
]
