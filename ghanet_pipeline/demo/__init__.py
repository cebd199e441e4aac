"""The built-in synthetic cohort and the end-to-end demo behind ``make demo``: ``cohort`` (clinical +
genomics with a planted signal), ``bags`` (synthetic feature bags for tests and benchmarks), ``config``
(the demo's sizes), ``limits`` (the smallest sizes that work, checked up front), ``run`` (the stages as
``ghanet`` subprocesses), ``report`` (what the demo reads back from its outputs) and ``gdcdownload`` (a
gdc-client download laid out from a real MCAT table's slide ids, for tests and the cohort rehearsal).
"""
