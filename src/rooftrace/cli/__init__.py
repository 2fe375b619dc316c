"""The ``rooftrace`` command line: one program, one thin subcommand per library function.

Every subcommand reads its arguments, calls one function a notebook user could call directly,
and prints what it did. Errors about the user's input (:class:`RooftraceError`) are printed as one
message without a traceback, with exit status 2; a command that finished but skipped bad records,
tiles or scenes lists them and exits with 1 (``--strict`` stops at the first instead).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rooftrace.cli.data import (
    add_convert,
    add_evaluate,
    add_prepare,
    add_prepare_chips,
    add_prepare_scenes,
    add_report,
)
from rooftrace.cli.inference import add_predict, add_predict_scene
from rooftrace.cli.model import (
    add_export,
    add_finetune,
    add_import_weights,
    add_oracle,
    add_train,
    add_tune,
)
from rooftrace.cli.options import RegistryHelpFormatter
from rooftrace.core.errors import RooftraceError
from rooftrace.core.version import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (used by :func:`main` and the docs)."""
    parser = argparse.ArgumentParser(
        prog="rooftrace",
        description="Building footprints from aerial and satellite imagery: prepare, evaluate, and more.",
        formatter_class=RegistryHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rooftrace {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_prepare(sub)
    add_evaluate(sub)
    add_convert(sub)
    add_train(sub)
    add_oracle(sub)
    add_predict(sub)
    add_tune(sub)
    add_report(sub)
    add_predict_scene(sub)
    add_prepare_scenes(sub)
    add_prepare_chips(sub)
    add_export(sub)
    add_import_weights(sub)
    add_finetune(sub)
    for name, p in sub.choices.items():
        if name not in ("export", "import-weights"):
            p.add_argument("--strict", action="store_true",
                           help="stop at the first bad record, tile or scene instead of skipping it and reporting it at the end")
            p.add_argument("--allow-outside-paths", action="store_true",
                           help="read image files that label files name by an absolute path or a path climbing out of "
                           "their split folder ('..'); without it such records are skipped, named")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0: done, nothing skipped; 1: done, but some records, tiles or scenes were skipped (each is
    listed in the output); 2: stopped by bad input or an output that cannot be written (one
    message naming the file, no traceback; with ``--strict``, also the first skipped item);
    3: ``finetune`` finished but the adapted model is not better on the held-out blocks (not written);
    130: interrupted.
    """
    from rooftrace.core.errors import strict_mode, tally_skips
    from rooftrace.core.paths import allow_outside_paths

    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported after parsing: `--help` imports no GIS library.
    from rooftrace.labels.geojson import vector_layer
    try:
        with strict_mode(getattr(args, "strict", False)), tally_skips() as tally, \
                allow_outside_paths(getattr(args, "allow_outside_paths", False)), vector_layer(getattr(args, "layer", None)):
            code = int(args.func(args) or 0)
        if tally.n and code in (0, 1):
            print(f"rooftrace {args.command}: {tally.n} item(s) skipped (listed above); exit status 1", file=sys.stderr)
            code = 1
        return code
    except RooftraceError as exc:
        print(f"rooftrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `rooftrace evaluate ... | head`
        return 0
    except OSError as exc:  # an output that cannot be written, a disk that is full
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"rooftrace {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rooftrace {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
