"""Training protocols as data: ``presets`` (the ``ghanet`` and ``official`` protocols, the paper's
per-cohort presets and option precedence) and ``released`` (the authors' class-balanced loader, repeated
exactly for the official t-test groups). docs/fidelity.md maps each field to the released code."""
