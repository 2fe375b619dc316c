"""Scoring and looking.

- :mod:`~rooftrace.evaluation.metrics`: ``evaluate_labels`` (BEGC2024 object F1 at IoU 0.5, pixel metrics).
- :mod:`~rooftrace.evaluation.oracle`: what post-processing loses on perfect targets.
- :mod:`~rooftrace.evaluation.report`: ``build_report`` (``rooftrace report``: tiles, or a scene with
  :mod:`~rooftrace.evaluation.scene_report` and its offline map, :mod:`~rooftrace.evaluation.webmap`).
- :mod:`~rooftrace.evaluation.browser`: headless Chromium for the browser tests and screenshots.
"""
