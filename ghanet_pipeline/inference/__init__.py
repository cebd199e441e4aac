"""Slide-only inference: ensemble arithmetic (``ensemble``), loading a training run's fold models
(``loading``), bags of new slides (``embed``), per-case records and ``predictions.csv`` (``records``),
the ``predict`` stage (``predict``), heatmaps (``heatmaps``) and per-patch scores for QuPath (``qupath``).
"""
