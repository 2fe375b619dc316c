"""Command-line options shared by several subcommands (post-processing settings, bands, the default model)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from rooftrace.core.errors import RooftraceError


def parse_settings(items: list[str], path: Path | None):
    """Post-processing settings from a JSON file (a tune file or a plain object) and KEY=VALUE items."""
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
    return PostprocessSettings.from_dict(data) if data else None


def add_postprocess_options(p: argparse.ArgumentParser, default_method: str | None) -> None:
    from rooftrace.instances.postprocess import POSTPROCESSORS

    p.add_argument("--postprocess", choices=sorted(POSTPROCESSORS), default=default_method,
                   help="post-processing method" + (f" (default {default_method})" if default_method else
                                                    " (default: the tuned one saved beside the model, else watershed)"))
    p.add_argument("--settings", type=Path, default=None, help="JSON file of post-processing settings (e.g. a tune file)")
    p.add_argument("--pp", dest="pp", action="append", default=[], metavar="KEY=VALUE",
                   help="override one post-processing setting, e.g. --pp simplify=1 (repeatable)")


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
                   "of a multispectral image (needed unless the raster has 3 bands, or 3 and alpha)")
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
                   "is an error that lists its layers (files of one layer are read as they are)")
