"""The Salesforce sink's next batch, published while the batch before still waits for its answers.

Contract: with a publisher that ``sends_ahead`` (the Pub/Sub transport) the runner's ``prepare`` of the
next batch, called while ``write_batch`` of the current one waits, hands the batch over
(:meth:`Handover.offer`); the waiting ``write_batch`` then starts publishing it (:class:`Sending`) after the
current one, so that the stream does not drain at the batch boundary. The next ``write_batch`` takes that
publish and only collects its outcome.

Guarantees (the runner's are unchanged: it learns a batch's outcome from its own ``write_batch`` only, so
offsets are committed in order and only for known outcomes, and the DLQ gets the same records):

* per row order: a chunk of the batch ahead waits for the chunks of the batch before holding its rows'
  previous events, and is not sent if one of them did not go through
  (:meth:`~walbridge.sinks.salesforce.publisher.Publisher.start` with ``after``); a transient failure
  of either batch stops both;
* a retry of the batch before (the runner's) publishes what it did not get through without waiting
  for the batch ahead, which sent nothing of those rows;
* a batch ahead that the runner does not write (records read again after a rebalance, or dropped) is
  waited for before anything else is published, and what it got accepted is not sent again; at stop
  its chunks not started are not sent (:meth:`~walbridge.sinks.salesforce.publisher.Publisher.close`).
  At most two batches (``batch_size`` records each) are published but not committed: a crash re-sends
  them (at-least-once; ``Event_Key__c`` lets Salesforce drop them).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from walbridge.sinks.base import RecordFailure, SinkRecord, TopicPartitionKey
from walbridge.sinks.salesforce.publisher import Publishing

__all__ = ["Handover", "RecordKey", "Sending", "record_key"]

RecordKey = tuple[str, int, int]


def record_key(record: SinkRecord) -> RecordKey:
    return record.topic, record.partition, record.offset


@dataclass(slots=True)
class Sending:
    """The publish of one batch: its records' keys and lowest offset per partition, the records sent
    (indexes of the outcome) and the records refused before sending (mapping)."""

    keys: frozenset[RecordKey]
    first: dict[TopicPartitionKey, int]
    publishing: Publishing
    sources: list[SinkRecord] = field(default_factory=list)
    failures: list[RecordFailure] = field(default_factory=list)

    @staticmethod
    def positions(records: list[SinkRecord]) -> tuple[frozenset[RecordKey], dict[TopicPartitionKey, int]]:
        first: dict[TopicPartitionKey, int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        return frozenset(map(record_key, records)), first

    def follows(self, records: list[SinkRecord]) -> bool:
        """Every one of ``records`` comes before this batch's records of its partition."""
        return all(r.offset < self.first.get((r.topic, r.partition), math.inf) for r in records)


class Handover:
    """The next batch, from the runner's thread (``prepare``) to the ``write_batch`` waiting in its worker."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._waiting = False
        self._records: list[SinkRecord] | None = None

    def offer(self, records: list[SinkRecord]) -> bool:
        """Hand ``records`` over; False when no write waits (the caller prepares them itself)."""
        with self._changed:
            if not self._waiting:
                return False
            self._records = list(records)
            self._changed.notify_all()
            return True

    def clear(self) -> None:
        with self._changed:
            self._records = None

    def waiting(self, publishing: Publishing, free: Callable[[], bool]) -> Iterator[list[SinkRecord]]:
        """Until ``publishing`` is done: the batch handed over meanwhile, once, when ``free()``."""
        publishing.on_done(self._wake)
        with self._changed:
            self._waiting = True
        try:
            while True:
                with self._changed:
                    if self._records is not None and free():
                        handed, self._records = self._records, None
                        self._waiting = False
                    elif publishing.done():
                        return
                    else:
                        self._changed.wait()
                        continue
                yield handed
        finally:
            with self._changed:
                self._waiting = False

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()
