"""Evaluation splits the model card needs and no data pack has as such: part of a split, or several
splits merged at one pixel size.

- :func:`subset_split`: the images of a split whose records pass a :class:`SplitSpec`'s filters
  (area groups, file-name patterns), as a new split folder of symlinks to the original files (so
  GeoTIFFs keep their georeference and pixel size) and a filtered COCO file.
- :func:`merged_split`: several split specs' images resampled to one pixel size exactly as training
  sees them (``TileDataset``), written as PNG tiles with their scaled footprints: the one validation
  split that ``rooftrace tune`` searches thresholds on.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from rooftrace.config import DataConfig, SplitSpec, resolve_path
from rooftrace.imagery.png import encode_png
from rooftrace.labels.coco import write_coco
from rooftrace.labels.records import ImageLabels, LabelSet
from rooftrace.labels.splits import open_split
from rooftrace.training.dataset import TileDataset, select_tiles


def _fresh(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "image").mkdir(parents=True)


def subset_split(spec: SplitSpec, out: Path) -> Path:
    """The images ``spec`` keeps, as the split folder ``out`` (symlinks + ``<out.name>.json``)."""
    labels = open_split(spec)
    tiles = select_tiles([spec], [labels])
    _fresh(out)
    ls = LabelSet()
    for t in tiles:
        name = Path(t.image.file_name or f"{t.image.key}.png").name
        os.symlink(t.path.resolve(), out / "image" / name)
        ls.images[t.image.key] = dataclasses.replace(t.image, file_name=f"image/{name}", gsd=t.gsd)
    write_coco(ls, out / f"{out.name}.json", force=True)
    return out


def merged_split(specs: list[SplitSpec], gsd: float, out: Path) -> Path:
    """Every image of ``specs``, resampled to ``gsd`` as training resamples it, as one split folder."""
    specs = [dataclasses.replace(s, path=str(resolve_path(s.path))) for s in specs]
    tiles = select_tiles(specs, [open_split(s) for s in specs])
    ds = TileDataset(tiles, dataclasses.replace(DataConfig(), gsd=gsd, cache=False), None)
    _fresh(out)
    ls = LabelSet()
    for i, t in enumerate(ds.items):
        rgb = ds.load(i)[0]
        h, w = rgb.shape[:2]
        name = f"{str(t.key).replace(':', '-')}_{Path(t.image.file_name or 'x').stem}.png"
        (out / "image" / name).write_bytes(encode_png(rgb))
        ls.images[name] = ImageLabels(key=Path(name).stem, footprints=ds.footprints(i, (h, w)), file_name=f"image/{name}",
                                      width=w, height=h, source=t.image.source, gsd=gsd if t.gsd else None)
    write_coco(ls, out / f"{out.name}.json", force=True)
    return out
