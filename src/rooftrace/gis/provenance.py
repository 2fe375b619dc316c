"""Provenance of what rooftrace writes: the model file and its SHA-256, the post-processing method and
settings, the source imagery, the rooftrace version and the CRS, in the form each GIS format can hold
(GeoPackage and FlatGeobuf layer metadata, a GeoJSON top-level member, GeoParquet file metadata), and
reading it back. Shared by tile predictions and scenes; each format's entry in :mod:`rooftrace.gis.formats`
says where it keeps it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from pyproj import CRS

#: The metadata key (GPKG/FlatGeobuf layer metadata, GeoJSON foreign member, Parquet key-value) holding the provenance.
PROVENANCE_KEY = "rooftrace"


def model_sha256(path: str | Path) -> str:
    """SHA-256 of a model file (:func:`rooftrace.core.hashing.sha256_file`), cached per process by
    path, size and modification time, so that a run of many scenes hashes its model once."""
    from rooftrace.core.hashing import sha256_file

    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(path)
    return _SHA256[key]


def _settings_dict(settings: Any) -> dict[str, Any]:
    if settings is None:
        from rooftrace.instances.postprocess import PostprocessSettings

        settings = PostprocessSettings()
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        return dataclasses.asdict(settings)
    return dict(settings)


def make_provenance(*, source: str | Path | None, crs: CRS | None, model_path: str | Path | None = None,
                    model_description: str | None = None, method: str | None = None, settings: Any = None,
                    source_kind: str = "raster", settings_from: dict[str, Any] | None = None,
                    runtime: str | None = None) -> dict[str, Any]:
    """What made an output, as a JSON-serialisable dict (written into the file's metadata by the writers).

    Args:
        source: The raster (or, ``source_kind="images"``, the folder of tiles) predicted.
        crs: The output's CRS (``None``: unknown).
        model_path: The model file (its name, absolute path and SHA-256 are recorded); else
            ``model_description`` names the model (a callable).
        method, settings: Post-processing (``settings=None``: the defaults, recorded in full).
        runtime: What ran the network and how it was chosen (:attr:`rooftrace.inference.runtime.ModelRuntime.runtime_line`).
        settings_from: Where the settings came from and what the user changed
            (:meth:`rooftrace.inference.tuned.Postprocessing.to_json`), recorded beside them.
    """
    from rooftrace.core.version import __version__

    model: dict[str, Any]
    if model_path is not None:
        p = Path(model_path)
        model = {"file": p.name, "path": str(p.resolve()), "sha256": model_sha256(p)}
    else:
        model = {"file": None, "sha256": None, "description": model_description}
    if runtime is not None:
        model["runtime"] = runtime
    prov = {
        "software": f"rooftrace {__version__}",
        "rooftrace_version": __version__,
        "model": model,
        "postprocessing": ({"method": method, "settings": _settings_dict(settings), **(settings_from or {})}
                           if method is not None else None),
        "source": {source_kind: str(Path(source).resolve()) if source is not None else None},
        "crs": crs_name(crs) if crs is not None else None,
        "fields": dict(FIELDS),
    }
    return json.loads(json.dumps(prov, default=_plain))  # numpy numbers, tuples and paths as JSON has them


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def describe_provenance(prov: dict[str, Any]) -> str:
    """One line for a GIS's layer description."""
    model = prov.get("model") if isinstance(prov.get("model"), dict) else {}
    name = model.get("file") or model.get("description") or ("models that differ by scene" if prov.get("model") else "a model")
    sha = f" (SHA-256 {model['sha256'][:12]})" if model.get("sha256") else ""
    pp = prov.get("postprocessing") if isinstance(prov.get("postprocessing"), dict) else {}
    kind, src = next(iter((prov.get("source") or {}).items()), (None, None))
    where = Path(src).name if isinstance(src, str) else f"{src} {kind}" if src is not None else "imagery"
    return (f"Building footprints by {prov.get('software', 'rooftrace')} from {where} with "
            f"{name}{sha}{', ' + pp['method'] if pp.get('method') else ''}; area_m2: ground area in m², score: 0-1. "
            f"Full provenance: metadata item {PROVENANCE_KEY!r}.")


def with_crs(provenance: dict[str, Any] | None, crs: CRS | None) -> dict[str, Any]:
    prov = dict(provenance) if provenance is not None else make_provenance(source=None, crs=crs)
    prov["crs"] = crs_name(crs) if crs is not None else None
    prov.setdefault("fields", dict(FIELDS))
    return prov


def provenance_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """GDAL layer metadata holding ``provenance`` (GeoPackage, FlatGeobuf)."""
    return {PROVENANCE_KEY: json.dumps(provenance, sort_keys=True), "DESCRIPTION": describe_provenance(provenance)}


def read_provenance(path: str | Path, layer: str | None = None) -> dict[str, Any] | None:
    """The provenance a rooftrace writer put into a vector file (any format of :data:`rooftrace.gis.formats.FORMATS`),
    ``None`` when it has none."""
    from rooftrace.gis.formats import format_for

    path = Path(path)
    fmt = format_for(path)
    if fmt is not None and fmt.write == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_schema(path).metadata or {}
        text = meta.get(PROVENANCE_KEY.encode())
        return json.loads(text) if text else None
    import pyogrio

    meta = pyogrio.read_info(path, layer=layer).get("layer_metadata") or {}
    for key in (PROVENANCE_KEY, "DESCRIPTION"):
        try:
            value = json.loads(meta[key])
        except (KeyError, ValueError):
            continue
        if isinstance(value, dict):
            return value
    return None


def geojson_head(name: str, provenance: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """The start of an RFC 7946 FeatureCollection (no ``crs`` member) carrying ``provenance``, up to
    and including ``"features": [``."""
    head: dict[str, Any] = {"type": "FeatureCollection", "name": name,
                            "description": json.dumps(provenance, sort_keys=True),
                            PROVENANCE_KEY: {**(extra or {}), **provenance}}
    return json.dumps(head)[:-1] + ', "features": [\n'


#: The fields of every building, in order, and what they mean (also written into the provenance).
FIELDS = {
    "score": "the model's confidence in the building, 0-1",
    "area_m2": "area on the ground in square metres (geodesic, on the CRS's ellipsoid)",
}


def crs_name(crs: CRS) -> str:
    """``EPSG:32618``, or the CRS's WKT when no authority names it (what provenance records)."""
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.to_wkt()


def crs_label(crs: Any) -> str:
    """``EPSG:32618``, or the CRS's name when no authority names it (what a summary line shows); ``crs``:
    anything pyproj reads."""
    crs = CRS.from_user_input(crs)
    auth = crs.to_authority()
    return f"{auth[0]}:{auth[1]}" if auth else crs.name


_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> SHA-256: a model is hashed once per process
