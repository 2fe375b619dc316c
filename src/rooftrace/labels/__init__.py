"""Labels in and out: one in-memory form and every format.

- :mod:`~rooftrace.labels.records`: ``LabelSet``, ``ImageLabels``, ``LoadReport``, ``image_key``.
- :mod:`~rooftrace.labels.formats`: the label-format registry (``LABEL_FORMATS``, ``register``), ``read_labels``
  (any format, detected through it), ``writer_for`` and ``write_labels``.
- :mod:`~rooftrace.labels.registry`: ``LabelFormat``, what each format module declares as its ``FORMAT``.
- :mod:`~rooftrace.labels.coco`, :mod:`~rooftrace.labels.begc`, :mod:`~rooftrace.labels.spacenet`,
  :mod:`~rooftrace.labels.geojson` (also GeoPackage, FlatGeobuf, GeoParquet), :mod:`~rooftrace.labels.masks`.
- :mod:`~rooftrace.labels.splits`: ``open_split`` (a split folder or a split spec).
"""
