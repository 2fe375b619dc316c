"""Labels in and out: one in-memory form and every format.

- :mod:`~rooftrace.labels.records`: ``LabelSet``, ``ImageLabels``, ``LoadReport``, ``image_key``.
- :mod:`~rooftrace.labels.formats`: ``read_labels`` (any format, detected) and the writers.
- :mod:`~rooftrace.labels.coco`, :mod:`~rooftrace.labels.begc`, :mod:`~rooftrace.labels.spacenet`,
  :mod:`~rooftrace.labels.geojson` (also GeoPackage, FlatGeobuf, GeoParquet), :mod:`~rooftrace.labels.masks`.
- :mod:`~rooftrace.labels.splits`: ``open_split`` (a split folder or a split spec).
"""
