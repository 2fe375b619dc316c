"""Training (needs the ``train`` extra).

- :mod:`~rooftrace.training.loop`: ``train``, ``resume`` (``rooftrace train``).
- :mod:`~rooftrace.training.dataset`: ``TileDataset`` (crops, augmentation, pixel size).
- :mod:`~rooftrace.training.validation`: how validation scores buildings (a settings search from a start).
- :mod:`~rooftrace.training.losses`, :mod:`~rooftrace.training.resume`, :mod:`~rooftrace.training.figures`.
"""
