"""In-memory event bus of the emulator: published events in order, with their system fields.

Contract: ``EventStore.append(type, values, user_id)`` stores one event and returns it with ``ReplayId``
(strictly increasing, never reused, also across ``reset()``), ``EventUuid``, ``CreatedDate`` and
``CreatedById``; ``after(replay_id, limit)`` reads them back in publish order. ``publish_id()`` returns the
18-character id the REST API answers with: like Salesforce's, it has an ``e0`` key prefix and is
deliberately *not* unique (it cycles), so clients must not key on it. ``on_append(callback)`` registers a
subscriber woken after each append (the handler emulation). Thread-safe.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import threading
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["EventStore", "salesforce_id"]

_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Publish ids cycle through this many values: real ids are "not unique, not meaningful".
_ID_CYCLE = 4096


def salesforce_id(prefix: str, number: int) -> str:
    """An 18-character Salesforce id: 3-char key prefix, pod ``xx``, base62 number, checksum suffix."""
    digits = []
    for _ in range(10):
        number, rem = divmod(number, 62)
        digits.append(_BASE62[rem])
    id15 = f"{prefix}xx{''.join(reversed(digits))}"
    return id15 + _checksum(id15)


def _checksum(id15: str) -> str:
    suffix = ""
    for chunk in range(3):
        bits = 0
        for pos, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << pos
        suffix += _ID_ALPHABET[bits]
    return suffix


class EventStore:
    """Published events, ordered by ReplayId."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._replay_ids: list[int] = []
        self._next_replay = itertools.count(1)
        self._uuid_prefix = str(uuid.uuid4())[:24]
        """Event UUIDs: a random version-4 prefix per store, then the replay id in the last 12 hex
        digits (unique within the store; a urandom call per event cost a tenth of the emulator's time)."""
        self._next_id = itertools.count()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def on_append(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (outside the store's lock) after every append."""
        self._listeners.append(callback)

    def publish_id(self) -> str:
        return salesforce_id("e01", next(self._next_id) % _ID_CYCLE)

    def append_many(self, items: list[tuple[str, dict[str, Any]]], user_id: str) -> list[dict[str, Any]]:
        """Store ``(event type, field values)`` pairs atomically, in order; returns the stored events."""
        created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + "000+0000"
        with self._lock:
            stored = []
            for event_type, values in items:
                replay = next(self._next_replay)
                event = {
                    "type": event_type,
                    "ReplayId": str(replay),
                    "EventUuid": f"{self._uuid_prefix}{replay:012x}",
                    "CreatedDate": created,
                    "CreatedById": user_id,
                    "fields": values,
                }
                self._events.append(event)
                self._replay_ids.append(replay)
                stored.append(event)
        for callback in self._listeners:
            callback()
        return stored

    def after(self, replay_id: int, limit: int, event_type: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` events with ReplayId > ``replay_id`` (of ``event_type`` if given), in order."""
        with self._lock:
            start = bisect.bisect_right(self._replay_ids, replay_id)
            if event_type is None:
                return self._events[start : start + limit]
            found = []
            for event in itertools.islice(self._events, start, None):
                if event["type"] == event_type:
                    found.append(event)
                    if len(found) >= limit:
                        break
            return found

    def latest_replay_id(self) -> int:
        with self._lock:
            return self._replay_ids[-1] if self._replay_ids else 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
            self._replay_ids.clear()
