"""Readers and writers of building labels, one module per format.

:func:`read_labels` detects the format from the content, so every command takes labels in any of
them: COCO ground truth, COCO results, the BEGC2024 CSV, SpaceNet CSVs, GeoJSON/GeoPackage (with
or without their GeoTIFF), and folders of binary masks.
"""

from __future__ import annotations

from pathlib import Path

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    read_text,
)
from rooftrace.labels.begc import keys_of_folder, read_begc_csv, write_begc_csv
from rooftrace.labels.coco import (
    coco_to_labelset,
    read_coco,
    read_coco_results,
    write_coco,
    write_coco_results,
)
from rooftrace.labels.geojson import is_pixel_geojson, read_geojson, write_geojson
from rooftrace.labels.masks import read_mask_folder
from rooftrace.labels.records import LabelSet
from rooftrace.labels.spacenet import read_spacenet_csv, write_spacenet_csv

FORMATS = ("coco", "coco-results", "begc-csv", "spacenet-csv", "geojson", "masks")


def read_labels(path: str | Path, raster: str | Path | None = None, images: str | Path | None = None, check_images: bool = True,
                crs: str | None = None, crs_option: str = "--labels-crs") -> LabelSet:
    """Read labels from any supported format, detected from the content.

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
        return read_mask_folder(path, images=images)
    suffix = path.suffix.lower()
    if suffix in (".gpkg", ".geojson", ".shp", ".fgb", ".parquet"):
        return read_geojson(path, raster=raster, crs=crs, crs_option=crs_option)
    if suffix == ".csv":
        text = read_text(path)
        header = text.splitlines()[0].lower() if text.strip() else ""
        if "polygonwkt_pix" in header:
            return read_spacenet_csv(path, text=text)
        if "coordinates" in header or not header:
            return read_begc_csv(path, text=text)
        raise RooftraceError(f"{path}: CSV header {text.splitlines()[0]!r} is neither BEGC2024 (ImageID,Coordinates) nor SpaceNet (ImageId,BuildingId,PolygonWKT_Pix)")
    if suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "images" in data:
            return coco_to_labelset(data, path, check_images=check_images)
        if isinstance(data, list):
            return read_coco_results(path, data=data)
        if isinstance(data, dict) and data.get("type") in ("FeatureCollection", "Feature"):
            return read_geojson(path, raster=raster, crs=crs, crs_option=crs_option)
        raise RooftraceError(f"{path}: JSON that is neither COCO (images/annotations), COCO results (a list) nor GeoJSON")
    raise RooftraceError(f"{path}: unknown label format (suffix {path.suffix!r}); expected .json, .geojson, .gpkg, .fgb, .parquet, .csv or a folder")


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
    "FORMATS", "align_keys", "atomic_write_bytes", "atomic_write_text", "keys_of_folder", "read_begc_csv", "read_coco",
    "read_coco_results", "read_geojson", "read_json", "read_labels", "read_mask_folder", "read_spacenet_csv",
    "write_begc_csv", "write_coco", "write_coco_results", "write_geojson", "write_spacenet_csv", "is_pixel_geojson",
]
