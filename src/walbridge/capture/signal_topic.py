"""Debezium's Kafka signal channel: signals sent to a topic, relayed into the signal table.

A record of ``source.signal_topic`` whose key is the capture's ``events.topic_prefix`` (Debezium: the
connector's ``topic.prefix``) and whose value is ``{"type": ..., "data": {...}}`` is written into
``source.signal_table``, then its offset is committed. The signal then reaches capture through the
change stream like one inserted there directly: in stream order, beside the watermarks, acted on once
(see :mod:`walbridge.capture.incremental`). Records with another key belong to another connector and
are skipped. The topic is read by manual assignment (no group join) with offsets kept in the group
``walbridge-signals-<slot>``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from walbridge.capture.connection import connect_source
from walbridge.capture.signals import send_signal
from walbridge.config import Settings
from walbridge.kafka import ensure_topics, make_admin, make_consumer, map_kafka_error

__all__ = ["SignalTopic"]

log = logging.getLogger(__name__)

_EVERY_S = 1.0


class SignalTopic:
    """``relay()`` (cheap to call often) moves new signal records into the signal table."""

    def __init__(self, settings: Settings) -> None:
        source = settings.source
        assert source.signal_topic is not None and source.signal_table is not None
        self.topic = source.signal_topic
        self.table = source.signal_table
        self.dsn = source.dsn
        self.key = settings.events.topic_prefix
        self.kafka = settings.kafka
        self.group = f"walbridge-signals-{source.slot}"
        self._consumer: Any = None
        self._next = 0.0

    def relay(self) -> int:
        """Relay what arrived since the last call (at most once a second); how many signals."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + _EVERY_S
        try:
            consumer = self._consumer or self._open()
            records = [r for r in consumer.consume(num_messages=100, timeout=0) if r.error() is None]
        except KafkaException as exc:
            raise map_kafka_error(
                exc.args[0] if exc.args else None, f"reading signal topic {self.topic}"
            ) from exc
        if not records:
            return 0
        relayed = 0
        with connect_source(self.dsn) as conn:
            for record in records:
                signal = self._parse(record)
                if signal is not None:
                    send_signal(conn, self.table, *signal)
                    relayed += 1
        consumer.commit(
            offsets=[TopicPartition(r.topic(), r.partition(), r.offset() + 1) for r in records],
            asynchronous=False,
        )
        return relayed

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _open(self) -> Any:
        ensure_topics(make_admin(self.kafka), [self.topic], 1, self.kafka.replication_factor)
        consumer = make_consumer(self.kafka, self.group)
        partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        wanted = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        committed = consumer.committed(wanted, timeout=10)
        consumer.assign(
            [
                TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                for tp in committed
            ]
        )
        self._consumer = consumer
        log.info("reading signals from topic %s (key %s)", self.topic, self.key)
        return consumer

    def _parse(self, record: Any) -> tuple[str, dict[str, Any] | None] | None:
        key = record.key()
        if key is None or key.decode("utf-8", "replace") != self.key:
            log.debug("signal record at offset %d is for %r, not %r: skipped", record.offset(), key, self.key)
            return None
        try:
            value = orjson.loads(record.value() or b"null")
        except orjson.JSONDecodeError:
            value = None
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            log.warning(
                'signal record at offset %d of %s is not {"type": ..., "data": ...}: skipped',
                record.offset(),
                self.topic,
            )
            return None
        data = value.get("data")
        return value["type"], data if isinstance(data, dict) else None
