"""A folder of binary masks (optionally beside a folder of images): one mask file per image.

Any non-zero pixel is building. Instances are the 4-connected components of the mask (pixels that
share an edge belong together; pixels that touch only at a corner do not), each traced on pixel
edges so its polygon covers exactly its pixels. Keys come from the file stems, so ``0007.png``
matches image ``0007.tif``.
"""

from __future__ import annotations

from pathlib import Path

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.polygons import mask_to_footprints
from rooftrace.imagery.read import IMAGE_SUFFIXES, list_images
from rooftrace.labels.records import LabelSet, LoadReport, image_key
from rooftrace.labels.registry import LabelFormat


def read_mask(path: Path):
    """A mask file as a 2-D boolean array (any band non-zero), with errors that name the file."""
    import numpy as np

    from rooftrace.imagery.read import PIL_SUFFIXES, open_raster

    if path.suffix.lower() in PIL_SUFFIXES:  # decoded whole with Pillow: GDAL reads a truncated PNG's missing rows as zeros
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                data = np.asarray(im)
        except UnidentifiedImageError:
            raise RooftraceError(f"{path}: not a readable mask (not PNG data)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise RooftraceError(f"{path}: truncated or corrupt mask ({exc})") from None
        data = data[None] if data.ndim == 2 else data.transpose(2, 0, 1)
    else:
        with open_raster(path) as src:
            try:
                data = src.read()
            except Exception as exc:  # rasterio raises RasterioIOError and CPLE errors on corrupt files
                raise RooftraceError(f"{path}: truncated or corrupt mask ({str(exc).splitlines()[0]})") from None
    if data.shape[0] > 4:
        raise RooftraceError(f"{path}: a mask has {data.shape[0]} bands; expected one")
    return np.any(data != 0, axis=0)


def read_mask_folder(masks: str | Path, images: str | Path | None = None, connectivity: int = 4) -> LabelSet:
    """Read every mask in ``masks``; with ``images``, pair them by stem and report the unpaired.

    Images without a mask are listed with no buildings (and reported); masks without an image
    are read but reported.
    """
    masks = Path(masks)
    files = list_images(masks)
    if not files:
        raise RooftraceError(f"{masks}: no mask files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    report = LoadReport(path=str(masks))
    ls = LabelSet(report=report, format="masks", root=Path(images) if images else None)
    image_files = {image_key(p): p for p in list_images(images)} if images is not None else {}
    for f in files:
        key = image_key(f)
        if key in ls:
            report.skip(f"{f.name}: another mask has the same stem; skipped")
            report.counts["duplicate image ids"] += 1
            continue
        try:
            mask = read_mask(f)
        except RooftraceError as exc:
            report.skip(str(exc))
            report.counts["unreadable image files"] += 1
            continue
        report.counts["images"] += 1
        img = ls.get_or_add(key)
        img.height, img.width = mask.shape
        if images is not None:
            if key in image_files:
                img.file_name = image_files[key].name
            else:
                report.skip(f"{f.name}: no image with this stem in {images}")
                report.counts["masks without image"] += 1
        for n, fp in enumerate(mask_to_footprints(mask, connectivity=connectivity)):
            ls.add(key, fp, f"{f.name} component {n}")
    for key, p in image_files.items():
        if key not in ls:
            report.note(f"{p.name}: no mask for this image; taken as having no buildings")
            report.counts["images without mask"] += 1
            img = ls.get_or_add(key)
            img.file_name = p.name
    return ls


FORMAT = LabelFormat(
    name="masks", title="masks", content="a folder of masks", sniff=lambda probe: True,
    read=lambda probe, options: read_mask_folder(probe.path, images=options.images), folder=True,
)
"""The registry entry of a folder of masks (see :mod:`rooftrace.labels.registry`): read only (``prepare`` writes masks)."""
