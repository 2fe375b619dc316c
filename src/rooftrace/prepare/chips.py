"""A folder of image chips and one file of building footprints in map coordinates -> a BEGC2024-style split.

This is how the humanitarian mapping community ships training data (HOT fAIr, RoboSat, ramp): chips cut
on the web-map tile grid and one GeoJSON of OpenStreetMap buildings for the whole area.
``rooftrace prepare-chips CHIPS_DIR --labels LABELS --out OUT`` (or, in a notebook,
:func:`prepare_chips`) turns them into splits that ``rooftrace prepare``, ``train`` and ``evaluate``
take as they are::

    OUT/train/image/<chip>.png   OUT/train/train.json       COCO ground truth, BEGC2024 layout
    OUT/val/image/<chip>.png     OUT/val/val.json
    OUT/test/image/<chip>.png    OUT/test/test.json
    OUT/prepare-chips.json       the options, the counts, and what happened to every chip

Example (a notebook)::

    from rooftrace.prepare.chips import prepare_chips
    result = prepare_chips("osm-oam/kampala/chips", "osm-oam/kampala/labels.geojson", "out/kampala",
                           model_gsd=0.3, val=0.2, test=0.2)
    print(result.summary())

**Where a chip lies.** A chip's own georeference comes first (GeoTIFF tags, or GDAL's ``.aux.xml``
sidecar or a world file beside a PNG/JPEG: any CRS, degrees included); else its name or path on the
web-map tile grid: ``OAM-<x>-<y>-<z>.png`` or ``<z>/<x>/<y>.png`` (XYZ; ``tms=True`` counts ``y``
from the bottom). See :mod:`rooftrace.imagery.georef`. A chip with neither is an error.

**Labels.** GeoJSON or GeoPackage in any CRS (a GeoJSON without a ``crs`` member is RFC 7946
longitude/latitude; coordinates that cannot be degrees are an error asking for ``labels_crs``).
Polygon vertices are reprojected exactly (pyproj, x = east) into each chip's CRS, converted to its
pixels through the inverse of the written image's transform (DESIGN.md's convention: the origin is the
top-left corner of the top-left pixel), clipped to the chip and snapped to the 0.01 px grid the COCO
writer keeps. Pieces under 1 px² (a building grazing a chip's edge) are dropped and counted. A
building cut by a chip border is a building in each chip it reaches, as in BEGC2024.

**Pixel size.** ``model_gsd=`` (the pixel size the model will train at; ``gsd=`` is its older name, still
taken) resamples chip and labels together: each axis is scaled by its own measured
pixel size over the target (area interpolation when shrinking, bilinear when enlarging), the output is
``round(w * fx) x round(h * fy)`` and the labels go through the written image's transform, so they stay
aligned to a fraction of a pixel. Every COCO image record carries ``gsd`` (metres a pixel of the written
image, measured geodesically), ``source`` (default: the chips folder's parent, ``banepa``),
``area_group`` (its block) and, for provenance, ``chip`` (the original file), ``tile`` (``[x, y, z]``
or null), ``crs`` and ``transform`` (of the written image; readers ignore these). Without ``model_gsd``, chips
of several zoom levels or pixel sizes more than 10% apart are an error.

**Split by area.** Chips are grouped in blocks of neighbours: for tile-named chips the ancestor tile
at a coarser zoom (4 x 4 chips of the coarsest zoom, made smaller, 2 x 2 then 1 x 1, until there are
enough blocks for the shares), so every zoom level of one place is in one block; otherwise a grid
over the chips' centres. Whole blocks go to train, val and test, seeded, so that the shares are met
as nearly as the blocks allow, counted in chips. A building cut by the border of two blocks of
different splits belongs to the split of the chip that holds its centroid (else its largest part);
its part in a chip of another split is **dropped** from that chip's labels and counted, so no
building is on both sides. (The building's pixels then stay unlabelled at that chip's edge: a small
cost, paid only along split borders, for an honest validation score.)

**Chips with no building.** A chip inside the mapped area with no building is a true negative and is
kept; one outside it is unknown (it must not teach the model that there is nothing there) and is left
out with a note. The mapped area is ``aoi`` (a polygon file) when given, else the convex hull of the
labels grown by half a chip. ``empty="keep"`` or ``"skip"`` keeps or leaves out every chip without a
building instead. Chips with buildings are always kept.

**Pixels.** Chips are written as RGB PNG (alpha dropped). Fully transparent pixels are nodata: a chip
with no opaque pixel is left out, one with some is kept (nodata black) and counted in the summary.

This module does not import torch.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import atomic_write_bytes, atomic_write_text
from rooftrace.core.locks import exclusive
from rooftrace.imagery.georef import (
    WGS84,
)
from rooftrace.imagery.resample import gsd_alias
from rooftrace.labels.coco import write_coco
from rooftrace.labels.records import ImageLabels, LabelSet, LoadReport, image_key
from rooftrace.prepare.blocks import assign_blocks, centres_3857, make_blocks
from rooftrace.prepare.chip_labels import (
    chip_pieces,
    mapped_area,
    read_footprints,
    shift_footprints,
    to_crs,
)
from rooftrace.prepare.chip_sources import (
    SPLITS,
    Chip,
    chip_polygon,
    find_chips,
    locate_chips,
    plan_sizes,
)


@dataclass
class ChipsResult:
    """What :func:`prepare_chips` did.

    Attributes:
        out_dir: The output folder; ``splits``: split name -> its COCO file.
        chips: Every chip found, with its block, split and status.
        per_split: split -> ``{"chips", "annotations", "buildings"}``.
        n_buildings: Polygons read from the labels file; ``n_outside``: of them, in no chip.
        counts: Dropped and clipped pieces, skipped chips, ... by name.
        block_scheme: How the blocks were made (``"tiles at zoom 17"``, ``"grid of 2 x 2 chips"``).
        notes: Lines for the user (label file repairs, empty splits).
    """

    out_dir: Path
    splits: dict[str, Path] = field(default_factory=dict)
    chips: list[Chip] = field(default_factory=list)
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)
    n_buildings: int = 0
    n_outside: int = 0
    counts: Counter = field(default_factory=Counter)
    block_scheme: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal."""
        kept = [c for c in self.chips if c.status == "kept"]
        lines = [f"read {len(self.chips)} chips and {self.n_buildings} buildings; wrote {len(kept)} chips into {self.out_dir}"]
        if kept:
            g = [c.gsd for c in kept]
            lines.append(f"  pixel size {min(g):.3f}-{max(g):.3f} m; blocks: {self.block_scheme}")
        for s, d in self.per_split.items():
            lines.append(f"  {s:5s}: {d['chips']:4d} chips ({d['blocks']} blocks, {d['empty']} without buildings), "
                         f"{d['buildings']} buildings in {d['annotations']} annotations -> {self.splits[s]}")
        c = self.counts
        if self.n_outside:
            lines.append(f"  {self.n_outside} buildings lie in no chip (or reach one only as a sliver)")
        for key, text in (("clipped", "building pieces clipped at a chip edge"),
                          ("sliver", "slivers under 1 px² dropped (a building grazing a chip edge)"),
                          ("split-border pieces", "pieces dropped because their building belongs to another split "
                                                  f"({c['split-border buildings']} buildings cut by a split border)"),
                          ("empty-outside", "chips without buildings outside the mapped area left out (unknown ground)"),
                          ("empty-skipped", "chips without buildings left out (--empty skip)"),
                          ("border-only", "chips whose only buildings belong to another split left out"),
                          ("nodata", "chips with no opaque pixel left out"),
                          ("partial-nodata", f"chips with some transparent (nodata) pixels, written black "
                                             f"({c['nodata px'] / max(1, c['partial-nodata px total']):.1%} of their pixels)"),
                          ("unreadable", "chips that could not be read, left out"),
                          ("stale removed", "images of an earlier run removed from the split folders"),
                          ("stale", "files in the split folders' image/ not written by this run (left as they are)")):
            if c[key]:
                lines.append(f"  {c[key]} {text}")
        lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- chips


# --------------------------------------------------------------------------------------------- labels


# --------------------------------------------------------------------------------------------- blocks


# ---------------------------------------------------------------------------------------------- pixels


def _read_chip(c: Chip) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB uint8 and the valid (not fully transparent / not nodata) mask, or ``None`` when all valid."""
    from rooftrace.imagery.read import open_raster, read_rgb

    rgb = read_rgb(c.path)
    valid = None
    if c.path.suffix.lower() in (".png", ".webp"):
        from PIL import Image

        with Image.open(c.path) as im:
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                alpha = np.asarray(im.convert("RGBA"))[..., 3]
                valid = alpha > 0
    else:
        with open_raster(c.path) as src:
            from rasterio.enums import MaskFlags

            if any(MaskFlags.all_valid not in f for f in src.mask_flag_enums):
                valid = src.dataset_mask() > 0
    if valid is not None and valid.all():
        valid = None
    return rgb, valid


def _resample(c: Chip, rgb: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    import cv2

    h, w = rgb.shape[:2]
    if (w, h) == (c.out_w, c.out_h):
        return rgb, valid
    shrink = c.out_w <= w and c.out_h <= h
    rgb = cv2.resize(rgb, (c.out_w, c.out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if valid is not None:
        valid = cv2.resize(valid.astype(np.uint8), (c.out_w, c.out_h), interpolation=cv2.INTER_NEAREST) > 0
    return rgb, valid


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- main


def _check_out(out_dir: Path, force: bool) -> None:
    for s in SPLITS:
        d = out_dir / s
        if (d / f"{s}.json").exists() or ((d / "image").is_dir() and any((d / "image").iterdir())):
            if not force:
                raise RooftraceError(f"{out_dir}: already holds a split ({s}/{s}.json or {s}/image/); "
                                     "pass --force to overwrite it, or choose another --out")


def _check_not_inside(out_dir: Path, chips_dir: Path) -> None:
    """CHIPS_DIR is searched recursively, so an ``out_dir`` inside it would be read as chips by the next run: its
    PNGs, the same ground again under other names, would land in the splits a second time (in train and test alike)."""
    out_r, chips_r = out_dir.resolve(), chips_dir.resolve()
    if out_r == chips_r or chips_r in out_r.parents:
        raise RooftraceError(f"{out_dir}: --out lies inside CHIPS_DIR {chips_dir}, which is searched for chips recursively: "
                             "the next run would read the chips written there as more chips of the same ground (in train "
                             "and test alike); choose an --out outside it")


@exclusive("out_dir")
def prepare_chips(
    chips_dir: str | Path,
    labels: str | Path,
    out_dir: str | Path,
    *,
    model_gsd: float | None = None,
    val: float = 0.15,
    test: float = 0.15,
    block: int | None = None,
    block_zoom: int | None = None,
    aoi: str | Path | None = None,
    empty: str = "auto",
    tms: bool = False,
    labels_crs: str | None = None,
    source: str | None = None,
    seed: int = 0,
    label_shift: tuple[float, float] | None = None,
    balance: str = "chips",
    force: bool = False,
    progress: bool = True,
    gsd: float | None = None,
) -> ChipsResult:
    """Turn a folder of chips and one labels file into ``out_dir/{train,val,test}`` (see the module docstring).

    Args:
        chips_dir: Folder of chips (searched recursively): georeferenced rasters in any CRS, or
            PNG/JPEG/WebP named ``OAM-<x>-<y>-<z>`` or laid out ``<z>/<x>/<y>.<ext>``.
        labels: Building footprints, GeoJSON or GeoPackage, any CRS.
        out_dir: Output folder.
        model_gsd: Target pixel size in metres, the model's (resample chips and labels together); ``None``
            keeps the chips' own, which must then agree within 10%.
        val, test: Shares of the chips (counted in chips, met block by block) for validation and test;
            train gets the rest. 0 leaves a split out.
        block: Blocks of ``block`` x ``block`` chips (a power of two); ``block_zoom``: for tile-named
            chips, the zoom of the block tiles. Default: chosen from the shares (module docstring).
        aoi: Polygon file of the mapped area (any CRS), for the chips without buildings.
        empty: ``"auto"`` (keep chips without buildings inside the mapped area), ``"keep"``, ``"skip"``.
        tms: Read ``y`` in chip names as TMS (counted from the bottom).
        labels_crs: The labels' CRS when the file declares none or declares a wrong one.
        source: COCO ``source`` of every image (default: the chips folder's parent's name).
        seed: Seeds the assignment of blocks to splits.
        balance: ``"chips"``: the shares are met in chips; ``"buildings"``: in chips and in labelled buildings
            together, so that a held-out split is not left with a handful of buildings (``finetune``'s default).
        label_shift: Move every label this many metres ``(east, north)`` before it is cut into chips (labels
            traced over other imagery; :mod:`rooftrace.prepare.shift` estimates the shift).
        force: Overwrite a split already in ``out_dir``.
        progress: Show a progress bar.
        gsd: The older name of ``model_gsd``, still taken.

    Raises:
        RooftraceError: Bad input, one line naming the file: a chip with no georeference and no tile
            name, labels in no chip, labels in an unknown CRS, mixed pixel sizes without ``model_gsd``, ...
    """
    from tqdm import tqdm

    chips_dir, labels, out_dir = Path(chips_dir), Path(labels), Path(out_dir)
    if empty not in ("auto", "keep", "skip"):
        raise RooftraceError(f"--empty {empty}: must be auto, keep or skip")
    if balance not in ("chips", "buildings"):
        raise RooftraceError(f"--balance {balance!r}: must be 'chips' or 'buildings'")
    model_gsd = gsd_alias(model_gsd, gsd, "model_gsd")
    if model_gsd is not None and not (math.isfinite(model_gsd) and 0.01 <= model_gsd <= 100):
        raise RooftraceError(f"--gsd {model_gsd}: must be a pixel size in metres between 0.01 and 100")
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise RooftraceError(f"--val {val} --test {test}: shares must be >= 0 and add up to less than 1")
    shares = {"train": 1.0 - val - test, "val": val, "test": test}
    _check_out(out_dir, force)
    _check_not_inside(out_dir, chips_dir)
    source = source or chips_dir.resolve().parent.name or chips_dir.resolve().name
    result = ChipsResult(out_dir)
    report = LoadReport(path=str(labels))

    chips = locate_chips(find_chips(chips_dir), chips_dir, tms=tms)
    result.chips = chips
    result.notes.extend(plan_sizes(chips, chips_dir, model_gsd))
    footprints, crs = read_footprints(labels, labels_crs, report)
    if label_shift is not None and any(label_shift):
        east, north = (float(v) for v in label_shift)
        if not (math.isfinite(east) and math.isfinite(north) and math.hypot(east, north) <= 100):
            raise RooftraceError(f"--shift-labels {east:g},{north:g}: must be metres east,north within 100 m")
        footprints, crs = shift_footprints(footprints, crs, east, north)
        result.notes.append(f"labels moved {east:+.2f} m east, {north:+.2f} m north")
    result.n_buildings = len(footprints)
    if report.problems:
        result.notes.append(f"{labels}: " + "; ".join(report.messages[:5]) + (" ..." if report.problems > 5 else ""))
    in_chip = chip_pieces(chips, footprints, crs, result.counts)
    if not in_chip.any():
        lb = shapely.total_bounds(to_crs(footprints, crs, WGS84))
        cb = shapely.total_bounds(np.asarray([to_crs(np.array([chip_polygon(c)], dtype=object), c.georef.crs, WGS84)[0]
                                              for c in chips], dtype=object))
        raise RooftraceError(f"{labels}: no building overlaps any chip of {chips_dir} (labels lon {lb[0]:.5f}..{lb[2]:.5f}, "
                             f"lat {lb[1]:.5f}..{lb[3]:.5f}; chips lon {cb[0]:.5f}..{cb[2]:.5f}, lat {cb[1]:.5f}..{cb[3]:.5f}); "
                             "wrong area, or coordinates in another CRS than the file says (--labels-crs)")
    result.n_outside = int((~in_chip).sum())

    # Chips with no building: true negatives inside the mapped area, unknown outside.
    empties = [c for c in chips if not c.pieces]
    if empties and empty == "skip":
        for c in empties:
            c.status = "empty-skipped"
    if aoi is not None:  # an area of interest that covers no chip is a wrong file or CRS, not "no true negatives"
        every, width = centres_3857(chips)
        area = mapped_area(Path(aoi), footprints, crs, width, report)
        if not any(area.distance(shapely.Point(xy)) <= width / 2 for xy in every):
            raise RooftraceError(f"{aoi}: the --aoi overlaps none of the {len(chips)} chips of {chips_dir}; wrong file, or "
                                 "coordinates in another CRS than the file says")
    if empties and empty == "auto":
        centres, width = centres_3857(empties)
        area = mapped_area(Path(aoi) if aoi is not None else None, footprints, crs, width, report)
        for c, xy in zip(empties, centres):
            if not area.contains(shapely.Point(xy)):
                c.status = "empty-outside"
    kept = [c for c in chips if c.status == "kept"]

    # Blocks and splits.
    result.block_scheme = make_blocks(kept, shares, block, block_zoom)
    sizes = Counter(c.block for c in kept)
    buildings = None
    if balance == "buildings":
        buildings = Counter()
        for c in kept:
            buildings[c.block] += len(c.pieces)
    where = assign_blocks(dict(sizes), shares, seed=seed, buildings=buildings)
    for c in kept:
        c.split = where[c.block]

    # A building belongs to the split of the chip holding its centroid (else its largest part).
    owner: dict[int, tuple] = {}
    for order, c in enumerate(kept):
        for k, _, frac, cin in c.pieces:
            rank = (cin, frac, -order)
            if k not in owner or rank > owner[k][0]:
                owner[k] = (rank, c.split)
    cut = set()
    for c in kept:
        mine = [p for p in c.pieces if owner[p[0]][1] == c.split]
        if len(mine) < len(c.pieces):
            result.counts["split-border pieces"] += len(c.pieces) - len(mine)
            cut.update(p[0] for p in c.pieces if owner[p[0]][1] != c.split)
            if not mine:  # its buildings all belong to another split: not a true negative either
                c.status = "border-only"
        c.pieces = mine
    result.counts["split-border buildings"] = len(cut)

    # Pixels and COCO files.
    sets = {s: LabelSet(root=out_dir / s, report=LoadReport(path=str(out_dir / s / f"{s}.json")), format="coco")
            for s in SPLITS if shares[s] > 0}
    for c in tqdm([c for c in kept if c.status == "kept"], desc="chips", unit="chip", disable=not progress):
        try:
            rgb, valid = _read_chip(c)
        except RooftraceError as exc:
            report.skip(f"{exc}; chip left out")
            c.status = "unreadable"
            continue
        rgb, valid = _resample(c, rgb, valid)
        if valid is not None:
            if not valid.any():
                c.status = "nodata"
                continue
            c.nodata_px = int((~valid).sum())
            result.counts["nodata px"] += c.nodata_px
            result.counts["partial-nodata px total"] += valid.size
            rgb = np.where(valid[..., None], rgb, 0).astype(np.uint8)
            result.counts["partial-nodata"] += 1
        atomic_write_bytes(out_dir / c.split / "image" / f"{c.name}.png", _png_bytes(rgb), force=True)
        key = image_key(c.name)
        sets[c.split].images[key] = ImageLabels(key=key, footprints=[p[1] for p in c.pieces], file_name=f"image/{c.name}.png",
                                                width=c.out_w, height=c.out_h, source=source, gsd=round(c.gsd, 5), group=c.block)
    for c in chips:
        if c.status != "kept":
            result.counts[c.status] += 1
    _remove_stale(out_dir, {(c.split, f"{c.name}.png") for c in chips if c.status == "kept"}, result)
    written = [c for c in chips if c.status == "kept"]
    for s, ls in sets.items():
        path = out_dir / s / f"{s}.json"
        write_coco(ls, path, force=True)
        _add_provenance(path, [c for c in written if c.split == s])
        result.splits[s] = path
        mine = [c for c in written if c.split == s]
        result.per_split[s] = {"chips": len(mine), "blocks": len({c.block for c in mine}),
                               "empty": sum(not c.pieces for c in mine),
                               "annotations": sum(len(c.pieces) for c in mine),
                               "buildings": len({p[0] for c in mine for p in c.pieces})}
        if not mine:
            result.notes.append(f"{s} is empty: only {len(sizes)} blocks ({result.block_scheme}); try --block 1 or a larger --{s}")
    _write_manifest(result, dict(chips_dir=str(chips_dir), labels=str(labels), gsd=model_gsd, val=val, test=test, block=block,
                                 block_zoom=block_zoom, aoi=str(aoi) if aoi else None, empty=empty, tms=tms,
                                 labels_crs=labels_crs, source=source, seed=seed,
                                 label_shift=list(label_shift) if label_shift else None,
                                 **({"balance": balance} if balance != "chips" else {})))  # the default's manifest as before
    return result


def _remove_stale(out_dir: Path, written: set[tuple[str, str]], result: ChipsResult) -> None:
    """Images an earlier run (listed in its ``prepare-chips.json``) wrote and this run did not are removed,
    so that ``OUT/<split>/image`` holds the split's images only; other files there are counted."""
    manifest = out_dir / "prepare-chips.json"
    earlier: set[tuple[str, str]] = set()
    if manifest.exists():
        try:
            earlier = {(c["split"], f"{c['name']}.png") for c in json.loads(manifest.read_text())["chips"] if c.get("split")}
        except (ValueError, KeyError, TypeError):
            pass
    for s in SPLITS:
        folder = out_dir / s / "image"
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if (s, f.name) in written:
                continue
            if (s, f.name) in earlier:
                f.unlink()
                result.counts["stale removed"] += 1
            else:
                result.counts["stale"] += 1


def _add_provenance(path: Path, chips: list[Chip]) -> None:
    """Add where each image came from to its COCO image record (``chip``, ``tile``, ``crs``,
    ``transform``); readers ignore these fields."""
    data = json.loads(path.read_text())
    by_name = {f"image/{c.name}.png": c for c in chips}
    for rec in data["images"]:
        c = by_name[rec["file_name"]]
        rec["chip"] = str(c.path)
        rec["tile"] = [c.tile.x, c.tile.y, c.tile.z] if c.tile is not None else None
        rec["crs"] = c.crs_string
        rec["transform"] = list(c.out_transform)[:6]
    atomic_write_text(path, json.dumps(data), force=True)


def _write_manifest(result: ChipsResult, options: dict[str, Any]) -> None:
    chips = [{"chip": str(c.path), "name": c.name, "status": c.status, "split": c.split, "block": c.block or None,
              "tile": [c.tile.x, c.tile.y, c.tile.z] if c.tile is not None else None, "georef": c.georef.origin,
              "gsd_source": round(c.input_gsd, 5), "gsd": round(c.gsd, 5), "size": [c.out_w, c.out_h],
              "annotations": len(c.pieces), "nodata_px": c.nodata_px} for c in result.chips]
    data = {"options": options, "block_scheme": result.block_scheme, "buildings": result.n_buildings,
            "buildings_in_no_chip": result.n_outside, "per_split": result.per_split, "counts": dict(result.counts),
            "chips": chips}
    atomic_write_text(result.out_dir / "prepare-chips.json", json.dumps(data, indent=1), force=True)


__all__ = ["ChipsResult", "prepare_chips"]
