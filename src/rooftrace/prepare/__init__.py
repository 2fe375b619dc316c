"""Preparing data for training.

- :mod:`~rooftrace.prepare.targets`: ``make_targets`` (footprint, boundary and contact masks).
- :mod:`~rooftrace.prepare.tiles`: ``prepare_split`` (``rooftrace prepare``).
- :mod:`~rooftrace.prepare.chips`: ``prepare_chips`` (``rooftrace prepare-chips``: OSM chips to splits), with
  :mod:`~rooftrace.prepare.chip_sources`, :mod:`~rooftrace.prepare.chip_labels` and :mod:`~rooftrace.prepare.blocks`.
- :mod:`~rooftrace.prepare.scenes`: ``prepare_scenes`` (``rooftrace prepare-scenes``: scenes cut into tiles).
"""
