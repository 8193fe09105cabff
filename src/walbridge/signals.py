"""The one way a walbridge process turns SIGINT/SIGTERM into a clean stop (main thread only)."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["stop_on_signals"]


def stop_on_signals(stop: threading.Event | None = None, *, interrupt: bool = True) -> threading.Event:
    """An event set by SIGINT/SIGTERM, for clean shutdowns; a second signal interrupts at once.

    ``interrupt=False`` is for a worker process whose parent owns Ctrl-C: SIGINT is ignored there and
    SIGTERM (sent by the parent) only sets the event.
    """
    stop = stop if stop is not None else threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        if stop.is_set() and interrupt:
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, _handler if interrupt else signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _handler)
    return stop
