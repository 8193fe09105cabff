"""The pause between capture attempts after a transient failure (both capture modes)."""

from __future__ import annotations

import random

__all__ = ["Reconnect"]


class Reconnect:
    """Exponential backoff with jitter (1 s doubling to 30 s), back to the start after a healthy attempt.

    An attempt is healthy when it streamed and confirmed something: a pipeline that ran for hours
    and then lost its broker once waits a second, not the 30 s it reached during an earlier outage.
    """

    def __init__(self, initial_s: float = 1.0, max_s: float = 30.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.base_s = initial_s

    def next_delay(self, healthy: bool) -> float:
        """Seconds to wait before the next attempt, after one that failed (``healthy``: it made progress)."""
        if healthy:
            self.base_s = self.initial_s
        delay = self.base_s + random.uniform(0, self.base_s / 2)
        self.base_s = min(self.base_s * 2, self.max_s)
        return delay
