"""The loop of capture attempts and the pause after a transient failure (both capture modes)."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from walbridge import metrics
from walbridge.errors import WalbridgeError
from walbridge.pgerrors import one_line

__all__ = ["Reconnect", "run_with_reconnect"]

log = logging.getLogger(__name__)


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


def run_with_reconnect(
    stop: threading.Event,
    attempt: Callable[[], None],
    *,
    ready: threading.Event,
    position: Callable[[], object],
    transient: tuple[type[BaseException], ...],
    warning: str = "capture interrupted (%s); resuming from the confirmed position in %.0fs",
) -> None:
    """The capture loop of both modes: run ``attempt`` until it returns or ``stop`` is set.

    A ``transient`` failure is logged as one ``warning`` (its reason, then the pause), counted, and
    followed by a :class:`Reconnect` pause; the pause starts over when the failed attempt was streaming
    (``ready``) and moved the confirmed ``position``. ``ready`` is cleared after every attempt.
    """
    reconnect = Reconnect()
    while not stop.is_set():
        before = position()
        try:
            attempt()
            return
        except transient as exc:
            message = exc.message if isinstance(exc, WalbridgeError) else one_line(exc)
            metrics.capture.errors.labels(type(exc).__name__).inc()
            delay = reconnect.next_delay(ready.is_set() and position() != before)
            log.warning(warning, message, delay)
            stop.wait(delay)
        finally:
            ready.clear()
