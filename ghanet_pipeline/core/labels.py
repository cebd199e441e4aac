"""Survival labels in the words every stage uses: ``censorship`` 1 = censored (alive at last follow-up),
0 = event (death); ``event`` = 1 - censorship. The one conversion between the two codings."""

from __future__ import annotations

from typing import Any

import numpy as np


def event_from_censorship(censorship: Any) -> np.ndarray:
    """1 where the case died (censorship 0), 0 where it was censored; int64, same shape."""
    return 1 - np.asarray(censorship, dtype=np.int64)


def censorship_from_event(event: Any) -> np.ndarray:
    """1 where the case was censored (event 0), 0 where it died; int64, same shape."""
    return 1 - np.asarray(event, dtype=np.int64)
