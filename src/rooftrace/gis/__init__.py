"""GIS outputs: the files of buildings rooftrace writes, below :mod:`rooftrace.inference` and
:mod:`rooftrace.scenes`, which both write through it. Free of torch.

- :mod:`~rooftrace.gis.formats`: the registry of output formats (suffix, driver, CRS rule, provenance,
  streaming); the writers, the output checks and the CLI's ``--format`` read it.
- :mod:`~rooftrace.gis.provenance`: what made an output (``make_provenance``, ``read_provenance``) and
  CRS naming (``crs_name``, ``with_crs``).
- :mod:`~rooftrace.gis.writers`: ``FeatureWriter`` (buildings streamed into any registered format,
  atomically), ``check_output``, ``output_complete``.
- :mod:`~rooftrace.gis.merge`: ``merge_scenes``, many scenes' outputs in one layer.
"""
