"""The machine ghanet runs on: ``device`` (the one ``--device`` rule), ``runtime`` (CPU facts, precision,
worker counts, malloc tuning), ``hubs`` (weights caches), ``gpuslots`` (one GPU per workflow job) and
``doctor`` (the environment report). Depends only on ``core``."""
