"""Training targets rasterised from footprints: building mask, instance ids, boundary, contact.

The three-channel target is the one the SpaceNet-4 winners trained on: *footprint* (every building
pixel), *boundary* (a band along each building's edge) and *contact* (the narrow gaps between
neighbouring buildings). A network that predicts all three lets post-processing recover separate
buildings where a plain mask would merge them: seeds are ``footprint - boundary - contact``, which
are separated even where buildings touch, and they are grown back over the footprint by watershed.

Rasterisation is by pixel centre: pixel ``(c, r)`` is inside a footprint when its centre
``(c + 0.5, r + 0.5)`` is, which matches the pixel-coordinate convention of
:mod:`rooftrace.geometry.shapes` (a polygon traced on pixel edges rasterises back to exactly its pixels).

Distances in this module are Chebyshev distances between pixels (a ``2w + 1`` square window),
so that every band is computed by separable ``scipy.ndimage`` maximum/minimum filters over the
instance map: one pass over the image whatever the number of buildings, and diagonal neighbours
count, so seeds are separated even under 8-connectivity.

This module does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import rasterio.features
from affine import Affine
from scipy import ndimage

from rooftrace.core.errors import RooftraceError
from rooftrace.geometry.shapes import Footprint


def rasterize_footprints(
    footprints: Sequence[Footprint],
    shape: tuple[int, int],
    values: Sequence[int] | None = None,
    dtype: str | np.dtype = np.uint8,
) -> np.ndarray:
    """Burn footprints into a ``shape = (height, width)`` array by pixel centre.

    Args:
        footprints: Geometries in pixel coordinates.
        shape: ``(height, width)`` of the output.
        values: One value per footprint (later ones win where they overlap); default 1 for all.
        dtype: Output dtype (use int32 for instance ids).
    """
    out = np.zeros(shape, dtype=dtype)
    if len(footprints) == 0 or shape[0] == 0 or shape[1] == 0:
        return out
    vals = values if values is not None else [1] * len(footprints)
    return rasterio.features.rasterize(
        zip(footprints, vals), out_shape=shape, fill=0, transform=Affine.identity(), all_touched=False, dtype=dtype, out=out
    )


@dataclass(frozen=True)
class TargetSettings:
    """How wide the boundary and contact bands are, in pixels.

    The defaults are for 0.3 m imagery (BEGC2024, Inria, crowdAI, pan-sharpened SpaceNet):

    * ``boundary_width = 2`` (0.6 m): the inner two pixels of each building. It is what the
      SpaceNet-4 winner's targets amount to (a one-pixel edge dilated by a 3 x 3 square), wide
      enough that a network at stride 1-2 can place it, and narrow enough that any building of at
      least 5 x 5 px (1.5 m x 1.5 m, smaller than any real roof at this resolution) keeps a seed.
    * ``contact_width = 3`` (0.9 m): flags gaps of up to ``2 * 3 - 1 = 5`` px (1.5 m) between two
      buildings, the passages between row houses and sheds that a segmentation network blurs
      shut; wider gaps are separated by the background anyway.

    For coarser imagery (0.5 m SpaceNet Atlanta) ``1`` and ``2`` keep the same metric widths.

    Attributes:
        boundary_width: Pixels of a building within this Chebyshev distance of a pixel that is
            not the same building (background or another building) are boundary. 0 disables.
        contact_width: Pixels within this Chebyshev distance of two different buildings are
            contact. 0 disables.
    """

    boundary_width: int = 2
    contact_width: int = 3

    def __post_init__(self) -> None:
        for name in ("boundary_width", "contact_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise RooftraceError(f"target setting {name} must be a whole number of pixels >= 0, got {value!r}")

    def to_dict(self) -> dict[str, int]:
        """The settings as plain JSON-able values (for ``summary.json``)."""
        return {k: int(v) for k, v in asdict(self).items()}


@dataclass
class Targets:
    """The training targets of one image.

    Attributes:
        mask: ``(H, W)`` uint8, 1 on every building pixel. The footprint channel is this mask as
            it is (nothing is cut out of it): post-processing subtracts boundary and contact
            itself to get seeds, and grows them back over this full mask.
        instances: ``(H, W)`` int32, ``k`` on the pixels of footprint ``k - 1`` (ids follow the
            footprint order; a later footprint wins where two overlap), 0 on background.
        boundary: ``(H, W)`` uint8, 1 on the inner band of each building (see
            :func:`boundary_band`); always a subset of ``mask``.
        contact: ``(H, W)`` uint8, 1 where two different buildings are close (see
            :func:`contact_map`), on background and building pixels alike.
    """

    mask: np.ndarray
    instances: np.ndarray
    boundary: np.ndarray
    contact: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.mask.shape  # type: ignore[return-value]

    def stack(self) -> np.ndarray:
        """``(3, H, W)`` uint8 0/1: footprint, boundary, contact (the network's target order)."""
        return np.stack([self.mask, self.boundary, self.contact]).astype(np.uint8, copy=False)

    def rgb(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 0/255 with channels footprint, boundary, contact (for PNG files)."""
        return np.ascontiguousarray(self.stack().transpose(1, 2, 0)) * np.uint8(255)


def instance_map(footprints: Sequence[Footprint], shape: tuple[int, int]) -> np.ndarray:
    """An int32 ``(H, W)`` map with id ``k`` on the pixels of footprint ``k - 1``, 0 elsewhere.

    Ids follow the footprint order, so they can be traced back to the labels; where footprints
    overlap the later one wins (the same rule as :func:`rasterize_footprints`). A footprint that
    covers no pixel centre, or is wholly overwritten, simply has no pixels.
    """
    return rasterize_footprints(footprints, shape, values=range(1, len(footprints) + 1), dtype=np.int32)


def building_mask(footprints: Sequence[Footprint], shape: tuple[int, int]) -> np.ndarray:
    """A boolean ``(H, W)`` mask of the pixels whose centre lies in any footprint."""
    return rasterize_footprints(footprints, shape).astype(bool)


def _check_instances(instances: np.ndarray) -> np.ndarray:
    """The id map as int32 (what the filters below are exact for), after checking it is one."""
    inst = np.asarray(instances)
    if inst.ndim != 2:
        raise ValueError(f"instances must be a 2-D id map, got shape {inst.shape}")
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must hold integer ids, got dtype {inst.dtype}")
    if inst.size and (int(inst.min()) < 0 or int(inst.max()) >= np.iinfo(np.int32).max):
        raise ValueError("instance ids must lie in 0 .. 2**31 - 2")
    # int32 throughout: scipy's filters are not exact near the int64 limits, and one dtype keeps
    # the background sentinel in contact_map simple.
    return inst.astype(np.int32, copy=False)


def boundary_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels of a building within ``width`` px (Chebyshev) of a pixel that is not that building.

    The band is the *inner* band only, so it is a subset of the building mask and
    ``footprint - boundary`` is each building shrunk by ``width`` px. Because "not that building"
    includes a neighbouring building, the pixels along a shared edge are boundary on both sides,
    which is what separates the seeds of two touching buildings. The image border is not an edge:
    a building cut by the tile edge continues beyond it, so no band is drawn along the border.

    Computed with one maximum and one minimum filter over the ids: a pixel is off the edge of its
    building exactly when every id in its ``(2 * width + 1)`` window equals its own.

    Args:
        instances: 2-D integer id map, 0 for background (see :func:`instance_map`).
        width: Band width in pixels; 0 gives an empty band.

    Returns:
        A boolean array of the same shape.
    """
    inst = _check_instances(instances)
    if width <= 0 or not inst.any():
        return np.zeros(inst.shape, dtype=bool)
    size = 2 * int(width) + 1
    # mode="nearest" repeats border pixels, which are inside the window anyway: the window is
    # effectively clipped to the image, so the border adds no edge.
    hi = ndimage.maximum_filter(inst, size=size, mode="nearest")
    lo = ndimage.minimum_filter(inst, size=size, mode="nearest")
    return (inst > 0) & ((hi != inst) | (lo != inst))


def contact_map(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` px (Chebyshev) of two different buildings.

    A pixel is within distance 0 of its own building, so this marks the background gap pixels
    between two buildings less than ``2 * width`` px apart *and* the building pixels on either
    side of such a gap or of a shared edge, up to ``width`` px deep. Isolated buildings get none.

    Vectorised: the window holds two different ids exactly when its largest id is larger than its
    smallest non-zero id, which is one maximum filter over the ids and one minimum filter over the
    ids with background replaced by the largest possible id.

    Args:
        instances: 2-D integer id map, 0 for background (see :func:`instance_map`).
        width: Reach in pixels; 0 gives no contact.

    Returns:
        A boolean array of the same shape.
    """
    inst = _check_instances(instances)
    if width <= 0 or not inst.any():
        return np.zeros(inst.shape, dtype=bool)
    size = 2 * int(width) + 1
    hi = ndimage.maximum_filter(inst, size=size, mode="nearest")
    nonzero = np.where(inst > 0, inst, np.int32(np.iinfo(np.int32).max))
    lo = ndimage.minimum_filter(nonzero, size=size, mode="nearest")
    return (hi > 0) & (lo < hi)


def make_targets(
    footprints: Sequence[Footprint], shape: tuple[int, int], settings: TargetSettings = TargetSettings()
) -> Targets:
    """All targets of one image: mask, instance ids, boundary and contact.

    Args:
        footprints: Building footprints in pixel coordinates (a :class:`~rooftrace.labels.records.ImageLabels`'
            ``footprints``).
        shape: ``(height, width)`` of the image.
        settings: Band widths (see :class:`TargetSettings`).
    """
    inst = instance_map(footprints, shape)
    mask = inst > 0
    return Targets(
        mask=mask.astype(np.uint8),
        instances=inst,
        boundary=boundary_band(inst, settings.boundary_width).astype(np.uint8),
        contact=contact_map(inst, settings.contact_width).astype(np.uint8),
    )
