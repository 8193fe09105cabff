"""Allocations and injected faults of the emulator.

Contract: ``RollingCounter`` counts units in a rolling window (per-second buckets) against a maximum; the
emulator uses one for the daily API request allocation (24 h, one unit per REST call) and one for the
hourly platform event publishing allocation (1 h, one unit per published event). ``FaultPlan`` decides,
deterministically for a given seed and call order, which calls fail with 503 or REQUEST_LIMIT_EXCEEDED.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass

__all__ = ["Fault", "FaultPlan", "RollingCounter"]


class RollingCounter:
    """Units used within the last ``window`` seconds, out of ``maximum``."""

    def __init__(self, maximum: int, window: float) -> None:
        self.maximum = maximum
        self.window = window
        self._buckets: collections.deque[list[int]] = collections.deque()
        self._used = 0
        self._lock = threading.Lock()

    def try_take(self, units: int = 1) -> bool:
        """Take ``units`` if they fit in the allocation; False (and nothing taken) otherwise."""
        with self._lock:
            now = self._expire()
            if self._used + units > self.maximum:
                return False
            if self._buckets and self._buckets[-1][0] == now:
                self._buckets[-1][1] += units
            else:
                self._buckets.append([now, units])
            self._used += units
            return True

    @property
    def used(self) -> int:
        with self._lock:
            self._expire()
            return self._used

    @property
    def remaining(self) -> int:
        return max(0, self.maximum - self.used)

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._used = 0

    def _expire(self) -> int:
        now = int(time.monotonic())
        while self._buckets and self._buckets[0][0] <= now - self.window:
            self._used -= self._buckets.popleft()[1]
        return now


@dataclass(frozen=True)
class Fault:
    """An injected failure: HTTP status and Salesforce error body fields."""

    status: int
    error_code: str
    message: str


UNAVAILABLE = Fault(
    503,
    "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE",
    "Publishing platform events is temporarily unavailable. Try again later.",
)
SERVER_UNAVAILABLE = Fault(
    503, "SERVER_UNAVAILABLE", "Server temporarily unavailable. Please try again later."
)
REQUEST_LIMIT = Fault(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")


class FaultPlan:
    """Seeded draws: each call fails with 503 at ``unavailable_rate``, else 403 at ``request_limit_rate``."""

    def __init__(self, unavailable_rate: float = 0.0, request_limit_rate: float = 0.0, seed: int = 0) -> None:
        self.unavailable_rate = unavailable_rate
        self.request_limit_rate = request_limit_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def draw(self, publishing: bool) -> Fault | None:
        if self.unavailable_rate <= 0 and self.request_limit_rate <= 0:
            return None
        with self._lock:
            roll = self._random.random()
        if roll < self.unavailable_rate:
            return UNAVAILABLE if publishing else SERVER_UNAVAILABLE
        if roll < self.unavailable_rate + self.request_limit_rate:
            return REQUEST_LIMIT
        return None
