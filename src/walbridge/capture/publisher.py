"""Publish ChangeEvents to Kafka and track which source position is safely acknowledged.

Shared by both capture modes: each mode hands events in source order, seals a position
after the events of one transaction, and confirms to its source only what
:meth:`EventPublisher.poll` returns.

Errors: a record over ``kafka.max_message_bytes`` (checked here before producing), a record the
client or the broker refuses as too large, a fatal producer error and every other final delivery
error (authorisation, unknown topic) raise a non-transient :class:`WalbridgeError` naming the table,
key and position: capture stops and never confirms past that row. Only what Kafka calls retriable
(:func:`walbridge.kafka.map_kafka_error`) raises a :class:`TransientError` for a reconnect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from walbridge import metrics
from walbridge.config import Settings
from walbridge.errors import ConnectionLost, PermanentError, RecordTooLarge, TransientError, WalbridgeError
from walbridge.events import (
    ChangeEvent,
    EnvelopeEncoder,
    PreparedSource,
    Source,
    SplicedEvent,
    TableSchema,
    splice_envelope,
)
from walbridge.kafka import (
    DeliveryTracker,
    ensure_topics,
    make_admin,
    make_producer,
    map_kafka_error,
    produce_waiting,
    topic_config,
)
from walbridge.lsn import Lsn
from walbridge.truncates import Barrier, barrier_headers, barrier_id

__all__ = ["EventPublisher"]

log = logging.getLogger(__name__)

P = TypeVar("P")
Row = dict[str, Any]


class EventPublisher(Generic[P]):
    """ChangeEvent → Kafka records (idempotent producer, key = primary key)."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.encoder = EnvelopeEncoder(settings.events.encoding_options())
        self.tracker: DeliveryTracker[P] = DeliveryTracker()
        self.producer = producer or make_producer(settings.kafka, error_cb=self._on_client_error)
        self.max_bytes = settings.kafka.max_message_bytes
        self._known_topics: set[str] = set()
        self._counters: dict[tuple[str, str], Any] = {}
        self._unreported: dict[tuple[str, str], int] = {}
        self._produce_fn = self.producer.produce
        self.published = 0

    def ensure_topics(self, tables: Iterable[tuple[str, str]]) -> None:
        """Create the topics of these tables (with configured partitions) if missing."""
        topics = {self.encoder.topic(schema, table) for schema, table in tables} - self._known_topics
        if topics:
            kafka = self.settings.kafka
            ensure_topics(
                make_admin(kafka),
                topics,
                kafka.partitions,
                kafka.replication_factor,
                config=topic_config(kafka),
            )
            self._known_topics |= topics
            # The producer's own metadata for them now: without it a backlog piles up in its queue
            # (memory) while it looks the partitions up.
            try:
                for topic in topics:
                    self.producer.list_topics(topic, timeout=10)
            except KafkaException:
                pass  # only a warm-up: producing waits for the metadata anyway

    def publish(self, event: ChangeEvent) -> None:
        """Encode and hand to the producer; blocks (serving deliveries) while its queue is full."""
        records = self.encoder.encode(event)
        if event.op == "t":
            for record in records:
                self.published += self._produce_truncate(record.topic, record.value, barrier_id(event.source))
            self._count(f"{event.source.schema}.{event.source.table}", event.op)
            return
        for record in records:
            self._check_size(record.key, record.value, event.source, event.key)
            try:
                self._produce(record.topic, record.key, record.value)
            except KafkaException as exc:
                raise self._refused(
                    exc, _Where.of(event.source), event.key, record.key, record.value
                ) from exc
        self.published += len(records)
        self._count(f"{event.source.schema}.{event.source.table}", event.op)

    def prepare(self, source: Source, relation: TableSchema | None) -> PreparedSource | None:
        """A fast encoder for events sharing ``source`` (see :meth:`EnvelopeEncoder.prepare`)."""
        return self.encoder.prepare(source, relation)

    def publish_prepared(
        self,
        prepared: PreparedSource,
        op: str,
        key: Row | None,
        before: Row | None,
        after: Row | None,
        lsn: int,
        ts_ms: int,
        source: bytes | None = None,
        change_id: int | None = None,
    ) -> None:
        """Like :meth:`publish` for an event of ``prepared``'s table (op c, u, d or r), no objects built.

        With ``source``, the event's own source block (trigger mode's change-log rows: see
        :meth:`PreparedSource.source_for`) instead of ``prepared``'s with ``lsn``; ``change_id`` names the
        change in errors. Capture's hot path: the envelope is spliced and produced here, in one frame."""
        key_bytes, value = splice_envelope(
            prepared.parts if source is None else (source,), lsn, op, key, before, after, ts_ms,
            prepared.value_schema, prepared.key_schema,
        )  # fmt: skip
        topic = prepared.topic
        if len(value) > self.max_bytes:
            where = _Where(prepared.label, lsn if source is None else None, change_id)
            self._check_size(key_bytes, value, where, key)
        callback = self.tracker.open()
        try:
            try:
                # Positional: (topic, value, key, partition, callback); -1 lets the partitioner pick.
                self._produce_fn(topic, value, key_bytes, -1 if key_bytes is not None else 0, callback)
            except BufferError:
                self._produce(topic, key_bytes, value, callback)
            self.published += 1
            if op == "d" and key_bytes is not None and prepared.tombstones:
                self._produce(topic, key_bytes, None)
                self.published += 1
        except KafkaException as exc:
            where = _Where(prepared.label, lsn if source is None else None, change_id)
            raise self._refused(exc, where, key, key_bytes, value) from exc
        counts = self._unreported
        slot = (prepared.label, op)
        counts[slot] = counts.get(slot, 0) + 1

    def publish_spliced(
        self,
        prepared: PreparedSource,
        rows: Sequence[tuple[SplicedEvent, ...] | None],
        general: Callable[[int], None],
    ) -> None:
        """Produce, in order, the events of each source row, encoded in advance for ``prepared``'s table
        (a snapshot batch, a page of trigger mode's change log: see
        :func:`~walbridge.capture.rows.encode_text_rows`). ``general(i)`` publishes the ``i``-th row's
        events the general way instead: when they are ``None``, one is too large for the broker, or the
        producer refuses one (that way names the error)."""
        callback = self.tracker.open(0)
        produce, topic, limit, tombstones = (
            self._produce_fn,
            prepared.topic,
            self.max_bytes,
            prepared.tombstones,
        )
        produced = 0
        per_op: dict[str, int] = {}
        try:
            for index, events in enumerate(rows):
                if events is None or (
                    len(events[0][2]) > limit
                    if len(events) == 1  # most rows: no generator
                    else any(len(value) > limit for _, _, value in events)
                ):
                    general(index)
                    continue
                try:
                    for op, key, value in events:
                        try:
                            produce(topic, value, key, -1 if key is not None else 0, callback)
                        except BufferError:
                            self._produce(topic, key, value, callback)
                        produced += 1
                        per_op[op] = per_op.get(op, 0) + 1
                        if op == "d" and key is not None and tombstones:
                            self._produce(topic, key, None)
                            self.published += 1
                except KafkaException:
                    general(index)
        finally:
            # Counted once the loop is over: only a poll serves deliveries, and this position is not sealed.
            self.tracker.open(produced)
            self.published += produced
            counts = self._unreported
            for op, amount in per_op.items():
                slot = (prepared.label, op)
                counts[slot] = counts.get(slot, 0) + amount

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, callback: Any = None) -> None:
        """Produce one record, waiting (serving deliveries) while the producer's queue is full."""
        if callback is None:
            callback = self.tracker.open()
        # No primary key: keep the table's order by using one partition.
        partition = -1 if key is not None else 0
        produce_waiting(self.producer, topic, value, key, partition, callback, on_wait=self.raise_if_failed)

    def _produce_truncate(self, topic: str, value: bytes | None, ident: str) -> int:
        """One copy of a truncate in every partition of the topic (see :mod:`walbridge.truncates`)."""
        try:
            count = len(self.producer.list_topics(topic, timeout=10).topics[topic].partitions)
        except (KafkaException, KeyError) as exc:
            raise ConnectionLost(f"cannot read the partitions of topic {topic}: {exc}") from exc
        if count < 1:
            raise ConnectionLost(f"the broker reports no partitions for topic {topic}")
        headers = barrier_headers(Barrier(ident, count, time.time_ns()))
        for partition in range(count):
            produce_waiting(
                self.producer,
                topic,
                value,
                None,
                partition,
                self.tracker.open(),
                headers=headers,
                on_wait=self.raise_if_failed,
            )
        return count

    def _count(self, label: str, op: str, amount: int = 1) -> None:
        counter = self._counters.get((label, op))
        if counter is None:
            counter = self._counters[(label, op)] = metrics.capture.events.labels(label, op)
        counter.inc(amount)

    def _report_counts(self) -> None:
        """Per-event counters are batched: one metrics update per (table, op) each poll."""
        if self._unreported:
            for (label, op), amount in self._unreported.items():
                self._count(label, op, amount)
            self._unreported.clear()

    def seal(self, position: P) -> None:
        """Everything published since the previous seal belongs to ``position``."""
        self.tracker.seal(position)

    def poll(self, timeout: float = 0.0) -> P | None:
        """Serve delivery reports; the newest position whose records are all acknowledged."""
        self.producer.poll(timeout)
        self.raise_if_failed()
        self._report_counts()
        metrics.capture.producer_queue.set(len(self.producer))
        return self.tracker.confirmed()

    def flush(self, timeout: float = 30.0) -> P | None:
        self.producer.flush(timeout)
        return self.poll(0)

    @property
    def in_flight(self) -> int:
        return len(self.producer)

    def raise_if_failed(self) -> None:
        """Raise for a failed delivery: transient errors to reconnect, anything else to stop."""
        failure = self.tracker.failure
        if failure is None:
            return
        message = self.tracker.failed_message
        if message is not None and failure.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            where = _where_from_value(message.topic(), message.value())
            raise self._too_large(where, message.key(), message.key(), message.value(), by_broker=True)
        mapped = map_kafka_error(failure, "delivering change events")
        if isinstance(mapped, TransientError) and not failure.fatal():
            raise mapped
        raise _stop_error(failure, message.topic() if message is not None else None, mapped)

    def _on_client_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: a fatal error ends the producer; the rest it retries itself."""
        if err.fatal():
            self.tracker.fail(err)
        else:
            log.debug("Kafka client: %s", err)

    # --------------------------------------------------------------- refused records

    def _check_size(
        self, key: bytes | None, value: bytes | None, where: _Where | Source, row_key: Any
    ) -> None:
        if len(key or b"") + len(value or b"") > self.max_bytes:
            where = _Where.of(where) if isinstance(where, Source) else where
            raise self._too_large(where, row_key, key, value, by_broker=False)

    def _too_large(
        self, where: _Where, row_key: Any, key: bytes | None, value: bytes | None, *, by_broker: bool
    ) -> RecordTooLarge:
        size = len(key or b"") + len(value or b"")
        table, position = where.describe()
        limit = self.max_bytes
        if by_broker:
            cause = "the broker refused it (MSG_SIZE_TOO_LARGE)"
            fix = (
                f"raise the topic's max.message.bytes (and the broker's message.max.bytes) above {size:,}; "
                f"topics walbridge creates allow kafka.max_message_bytes ({limit:,})"
            )
        elif size > limit:
            cause = f"over kafka.max_message_bytes ({limit:,})"
            fix = f"raise kafka.max_message_bytes above {size:,} (topics, producer and sinks follow it)"
        else:
            cause = "the Kafka client refused it (MSG_SIZE_TOO_LARGE)"
            fix = f"raise kafka.options message.max.bytes above {size:,}, or remove it"
        return RecordTooLarge(
            f"the change of {table} with key {_key_text(row_key)} {position} is a {size:,}-byte Kafka "
            f"record, {cause}: capture stopped before it (nothing after it is confirmed); {fix}",
            table=table,
            size=size,
        )

    def _refused(
        self, exc: KafkaException, where: _Where, row_key: Any, key: bytes | None, value: bytes | None
    ) -> WalbridgeError:
        """``produce()`` itself refused the record (librdkafka's own checks)."""
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            return self._too_large(where, row_key, key, value, by_broker=False)
        mapped = map_kafka_error(err, "producing change events")
        table, position = where.describe()
        return PermanentError(
            f"{mapped.message} (change of {table} with key {_key_text(row_key)} {position}): capture stopped",
            kafka_code=getattr(err, "name", lambda: None)(),
        )

    def close(self, timeout: float = 10.0) -> None:
        self.producer.flush(timeout)


class _Where:
    """Table and position of a record, for an error line."""

    __slots__ = ("change_id", "label", "lsn", "snapshot")

    def __init__(
        self, label: str, lsn: int | None, change_id: int | None = None, snapshot: bool = False
    ) -> None:
        self.label = label
        self.lsn = lsn
        self.change_id = change_id
        self.snapshot = snapshot

    @classmethod
    def of(cls, source: Source) -> _Where:
        snapshot = source.snapshot not in ("false", None)
        return cls(f"{source.schema}.{source.table}", source.lsn, source.change_id, snapshot)

    def describe(self) -> tuple[str, str]:
        """(table, position)."""
        if self.change_id is not None:
            return self.label, f"(change-log id {self.change_id})"
        if self.snapshot or not self.lsn:
            return self.label, "in the initial snapshot" + (f" (LSN {Lsn(self.lsn)})" if self.lsn else "")
        return self.label, f"at LSN {Lsn(self.lsn)}"


def _key_text(key: Any) -> str:
    if isinstance(key, bytes):
        try:
            doc = orjson.loads(key)
            key = doc["payload"] if isinstance(doc, dict) and "schema" in doc and "payload" in doc else doc
        except orjson.JSONDecodeError:
            key = key.decode(errors="replace")
    if key is None:
        return "(none)"
    text = key if isinstance(key, str) else orjson.dumps(key, default=str).decode()
    return text if len(text) <= 200 else text[:200] + "..."


def _where_from_value(topic: str, value: bytes | None) -> _Where:
    """Table and position of a refused record, read back from its envelope (best effort)."""
    try:
        doc = orjson.loads(value) if value else {}
        if isinstance(doc, dict) and "schema" in doc and "payload" in doc:
            doc = doc["payload"]
        source = doc.get("source") or {}
        if source.get("schema") and source.get("table"):
            snapshot = str(source.get("snapshot", "false")) != "false"
            label = f"{source['schema']}.{source['table']}"
            return _Where(label, source.get("lsn"), source.get("change_id"), snapshot)
        if doc.get("__table"):
            return _Where(f"{doc['__table']} (topic {topic})", doc.get("__lsn"))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        pass
    return _Where(f"topic {topic}", None)


_STOP_HINTS = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "grant the capture's principal WRITE and DESCRIBE on the topic",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "grant the capture's principal IDEMPOTENT_WRITE on the cluster",
    KafkaError.UNKNOWN_TOPIC_OR_PART: (
        "the topic does not exist (deleted?) and the broker does not create topics: restart capture, "
        "which creates missing topics, or create it with walbridge topics create"
    ),
    KafkaError._UNKNOWN_TOPIC: (
        "the topic does not exist (deleted?) and the broker does not create topics: restart capture, "
        "which creates missing topics, or create it with walbridge topics create"
    ),
}


def _stop_error(err: KafkaError, topic: str | None, mapped: WalbridgeError) -> PermanentError:
    """A final producer error as one line: what, where, and what to do."""
    where = f" (topic {topic})" if topic else ""
    hint = _STOP_HINTS.get(err.code())
    if hint is None:
        hint = (
            "a fatal producer error; restart capture (it resumes from the confirmed position)"
            if err.fatal()
            else "not retriable; fix the cause and restart capture (it resumes from the confirmed position)"
        )
    return PermanentError(
        f"{mapped.message}{where}: capture stopped; {hint}", kafka_code=err.name(), topic=topic
    )
