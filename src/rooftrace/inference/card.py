"""What the shipped model was trained on (MODEL_CARD.md), and one warning line for an input outside it.

The model card: RGB imagery, 8-bit (or stretched to 8-bit from a deeper type), at about 0.3 m a pixel
(training sources from 0.07 to 0.5 m, all resampled to 0.3 m). It fails on panchromatic imagery (a single
band repeated as red, green and blue: the Atlanta scene scores F1 0.22 against 0.58 for the RGB Austin scene,
because a panchromatic band includes near-infrared and trees are as bright as roofs).

Each check returns ``None`` or one line beginning ``warning: outside the model card`` that names what is
off; the commands print it in their summaries, and the Python API raises it as a
:class:`ModelCardWarning` (a ``UserWarning``). Nothing here imports torch.
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Sequence

import numpy as np

from rooftrace.labels.records import LabelSet

#: What the shipped model suits, in the words of its model card.
CARD = "RGB, 8-bit or stretched, about 0.3 m a pixel"
#: A pixel size more than this many times the model's is coarser than any training source (0.5 m for 0.3 m).
COARSER_THAN = 2.0
#: A pixel size less than the model's divided by this is finer than any training source (0.07 m for 0.3 m).
FINER_THAN = 5.0
#: Median ground area in m² of the buildings found, outside which they are unlike buildings: the labels this
#: project holds have medians from 44 m² (Kampala) to 232 m² (Atlanta). A median outside it most often
#: means a wrong pixel size (``--gsd``) or imagery the model does not read.
PLAUSIBLE_MEDIAN_M2 = (15.0, 1500.0)
#: Fewer buildings than this say nothing about their size distribution.
MIN_BUILDINGS_FOR_SIZES = 20
#: A score filter (``min_score``) that drops more than this share of the regions found says the model is unsure
#: of the imagery. The shipped model's tuned filter drops 11-31 % on the held-out tile sets like its training data
#: (19 % on validation) and 51 % on Rio's 0.5 m chips, where ``min_score`` 0.85 scores higher (MODEL_CARD.md; the
#: model shipped before it dropped 8-40 %, 33 % and 74 %).
UNSURE_SHARE = 0.6
#: The shares above, as the warning quotes them.
HELD_OUT_SHARES = "11-31%"
#: Fewer regions than this say nothing about the share.
MIN_REGIONS_FOR_SCORES = 20
#: 8-bit imagery whose 2nd-98th percentile range spans fewer grey levels than this is nearly flat (dark,
#: overexposed, or deeper data stored in 8 bits without a stretch).
MIN_CONTRAST = 24


class ModelCardWarning(UserWarning):
    """An input outside what the model was trained on (see :mod:`rooftrace.inference.card`)."""


def _line(where: str, what: str) -> str:
    return f"warning: outside the model card ({CARD}): {where}: {what}"


def band_warning(bands: Sequence[int] | None, where: str) -> str | None:
    """A band mapping that repeats one band (``--bands 1,1,1``: panchromatic, a single or a near-infrared band)."""
    if bands is None or len(set(int(b) for b in bands)) >= 3:
        return None
    return _line(where, f"bands {','.join(map(str, bands))} repeat one band as red, green and blue; the model reads RGB "
                 "and fails on panchromatic or near-infrared bands (trees look like roofs: F1 0.22 on the Atlanta scene)")


def grey_warning(rgb: np.ndarray, where: str) -> str | None:
    """An image whose three channels are one (a single-band or grey image repeated)."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        return _line(where, "a single band; the model reads RGB and fails on panchromatic or near-infrared bands")
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    s = rgb[::step, ::step, :3]
    if np.array_equal(s[..., 0], s[..., 1]) and np.array_equal(s[..., 0], s[..., 2]):
        return _line(where, "one band repeated as red, green and blue (grey); the model reads RGB and fails on "
                     "panchromatic or near-infrared bands (F1 0.22 on the Atlanta scene)")
    return None


def contrast_warning(rgb: np.ndarray, where: str) -> str | None:
    """8-bit imagery that uses only a narrow range of grey levels."""
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    s = rgb[::step, ::step].reshape(-1, rgb.shape[2] if rgb.ndim == 3 else 1)
    lo, hi = np.percentile(s, [2, 98])
    if hi - lo >= MIN_CONTRAST:
        return None
    return _line(where, f"its pixel values span only {hi - lo:.0f} of 256 levels (2nd-98th percentile {lo:.0f}-{hi:.0f}); "
                 "stretch it to 8 bits first (rooftrace.imagery.read.stretch_to_uint8, or predict-scene's --stretch)")


def gsd_warning(input_gsd: float | None, model_gsd: float | None, where: str) -> str | None:
    """An input pixel size far from the model's (resampling cannot add detail a coarse image lacks)."""
    if not input_gsd or not model_gsd:
        return None
    if input_gsd > COARSER_THAN * model_gsd:
        return _line(where, f"pixel size {input_gsd:.3g} m, coarser than {COARSER_THAN:g}x the model's {model_gsd:.3g} m; "
                     "small buildings are a few pixels and are missed (is the pixel size right? --gsd overrides it)")
    if input_gsd < model_gsd / FINER_THAN:
        return _line(where, f"pixel size {input_gsd:.3g} m, finer than 1/{FINER_THAN:g} of the model's {model_gsd:.3g} m "
                     "(is the pixel size right? --gsd overrides it)")
    return None


def size_warning(areas_m2: Iterable[float], where: str) -> str | None:
    """Buildings whose median ground area is unlike buildings'."""
    a = np.asarray(list(areas_m2), dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size < MIN_BUILDINGS_FOR_SIZES:
        return None
    med = float(np.median(a))
    lo, hi = PLAUSIBLE_MEDIAN_M2
    if lo <= med <= hi:
        return None
    return _line(where, f"the {a.size} buildings found have a median area of {med:.3g} m², outside the {lo:g}-{hi:g} m² "
                 "of real buildings' medians; check the pixel size (--gsd) and the bands")


def score_warning(n_kept: int, n_below: int, min_score: float, where: str) -> str | None:
    """Most of the regions found dropped by the score filter (``min_score``): the model is unsure of this imagery.

    ``n_kept``: the buildings kept; ``n_below``: the regions of at least ``min_area`` px that ``min_score``
    dropped (:attr:`rooftrace.instances.postprocess.Buildings.n_below_score`).
    """
    total = n_kept + n_below
    if total < MIN_REGIONS_FOR_SCORES or n_below <= UNSURE_SHARE * total:
        return None
    return _line(where, f"the score filter (min_score {min_score:g}) dropped {n_below} of the {total} buildings found "
                 f"({n_below / total:.0%}; {HELD_OUT_SHARES} on held-out imagery like the training data): the model is unsure "
                 "of this imagery, and --pp min_score=0.85 (or 0) keeps what it found")


def emit(lines: Iterable[str | None]) -> list[str]:
    """The lines that are set, each also raised as a :class:`ModelCardWarning` (for notebook users)."""
    out = [ln for ln in lines if ln]
    for ln in out:
        warnings.warn(ln.removeprefix("warning: "), ModelCardWarning, stacklevel=3)
    return out


def card_notes(labels: LabelSet, tile_gsd: dict[Any, dict[str, Any]], model_gsd: float | None) -> list[str]:
    """Model-card warnings for a folder of tiles (:mod:`rooftrace.inference.card`): tiles whose pixel size is far
    from the model's (one line, with a count), and buildings whose median ground area is unlike buildings' (tiles
    of known pixel size only)."""
    if model_gsd is None:
        return []
    lines = []
    off = [(k, w) for k, d in tile_gsd.items() if (w := gsd_warning(d["gsd"], model_gsd, labels[k].file_name or str(k)))]
    if off:
        more = f" (and {len(off) - 1} more tile(s))" if len(off) > 1 else ""
        lines.append(off[0][1] + more)
    areas = [float(fp.area) * tile_gsd[k]["gsd"] ** 2 for k, img in labels.images.items()
             if k in tile_gsd and tile_gsd[k]["gsd_source"] != "unknown" and tile_gsd[k]["gsd"] for fp in img.footprints]
    size = size_warning(areas, "the tiles of known pixel size")
    if size:
        lines.append(size)
    return lines
