"""Kafka administration, as the seed's admin.py: topics and consumer-group lag.

Lag is ``high watermark - committed offset`` per partition. The high watermark comes from a
consumer's ``get_watermark_offsets``; against Apache Kafka that is exact (some Kafka-protocol
test brokers under-report it for multi-record batches, so treat lag there as approximate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from walbridge.config import KafkaSettings
from walbridge.errors import WalbridgeError
from walbridge.kafka import (
    await_admin,
    ensure_topics,
    make_admin,
    make_consumer,
    map_kafka_error,
    topic_config,
)

__all__ = [
    "PartitionLag",
    "TopicInfo",
    "create_topics",
    "delete_topics",
    "describe_group",
    "describe_topic",
    "list_topics",
    "partition_lags",
]


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int
    replicas: int


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None
    high_watermark: int
    low_watermark: int = 0

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.high_watermark - self.committed)

    @property
    def backlog(self) -> int:
        """Records left to read: the lag, or without a committed offset everything the partition holds."""
        lag = self.lag
        return max(0, self.high_watermark - self.low_watermark) if lag is None else lag


def _error(exc: KafkaException, doing: str) -> WalbridgeError:
    return map_kafka_error(exc.args[0] if exc.args else None, doing)


def list_topics(settings: KafkaSettings, include_internal: bool = False) -> list[TopicInfo]:
    try:
        metadata = make_admin(settings).list_topics(timeout=10)
    except KafkaException as exc:
        raise _error(exc, "listing topics") from exc
    out = []
    for name, topic in sorted(metadata.topics.items()):
        if name.startswith("__") and not include_internal:
            continue
        replicas = max((len(p.replicas) for p in topic.partitions.values()), default=0)
        out.append(TopicInfo(name, len(topic.partitions), replicas))
    return out


def create_topics(settings: KafkaSettings, names: list[str], partitions: int | None = None) -> list[str]:
    """Create the missing topics; returns the ones created."""
    return ensure_topics(
        make_admin(settings),
        names,
        partitions or settings.partitions,
        settings.replication_factor,
        config=topic_config(settings),
    )


def delete_topics(settings: KafkaSettings, names: list[str]) -> list[str]:
    """Delete topics; returns the ones deleted (unknown topics are skipped)."""
    futures = make_admin(settings).delete_topics(names, operation_timeout=30)
    return await_admin(futures, "deleting", ignore=KafkaError.UNKNOWN_TOPIC_OR_PART)


def describe_group(settings: KafkaSettings, group_id: str, topics: list[str]) -> list[PartitionLag]:
    """Committed offset, high watermark and lag of ``group_id`` on every partition of ``topics``."""
    consumer: Any = make_consumer(settings, group_id)
    try:
        metadata = consumer.list_topics(timeout=10)
        partitions = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata.topics
            for p in sorted(metadata.topics[t].partitions)
        ]
        return partition_lags(consumer, partitions)
    except KafkaException as exc:
        raise _error(exc, f"describing group {group_id}") from exc
    finally:
        consumer.close()


def partition_lags(
    consumer: Any, partitions: list[TopicPartition], timeout_s: float = 10.0
) -> list[PartitionLag]:
    """The group's committed offsets (of ``consumer``'s ``group.id``) against the partition ends, from the
    broker (raises :class:`KafkaException`)."""
    committed = consumer.committed(partitions, timeout=timeout_s) if partitions else []
    out = []
    for tp in committed:
        low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=timeout_s)
        offset = tp.offset if tp.offset >= 0 else None
        out.append(PartitionLag(tp.topic, tp.partition, offset, high, low))
    return out


def describe_topic(settings: KafkaSettings, name: str) -> dict[str, Any]:
    try:
        metadata = make_admin(settings).list_topics(name, timeout=10)
    except KafkaException as exc:
        raise _error(exc, f"describing {name}") from exc
    topic = metadata.topics.get(name)
    if topic is None or topic.error is not None:
        raise WalbridgeError(f"topic {name} does not exist")
    return {
        "topic": name,
        "partitions": [
            {"partition": p.id, "leader": p.leader, "replicas": list(p.replicas), "isrs": list(p.isrs)}
            for p in sorted(topic.partitions.values(), key=lambda p: p.id)
        ],
    }
