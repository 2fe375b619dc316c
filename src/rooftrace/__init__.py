"""rooftrace: building footprints from aerial and satellite imagery.

In Python::

    import rooftrace

    model = rooftrace.load_model()          # the shipped model, or load_model("my.safetensors" / "my.onnx")
    buildings = model.predict("tile.png")    # polygons and scores; a GeoDataFrame for a georeferenced image

The stages, in data-flow order, are subpackages: :mod:`rooftrace.core` (errors, atomic files, hashing),
:mod:`rooftrace.geometry`, :mod:`rooftrace.imagery`, :mod:`rooftrace.labels` (every label format in
and out), :mod:`rooftrace.prepare` (training targets, tiles, chips, scenes), :mod:`rooftrace.instances`
(probabilities to one polygon per building), :mod:`rooftrace.evaluation` (the competition metric,
reports), :mod:`rooftrace.models`, :mod:`rooftrace.training`, :mod:`rooftrace.inference` and
:mod:`rooftrace.scenes`; :mod:`rooftrace.api` is the notebook API and :mod:`rooftrace.cli` the command
line. DESIGN.md explains them.

Importing ``rooftrace`` is light: the API (and torch with it) and the label records (and shapely) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rooftrace.core.errors import RooftraceError

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.api import Footprints, Model, load_model
    from rooftrace.labels.records import ImageLabels, LabelSet, LoadReport, image_key

from rooftrace.core.version import __version__  # noqa: E402

__all__ = ["Footprints", "ImageLabels", "LabelSet", "LoadReport", "Model", "RooftraceError", "image_key", "load_model",
           "__version__"]

_API = {"load_model", "Model", "Footprints"}
_RECORDS = {"ImageLabels", "LabelSet", "LoadReport", "image_key"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from rooftrace import api

        return getattr(api, name)
    if name in _RECORDS:  # shapely with them: not needed to start the command line
        from rooftrace.labels import records

        return getattr(records, name)
    raise AttributeError(f"module 'rooftrace' has no attribute {name!r}")
