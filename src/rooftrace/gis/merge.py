"""The merged layer of many scenes: every scene's buildings in one GeoPackage layer, in one CRS, with the
scene's name on each building, its ``area_m2`` carried over, and every scene's provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rooftrace.core.errors import RooftraceError
from rooftrace.gis.formats import DEFAULT_FORMAT, FORMATS, format_for

#: The merged layer's format (:mod:`rooftrace.gis.formats`), file and layer name.
MERGED_FORMAT = DEFAULT_FORMAT


MERGED_NAME = "footprints" + FORMATS[MERGED_FORMAT].suffix


MERGED_LAYER = "footprints"


def parse_crs(crs: str | None) -> Any:
    if crs is None:
        return None
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    try:
        return CRS.from_user_input(crs)
    except CRSError:
        raise RooftraceError(f"--crs {crs!r}: not a CRS pyproj knows (try EPSG:4326 or EPSG:3857)") from None


def merged_provenance(items: Sequence[tuple[str, dict[str, Any] | None]], crs: Any) -> dict[str, Any]:
    """The merged layer's provenance: each scene's own (``scenes``, by name), with what they all share
    (model, post-processing) also at the top; ``crs`` is the merged layer's."""
    from rooftrace.core.version import __version__
    from rooftrace.gis.provenance import FIELDS, crs_name

    scenes = {stem: prov for stem, prov in items}
    known = [p for p in scenes.values() if p]
    prov: dict[str, Any] = {"software": f"rooftrace {__version__}", "rooftrace_version": __version__}
    shared = []
    for key in ("model", "postprocessing"):
        values = {json.dumps(p.get(key), sort_keys=True) for p in known}
        if len(values) == 1 and len(known) == len(scenes):
            prov[key] = json.loads(values.pop())
            shared.append(key)
        else:
            prov[key] = "differs by scene (see scenes)" if known else None
    prov["source"] = {"scenes": len(scenes)}
    prov["crs"] = crs_name(crs) if crs is not None else None
    prov["fields"] = {"scene": "the scene (file stem) the building was predicted in", **FIELDS}
    # per scene: what is not shared (its raster and CRS, at least), or None for a file written without provenance
    prov["scenes"] = {stem: {k: v for k, v in p.items() if k not in (*shared, "software", "rooftrace_version", "fields")} if p else None
                      for stem, p in scenes.items()}
    return prov


def merge_scenes(items: Sequence[tuple[str, Path]], out: Path, crs: Any = None,
                 failed: list[tuple[Path, str]] | None = None) -> tuple[Path, int, str | None]:
    """Per-scene GeoPackages into one layer ``footprints`` with a ``scene`` field, written atomically.

    ``crs`` (a pyproj CRS) defaults to the first scene's; other scenes are reprojected to it.
    Each building keeps its ``score`` and ``area_m2`` (ground square metres, the same in any CRS;
    measured here, in the scene's own CRS, for a scene file written before rooftrace wrote it).
    The layer's metadata holds :func:`merged_provenance` (item ``rooftrace``), from each scene's
    own. A scene without a CRS cannot join a layer with one: it is appended to ``failed``.
    Returns ``(path, buildings, CRS name)``.
    """
    import pyogrio
    import pyogrio.errors
    import pyogrio.raw
    import shapely
    from pyproj import CRS, Transformer

    from rooftrace.geometry.areas import area_m2
    from rooftrace.gis.provenance import (
        crs_name,
        provenance_metadata,
        read_provenance,
    )

    merged = FORMATS[MERGED_FORMAT]
    if format_for(out) is not merged:
        raise RooftraceError(f"{out}: the merged layer is a {merged.title}; name it {merged.suffix}")
    failed = failed if failed is not None else []
    infos = [(stem, path, pyogrio.read_info(path)) for stem, path in items]
    if crs is None and infos:
        first = infos[0][2].get("crs")
        crs = CRS.from_user_input(first) if first else None
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    for q in out.parent.glob(tmp.name + "*"):
        q.unlink(missing_ok=True)
    names_out = ["scene", "score", "area_m2"]
    joined: list[tuple[str, dict[str, Any] | None]] = []
    count, started = 0, False
    wkt = crs.to_wkt() if crs is not None else None

    def write(geoms: np.ndarray, fields: list[np.ndarray]) -> None:
        nonlocal started
        meta = {} if started else {"layer_metadata": provenance_metadata(merged_provenance(joined, crs))}
        pyogrio.raw.write(tmp, shapely.to_wkb(geoms) if len(geoms) else np.empty(0, dtype=object), fields, names_out,
                          layer=MERGED_LAYER, driver=merged.driver, geometry_type="Polygon", crs=wkt, append=started, **meta)
        started = True

    try:
        accepted = []
        for stem, path, info in infos:
            src_crs = CRS.from_user_input(info["crs"]) if info.get("crs") else None
            if (src_crs is None) != (crs is None):
                failed.append((path, f"has no CRS, so it cannot join the merged layer in {crs_name(crs)}" if src_crs is None
                               else "the merged layer has no CRS (the first scene had none); give --crs"))
                continue
            accepted.append((stem, path, src_crs))
            try:
                joined.append((stem, read_provenance(path)))
            except Exception:  # noqa: BLE001 - a scene file without (readable) provenance still joins
                joined.append((stem, None))
        for stem, path, src_crs in accepted:
            meta, _, wkb, fields = pyogrio.raw.read(path)
            by_name = dict(zip(list(meta["fields"]), fields))
            geoms = shapely.from_wkb(wkb) if len(wkb) else np.empty(0, dtype=object)
            area = np.asarray(by_name["area_m2"], dtype=np.float64) if "area_m2" in by_name else area_m2(geoms, src_crs)
            if crs is not None and src_crs is not None and not src_crs.equals(crs):
                tr = Transformer.from_crs(src_crs, crs, always_xy=True)
                geoms = shapely.transform(geoms, lambda xy, tr=tr: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            score = np.asarray(by_name["score"], dtype=np.float64) if "score" in by_name else np.zeros(len(geoms))
            if len(geoms) == 0 and started:
                continue
            write(geoms, [np.asarray([stem] * len(geoms), dtype=object), score, area])
            count += len(geoms)
        if not started:  # every scene was refused: an empty layer still says what the run gave
            write(np.empty(0, dtype=object), [np.empty(0, dtype=object), np.empty(0), np.empty(0)])
        os.replace(tmp, out)
    except BaseException as exc:
        for q in out.parent.glob(tmp.name + "*"):
            q.unlink(missing_ok=True)
        if isinstance(exc, (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)):  # a full disk
            from rooftrace.core.files import write_error_reason

            raise RooftraceError(f"{out}: cannot write it ({write_error_reason(exc, out, (tmp,))})") from None
        raise
    return out, count, crs_name(crs) if crs is not None else None
