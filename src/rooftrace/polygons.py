"""From raster masks to footprint polygons traced on pixel edges.

A pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)``: tracing along pixel edges gives polygons
whose area equals the pixel count exactly (a 3 x 3 block of pixels becomes a 3 x 3 square), unlike
contours through pixel centres, which shrink every outline by half a pixel.

This module does not import torch.
"""

from __future__ import annotations

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import shape

from .geometry import Footprint


def mask_to_footprints(mask: np.ndarray, connectivity: int = 4, transform: Affine | None = None) -> list[Footprint]:
    """One polygon per connected component of a binary mask, holes kept, traced on pixel edges.

    Args:
        mask: 2-D boolean (or 0/non-zero) array.
        connectivity: 4 (pixels sharing an edge belong together) or 8 (corners too).
        transform: Pixel-to-output affine; identity gives pixel coordinates.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    m = (mask != 0).astype(np.uint8)
    if not m.any():
        return []
    return instances_to_footprints(_label(m, connectivity), transform=transform, connectivity=connectivity)


def _label(m: np.ndarray, connectivity: int) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    labels, _ = ndimage.label(m, structure=structure)
    return labels.astype(np.int32)


def instances_to_footprints(instances: np.ndarray, transform: Affine | None = None, connectivity: int = 4) -> list[Footprint]:
    """One footprint per non-zero id of an instance map, in increasing id order.

    An id whose pixels fall into several pieces gives a MultiPolygon.
    """
    inst = np.asarray(instances).astype(np.int32, copy=False)
    t = transform if transform is not None else Affine.identity()
    parts: dict[int, list] = {}
    for geom, value in rasterio.features.shapes(inst, mask=inst > 0, connectivity=connectivity, transform=t):
        parts.setdefault(int(value), []).append(shape(geom))
    out: list[Footprint] = []
    for k in sorted(parts):
        polys = parts[k]
        fp = polys[0] if len(polys) == 1 else shapely.union_all(polys)
        if not fp.is_valid:
            fp = shapely.make_valid(fp)
        out.append(fp)
    return out
