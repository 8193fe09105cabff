"""The org's shared allocations: pause before walbridge uses up what other integrations also need.

An org's daily API requests (rolling 24 h) and hourly platform-event publishing are shared by every
integration of the org. :class:`Allocation` keeps a reserve of each free (default 10 %): it learns
the daily figures from ``Sforce-Limit-Info`` on every answer and both figures from ``/limits``
(at start, and again before resuming from a pause), counts the events published since, and before
a call raises :class:`~walbridge.errors.RateLimited` with a ``retry_after`` while the call would eat
into the reserve. The runner then waits (one warning a minute) without sending anything. An answer
saying the allocation is gone (403 ``REQUEST_LIMIT_EXCEEDED``, per-record ``LIMIT_EXCEEDED``) pauses
the same way, instead of retrying every few seconds. ``walbridge_salesforce_paused{allocation}`` is 1
while paused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from walbridge.errors import RateLimited

__all__ = ["DAILY_API", "HOURLY_PUBLISH", "Allocation", "Usage"]

DAILY_API = "DailyApiRequests"
HOURLY_PUBLISH = "HourlyPublishedPlatformEvents"
_PAUSE_S = {DAILY_API: 300.0, HOURLY_PUBLISH: 120.0}
"""How long to wait before asking ``/limits`` again: the daily window rolls slowly, the hourly faster."""


@dataclass(slots=True)
class Usage:
    used: int
    limit: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class Allocation:
    """Keeps ``reserve`` of each allocation free (see the module docstring)."""

    def __init__(
        self,
        read_limits: Callable[[], Mapping[str, Any]],
        reserve: float = 0.10,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_limits = read_limits
        self.reserve = reserve
        self.metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self.usage: dict[str, Usage] = {}
        self._paused_until: dict[str, float] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read ``/limits`` (one API call)."""
        limits = self._read_limits()
        with self._lock:
            for name in (DAILY_API, HOURLY_PUBLISH):
                entry = limits.get(name)
                if isinstance(entry, Mapping) and "Max" in entry and "Remaining" in entry:
                    limit = int(entry["Max"])
                    self.usage[name] = Usage(limit - int(entry["Remaining"]), limit)

    def observe_api_usage(self, used: int, limit: int) -> None:
        """``Sforce-Limit-Info: api-usage=used/limit`` of an answer."""
        with self._lock:
            current = self.usage.get(DAILY_API)
            if current is None or used >= current.used or limit != current.limit:
                self.usage[DAILY_API] = Usage(used, limit)

    def published(self, events: int) -> None:
        with self._lock:
            usage = self.usage.get(HOURLY_PUBLISH)
            if usage is not None:
                usage.used += events

    def exhausted(self, name: str) -> RateLimited:
        """Salesforce said ``name`` is used up: pause it; the error to raise."""
        with self._lock:
            usage = self.usage.get(name)
            if usage is not None:
                usage.used = max(usage.used, usage.limit)
            self._paused_until[name] = self._clock() + _PAUSE_S[name]
        self._show(name, True)
        return RateLimited(
            f"Salesforce's {name} allocation is used up; waiting for it to free",
            retry_after=_PAUSE_S[name],
            error_code="REQUEST_LIMIT_EXCEEDED" if name == DAILY_API else "LIMIT_EXCEEDED",
        )

    def before_call(self, events: int) -> None:
        """Raise RateLimited while a call of ``events`` events would use the reserve."""
        now = self._clock()
        if self._paused_until and now >= min(self._paused_until.values()):
            self.refresh()
            with self._lock:
                self._paused_until = {n: t for n, t in self._paused_until.items() if t > now}
        for name, needed in ((DAILY_API, 1), (HOURLY_PUBLISH, events)):
            with self._lock:
                usage = self.usage.get(name)
                paused = name in self._paused_until
                keep = int(usage.limit * self.reserve) if usage is not None else 0
                short = usage is not None and usage.remaining - needed < keep
                if short:
                    self._paused_until[name] = self._paused_until.get(name) or now + _PAUSE_S[name]
            if paused or short:
                self._show(name, True)
                wait = max(1.0, self._paused_until[name] - now)
                assert usage is not None
                raise RateLimited(
                    f"paused: Salesforce's {name} allocation is at {usage.used:,} of {usage.limit:,}; "
                    f"walbridge keeps {self.reserve:.0%} of it free for the org's other integrations "
                    "(salesforce sink api_reserve)",
                    retry_after=wait,
                )
            self._show(name, False)

    def _show(self, name: str, paused: bool) -> None:
        if self.metrics is not None:
            self.metrics.paused.labels(allocation=name).set(1 if paused else 0)
