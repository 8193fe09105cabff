"""``walbridge dlq replay``: a sink applies its own dead letters, never over a newer state of a row.

Nothing is re-published to the original topic: every group reading it would apply the old row image
again. The replay applies each dead letter itself, through the code of the sink named in its
``walbridge.errors.sink`` header (:class:`~walbridge.sinks.postgres.PostgresSink` or
:class:`~walbridge.sinks.salesforce.sink.SalesforceSink`, built from that sink's configuration), to
that sink's destination only. Each selected dead letter gets one outcome (:data:`OUTCOMES`):

- ``superseded``: its original partition holds a later record with the same key (or a truncate): the
  destination holds that newer state, or will (the sink reads partitions in order; a later record
  that is itself a dead letter is the one to replay). Found by reading the partition from the dead
  letter's offset to its end; tombstones do not count (they follow their delete).
- ``pending``: the sink's group has not passed the record yet (no position, or one not past its
  offset): the sink will read it again itself.
- ``unknown``: records after it were deleted from its partition (retention): whether the row changed
  since cannot be told, so it is not written (re-sync the row from the source instead).
- ``applied``: written to the destination; ``failed``: refused again, stays in the DLQ unmarked.
- ``already``: applied or found superseded by an earlier run; ``elsewhere``: another sink's dead
  letter, a sink this configuration does not have, or a record without its origin headers.

Several dead letters of one key: all but the latest are superseded by it. The same record
dead-lettered twice (the DLQ is at-least-once) is applied once.

The sink's position: PostgreSQL — the group's rows of ``walbridge.offsets`` in the destination. The
last read of the partitions (catching up from the first, unlocked one) and the writes run in one
destination transaction that holds those rows locked (:meth:`PostgresSink.hold_offsets`): a running
member waits at its offset fence, so nothing it applies can slip between the check and the replay.
Salesforce — the group's committed Kafka offsets. There is no lock to take there (a change of the same
row produced *and* published by a running sink between the replay's last read and its publish would
land before the replayed event), so the replay refuses while the sink's group has members.

Once: ``applied`` and ``superseded`` are recorded, after the writes, in the compacted topic
``<dlq topic>.replayed`` (key ``<partition>:<offset>`` of the DLQ record). A crash between the writes
and the markers makes the next run check and write the same row image again, which is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from walbridge.admin import describe_group
from walbridge.config import PostgresSinkSettings, SalesforceSinkSettings, Settings
from walbridge.errors import ConfigError, DecodeError, WalbridgeError
from walbridge.events import decode_record
from walbridge.kafka import (
    ensure_topics,
    make_admin,
    make_producer,
    map_kafka_error,
    produce_waiting,
)
from walbridge.sinks.base import RecordFailure, Sink, SinkRecord, TopicPartitionKey
from walbridge.sinks.dlq import DlqEntry, reader, scan_topic

__all__ = ["MARKER_SUFFIX", "OUTCOMES", "ReplayReport", "replay", "replayed_markers"]

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".replayed"
OUTCOMES = ("applied", "superseded", "pending", "unknown", "failed", "already", "elsewhere")
_MARKED = ("applied", "superseded")
Origin = tuple[str, int, int]
"""Original topic, partition, offset of a dead letter."""


@dataclass(slots=True)
class ReplayReport:
    """What happened to each selected dead letter (see the module docstring)."""

    outcomes: dict[str, list[DlqEntry]] = field(default_factory=lambda: {o: [] for o in OUTCOMES})
    errors: dict[tuple[str, int, int], str] = field(default_factory=dict)
    """Why a ``failed`` entry failed, by its DLQ position."""

    def add(self, outcome: str, entries: Sequence[DlqEntry], error: str | None = None) -> None:
        self.outcomes[outcome].extend(entries)
        for entry in entries:
            if error is not None:
                self.errors[_position(entry)] = error

    def __getitem__(self, outcome: str) -> list[DlqEntry]:
        return self.outcomes[outcome]

    @property
    def handled(self) -> int:
        return sum(len(v) for v in self.outcomes.values())

    def summary(self) -> str:
        n = {o: len(v) for o, v in self.outcomes.items()}
        return (
            f"applied {n['applied']}, superseded {n['superseded']} (a later change of the row exists), "
            f"pending {n['pending']} (the sink has not passed them yet), "
            f"unknown {n['unknown']} (later records deleted by retention), failed {n['failed']}, "
            f"already replayed {n['already']}, not this configuration's {n['elsewhere']}"
        )


def _position(entry: DlqEntry) -> tuple[str, int, int]:
    return entry.dlq_topic, entry.dlq_partition, entry.dlq_offset


def _origin(entry: DlqEntry) -> Origin | None:
    topic, partition, offset = entry.original_topic, entry.original_partition, entry.original_offset
    if topic is None or partition is None or offset is None:
        return None
    return topic, partition, offset


# --------------------------------------------------------------------------- markers


def _marker_topic(dlq_topic: str) -> str:
    return dlq_topic + MARKER_SUFFIX


def replayed_markers(settings: Settings, dlq_topic: str) -> set[str]:
    """DLQ positions (``partition:offset``) an earlier replay applied or found superseded."""
    messages = scan_topic(settings, _marker_topic(dlq_topic), 30.0)
    return {m.key().decode() for m in messages if m.key() is not None}


def _ensure_marker_topic(settings: Settings, topic: str) -> None:
    admin = make_admin(settings.kafka)
    if topic in admin.list_topics(timeout=10).topics:
        return
    new = NewTopic(
        topic,
        num_partitions=1,
        replication_factor=settings.kafka.replication_factor,
        config={"cleanup.policy": "compact"},
    )
    for future in admin.create_topics([new], operation_timeout=30).values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            # Brokers that refuse topic configs (some test brokers) still get a plain topic.
            ensure_topics(admin, [topic], 1, settings.kafka.replication_factor)


def _write_markers(settings: Settings, report: ReplayReport, entries: Sequence[DlqEntry]) -> None:
    """Mark the ``entries`` that ended applied or superseded."""
    these = {_position(e) for e in entries}
    marked = [(o, e) for o in _MARKED for e in report[o] if _position(e) in these]
    if not marked:
        return
    for dlq_topic in sorted({e.dlq_topic for _, e in marked}):
        _ensure_marker_topic(settings, _marker_topic(dlq_topic))
    producer = make_producer(settings.kafka, **{"linger.ms": 0})
    now = int(time.time() * 1000)
    for outcome, entry in marked:
        produce_waiting(
            producer,
            wait_s=0.1,
            topic=_marker_topic(entry.dlq_topic),
            key=entry.marker.encode(),
            value=orjson.dumps({"outcome": outcome, "at_ms": now, "sink": entry.sink}),
        )
    if producer.flush(30):
        log.warning("replay: some markers were not acknowledged; a next run checks those records again")


# --------------------------------------------------------------------------- later records


class _LaterRecords:
    """Per partition, the last offset of each wanted key and of a truncate, read up to the end."""

    def __init__(self, settings: Settings, wanted: set[tuple[str, int, bytes | None]], timeout_s: float):
        self._settings = settings
        self._wanted = wanted
        self._timeout_s = timeout_s
        self._last: dict[tuple[str, int, bytes | None], int] = {}
        self._truncated: dict[TopicPartitionKey, int] = {}
        self.next: dict[TopicPartitionKey, int] = {}
        """Where the next read of each partition starts."""
        self.log_start: dict[TopicPartitionKey, int] = {}
        """The first offset each partition still holds (its low watermark)."""
        self._reader: Any = None
        """One consumer for every read: the catch-up read under the lock makes no new connection."""

    def read(self, start: dict[TopicPartitionKey, int]) -> None:
        """Read each partition from ``start`` to its current end."""
        self._note_log_start([tp for tp in start if tp not in self.log_start])
        for topic in sorted({t for t, _ in start}):
            parts = {p: o for (t, p), o in start.items() if t == topic}
            for message in scan_topic(self._settings, topic, self._timeout_s, parts, self._consumer()):
                partition, offset, key = message.partition(), message.offset(), message.key()
                tp = (topic, partition)
                self.next[tp] = max(self.next.get(tp, 0), offset + 1)
                if message.value() is None:
                    continue  # a tombstone follows its delete, which counts
                if key is None:
                    self._truncated[tp] = offset  # keyless: a truncate (or a keyless table's change)
                if (topic, partition, key) in self._wanted:
                    self._last[(topic, partition, key)] = offset
            for partition, offset in parts.items():
                self.next.setdefault((topic, partition), offset)

    def _consumer(self) -> Any:
        if self._reader is None:
            self._reader = reader(self._settings)
        return self._reader

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _note_log_start(self, partitions: list[TopicPartitionKey]) -> None:
        consumer = self._consumer()
        for topic, partition in partitions:
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            self.log_start[(topic, partition)] = low

    def complete(self, origin: Origin) -> bool:
        """Whether every record after ``origin`` is still in its partition (none deleted by retention)."""
        topic, partition, offset = origin
        return self.log_start.get((topic, partition), 0) <= offset + 1

    def catch_up(self) -> None:
        """Read what arrived since the last read."""
        self.read(dict(self.next))

    def newer(self, origin: Origin, key: bytes | None) -> bool:
        topic, partition, offset = origin
        return (
            self._last.get((topic, partition, key), -1) > offset
            or self._truncated.get((topic, partition), -1) > offset
        )


# --------------------------------------------------------------------------- targets


class _Target(Protocol):
    @property
    def sink(self) -> Sink: ...

    def hold(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The group's positions; held until commit/rollback where the destination can."""
        ...

    def write(self, records: list[SinkRecord]) -> list[RecordFailure]: ...


class _PostgresTarget:
    def __init__(self, sink_settings: PostgresSinkSettings) -> None:
        from walbridge.sinks.postgres import PostgresSink

        self.sink = PostgresSink(sink_settings)

    def hold(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        return self.sink.hold_offsets(partitions)

    def write(self, records: list[SinkRecord]) -> list[RecordFailure]:
        # No offset fence: these records lie behind the group's stored offsets on purpose.
        return self.sink.write_batch(records, fence=False)


class _SalesforceTarget:
    def __init__(self, settings: Settings, sink_settings: SalesforceSinkSettings) -> None:
        from walbridge.sinks.salesforce.sink import SalesforceSink

        self.sink = SalesforceSink(sink_settings)
        self._kafka = settings.kafka
        self._group = sink_settings.consumer_group
        running = _group_active(settings, self._group)
        if running:
            raise WalbridgeError(
                f"the Salesforce sink's group {self._group} has running members: stop `walbridge sink "
                "salesforce` before replaying its dead letters (a running sink could publish a newer "
                "change of a row just before the replayed one)"
            )
        if running is None:
            log.warning(
                "cannot tell whether group %s is running; the Salesforce sink must be stopped", self._group
            )
        self.sink.open()

    def hold(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        wanted = set(partitions)
        lags = describe_group(self._kafka, self._group, sorted({t for t, _ in partitions}))
        return {
            (p.topic, p.partition): p.committed
            for p in lags
            if p.committed is not None and (p.topic, p.partition) in wanted
        }

    def write(self, records: list[SinkRecord]) -> list[RecordFailure]:
        return self.sink.write_batch(records)


def _group_active(settings: Settings, group: str) -> bool | None:
    """Whether the consumer group has members (None: the broker does not say)."""
    admin = make_admin(settings.kafka)  # kept referenced until the answer arrives
    try:
        state = admin.describe_consumer_groups([group])[group].result(timeout=10).state
    except (KafkaException, TimeoutError) as exc:
        log.debug("describing group %s: %s", group, exc)
        return None
    if state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        return False
    return None if state == ConsumerGroupState.UNKNOWN else True


def _configured(settings: Settings, name: str) -> PostgresSinkSettings | SalesforceSinkSettings | None:
    """The configured sink a dead letter's ``walbridge.errors.sink`` names (its name, else its type)."""
    found = [sink for sink in settings.sinks if (sink.name or sink.type) == name]
    if len(found) > 1:
        raise ConfigError(f"{len(found)} configured sinks are called {name!r}: give each sink its own name")
    return found[0] if found else None


def _target(settings: Settings, sink_settings: PostgresSinkSettings | SalesforceSinkSettings) -> _Target:
    if isinstance(sink_settings, PostgresSinkSettings):
        return _PostgresTarget(sink_settings)
    return _SalesforceTarget(settings, sink_settings)


# --------------------------------------------------------------------------- replay


def replay(
    settings: Settings,
    entries: Sequence[DlqEntry],
    *,
    dry_run: bool = False,
    timeout_s: float = 60.0,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Apply dead letters through the sinks they belong to (see the module docstring).

    ``dry_run`` decides every outcome but writes nothing (``applied`` then means "would apply").
    ``progress`` is called with the number of entries handled so far.
    """
    report = ReplayReport()
    by_sink: dict[str, list[DlqEntry]] = {}
    for entry in entries:
        if _origin(entry) is None or entry.sink is None or _configured(settings, entry.sink) is None:
            report.add("elsewhere", [entry])
        else:
            by_sink.setdefault(entry.sink, []).append(entry)
    dlq_topics = sorted({e.dlq_topic for group in by_sink.values() for e in group})
    markers = {t: replayed_markers(settings, t) for t in dlq_topics}
    for name, group in by_sink.items():
        todo = [e for e in group if e.marker not in markers[e.dlq_topic]]
        report.add("already", [e for e in group if e.marker in markers[e.dlq_topic]])
        if todo:
            sink_settings = _configured(settings, name)
            assert sink_settings is not None
            _replay_sink(settings, sink_settings, todo, report, dry_run, timeout_s)
            if not dry_run:
                _write_markers(settings, report, todo)
        if progress is not None:
            progress(report.handled)
    return report


def _replay_sink(
    settings: Settings,
    sink_settings: PostgresSinkSettings | SalesforceSinkSettings,
    entries: list[DlqEntry],
    report: ReplayReport,
    dry_run: bool,
    timeout_s: float,
) -> None:
    origins: dict[Origin, list[DlqEntry]] = {}
    for entry in entries:
        origin = _origin(entry)
        assert origin is not None
        origins.setdefault(origin, []).append(entry)
    partitions = sorted({(t, p) for t, p, _ in origins})
    start = {tp: min(o for t, p, o in origins if (t, p) == tp) + 1 for tp in partitions}
    wanted = {(t, p, group[0].key) for (t, p, _), group in origins.items()}
    target = _target(settings, sink_settings)
    sink = target.sink
    later = _LaterRecords(settings, wanted, timeout_s)
    try:
        later.read(start)  # the long read, before anything is locked
        positions = target.hold(partitions)
        later.catch_up()  # what the sink applied (or was produced) since: short, under the lock
        records: list[SinkRecord] = []
        sources: dict[tuple[str, int, int], list[DlqEntry]] = {}
        decode = getattr(sink, "decode_event", None) or decode_record
        for origin, group in sorted(origins.items()):
            topic, partition, offset = origin
            position = positions.get((topic, partition))
            if position is None or position <= offset:
                report.add("pending", group)
            elif later.newer(origin, group[0].key):
                report.add("superseded", group)
            elif not later.complete(origin):
                report.add("unknown", group)
            else:
                first = group[0]
                try:
                    event = decode(topic, first.key, first.value)
                except (DecodeError, ValueError, TypeError, KeyError) as exc:
                    report.add("failed", group, f"cannot be decoded: {exc}")
                    continue
                records.append(
                    SinkRecord(
                        *origin, first.key, first.value, first.extra_headers, first.timestamp_ms, event
                    )
                )
                sources[origin] = group
        failures = [] if dry_run or not records else target.write(records)
        refused = {(f.record.topic, f.record.partition, f.record.offset): f.error for f in failures}
        for origin, group in sources.items():
            error = refused.get(origin)
            if error is None:
                report.add("applied", group)
            else:
                report.add("failed", group, str(error))
        if dry_run:
            sink.rollback()
        else:
            sink.commit({})
    except WalbridgeError:
        _quiet_rollback(sink)
        raise
    except KafkaException as exc:
        _quiet_rollback(sink)
        raise map_kafka_error(exc.args[0] if exc.args else None, "replaying") from exc
    finally:
        later.close()
        sink.close()


def _quiet_rollback(sink: Any) -> None:
    try:
        sink.rollback()
    except WalbridgeError as exc:
        log.debug("rollback failed: %s", exc)
