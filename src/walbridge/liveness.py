"""Health as progress: a process is healthy while it makes progress, or is idle with nothing to do.

The loop that does the work calls :meth:`Liveness.touch` when it is idle with nothing to do, and
progress is either touched too (a sink's commit) or sampled by a timer with :meth:`Liveness.observe`
(capture: the count of records Kafka acknowledged). ``/healthz`` fails once nothing of the kind
happened for ``metrics.stall_s``; the age is exported as ``walbridge_*_last_progress_age_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

__all__ = ["Liveness"]


class Liveness:
    """The time of the last progress (or idleness); starting counts as progress."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self._at = clock()
        self._marker: Hashable = None

    def touch(self) -> None:
        """Progress was made, or there is nothing to do."""
        self._at = self._clock()

    def observe(self, marker: Hashable) -> None:
        """A progress counter read by a timer: a changed value is progress."""
        if marker != self._marker:
            self._marker = marker
            self.touch()

    def age(self) -> float:
        """Seconds since the last progress or idleness."""
        return max(0.0, self._clock() - self._at)

    def healthy(self) -> bool:
        return self.age() < self.stall_s
