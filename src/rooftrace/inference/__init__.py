"""Running a model on tiles.

- :mod:`~rooftrace.inference.runtime`: ``load_runtime`` and ``ModelRuntime``, the one place models run.
- :mod:`~rooftrace.inference.predict`: ``predict_folder`` (``rooftrace predict``), crash-safe with
  :mod:`~rooftrace.inference.partial`; map outputs in :mod:`~rooftrace.inference.outputs` with
  :mod:`~rooftrace.gis.provenance`.
- :mod:`~rooftrace.inference.tune`: ``tune`` (``rooftrace tune``); :mod:`~rooftrace.inference.tuned`: the settings file.
- :mod:`~rooftrace.inference.export`: ``export_onnx`` (``rooftrace export``).
- :mod:`~rooftrace.inference.devices`: ``pick_device``.
"""
