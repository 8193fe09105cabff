"""Publish ChangeEvents to Kafka and track which source position is safely acknowledged.

Shared by both capture modes: each mode hands events in source order, seals a position
after the events of one transaction, and confirms to its source only what
:meth:`EventPublisher.poll` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from confluent_kafka import Producer

from walbridge import metrics
from walbridge.config import Settings
from walbridge.errors import ConnectionLost
from walbridge.events import ChangeEvent, EnvelopeEncoder
from walbridge.kafka import DeliveryTracker, ensure_topics, make_admin, make_producer, map_kafka_error

__all__ = ["EventPublisher"]

P = TypeVar("P")


class EventPublisher(Generic[P]):
    """ChangeEvent → Kafka records (idempotent producer, key = primary key)."""

    def __init__(self, settings: Settings, producer: Producer | None = None) -> None:
        self.settings = settings
        self.encoder = EnvelopeEncoder(settings.events.encoding_options())
        self.producer = producer or make_producer(settings.kafka)
        self.tracker: DeliveryTracker[P] = DeliveryTracker()
        self._known_topics: set[str] = set()
        self._counters: dict[tuple[str, str], Any] = {}
        self.published = 0

    def ensure_topics(self, tables: Iterable[tuple[str, str]]) -> None:
        """Create the topics of these tables (with configured partitions) if missing."""
        topics = {self.encoder.topic(schema, table) for schema, table in tables} - self._known_topics
        if topics:
            kafka = self.settings.kafka
            ensure_topics(make_admin(kafka), topics, kafka.partitions, kafka.replication_factor)
            self._known_topics |= topics

    def publish(self, event: ChangeEvent) -> None:
        """Encode and hand to the producer; blocks (serving deliveries) while its queue is full."""
        records = self.encoder.encode(event)
        produce = self.producer.produce
        for record in records:
            callback = self.tracker.open()
            while True:
                try:
                    if record.key is None:
                        # No primary key: keep the table's order by using one partition.
                        produce(record.topic, record.value, None, 0, callback=callback)
                    else:
                        produce(record.topic, record.value, record.key, callback=callback)
                    break
                except BufferError:
                    self.producer.poll(0.05)
                    self.raise_if_failed()
        self.published += len(records)
        counter = self._counters.get((event.source.table, event.op))
        if counter is None:
            counter = self._counters[(event.source.table, event.op)] = metrics.capture.events.labels(
                f"{event.source.schema}.{event.source.table}", event.op
            )
        counter.inc()

    def seal(self, position: P) -> None:
        """Everything published since the previous seal belongs to ``position``."""
        self.tracker.seal(position)

    def poll(self, timeout: float = 0.0) -> P | None:
        """Serve delivery reports; the newest position whose records are all acknowledged."""
        self.producer.poll(timeout)
        self.raise_if_failed()
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
