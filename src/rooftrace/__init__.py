"""rooftrace: building footprints from aerial and satellite imagery.

The stages, in data-flow order: labels in (:mod:`rooftrace.labels.formats`), one in-memory form
(:mod:`rooftrace.labels.records`), training targets (:mod:`rooftrace.prepare.targets`), polygons from masks
(:mod:`rooftrace.geometry.polygons`), the competition metric (:mod:`rooftrace.evaluation.metrics`), and files out
(:mod:`rooftrace.labels.formats`). The command line is :mod:`rooftrace.cli`.
"""

from rooftrace.core.errors import RooftraceError
from rooftrace.labels.records import ImageLabels, LabelSet, LoadReport, image_key

__version__ = "0.1.0"
__all__ = ["ImageLabels", "LabelSet", "LoadReport", "RooftraceError", "image_key", "__version__"]
