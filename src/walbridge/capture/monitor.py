"""Capture's timer: liveness from Kafka acknowledgements, and the slot's WAL figures.

Runs in its own thread with its own source connection, whatever the stream does: during a Kafka
outage or a backlog (the situation in which the slot fills the source's disk) the stream loop is
busy or blocked, and a gauge refreshed only by it would stop moving exactly then.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import psycopg

from walbridge import metrics
from walbridge.capture.connection import connect_source
from walbridge.capture.slot import slot_wal, wal_dir_bytes
from walbridge.config import Settings
from walbridge.errors import WalbridgeError
from walbridge.liveness import Liveness

__all__ = ["WAL_STATUSES", "CaptureMonitor"]

log = logging.getLogger(__name__)

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
_SAMPLE_S = 1.0


class CaptureMonitor:
    """``start()`` / ``stop()`` around a capture whose ``liveness`` it samples."""

    def __init__(self, settings: Settings, capture: Any, liveness: Liveness) -> None:
        self.settings = settings
        self.capture = capture
        self.liveness = liveness
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="walbridge-capture-monitor", daemon=True)
        self._conn: psycopg.Connection[Any] | None = None
        self._wal_dir = True
        """Whether the WAL directory can be read (``pg_monitor``); asked until refused once."""

    def start(self) -> CaptureMonitor:
        metrics.capture.last_progress_age.set_function(self.liveness.age)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._close()

    def _run(self) -> None:
        slots = self.settings.source.mode == "logical"
        refresh_s = self.settings.metrics.refresh_s
        next_slot = 0.0
        elapsed = 0.0
        while not self._stop.is_set():
            self.liveness.observe(_acknowledged(getattr(self.capture, "publisher", None)))
            if slots and elapsed >= next_slot:
                next_slot = elapsed + refresh_s
                self.refresh_slot()
            step = min(_SAMPLE_S, refresh_s)
            self._stop.wait(step)
            elapsed += step

    def refresh_slot(self) -> None:
        """Read the slot's WAL figures into the gauges (one debug line when the source does not answer)."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect_source(self.settings.source.dsn, connect_timeout=5)
            wal = slot_wal(self._conn, self.settings.source.slot)
            wal_dir = wal_dir_bytes(self._conn) if self._wal_dir else None
        except (psycopg.Error, WalbridgeError) as exc:
            log.debug("slot WAL figures unavailable: %s", exc)
            self._close()
            return
        gauges = metrics.capture
        if wal_dir is not None:
            gauges.wal_dir_bytes.set(wal_dir)
        elif self._wal_dir:
            self._wal_dir = False
            gauges.wal_dir_bytes.set(float("nan"))
            log.info(
                "the source's WAL directory size is not exported: the capture role may not run "
                "pg_ls_waldir() (GRANT pg_monitor to it for walbridge_capture_source_wal_dir_bytes)"
            )
        if wal is None:
            return
        if wal.retained_bytes is not None:
            gauges.slot_retained_wal_bytes.set(wal.retained_bytes)
        for status in WAL_STATUSES:
            gauges.slot_wal_status.labels(status=status).set(1 if wal.wal_status == status else 0)
        gauges.max_slot_wal_keep_size.set(wal.max_slot_wal_keep_size)
        safe = wal.safe_wal_size
        gauges.slot_safe_wal_size.set(float("nan") if safe is None else safe)

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _acknowledged(publisher: Any) -> int | None:
    """Records Kafka acknowledged so far in this attempt (published minus those still queued)."""
    if publisher is None:
        return None
    try:
        return int(publisher.published) - len(publisher.producer)
    except (AttributeError, RuntimeError):
        return None
