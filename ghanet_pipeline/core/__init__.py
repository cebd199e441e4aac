"""Infrastructure every stage shares: ``errors`` (our exception types and their exit codes), ``files``
(atomic, durable writes; stale temporaries; file hashes), ``ids`` (ids made safe as file names, staying
inside the output root), ``locks`` (file locks for concurrent jobs), ``runs`` (per-item results, exit
codes, run logs), ``fingerprints`` (what an output was made from, compared on every rerun), ``attrs``
(HDF5 attrs <-> plain values, the one "same setting" rule), ``safeload`` (tensors from user files, never
unpickled), ``tables`` (the one reader of user CSV/TSV tables), ``slideids`` (the one slide-id rule: a
file name up to its first dot, and how a table's slide ids meet the ids on disk), ``labels`` (censorship
<-> event) and ``registry`` (name -> entry, behind the encoder and model registries). Nothing here imports from any
other ghanet package.
"""
