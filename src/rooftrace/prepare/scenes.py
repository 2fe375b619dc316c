"""Georeferenced scenes and their map-coordinate labels cut into a BEGC2024-style training split.

``rooftrace prepare-scenes SCENE.tif LABELS.geojson --out SPLIT_DIR`` turns a scene with its
footprints (GeoJSON or GeoPackage in any CRS; reprojected to the raster's CRS and converted to its
pixels by :func:`rooftrace.labels.geojson.read_geojson`) into the layout ``rooftrace train`` and
``rooftrace prepare`` read::

    SPLIT_DIR/image/<stem>_<row>_<col>.tif   3-band uint8 GeoTIFF tiles, each with its own
                                             georeference (row, col: pixel offset of its
                                             top-left corner in the scene)
    SPLIT_DIR/<SPLIT_DIR name>.json          COCO ground truth, BEGC2024 layout, ``source`` per image

Tiles are cut on the grid ``predict-scene`` uses (:func:`rooftrace.imagery.windows.window_starts` with no
overlap: the last row and column are shifted back to end at the scene's edge, so every tile has
the full size) and their pixels are converted exactly as ``predict-scene`` converts them (same
band mapping, same per-scene stretch, nodata black), so a model trains on what it will be given.
Tiles with no valid pixel are left out; tiles that are partly nodata keep a GDAL mask.

Each footprint is clipped to every tile it overlaps, shifted to the tile's pixels and snapped to
the 0.01 px grid the COCO writer rounds to, so the file reads back with nothing to repair; pieces
that have no area left after clipping (a building touching a tile along an edge) are dropped. A
building cut by a tile edge is a building in both tiles, as in BEGC2024.

This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.io import MemoryFile
from rasterio.windows import Window
from tqdm import tqdm

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes
from rooftrace.core.locks import exclusive
from rooftrace.geometry.shapes import clean_footprint
from rooftrace.imagery.raster import DEFAULT_STRETCH, GDAL_CACHE_MB, Scene
from rooftrace.imagery.windows import DEFAULT_TILE, window_starts
from rooftrace.labels.coco import write_coco
from rooftrace.labels.geojson import read_geojson
from rooftrace.labels.records import ImageLabels, LabelSet, LoadReport, image_key

#: Grid (pixels) the COCO writer rounds coordinates to; pieces are snapped to it before writing.
COCO_GRID = 0.01


@dataclass
class SceneSplitResult:
    """What :func:`prepare_scenes` did.

    Attributes:
        split_dir, annotations: The split folder and its COCO file.
        n_tiles: Tiles written; ``n_tiles_nodata``: tiles left out for having no valid pixel.
        n_buildings: Footprints read from the label files.
        n_buildings_kept: Footprints with at least one piece in some tile.
        n_pieces: Annotations written (a building cut by tile edges gives one per tile).
        notes: What the label readers reported (reprojection, repairs, drops), per file.
        stale_tiles: Files in ``image/`` this run did not write (left from an earlier run).
    """

    split_dir: Path
    annotations: Path
    n_tiles: int = 0
    n_tiles_nodata: int = 0
    n_buildings: int = 0
    n_buildings_kept: int = 0
    n_pieces: int = 0
    notes: list[str] = field(default_factory=list)
    stale_tiles: int = 0

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"wrote {self.n_tiles} tiles and {self.n_pieces} annotations ({self.n_buildings_kept} of {self.n_buildings} "
            f"buildings) into {self.split_dir}; annotations in {self.annotations.name}",
        ]
        if self.n_tiles_nodata:
            lines.append(f"  {self.n_tiles_nodata} tiles left out: no valid pixel")
        lost = self.n_buildings - self.n_buildings_kept
        if lost:
            lines.append(f"  {lost} buildings are in no tile (outside the raster, in nodata, or with no area)")
        if self.stale_tiles:
            lines.append(f"  warning: {self.stale_tiles} files in {self.split_dir / 'image'} were not written by this run "
                         f"(left from an earlier one); {self.annotations.name} lists only this run's tiles")
        lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)


def _tile_bytes(rgb: np.ndarray, valid: np.ndarray | None, crs, transform) -> bytes:
    """A 3-band uint8 GeoTIFF of one tile, in memory (written to disk atomically by the caller)."""
    h, w = rgb.shape[:2]
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs=crs, transform=transform,
                      photometric="RGB") as dst:
            dst.write(rgb.transpose(2, 0, 1))
            if valid is not None and not valid.all():
                dst.write_mask(valid.astype(np.uint8) * np.uint8(255))
        return mem.read()


def _pieces(footprints: np.ndarray, tree: shapely.STRtree, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, list]:
    """Footprints clipped to tile ``[x0, x0 + w) x [y0, y0 + h)``, in the tile's pixels: (indices, pieces)."""
    box = shapely.box(x0, y0, x0 + w, y0 + h)
    idx = tree.query(box, predicate="intersects")
    if len(idx) == 0:
        return idx, []
    clipped = shapely.intersection(footprints[idx], box)
    offset = np.array([-x0, -y0], dtype=np.float64)
    clipped = shapely.set_precision(shapely.transform(clipped, lambda xy: xy + offset), COCO_GRID)
    keep_idx, pieces = [], []
    for k, geom in zip(idx, clipped):
        cleaned = clean_footprint(geom)
        if cleaned.footprint is not None:
            keep_idx.append(k)
            pieces.append(cleaned.footprint)
    return np.asarray(keep_idx, dtype=np.int64), pieces


@exclusive("split_dir")
def prepare_scenes(
    pairs: Sequence[tuple[str | Path, str | Path]],
    split_dir: str | Path,
    *,
    tile: int = DEFAULT_TILE,
    bands: str | Sequence[int] | None = None,
    stretch: tuple[float, float] = DEFAULT_STRETCH,
    source: str | None = None,
    force: bool = False,
    progress: bool = True,
    labels_crs: str | None = None,
) -> SceneSplitResult:
    """Cut scenes and their labels into ``split_dir`` (tiles + COCO), ready for ``rooftrace train``.

    Args:
        pairs: ``(scene raster, label file)`` pairs; labels are GeoJSON/GeoPackage in any CRS.
        split_dir: Output split folder; the COCO file is ``<its name>.json``.
        tile: Tile size in pixels (smaller scenes give one tile of their own size).
        bands, stretch: As for ``predict-scene`` (see :class:`rooftrace.imagery.raster.Scene`).
        source: The COCO ``source`` of every tile; default each scene's file stem.
        force: Write into a split folder that already holds a split (files are overwritten).
        labels_crs: The labels' CRS when a file declares none or a wrong one (``--labels-crs``).
        progress: Show a progress bar.

    Raises:
        RooftraceError: No pairs, a split already there without ``force``, unreadable inputs,
            two scenes with the same stem, or a raster that needs a band mapping.
    """
    if not pairs:
        raise RooftraceError("prepare-scenes needs at least one SCENE LABELS pair")
    if tile < 32:
        raise RooftraceError(f"--tile {tile}: must be at least 32 pixels")
    split_dir = Path(split_dir)
    annotations = split_dir / f"{split_dir.resolve().name}.json"
    image_dir = split_dir / "image"
    existing_tiles = {p.name for p in image_dir.iterdir()} if image_dir.is_dir() else set()
    if (annotations.exists() or existing_tiles) and not force:
        raise RooftraceError(f"{split_dir}: already holds a split ({annotations.name} or image/); pass --force to overwrite it")
    stems = [Path(s).stem for s, _ in pairs]
    if len(set(stems)) != len(stems):
        raise RooftraceError(f"two scenes share a file stem ({', '.join(stems)}); their tile names would collide")
    for scene_path, labels_path in pairs:  # every input checked before anything is written
        if not Path(labels_path).exists():
            raise RooftraceError(f"{labels_path}: no such file")
        Scene(scene_path, bands=bands, percentiles=stretch).close()
    result = SceneSplitResult(split_dir, annotations)
    ls = LabelSet(root=split_dir, report=LoadReport(path=str(annotations)), format="coco")
    written: set[str] = set()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        for scene_path, labels_path in pairs:
            scene_path, labels_path = Path(scene_path), Path(labels_path)
            with Scene(scene_path, bands=bands, percentiles=stretch) as sc:
                gt = read_geojson(labels_path, raster=scene_path, crs=labels_crs)
                if gt.report.messages or gt.report.dropped or gt.report.repaired:
                    result.notes.append(gt.report.summary())
                footprints = np.asarray([fp for img in gt for fp in img.footprints], dtype=object)
                result.n_buildings += len(footprints)
                tree = shapely.STRtree(footprints)
                kept = np.zeros(len(footprints), dtype=bool)
                tw, th = min(tile, sc.width), min(tile, sc.height)
                ys, xs = window_starts(sc.height, tile, 0), window_starts(sc.width, tile, 0)
                bar = tqdm(total=len(ys) * len(xs), desc=f"tiles {scene_path.name}", unit="tile", disable=not progress)
                for y0 in ys.tolist():
                    for x0 in xs.tolist():
                        bar.update(1)
                        win = Window(x0, y0, tw, th)
                        rgb, valid = sc.read(win)
                        if valid is not None and not valid.any():
                            result.n_tiles_nodata += 1
                            continue
                        stem = f"{scene_path.stem}_{y0}_{x0}"
                        name = f"{stem}.tif"
                        atomic_write_bytes(image_dir / name, _tile_bytes(rgb, valid, sc.src.crs, sc.transform @ Affine.translation(x0, y0)),
                                           force=True)
                        written.add(name)
                        idx, pieces = _pieces(footprints, tree, x0, y0, tw, th)
                        kept[idx] = True
                        key = image_key(stem)
                        ls.images[key] = ImageLabels(key=key, footprints=pieces, file_name=f"image/{name}", width=tw, height=th,
                                                     source=source or scene_path.stem)
                        result.n_tiles += 1
                        result.n_pieces += len(pieces)
                bar.close()
                result.n_buildings_kept += int(kept.sum())
    write_coco(ls, annotations, force=True)
    result.stale_tiles = len(existing_tiles - written)
    return result


__all__ = ["COCO_GRID", "SceneSplitResult", "prepare_scenes"]
