"""k-fold training: run configuration and its hash (``config``), case -> bag data and the balanced sampler
(``data``), the run's input fingerprint (``fingerprint``) and the rerun/resume checks against it
(``provenance_check``), crash-safe resume state (``state``), the per-fold epoch loop (``loop``), and
cross-validation orchestration with reports (``cv``).
"""
