"""Command-line options shared by several subcommands (post-processing settings, bands, the default model)."""

from __future__ import annotations

import argparse
import collections.abc
import json
from pathlib import Path
from typing import Sequence

from rooftrace.core.errors import RooftraceError

# The parser's choices and defaults, written here so that building the parser (``rooftrace --help``, or
# any command before it runs) imports none of the libraries behind them; tests/cli/test_cli.py checks that
# each equals the library's own.
#: :data:`rooftrace.evaluation.metrics.MATCHING_MODES`.
MATCHING_MODES = ("one-to-one", "any", "spacenet")
#: The names of :data:`rooftrace.instances.postprocess.POSTPROCESSORS`.
POSTPROCESS_METHODS = ("seed", "watershed")
#: :data:`rooftrace.imagery.windows.DEFAULT_TILE` and ``DEFAULT_OVERLAP``.
DEFAULT_TILE, DEFAULT_OVERLAP = 512, 64
#: :data:`rooftrace.scenes.blocks.DEFAULT_BLOCK`, ``DEFAULT_MARGIN`` and ``MIN_AUTO_BLOCK``.
DEFAULT_BLOCK, DEFAULT_MARGIN, MIN_AUTO_BLOCK = 2048, 128, 512


# The label formats are the registry's (:data:`rooftrace.labels.formats.LABEL_FORMATS`), and importing it imports
# every reader; so options about them read it only when a value is checked or help is shown: choices through
# :class:`LabelWriterChoices`, help texts through the placeholders :class:`RegistryHelpFormatter` fills in.
#: Placeholders in help texts -> the function of :mod:`rooftrace.labels.formats` whose words replace them.
REGISTRY_PLACEHOLDERS = {"{label formats}": "titles_text", "{label suffix rules}": "suffix_rules_text",
                         "{label suffix defaults}": "suffix_defaults_text"}


def fill_registry_text(text: str) -> str:
    """``text`` with each placeholder of :data:`REGISTRY_PLACEHOLDERS` replaced by what the label-format registry says."""
    if not any(key in text for key in REGISTRY_PLACEHOLDERS):
        return text
    from rooftrace.labels import formats

    for key, name in REGISTRY_PLACEHOLDERS.items():
        if key in text:
            text = text.replace(key, getattr(formats, name)())
    return text


class RegistryHelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, with the label-format registry's words filled into help texts and descriptions
    (:func:`fill_registry_text`) when help is shown."""

    def _expand_help(self, action: argparse.Action) -> str:
        return fill_registry_text(super()._expand_help(action))

    def _format_text(self, text: str) -> str:
        return super()._format_text(fill_registry_text(text))


class LabelWriterChoices(collections.abc.Sequence):
    """The names of the label formats rooftrace writes (:func:`rooftrace.labels.formats.writer_names`), read from the
    registry when first asked: a parser's ``choices``."""

    def _names(self) -> tuple[str, ...]:
        from rooftrace.labels.formats import writer_names

        return writer_names()

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def parse_settings(items: list[str], path: Path | None) -> dict | None:
    """The post-processing settings a user changes: those of a JSON file (a tune file or a plain object), then
    KEY=VALUE items. Returned as a mapping that :func:`rooftrace.inference.tuned.resolve_postprocessing` applies
    on top of the model's tuned settings, so naming one setting changes only that one (``None``: none named).

    Raises:
        RooftraceError: A file that is not a JSON object, an item without ``=``, an unknown setting or a bad value.
    """
    from rooftrace.instances.postprocess import PostprocessSettings

    data: dict = {}
    if path is not None:
        from rooftrace.core.files import read_json

        loaded = read_json(path)
        if not isinstance(loaded, dict):
            raise RooftraceError(f"{path}: expected a JSON object of post-processing settings")
        data.update(loaded.get("settings", loaded))
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise RooftraceError(f"--pp {item!r}: expected key=value, e.g. --pp simplify=1")
        try:
            data[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            data[key.strip()] = value  # e.g. surface=flat
    if not data:
        return None
    PostprocessSettings.from_dict(data)  # an unknown key or a bad value stops here, before the model loads
    return data


#: The fields of :class:`rooftrace.instances.postprocess.PostprocessSettings` and their defaults, for the
#: help (the parser imports no post-processing library; tests/inference/test_predict.py checks the copy).
PP_DEFAULTS = (("footprint_threshold", 0.5), ("seed_footprint", 0.7), ("seed_boundary", 0.5), ("seed_contact", 0.5),
               ("min_seed_area", 1), ("min_area", 8), ("min_score", 0.0), ("simplify", 0.0), ("regularise", False),
               ("rectangularity", 0.9), ("merge_contact", 0.3), ("surface", "probability"), ("split_distance", 0.0),
               ("keep_holes", False))


def add_postprocess_options(p: argparse.ArgumentParser, default_method: str | None) -> None:
    p.add_argument("--postprocess", choices=POSTPROCESS_METHODS, default=default_method,
                   help="post-processing method" + (f" (default {default_method})" if default_method else
                                                    " (default: the tuned one saved beside the model, else watershed)"))
    keys = ", ".join(f"{name} ({_fmt_default(default)})" for name, default in PP_DEFAULTS)
    p.add_argument("--settings", type=Path, default=None, metavar="FILE",
                   help="JSON file of post-processing settings (a tune file, or an object of some settings); the settings "
                   "it names replace the model's tuned ones, the others stay tuned (default: none)")
    p.add_argument("--pp", dest="pp", action="append", default=[], metavar="KEY=VALUE",
                   help="change one post-processing setting on top of the model's tuned settings (the others stay as tuned; "
                   "the run prints what it used), e.g. --pp regularise=true or --pp simplify=1 (px); repeatable. "
                   f"Keys, with the untuned defaults (thresholds are probabilities 0-1, areas in px of the model's pixel "
                   f"size): {keys}")


def _fmt_default(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


#: The help of every --matching option.
MATCHING_HELP = ("how predictions are paired with labels: one-to-one (BEGC2024: each label and each prediction in at most "
                 "one pair, IoU >= --iou), any (a label is found, and a prediction right, when any partner reaches --iou) or "
                 "spacenet (SpaceNet's scorer: greedy one-to-one, footprints of about 20 px² or less left out) (default one-to-one)")
#: The help of every --iou option.
IOU_HELP = "IoU (intersection over union, 0-1) from which a prediction matches a label (default 0.5)"


def default_model(model: Path | None) -> Path:
    if model is not None:
        return model
    from rooftrace.models.files import shipped_model

    return shipped_model()


def parse_stretch(text: str) -> tuple[float, float]:
    """Stretch percentiles from ``LOW,HIGH`` (e.g. ``2,98``)."""
    low, sep, high = text.partition(",")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        raise RooftraceError(f"--stretch {text!r}: expected LOW,HIGH percentiles such as 2,98") from None
    if not sep or not 0.0 <= lo < hi <= 100.0:
        raise RooftraceError(f"--stretch {text!r}: expected LOW,HIGH percentiles with 0 <= LOW < HIGH <= 100")
    return lo, hi


def add_band_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bands", default=None, metavar="R,G,B",
                   help="bands read as red, green, blue, e.g. 1,1,1 for a panchromatic band or 1,2,3 for the first three "
                   "of a multispectral image (needed unless the raster has 3 bands, or 3 and alpha; default 1,2,3 for those)")
    p.add_argument("--stretch", default="2,98", metavar="LOW,HIGH",
                   help="percentiles of the per-scene, per-band stretch of rasters that are not 8-bit (default 2,98)")


def check_io(args: argparse.Namespace, inputs: Sequence[str], outputs: Sequence[str], folders: Sequence[str] = ()) -> None:
    """No output option names an input or another output (resolved paths, links followed); no output folder
    holds an input. Options are ``args`` attribute names; the messages give them as ``--option``."""
    from rooftrace.core.paths import check_distinct

    def opt(name: str) -> str:
        return name.upper() if name in ("src", "dst", "split_dir", "chips_dir", "checkpoint") else "--" + name.replace("_", "-")

    check_distinct({opt(n): getattr(args, n, None) for n in inputs}, {opt(n): getattr(args, n, None) for n in outputs},
                   {opt(n): getattr(args, n, None) for n in folders})


def add_layer_option(p: argparse.ArgumentParser) -> None:
    """``--layer``: which layer of a vector file of several (a GeoPackage) to read."""
    p.add_argument("--layer", default=None, metavar="NAME",
                   help="the layer to read from vector files that hold several (a GeoPackage); without it such a file "
                   "is an error that lists its layers (default: none; files of one layer are read as they are)")


def add_streams_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--streams N``: forward passes at once (``args.streams``; :meth:`rooftrace.inference.runtime.ModelRuntime.streams`);
    ``what`` names the inputs in its help (``tiles``, ``windows``)."""
    p.add_argument("--streams", type=int, default=None, metavar="N",
                   help=f"forward passes at once, each on its share of the CPU's threads (default: 2 on a CPU, "
                        f"else 1); the same {what}' buildings for any N (fp32: probabilities within 1e-5)")


# Two pixel sizes, named apart: the input's (the tiles' or the scene's, ``--input-gsd``) and the model's (the one a
# model trains at, the target of prepare-chips and finetune, ``--model-gsd``). ``--gsd``, the older name, stays an alias
# with the meaning it had in each command: the input's in predict and predict-scene, the model's in prepare-chips and
# finetune.
def add_input_gsd_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--input-gsd METRES``, the input's pixel size (``args.input_gsd``), and ``--gsd``, its alias; ``help_text`` says what it
    does in the command."""
    p.add_argument("--input-gsd", "--gsd", dest="input_gsd", type=float, default=None, metavar="METRES",
                   help=f"{help_text}. --gsd is an alias of --input-gsd (its older name)")


def add_model_gsd_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--model-gsd METRES``, the model's (the target) pixel size (``args.model_gsd``), and ``--gsd``, its alias in the
    commands where ``--gsd`` always meant the target; ``help_text`` says what it does in the command."""
    p.add_argument("--model-gsd", "--gsd", dest="model_gsd", type=float, default=None, metavar="METRES",
                   help=f"{help_text}. --gsd is an alias of --model-gsd (its older name)")


def add_chip_options(p: argparse.ArgumentParser, balance: str = "chips") -> None:
    """How chips are read and split into blocks by area: the options ``prepare-chips`` and ``finetune`` share
    (:func:`rooftrace.prepare.chips.prepare_chips`'s ``block``, ``block_zoom``, ``aoi``, ``empty``, ``tms`` and
    ``labels_crs``)."""
    p.add_argument("--block", type=int, default=None, metavar="N",
                   help="split in blocks of N x N neighbouring chips (a power of two; default: 4, 2 or 1, the largest "
                   "that gives enough blocks for the shares)")
    p.add_argument("--block-zoom", type=int, default=None, metavar="Z",
                   help="tile-named chips: blocks are the web-map tiles of zoom Z holding them (default: the coarsest zoom, see --block)")
    p.add_argument("--aoi", type=Path, default=None,
                   help="polygon file of the mapped area: chips without buildings inside it are kept as true negatives, "
                   "those outside left out (default: the labels' convex hull grown by half a chip)")
    p.add_argument("--empty", choices=("auto", "keep", "skip"), default="auto",
                   help="chips without buildings: auto (by the mapped area, default), keep all, skip all")
    p.add_argument("--balance", choices=("chips", "buildings"), default=balance,
                   help="what the split shares are met in: chips, or chips and labelled buildings together (so that no "
                   f"held-out split is left with a handful of buildings; default: {balance})")
    p.add_argument("--tms", action="store_true", help="chip names count y from the bottom (TMS) instead of the top (XYZ)")
    p.add_argument("--labels-crs", default=None, metavar="CRS",
                   help="CRS of the labels when the file declares none or a wrong one, e.g. EPSG:32645 (default: the file\'s own)")
