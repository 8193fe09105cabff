"""Dead-letter queue: write refused records, read them back, replay them.

Writing: :class:`DlqWriter` produces (idempotent producer, ``acks=all``) the original key,
value and headers of each refused record to ``DlqSettings.topic`` or
``<original topic><topic_suffix>``, adding Kafka Connect's error headers
(``__connect.errors.topic``, ``.partition``, ``.offset``, ``.exception.class.name``,
``.exception.message``, ``.exception.stacktrace``) and walbridge's ``walbridge.errors.attempts``
and ``walbridge.errors.sink``. :meth:`DlqWriter.publish` returns only once every record is
acknowledged, so the runner commits offsets past a record only after it is safe in the DLQ.
The DLQ is at-least-once: a batch retried after its records reached the DLQ may repeat them.

Reading: :func:`read_dlq` scans DLQ topics to their end and returns :class:`DlqEntry` values;
:meth:`DlqEntry.seed_json` is the seed's JSON form (``original_topic, original_key,
original_value, error, partition, offset, timestamp``).

Replay lives in :mod:`walbridge.sinks.replay` (the sink applies its own dead letters; nothing is
re-published to the original topic). Records re-published by walbridge before that carry the header
``walbridge.replayed.from`` (:attr:`DlqEntry.replayed_from`).
"""

from __future__ import annotations

import re
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from walbridge.config import DlqSettings, Settings
from walbridge.errors import ConfigError, ConnectionLost
from walbridge.kafka import (
    ensure_topics,
    make_admin,
    make_consumer,
    make_producer,
    map_kafka_error,
    produce_waiting,
    topic_config,
)
from walbridge.sinks.base import RecordFailure

__all__ = [
    "CONNECT_HEADER_PREFIX",
    "REPLAYED_HEADER",
    "DlqEntry",
    "DlqWriter",
    "dlq_topic_config",
    "dlq_topic_for",
    "error_headers",
    "list_dlq_topics",
    "parse_since",
    "parse_where",
    "read_dlq",
    "reader",
    "scan_topic",
]

CONNECT_HEADER_PREFIX = "__connect.errors."
ATTEMPTS_HEADER = "walbridge.errors.attempts"
SINK_HEADER = "walbridge.errors.sink"
REPLAYED_HEADER = "walbridge.replayed.from"
_STACKTRACE_LIMIT = 8_000


def dlq_topic_for(settings: DlqSettings, original_topic: str) -> str:
    return settings.topic or f"{original_topic}{settings.topic_suffix}"


def dlq_topic_config(settings: Settings) -> dict[str, str]:
    """Configs of a DLQ topic walbridge creates: large records, and ``dlq.retention_ms`` (default
    forever: the broker's default retention would delete dead letters nobody replayed, silently)."""
    return {**topic_config(settings.kafka), "retention.ms": str(settings.dlq.retention_ms)}


def _class_name(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def _stacktrace(error: BaseException) -> str:
    text = "".join(traceback.format_exception(error))
    return text[-_STACKTRACE_LIMIT:]


def error_headers(failure: RecordFailure, attempts: int, sink: str) -> list[tuple[str, bytes]]:
    """The original record's headers plus Kafka Connect's and walbridge's error headers."""
    record, error = failure.record, failure.error
    message = error.message
    if error.__cause__ is not None and str(error.__cause__) not in message:
        message = f"{message}: {error.__cause__}"
    headers = [(k, v) for k, v in (record.headers or []) if not k.startswith(CONNECT_HEADER_PREFIX)]
    headers += [
        (CONNECT_HEADER_PREFIX + "topic", record.topic.encode()),
        (CONNECT_HEADER_PREFIX + "partition", str(record.partition).encode()),
        (CONNECT_HEADER_PREFIX + "offset", str(record.offset).encode()),
        (CONNECT_HEADER_PREFIX + "exception.class.name", _class_name(error).encode()),
        # Capped like the stack trace: a driver's detail can quote the whole (large) row.
        (CONNECT_HEADER_PREFIX + "exception.message", message[:_STACKTRACE_LIMIT].encode()),
        (CONNECT_HEADER_PREFIX + "exception.stacktrace", _stacktrace(error).encode()),
        (ATTEMPTS_HEADER, str(attempts).encode()),
        (SINK_HEADER, sink.encode()),
    ]
    return headers


class DlqWriter:
    """Produces refused records to the DLQ and waits for their acknowledgement."""

    def __init__(self, settings: Settings, sink_name: str, *, flush_timeout_s: float = 30.0) -> None:
        self._settings = settings
        self._sink = sink_name
        self._flush_timeout_s = flush_timeout_s
        self._producer: Any = None
        self._known_topics: set[str] = set()

    def publish(self, failures: Sequence[tuple[RecordFailure, int]]) -> None:
        """Produce ``(failure, attempts)`` pairs and wait until all are acknowledged.

        Raises a TransientError when the broker does not acknowledge them all.
        """
        if not failures:
            return
        producer = self._producer_or_new()
        self._ensure([dlq_topic_for(self._settings.dlq, f.record.topic) for f, _ in failures])
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        for failure, attempts in failures:
            record = failure.record
            self._produce(
                producer,
                topic=dlq_topic_for(self._settings.dlq, record.topic),
                key=record.key,
                value=record.value,
                headers=error_headers(failure, attempts, self._sink),
                on_delivery=on_delivery,
            )
        remaining = producer.flush(self._flush_timeout_s)
        if remaining:
            wait = self._flush_timeout_s
            raise ConnectionLost(f"{remaining} DLQ records not acknowledged within {wait:g}s")
        if errors:
            raise map_kafka_error(errors[0], "writing to the DLQ")

    @staticmethod
    def _produce(producer: Any, **kwargs: Any) -> None:
        try:
            produce_waiting(producer, wait_s=0.1, **kwargs)
        except KafkaException as exc:
            raise map_kafka_error(exc.args[0] if exc.args else None, "writing to the DLQ") from exc

    def _producer_or_new(self) -> Any:
        if self._producer is None:
            self._producer = make_producer(self._settings.kafka, **{"linger.ms": 0})
        return self._producer

    def _ensure(self, topics: Iterable[str]) -> None:
        missing = set(topics) - self._known_topics
        if missing:
            kafka = self._settings.kafka
            config = dlq_topic_config(self._settings)
            ensure_topics(make_admin(kafka), missing, 1, kafka.replication_factor, config=config)
            self._known_topics |= missing

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._flush_timeout_s)
            self._producer = None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class DlqEntry:
    """One DLQ record, decoded."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)
    extra_headers: list[tuple[str, bytes]] = field(default_factory=list)
    """The original record's own headers (to carry over on replay)."""

    def _h(self, name: str) -> str | None:
        raw = self.headers.get(name)
        return None if raw is None else raw.decode(errors="replace")

    @property
    def original_topic(self) -> str | None:
        return self._h(CONNECT_HEADER_PREFIX + "topic")

    @property
    def original_partition(self) -> int | None:
        raw = self._h(CONNECT_HEADER_PREFIX + "partition")
        return None if raw is None else int(raw)

    @property
    def original_offset(self) -> int | None:
        raw = self._h(CONNECT_HEADER_PREFIX + "offset")
        return None if raw is None else int(raw)

    @property
    def error(self) -> str:
        return self._h(CONNECT_HEADER_PREFIX + "exception.message") or ""

    @property
    def error_class(self) -> str:
        return self._h(CONNECT_HEADER_PREFIX + "exception.class.name") or ""

    @property
    def attempts(self) -> int | None:
        raw = self._h(ATTEMPTS_HEADER)
        return None if raw is None else int(raw)

    @property
    def sink(self) -> str | None:
        return self._h(SINK_HEADER)

    @property
    def replayed_from(self) -> str | None:
        """Set when the original record was itself a replay."""
        return self._h(REPLAYED_HEADER)

    @property
    def marker(self) -> str:
        return f"{self.dlq_partition}:{self.dlq_offset}"

    def seed_json(self) -> dict[str, Any]:
        """The seed's DLQ message form."""
        return {
            "original_topic": self.original_topic,
            "original_key": _text(self.key),
            "original_value": _text(self.value),
            "error": self.error,
            "partition": self.original_partition,
            "offset": self.original_offset,
            "timestamp": self.timestamp_ms / 1000.0,
        }

    def detail_json(self) -> dict[str, Any]:
        """The seed's form plus where the DLQ record is and walbridge's extra headers."""
        return {
            **self.seed_json(),
            "dlq_topic": self.dlq_topic,
            "dlq_partition": self.dlq_partition,
            "dlq_offset": self.dlq_offset,
            "error_class": self.error_class,
            "attempts": self.attempts,
            "sink": self.sink,
        }


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")


def _entry(message: Any) -> DlqEntry:
    headers: dict[str, bytes] = {}
    extra: list[tuple[str, bytes]] = []
    for name, value in message.headers() or []:
        raw = value if isinstance(value, bytes) else (value or "").encode() if value is not None else b""
        if name.startswith(CONNECT_HEADER_PREFIX) or name in (ATTEMPTS_HEADER, SINK_HEADER):
            headers[name] = raw
        else:
            extra.append((name, raw))
            if name == REPLAYED_HEADER:
                headers[name] = raw
    return DlqEntry(
        dlq_topic=message.topic(),
        dlq_partition=message.partition(),
        dlq_offset=message.offset(),
        timestamp_ms=message.timestamp()[1],
        key=message.key(),
        value=message.value(),
        headers=headers,
        extra_headers=extra,
    )


def reader(settings: Settings) -> Any:
    """A consumer for :func:`scan_topic` (no group membership; reports partition ends)."""
    return make_consumer(
        settings.kafka,
        f"walbridge-dlq-reader-{uuid.uuid4().hex[:8]}",
        # A short broker-side fetch wait: the end of a partition is seen without waiting 500 ms for data.
        **{"enable.partition.eof": True, "partition.assignment.strategy": "range", "fetch.wait.max.ms": 20},
    )


def scan_topic(
    settings: Settings,
    topic: str,
    timeout_s: float,
    start: dict[int, int] | None = None,
    consumer: Any = None,
) -> Iterable[Any]:
    """Every record of ``topic`` up to the current end of each partition.

    From the beginning, or with ``start`` (partition → offset) only those partitions from there.
    With ``consumer`` (from :func:`reader`; the caller closes it) no new connection is made.
    """
    own = consumer is None
    if own:
        consumer = reader(settings)
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return
        partitions = sorted(metadata.partitions if start is None else set(start) & set(metadata.partitions))
        if not partitions:
            return
        consumer.assign([TopicPartition(topic, p, 0 if start is None else start[p]) for p in partitions])
        open_parts = set(partitions)
        deadline = time.monotonic() + timeout_s
        while open_parts:
            if time.monotonic() > deadline:
                raise ConnectionLost(f"reading {topic}: no progress for {timeout_s:g}s before its end")
            for message in consumer.consume(500, 0.1):
                deadline = time.monotonic() + timeout_s
                if message.topic() != topic:
                    continue  # left over from a reused consumer's earlier assignment
                err = message.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(message.partition())
                elif err is not None:
                    raise map_kafka_error(err, f"reading {topic}")
                elif message.partition() in open_parts:
                    yield message
    finally:
        if own:
            consumer.close()
        else:
            consumer.unassign()


def list_dlq_topics(settings: Settings, timeout_s: float = 10.0) -> list[str]:
    """The configured DLQ topic, or every topic ending with the DLQ suffix."""
    if settings.dlq.topic:
        return [settings.dlq.topic]
    try:
        names = make_admin(settings.kafka).list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise map_kafka_error(exc.args[0] if exc.args else None, "listing topics") from exc
    return sorted(n for n in names if n.endswith(settings.dlq.topic_suffix))


def read_dlq(
    settings: Settings,
    topics: Sequence[str],
    *,
    since_ms: int | None = None,
    where: Callable[[DlqEntry], bool] | None = None,
    timeout_s: float = 30.0,
) -> list[DlqEntry]:
    entries = []
    for topic in topics:
        for message in scan_topic(settings, topic, timeout_s):
            entry = _entry(message)
            if since_ms is not None and entry.timestamp_ms < since_ms:
                continue
            if where is None or where(entry):
                entries.append(entry)
    return entries


_WHERE = re.compile(r"^(?P<field>[a-z_]+)\s*(?P<op>~|=)\s*(?P<value>.*)$", re.DOTALL)
_WHERE_FIELDS: dict[str, Callable[[DlqEntry], Any]] = {
    "error": lambda e: e.error,
    "class": lambda e: e.error_class,
    "topic": lambda e: e.original_topic,
    "key": lambda e: _text(e.key),
    "value": lambda e: _text(e.value),
    "sink": lambda e: e.sink,
    "partition": lambda e: e.original_partition,
    "offset": lambda e: e.original_offset,
}


def parse_where(expr: str) -> Callable[[DlqEntry], bool]:
    """``field~regex`` (search) or ``field=value`` (equality); fields: error, class, topic, key, ..."""
    match = _WHERE.match(expr.strip())
    if match is None or match["field"] not in _WHERE_FIELDS:
        fields = ", ".join(sorted(_WHERE_FIELDS))
        raise ConfigError(f"--where {expr!r}: expected FIELD~REGEX or FIELD=VALUE, FIELD one of {fields}")
    getter, value = _WHERE_FIELDS[match["field"]], match["value"]
    if match["op"] == "=":
        return lambda e: str(getter(e)) == value
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise ConfigError(f"--where {expr!r}: bad regular expression: {exc}") from exc
    return lambda e: pattern.search(str(getter(e) or "")) is not None


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime | None = None) -> int:
    """``30m``/``2h``/``1d`` ago, or an ISO-8601 time (UTC when naive) → epoch milliseconds."""
    now = now or datetime.now(UTC)
    if match := _DURATION.match(text.strip()):
        moment = now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError as exc:
            raise ConfigError(f"--since {text!r}: expected e.g. 30m, 2h, 1d or an ISO-8601 time") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
