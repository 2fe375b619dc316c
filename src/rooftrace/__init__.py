"""rooftrace: building footprints from aerial and satellite imagery.

The stages, in data-flow order: labels in (:mod:`rooftrace.formats`), one in-memory form
(:mod:`rooftrace.labels`), training targets (:mod:`rooftrace.targets`), polygons from masks
(:mod:`rooftrace.polygons`), the competition metric (:mod:`rooftrace.metrics`), and files out
(:mod:`rooftrace.formats`). The command line is :mod:`rooftrace.cli`.
"""

from .labels import ImageLabels, LabelSet, LoadReport, RooftraceError, image_key

__version__ = "0.1.0"
__all__ = ["ImageLabels", "LabelSet", "LoadReport", "RooftraceError", "image_key", "__version__"]
