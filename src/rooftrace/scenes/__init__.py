"""Rasters of any size to GIS files.

- :mod:`~rooftrace.scenes.predict`: ``predict_scene`` (``rooftrace predict-scene``): :mod:`~rooftrace.scenes.stitch`
  then :mod:`~rooftrace.scenes.blocks`, written by :mod:`~rooftrace.gis.writers`.
- :mod:`~rooftrace.scenes.batch`: ``predict_scenes`` (many scenes, shards).
- :mod:`~rooftrace.scenes.distributed`: ``predict_scenes_dask`` (needs the ``dask`` extra), with
  :mod:`~rooftrace.scenes.tasks` and :mod:`~rooftrace.gis.merge`.
"""
