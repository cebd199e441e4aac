"""The benchmark suite: scripts that time whole stages and processes, on one harness (:mod:`benchmarks.harness`).

Run each from the repository root as a module, e.g. ``python -m benchmarks.bench_segment --size 4096``; every run
writes one JSON record to ``benchmarks/results/`` and ``python -m benchmarks.report`` rewrites the tables of
docs/benchmarks.md from the newest records. ``python -m benchmarks.suite`` runs them all (``make bench``).
The library never imports this package.
"""
