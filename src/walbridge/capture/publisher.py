"""Publish ChangeEvents to Kafka and track which source position is safely acknowledged.

Shared by both capture modes: each mode hands events in source order, seals a position
after the events of one transaction, and confirms to its source only what
:meth:`EventPublisher.poll` returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaException, Producer

from walbridge import metrics
from walbridge.config import Settings
from walbridge.errors import ConnectionLost
from walbridge.events import ChangeEvent, EnvelopeEncoder, PreparedSource, Source, TableSchema
from walbridge.kafka import (
    DeliveryTracker,
    ensure_topics,
    make_admin,
    make_producer,
    map_kafka_error,
    produce_waiting,
)
from walbridge.truncates import Barrier, barrier_headers, barrier_id

__all__ = ["EventPublisher"]

P = TypeVar("P")
Row = dict[str, Any]


class EventPublisher(Generic[P]):
    """ChangeEvent → Kafka records (idempotent producer, key = primary key)."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.encoder = EnvelopeEncoder(settings.events.encoding_options())
        self.producer = producer or make_producer(settings.kafka)
        self.tracker: DeliveryTracker[P] = DeliveryTracker()
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
            ensure_topics(make_admin(kafka), topics, kafka.partitions, kafka.replication_factor)
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
            self._produce(record.topic, record.key, record.value)
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
    ) -> None:
        """Like :meth:`publish` for an event of ``prepared``'s table (op c, u, d or r), no objects built."""
        key_bytes, value = prepared.encode(op, key, before, after, lsn, ts_ms)
        topic = prepared.topic
        callback = self.tracker.open()
        try:
            # Positional: (topic, value, key, partition, callback); -1 lets the partitioner pick.
            self._produce_fn(topic, value, key_bytes, -1 if key_bytes is not None else 0, callback)
        except BufferError:
            self._produce(topic, key_bytes, value, callback)
        self.published += 1
        if op == "d" and key_bytes is not None and prepared.tombstones:
            self._produce(topic, key_bytes, None)
            self.published += 1
        counts = self._unreported
        slot = (prepared.label, op)
        counts[slot] = counts.get(slot, 0) + 1

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
        failure = self.tracker.failure
        if failure is not None:
            raise ConnectionLost(str(map_kafka_error(failure, "delivering change events")))

    def close(self, timeout: float = 10.0) -> None:
        self.producer.flush(timeout)
