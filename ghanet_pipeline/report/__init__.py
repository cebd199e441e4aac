"""The run report behind ``ghanet report``: one folder of static HTML that opens from ``file://``.

Modules: ``gather`` (what a run folder holds: training runs, predictions, slides), ``stats`` (c-index
intervals), ``pyramid`` (deep-zoom tiles of a slide), ``layers`` (per-patch scores on the patch grid,
as the slide page's data), ``vendor`` (the pinned OpenSeadragon copy), ``pages`` (HTML), ``build``
(the whole report: locks, reuse, atomic writes). See docs/report.md.
"""
