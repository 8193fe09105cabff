"""Kafka clients built from settings, topic creation, and delivery tracking.

Message size: ``KafkaSettings.max_message_bytes`` is the largest record (key + value) walbridge
produces. Its topics are created with ``max.message.bytes``, its producers get ``message.max.bytes``
and its consumers fetch sizes of that limit plus :data:`RECORD_OVERHEAD` (batch framing, headers,
the DLQ's error headers), so a record that passes the capture's own size check is never refused by
librdkafka or by a topic walbridge created.

:class:`DeliveryTracker` owns the "confirmed position" of a capture: positions are
registered in source order with the number of records produced for them, and a
position is confirmed only when it and every earlier one are acknowledged by Kafka.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from walbridge.config import KafkaSettings
from walbridge.errors import ConfigError, ConnectionLost, OperationTimeout, PermanentError, WalbridgeError
from walbridge.logs import ThrottleRepeats

__all__ = [
    "RECORD_OVERHEAD",
    "DeliveryTracker",
    "await_admin",
    "check_broker",
    "client_config",
    "ensure_topics",
    "librdkafka_logger",
    "make_admin",
    "make_consumer",
    "make_producer",
    "map_kafka_error",
    "produce_waiting",
    "topic_config",
]

P = TypeVar("P")

RECORD_OVERHEAD = 64 * 1024
"""Room above ``max_message_bytes`` for record framing and headers (a DLQ record's error headers)."""

_FETCH_MAX_DEFAULT = 52_428_800  # librdkafka's fetch.max.bytes
_RECEIVE_MAX_DEFAULT = 100_000_000  # librdkafka's receive.message.max.bytes


def _wire_limit(settings: KafkaSettings) -> int:
    return settings.max_message_bytes + RECORD_OVERHEAD


def topic_config(settings: KafkaSettings) -> dict[str, str]:
    """Topic configs for the topics walbridge creates: large records allowed."""
    return {"max.message.bytes": str(_wire_limit(settings))}


def client_config(settings: KafkaSettings) -> dict[str, Any]:
    """The librdkafka properties common to every client; its log goes through walbridge's logging."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers}
    conf.update(settings.client_options())
    conf.setdefault("logger", librdkafka_logger(settings.bootstrap_servers))
    return conf


class _ExplainBroker(logging.Filter):
    """Adds to librdkafka's connection failures the address it was given and what to check."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__()
        self.hint = (
            f" — cannot reach the Kafka broker at {bootstrap}: check kafka.bootstrap_servers, that the "
            "broker runs and listens there, and the TLS/SASL options"
        )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if ("Connect to" in message or "all brokers down" in message.lower()) and self.hint not in message:
            record.msg, record.args = message + self.hint, None
        return True


def librdkafka_logger(bootstrap: str) -> logging.Logger:
    """The logger librdkafka writes to: one line per kind of message a minute, with a hint on
    connection failures (instead of librdkafka printing every retry to stderr)."""
    logger = logging.getLogger(f"walbridge.kafka.client[{bootstrap}]")
    if not logger.filters:
        logger.addFilter(ThrottleRepeats(60.0))
        logger.addFilter(_ExplainBroker(bootstrap))
    return logger


def make_producer(settings: KafkaSettings, **extra: Any) -> Producer:
    """An idempotent producer (acks=all, ordered retries) tuned for throughput."""
    conf = client_config(settings)
    conf.setdefault("enable.idempotence", True)
    conf.setdefault("acks", "all")
    conf.setdefault("linger.ms", 20)  # larger batches: less CPU per record; latency stays far under 0.25 s
    conf.setdefault("batch.num.messages", 10_000)
    conf.setdefault("queue.buffering.max.messages", 500_000)
    # Compressed by the producer and stored as sent (topics keep compression.type=producer): the broker
    # checks the compressed batch, which stays under the limit checked on the uncompressed record.
    conf.setdefault("compression.type", "lz4")
    conf.setdefault("message.max.bytes", _wire_limit(settings))
    conf.update(extra)
    producer: Producer = _build(Producer, conf)
    return producer


def produce_waiting(
    producer: Producer, *args: Any, on_wait: Any = None, wait_s: float = 0.05, **kwargs: Any
) -> None:
    """``producer.produce(...)``, waiting (serving delivery reports) while its queue is full.

    ``on_wait`` is called after each wait, e.g. to stop on a delivery failure seen meanwhile.
    """
    while True:
        try:
            producer.produce(*args, **kwargs)
            return
        except BufferError:
            producer.poll(wait_s)
            if on_wait is not None:
                on_wait()


def make_consumer(settings: KafkaSettings, group_id: str, **extra: Any) -> Any:
    """A consumer with manual commits (the caller decides when an offset is safe)."""
    from confluent_kafka import Consumer

    conf = client_config(settings)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    # A topic created while the group joins (a pattern subscription, a new table) is otherwise only
    # noticed at the next metadata refresh, 5 minutes later with librdkafka's default.
    conf.setdefault("topic.metadata.refresh.interval.ms", 10_000)
    # One record up to the size limit fits in a fetch.
    limit = _wire_limit(settings)
    conf.setdefault("max.partition.fetch.bytes", limit)
    conf.setdefault("fetch.max.bytes", max(_FETCH_MAX_DEFAULT, limit))
    conf.setdefault(
        "receive.message.max.bytes", max(_RECEIVE_MAX_DEFAULT, int(conf["fetch.max.bytes"]) + 512)
    )
    if settings.session_timeout_ms is not None:
        conf["session.timeout.ms"] = settings.session_timeout_ms
        conf.setdefault("heartbeat.interval.ms", max(500, settings.session_timeout_ms // 6))
    conf.update(extra)
    return _build(Consumer, conf)


def make_admin(settings: KafkaSettings) -> AdminClient:
    admin: AdminClient = _build(AdminClient, client_config(settings))
    return admin


def _build(cls: Any, conf: dict[str, Any]) -> Any:
    try:
        return cls(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Kafka client setting: {exc}") from exc


def check_broker(settings: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Raise ConnectionLost naming the address when no broker answers."""
    admin = make_admin(settings)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ConnectionLost(
            f"Kafka broker at {settings.bootstrap_servers} did not answer within {timeout_s:g}s ({exc})",
            bootstrap=settings.bootstrap_servers,
        ) from exc


def ensure_topics(
    admin: AdminClient,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int,
    timeout_s: float = 30.0,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (with topic ``config``); returns the ones created."""
    wanted = sorted(set(topics))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise map_kafka_error(exc.args[0] if exc.args else None, "listing topics") from exc
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                name, num_partitions=partitions, replication_factor=replication_factor, config=config or {}
            )
            for name in missing
        ],
        operation_timeout=timeout_s,
    )
    await_admin(futures, "creating topic", ignore=KafkaError.TOPIC_ALREADY_EXISTS, timeout_s=timeout_s)
    return missing


def await_admin(futures: dict[str, Any], doing: str, *, ignore: int, timeout_s: float = 30.0) -> list[str]:
    """Wait for AdminClient futures; the names that succeeded (``ignore``: an error code that is fine)."""
    done = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            done.append(name)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == ignore:
                continue
            raise map_kafka_error(err, f"{doing} {name}") from exc
    return done


def map_kafka_error(err: Any, doing: str) -> WalbridgeError:
    """KafkaError → the walbridge error tree (retriable → transient)."""
    if not isinstance(err, KafkaError):
        return ConnectionLost(f"Kafka failed while {doing}: {err}")
    text = f"Kafka failed while {doing}: {err.str()}"
    if err.code() in (KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT, KafkaError._MSG_TIMED_OUT):
        return OperationTimeout(text, kafka_code=err.name())
    if err.fatal() or not (err.retriable() or err.code() in _TRANSIENT_CODES):
        return PermanentError(text, kafka_code=err.name())
    return ConnectionLost(text, kafka_code=err.name())


# Retriable whatever the error object says: delivery reports carry no retriable flag, and librdkafka
# reports these only after its own retries gave up. Anything else in a delivery report is final.
_TRANSIENT_CODES = {
    KafkaError._TRANSPORT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._RESOLVE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.KAFKA_STORAGE_ERROR,
}


class _Checkpoint(Generic[P]):
    __slots__ = ("callback", "failed", "position", "remaining", "sealed", "tracker")

    def __init__(self, tracker: DeliveryTracker[P]) -> None:
        self.tracker = tracker
        self.position: P | None = None
        self.remaining = 0
        self.sealed = False
        self.failed: KafkaError | None = None
        # One bound method per checkpoint, handed to every record of it (not one per record).
        self.callback = self.ack

    def ack(self, err: KafkaError | None, msg: Any) -> None:
        """Delivery callback of every record produced for this checkpoint."""
        if err is not None:
            self.failed = err
            self.tracker.fail(err, msg)
        self.remaining -= 1


class DeliveryTracker(Generic[P]):
    """Confirms a source position once every record produced up to it is acknowledged.

    Usage per source transaction: ``cb = tracker.open()``; produce each record with
    ``callback=cb``; ``tracker.seal(position)``. ``tracker.confirmed()`` (after the
    producer's ``poll``) returns the newest position whose records, and all earlier
    ones, are acknowledged. Delivery callbacks run in the thread calling ``poll``.
    """

    def __init__(self) -> None:
        self._queue: deque[_Checkpoint[P]] = deque()
        self._current: _Checkpoint[P] | None = None
        self._confirmed: P | None = None
        self.failure: KafkaError | None = None
        self.failed_message: Any = None
        """The record of the first failure (``None`` for a client-wide error)."""
        self._lock = threading.Lock()

    def fail(self, err: KafkaError, msg: Any = None) -> None:
        """Record a delivery failure; the first one is kept (later ones are usually its consequence)."""
        if self.failure is None:
            self.failure = err
            self.failed_message = msg

    def open(self, records: int = 1) -> Any:
        """The delivery callback for ``records`` more records of the position being built."""
        cp = self._current
        if cp is None:
            cp = self._current = _Checkpoint(self)
            self._queue.append(cp)
        cp.remaining += records
        return cp.callback

    def seal(self, position: P) -> None:
        """No more records for the current position; it may now be confirmed."""
        cp = self._current
        if cp is None:
            cp = _Checkpoint(self)
            self._queue.append(cp)
        cp.position = position
        cp.sealed = True
        self._current = None

    def confirmed(self) -> P | None:
        queue = self._queue
        while queue and queue[0].sealed and queue[0].remaining <= 0:
            cp = queue.popleft()
            if cp.failed is not None:
                # A failed record: never confirm past it; the source must resend from the last confirmed.
                queue.appendleft(cp)
                break
            self._confirmed = cp.position
        return self._confirmed

    @property
    def pending(self) -> int:
        return sum(cp.remaining for cp in self._queue)

    def reset(self, confirmed: P | None) -> None:
        self._queue.clear()
        self._current = None
        self._confirmed = confirmed
        self.failure = None
        self.failed_message = None
