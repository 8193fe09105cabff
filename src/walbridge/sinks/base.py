"""The contract between the sink runner and a destination.

The runner consumes Kafka records, decodes them into :class:`SinkRecord` values and hands a
batch to :meth:`Sink.write_batch`. The sink applies what it can (inside its own unit of work)
and returns one :class:`RecordFailure` per record it refused for a *permanent* reason; a
:class:`~walbridge.errors.TransientError` raised instead means "nothing of this batch counts":
the runner calls :meth:`Sink.rollback` and retries the whole batch later.

After the failed records are routed to the DLQ, :meth:`Sink.commit` makes the batch durable
together with the next offsets (``(topic, partition) → offset of the next record to read``).
A sink with ``owns_offsets`` stores them in the destination in the same unit of work and
answers :meth:`Sink.stored_offsets` on partition assignment (exactly-once effect); other
sinks rely on the offsets the runner commits to Kafka (at-least-once).

A refusal whose error is not ``retryable`` (:attr:`walbridge.errors.WalbridgeError.retryable`)
goes to the DLQ at once; other permanent refusals are retried with the batch up to
``max_attempts``. A :class:`TransientError` with a ``retry_after`` (seconds) delays the retry at
least that long. With prefetch (the default) :meth:`Sink.write_batch` runs in the runner's
worker thread while the next batch is read; every other method runs on the runner's thread,
never at the same time as ``write_batch``, except :meth:`Sink.stored_offsets` (on partition
assignment), which must therefore not use the connection the batch is applied on.

A sink may define ``decode_event(topic, key, value) -> ChangeEvent | None`` to replace
:func:`walbridge.events.decode_record` (same results and errors; e.g. the PostgreSQL sink's lean
decoder, :func:`walbridge.sinks.lean.decode_lean`).

Optional, used by the runner when present (the PostgreSQL sink has them all): ``probe()`` connects to
the destination and raises :class:`TransientError` while it does not answer (the runner joins the
group only after it succeeds, and leaves the group while it fails); ``barrier_of(record) -> str |
None`` names the truncate a record is a copy of, with ``barriers_waiting(partitions) -> {partition:
truncate id}`` and ``barriers_applied({(topic, truncate id)}) -> set`` (runner thread; not on the
batch's connection) for the truncate barriers of :mod:`walbridge.sinks.pg_barrier`. An error that is
neither transient nor a record's (:class:`~walbridge.errors.FatalError`, ``ConfigError``) raised by
:meth:`Sink.write_batch` stops the runner without committing the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from walbridge.errors import TransientError, WalbridgeError
from walbridge.events import ChangeEvent

__all__ = ["OffsetConflict", "RecordFailure", "Sink", "SinkRecord", "TopicPartitionKey", "sink_record"]

TopicPartitionKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SinkRecord:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp_ms: int
    event: ChangeEvent | None
    """Decoded; ``None`` for a tombstone."""


_new = object.__new__
_set_topic, _set_partition, _set_offset, _set_key, _set_value, _set_headers, _set_timestamp_ms, _set_event = (
    SinkRecord.__dict__[name].__set__ for name in SinkRecord.__slots__
)


def sink_record(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    timestamp_ms: int,
    event: ChangeEvent | None,
) -> SinkRecord:
    """``SinkRecord(...)`` at half the cost, for the runner's per-record loop: the frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``; this sets the slots directly."""
    record = _new(SinkRecord)
    _set_topic(record, topic)
    _set_partition(record, partition)
    _set_offset(record, offset)
    _set_key(record, key)
    _set_value(record, value)
    _set_headers(record, headers)
    _set_timestamp_ms(record, timestamp_ms)
    _set_event(record, event)
    return record


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """A record the sink (or the decoder) refused, and why."""

    record: SinkRecord
    error: WalbridgeError


class OffsetConflict(TransientError):
    """The destination already holds offsets past this batch: another member applied it.

    Raised by an offset-owning sink after a rebalance raced with a batch in flight. The runner
    rolls back, drops the batch and seeks to :meth:`Sink.stored_offsets` instead of retrying.
    """


@runtime_checkable
class Sink(Protocol):
    name: str
    owns_offsets: bool
    """True: offsets are stored by :meth:`commit` in the destination (exactly-once effect)."""

    def open(self) -> None: ...

    def stored_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Next offsets stored for these partitions (absent: nothing stored)."""
        ...

    def write_batch(self, records: list[SinkRecord]) -> list[RecordFailure]:
        """Apply the batch; permanent per-record failures are returned, TransientError raised."""
        ...

    def commit(self, next_offsets: dict[TopicPartitionKey, int]) -> None:
        """Make the applied batch durable (with the offsets when ``owns_offsets``)."""
        ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


class BarrierSink(Sink, Protocol):
    """A sink that applies truncate barriers (the PostgreSQL sink): the runner pauses partitions for it."""

    def barrier_of(self, record: SinkRecord) -> str | None: ...

    def barriers_waiting(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, str]: ...

    def barriers_applied(self, barriers: set[tuple[str, str]]) -> set[tuple[str, str]]: ...
