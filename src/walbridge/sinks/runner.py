"""The one consume → apply → commit loop every sink runs in.

``SinkRunner(sink, settings, sink_settings).run(stop_event)`` repeats four named steps:

1. :meth:`poll_batch` reads up to ``batch_size`` records (waiting at most ``linger_ms`` after
   the first) and decodes each (:meth:`decode` with the sink's ``decode_event`` when it has
   one, else :func:`~walbridge.events.decode_record`; a :class:`DecodeError` makes a failure);
2. :meth:`apply` hands the decoded records to ``sink.write_batch``. With ``prefetch`` (the
   default) the first attempt runs in a worker thread while the main thread polls and decodes
   the next batch, and hands it to ``sink.prepare`` when the sink has one (work that needs no
   answer from the destination, e.g. the Salesforce sink's mapping, done while the batch before
   waits for its answers; the only call that overlaps another); every consumer call stays on the
   main thread, so batches are still applied, sent to the DLQ and committed in order;
3. :meth:`route_to_dlq` produces refused records to the DLQ and waits for the acknowledgement;
4. :meth:`commit` commits the sink (with the offsets when it owns them), then Kafka.

Errors: a :class:`TransientError` rolls the whole batch back and retries it after an
exponential backoff with jitter (``DlqSettings.backoff_initial_s`` … ``backoff_max_s``), or
after the error's ``retry_after`` when that is longer, while consumption is paused and the
group kept alive; nothing past the batch is committed until it succeeds (or, with
``transient_to_dlq``, until ``max_attempts`` send the whole batch to the DLQ as the seed did).
A record the sink refuses permanently is retried with the batch until it failed
``max_attempts`` times, then goes to the DLQ and the rest of the batch is applied; a refusal
whose error is not ``retryable`` (a malformed message, a record Salesforce's validation
refused) goes to the DLQ at once, as decode failures do.

Offsets: with ``sink.owns_offsets`` the runner seeks every newly assigned partition to
``sink.stored_offsets`` and commits Kafka offsets asynchronously, only so that group lag is
visible; otherwise the Kafka commit is synchronous and is the sink's position. Records of a
partition revoked while a batch is held are dropped from it (the new owner reads them). A sink
that detects that another member already applied the batch raises :class:`OffsetConflict`;
the runner drops the batch and seeks to the stored offsets.

Truncate barriers: with a sink that has ``barrier_of(record)`` (the PostgreSQL sink), a record that
is a copy of a truncate written to every partition (:mod:`walbridge.truncates`) ends its partition's
part of the batch: the partition is paused there and resumed once ``sink.barriers_applied`` says the
truncate is applied (asked about twice a second); a partition assigned while
``sink.barriers_waiting`` says it arrived at a pending truncate starts paused. See
:mod:`walbridge.sinks.pg_barrier` for the guarantee.

Destination down: with a sink that has ``probe()`` (raises :class:`TransientError` while its
destination does not answer), the consumer joins the group only once the destination answers, and
leaves it (dropping the uncommitted batch) when a batch fails on a lost connection and the probe
still fails after :data:`LEAVE_AFTER_S` (waited paused in the group), so that a healthy member takes
the partitions. Transient failures are logged as one
warning a minute; the retries in between at debug level. A non-transient error that is not a
record's (:class:`~walbridge.errors.FatalError`, :class:`~walbridge.errors.ConfigError`) raised by
the sink stops the runner: nothing of the batch is committed or sent to the DLQ.

Start: the consumer subscribes once every named topic exists (a sink may start before the capture
that creates them); topics matching ``topic_pattern`` are picked up at the next metadata refresh.

Health and lag: :meth:`healthy` means "committed a batch, or was idle with no lag, within
``metrics.stall_s``" (:mod:`walbridge.liveness`); the lag is read from the broker on a timer by
:class:`~walbridge.sinks.lag.LagMonitor`, so it keeps growing while a batch is retried forever.

Shutdown: setting ``stop_event`` (see :func:`walbridge.signals.stop_on_signals`) lets a batch being
applied finish and aborts one waiting for a retry; the consumer is closed either way.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from walbridge.config import DlqSettings, PostgresSinkSettings, SalesforceSinkSettings, Settings
from walbridge.errors import ConnectionLost, DecodeError, TransientError, WalbridgeError
from walbridge.events import ChangeEvent, decode_record
from walbridge.kafka import make_consumer, map_kafka_error
from walbridge.liveness import Liveness
from walbridge.logs import ThrottleRepeats
from walbridge.sinks.base import (
    BarrierSink,
    OffsetConflict,
    RecordFailure,
    Sink,
    SinkRecord,
    TopicPartitionKey,
    sink_record,
)
from walbridge.sinks.dlq import DlqWriter
from walbridge.sinks.lag import LagMonitor

__all__ = ["SinkRunner", "backoff_delay", "commit_can_wait"]

log = logging.getLogger(__name__)
THROUGHPUT_EVERY_S = 30.0
log.addFilter(ThrottleRepeats(60.0, logging.WARNING))  # a sink retrying for hours warns once a minute

SinkSettings = PostgresSinkSettings | SalesforceSinkSettings
Decoder = Callable[[str, bytes | None, bytes | None], ChangeEvent | None]
_ASSIGN_TRIES = 3
_TOPIC_WAIT_S = 0.5
_TOPIC_REMIND_S = 60.0
_PREFETCH_POLL_S = 0.02
_PREFETCH_STEP = 250
_BARRIER_CHECK_S = 0.5
_WARN_EVERY_S = 60.0
LEAVE_AFTER_S = 60.0
"""How long a member waits, paused in its group, for a destination that stopped answering before it
leaves the group. A restart or failover (seconds) then costs no rebalance, and members sharing one
destination do not all leave at once (the test broker never completes a rebalance that a member left
during: the group stalls; found by the soak, issue 12)."""


def backoff_delay(attempt: int, dlq: DlqSettings, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): exponential, capped, jittered.

    The jitter keeps 75-100 % of the exponential step so that the seed's 2 s / 4 s / 8 s
    rhythm stays recognisable while members of a group do not retry in lockstep.
    """
    base = min(dlq.backoff_max_s, dlq.backoff_initial_s * 2 ** (attempt - 1))
    jitter: float = (rng or random).random()
    return float(base * (0.75 + 0.25 * jitter))


@dataclass(slots=True)
class _Batch:
    records: list[SinkRecord] = field(default_factory=list)
    dead: list[tuple[RecordFailure, int]] = field(default_factory=list)
    """Refused records with their attempt count: DLQ-bound."""
    next_offsets: dict[TopicPartitionKey, int] = field(default_factory=dict)
    generations: dict[TopicPartitionKey, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records) + len(self.dead)

    def keep(self, wanted: Callable[[TopicPartitionKey], bool]) -> None:
        self.records = [r for r in self.records if wanted((r.topic, r.partition))]
        self.dead = [(f, n) for f, n in self.dead if wanted((f.record.topic, f.record.partition))]
        self.next_offsets = {tp: o for tp, o in self.next_offsets.items() if wanted(tp)}


def _record_key(record: SinkRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


_COMMIT_CAN_WAIT = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError._ASSIGNMENT_LOST,
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
    }
)


def commit_can_wait(error: Any) -> bool:
    """A commit refused for a reason that passes, not a failure of the delivered batch: this member no
    longer owns its partitions (its session expired in a broker outage; the new owner reads the records
    again), or the group's coordinator is not known yet after a reconnect (the next commit covers these
    offsets; a crash before it delivers them again)."""
    return isinstance(error, KafkaError) and error.code() in _COMMIT_CAN_WAIT


class SinkRunner:
    """Runs one :class:`Sink` in a consumer group (see the module docstring)."""

    def __init__(
        self,
        sink: Sink,
        settings: Settings,
        sink_settings: SinkSettings,
        *,
        metrics: Any = None,
        dlq: DlqWriter | None = None,
        prefetch: bool = True,
    ) -> None:
        self.sink = sink
        self.settings = settings
        self.sink_settings = sink_settings
        self.group_id = sink_settings.consumer_group
        self.leave_after_s = LEAVE_AFTER_S
        self.metrics = metrics
        self.dlq = dlq or DlqWriter(settings, sink.name)
        self._consumer: Any = None
        self._assigned: set[TopicPartitionKey] = set()
        self._generation: dict[TopicPartitionKey, int] = {}
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._rng = random.Random()
        self._decode_event: Decoder = getattr(sink, "decode_event", None) or decode_record
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"{sink.name}-apply") if prefetch else None
        self._ahead = _Batch()
        """The next batch, read while the current one was being applied."""
        self._started = time.time()
        self._totals = {"batches": 0, "applied": 0, "dead_lettered": 0, "retries": 0}
        self._began = time.monotonic()
        self._reported = (self._began, 0)
        """When the last throughput line was logged, and the applied count then."""
        self._last_commit: float | None = None
        self._running = False
        self._barrier_of: Callable[[SinkRecord], str | None] | None = getattr(sink, "barrier_of", None)
        self._prepare: Callable[[list[SinkRecord]], None] | None = getattr(sink, "prepare", None)
        self._held: dict[TopicPartitionKey, tuple[int | None, str | None]] = {}
        """Partitions paused at a truncate: (offset to resume at, truncate id; None: not known yet)."""
        self._held_checked = 0.0
        self._warned_at: float | None = None
        self.liveness = Liveness(settings.metrics.stall_s)
        self.lag = LagMonitor(
            settings,
            self.group_id,
            sink.name,
            lambda: None if self._consumer is None else set(self._assigned),
            None if metrics is None else metrics.lag,
        )

    def status(self) -> dict[str, Any]:
        """What ``/status`` shows: position, totals, and how long ago the last batch committed."""
        last = self._last_commit
        return {
            "sink": self.sink.name,
            "group": self.group_id,
            "running": self._running,
            "uptime_s": round(time.time() - self._started, 1),
            "assigned": sorted(f"{t}[{p}]" for t, p in self._assigned),
            "waiting_for_truncate": sorted(f"{t}[{p}]" for t, p in self._held),
            **self._totals,
            "last_commit_s_ago": None if last is None else round(time.time() - last, 1),
            "last_progress_s_ago": round(self.liveness.age(), 1),
            "lag": self.lag.total,
        }

    def healthy(self) -> bool:
        """Making progress (committing batches), or idle with nothing to do (no lag at the broker),
        within ``metrics.stall_s``: a sink retrying a batch, or waiting out of the group for its
        destination, for longer is not."""
        return self.liveness.healthy()

    def ready(self) -> bool:
        """Started (destination reached, subscribed to its topics) and :meth:`healthy`."""
        return self._running and self.healthy()

    # ------------------------------------------------------------------ the loop

    def run(self, stop_event: threading.Event) -> None:
        if self.metrics is not None:
            self.metrics.last_progress_age.labels(sink=self.sink.name).set_function(self.liveness.age)
        self.lag.start()
        try:
            self._run(stop_event)
        finally:
            self.lag.stop()

    def _run(self, stop_event: threading.Event) -> None:
        self.sink.open()
        if not self._await_destination(stop_event):
            self.sink.close()
            return
        self._consumer = self._subscribe(stop_event)
        self._running = True
        try:
            while not stop_event.is_set():
                self._release_barriers()
                batch, self._ahead = self._ahead, _Batch()
                self._drop_stale(batch)
                if not len(batch):
                    batch = self.poll_batch(stop_event)
                if len(batch):
                    self.process(batch, stop_event)
                elif self.lag.total == 0:
                    self.liveness.touch()  # idle with nothing to do
        finally:
            self._running = False
            self._shutdown()

    def process(self, batch: _Batch, stop_event: threading.Event) -> None:
        """Apply, DLQ and commit one batch; retry it while that fails transiently."""
        transient_attempt = 0
        started = time.monotonic()
        first = True
        while not stop_event.is_set():
            self._drop_stale(batch)
            if not len(batch):
                return
            try:
                retry = self.apply(batch, prefetch=first, stop_event=stop_event)
                first = False
                if self._went_stale(batch):
                    self._safe_rollback()  # apply again without the revoked partitions
                    continue
                if retry:
                    self.sink.rollback()
                    self._wait(self._permanent_delay(batch), stop_event)
                    continue
                self.route_to_dlq(batch)
                self.commit(batch, started)
                return
            except OffsetConflict as exc:
                log.warning("%s: %s; re-reading from the stored offsets", self.sink.name, exc)
                self._safe_rollback()
                self._rewind(self._ahead)
                self._ahead = _Batch()
                self._seek_to_stored(list(batch.next_offsets))
                return
            except TransientError as exc:
                first = False
                self._safe_rollback()
                if isinstance(exc, ConnectionLost) and self._leave_while_down(exc, stop_event):
                    return
                transient_attempt += 1
                self._totals["retries"] += 1
                self._count("retries", error=type(exc).__name__)
                if self._transient_exhausted(batch, exc, transient_attempt):
                    continue
                delay = backoff_delay(transient_attempt, self.settings.dlq, self._rng)
                retry_after = exc.context.get("retry_after")
                if isinstance(retry_after, int | float) and retry_after > delay:
                    delay = float(retry_after)
                self._warn(
                    "%s: batch failed (%s); retry %d in %.1fs", self.sink.name, exc, transient_attempt, delay
                )
                self._wait(delay, stop_event)
        self._safe_rollback()
        log.info("%s: stopping; the batch in progress was not committed", self.sink.name)

    # ------------------------------------------------------------------ named steps

    def poll_batch(self, stop_event: threading.Event, busy: Future[Any] | None = None) -> _Batch:
        """Up to ``batch_size`` decoded records, waiting at most ``linger_ms`` after the first.

        With ``busy`` (the apply of the previous batch in the worker), reads in short steps while
        that runs, then as usual: a batch filled while the sink worked is not cut short.
        """
        batch = _Batch()
        size, linger = self.sink_settings.batch_size, self.sink_settings.linger_ms / 1000
        deadline: float | None = None
        while len(batch) < size and not stop_event.is_set():
            if busy is not None and busy.done():
                if not len(batch):
                    break  # nothing waiting: let the applied batch commit now
                busy = None
            if busy is not None:
                timeout = _PREFETCH_POLL_S
            else:
                timeout = 0.5 if deadline is None else deadline - time.monotonic()
                if timeout <= 0:
                    break
            # While the worker applies, read in small steps: each consume releases the GIL, which
            # the worker needs back after every round trip to PostgreSQL.
            step = size - len(batch) if busy is None else min(_PREFETCH_STEP, size - len(batch))
            messages = self._consumer.consume(step, timeout)
            for message in messages:
                self._add(batch, message)
            self._drop_stale(batch)
            if not len(batch) and busy is None:
                return batch
            if len(batch):
                deadline = deadline or time.monotonic() + linger
        return batch

    def decode(self, message: Any) -> SinkRecord | RecordFailure:
        return self._decode(message, message.topic(), message.partition(), message.offset())

    def _decode(self, message: Any, topic: str, partition: int, offset: int) -> SinkRecord | RecordFailure:
        key, value = message.key(), message.value()
        try:
            event = self._decode_event(topic, key, value)
        except DecodeError as exc:
            return self._refused(message, topic, partition, offset, exc)
        except (ValueError, TypeError, KeyError) as exc:
            error = DecodeError(f"record in {topic} could not be decoded: {exc!r}", topic=topic)
            error.__cause__ = exc
            return self._refused(message, topic, partition, offset, error)
        return sink_record(
            topic, partition, offset, key, value, message.headers(), message.timestamp()[1], event
        )

    @staticmethod
    def _refused(message: Any, topic: str, partition: int, offset: int, error: DecodeError) -> RecordFailure:
        record = sink_record(
            topic, partition, offset, message.key(), message.value(), message.headers(),
            message.timestamp()[1], None,
        )  # fmt: skip
        return RecordFailure(record, error)

    def apply(
        self, batch: _Batch, *, prefetch: bool = False, stop_event: threading.Event | None = None
    ) -> bool:
        """Write the batch; True when a refused record still has attempts left (retry the batch).

        With ``prefetch`` the write runs in the worker thread while the next batch is polled.
        """
        max_attempts = self.settings.dlq.max_attempts
        if prefetch and self._worker is not None and stop_event is not None and not len(self._ahead):
            busy = self._worker.submit(self.sink.write_batch, batch.records)
            self._ahead = self.poll_batch(stop_event, busy)
            self._prepare_ahead()
            failures = busy.result()
        else:
            failures = self.sink.write_batch(batch.records)
        if not failures:
            return False
        retry = False
        exhausted: set[tuple[str, int, int]] = set()
        for failure in failures:
            key = _record_key(failure.record)
            attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
            if attempts >= max_attempts or not failure.error.retryable:
                batch.dead.append((failure, attempts))
                exhausted.add(key)
            else:
                retry = True
                log.info(
                    "%s: record %s refused (attempt %d/%d): %s",
                    self.sink.name,
                    key,
                    attempts,
                    max_attempts,
                    failure.error,
                )
        batch.records = [r for r in batch.records if _record_key(r) not in exhausted]
        return retry

    def _prepare_ahead(self) -> None:
        """``sink.prepare`` on the batch read ahead; its failure only leaves the work to ``write_batch``
        (which reports what is wrong), it is not the failure of the batch being written."""
        if self._prepare is None or not self._ahead.records:
            return
        try:
            self._prepare(self._ahead.records)
        except WalbridgeError as exc:
            log.debug("%s: preparing the next batch: %s", self.sink.name, exc)

    def route_to_dlq(self, batch: _Batch) -> None:
        if not batch.dead:
            return
        for failure, attempts in batch.dead:
            log.warning(
                "%s: sending %s:%d@%d to the DLQ after %d attempt(s): %s",
                self.sink.name,
                failure.record.topic,
                failure.record.partition,
                failure.record.offset,
                attempts,
                failure.error,
            )
        self.dlq.publish(batch.dead)
        self._count("dlq", n=len(batch.dead))

    def commit(self, batch: _Batch, started: float) -> None:
        """Sink first (with offsets when it owns them), then Kafka."""
        self.sink.commit(dict(batch.next_offsets))
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=self.sink.owns_offsets)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not self.sink.owns_offsets and not commit_can_wait(error):
                raise map_kafka_error(error, "committing offsets") from exc
            if not self.sink.owns_offsets:
                log.warning(
                    "%s: offsets of a delivered batch not committed (%s); records after the last "
                    "committed offset may be delivered again (at-least-once)",
                    self.sink.name,
                    error.str() if isinstance(error, KafkaError) else error,
                )
            log.debug("async offset commit failed: %s", exc)
        if self._attempts:
            for record in [*batch.records, *(f.record for f, _ in batch.dead)]:
                self._attempts.pop(_record_key(record), None)
        self._warned_at = None
        self._totals["batches"] += 1
        self._totals["applied"] += len(batch.records)
        self._totals["dead_lettered"] += len(batch.dead)
        self._last_commit = time.time()
        self.liveness.touch()
        self._observe(batch, started)
        self._report_throughput()

    def _report_throughput(self, final: bool = False) -> None:
        """A throughput line every ``THROUGHPUT_EVERY_S`` while records flow, and a summary at stop."""
        now = time.monotonic()
        since, applied_then = self._reported
        totals = self._totals
        applied = totals["applied"]
        if not final and (now - since < THROUGHPUT_EVERY_S or applied == applied_then):
            return
        self._reported = (now, applied)
        if final:
            since, applied_then = self._began, 0
        rate = (applied - applied_then) / max(now - since, 1e-9)
        log.info(
            "%s: %s%s records applied (%s/s over %.0fs), %s dead-lettered, %s retries, %s batches",
            self.sink.name,
            "stopped after " if final else "",
            f"{applied:,}",
            f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}",
            now - since,
            f"{totals['dead_lettered']:,}",
            f"{totals['retries']:,}",
            f"{totals['batches']:,}",
        )

    # ------------------------------------------------------------------ helpers

    def _subscribe(self, stop_event: threading.Event) -> Any:
        consumer = make_consumer(self.settings.kafka, self.group_id)
        if not self._topics():
            raise WalbridgeError(f"sink {self.sink.name!r} has no topics or topic_pattern to consume")
        self._await_topics(consumer, self.sink_settings.topics, stop_event)
        self._join(consumer)
        return consumer

    def _topics(self) -> list[str]:
        settings = self.sink_settings
        topics = list(settings.topics)
        if settings.topic_pattern:
            pattern = settings.topic_pattern
            topics.append(pattern if pattern.startswith("^") else "^" + pattern)
        return topics

    def _join(self, consumer: Any) -> None:
        consumer.subscribe(
            self._topics(), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def _await_topics(self, consumer: Any, names: list[str], stop_event: threading.Event) -> None:
        """Wait until every named topic exists (a sink started before its capture).

        A consumer subscribed to a missing topic only notices its creation at the next metadata
        refresh, minutes later by default; waiting here starts the sink as soon as it appears.
        """
        announced_at: float | None = None
        while not stop_event.is_set():
            try:
                existing = consumer.list_topics(timeout=10).topics
            except KafkaException as exc:
                error = map_kafka_error(exc.args[0], "listing topics")
                if not isinstance(error, TransientError):
                    raise error from exc
                log.warning(
                    "%s: %s (kafka.bootstrap_servers is %s)",
                    self.sink.name,
                    error,
                    self.settings.kafka.bootstrap_servers,
                )
                continue
            missing = [name for name in names if name not in existing]
            if not missing:
                return
            now = time.monotonic()
            if announced_at is None:
                log.info("%s: waiting for topic(s) %s to be created", self.sink.name, ", ".join(missing))
                announced_at = now
            elif now - announced_at >= _TOPIC_REMIND_S:
                log.warning(
                    "%s: topic(s) %s still do not exist; check the sink's topics (or start the capture)",
                    self.sink.name,
                    ", ".join(missing),
                )
                announced_at = now
            stop_event.wait(_TOPIC_WAIT_S)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            self._generation[key] = self._generation.get(key, 0) + 1
        self._assigned.update(keys)
        stored: dict[TopicPartitionKey, int] = {}
        if self.sink.owns_offsets and partitions:
            stored = self._stored_offsets_in_callback(keys)
            for tp in partitions:
                if (tp.topic, tp.partition) in stored:
                    tp.offset = stored[(tp.topic, tp.partition)]
        log.info("%s: assigned %s", self.sink.name, [f"{t}[{p}]" for t, p in keys])
        consumer.incremental_assign(partitions)
        if stored:
            # The group's Kafka offsets may trail the stored ones (a crash before the asynchronous
            # commit): align them, or the lag read from the broker stays above 0 with nothing to do.
            try:
                aligned = [TopicPartition(t, p, o) for (t, p), o in stored.items()]
                consumer.commit(offsets=aligned, asynchronous=True)
            except KafkaException as exc:
                log.debug("%s: aligning committed offsets failed: %s", self.sink.name, exc)
        if self._barrier_of is not None and partitions:
            self._hold_waiting(consumer, partitions)

    def _hold_waiting(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Pause the assigned partitions that arrived at a truncate not applied yet."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        try:
            waiting: dict[TopicPartitionKey, str | None] = dict(
                cast(BarrierSink, self.sink).barriers_waiting(keys)
            )
        except TransientError as exc:
            log.warning("%s: truncate barriers unavailable (%s); partitions wait", self.sink.name, exc)
            waiting = dict.fromkeys(keys)
        held = [tp for tp in partitions if (tp.topic, tp.partition) in waiting]
        for tp in held:
            key = (tp.topic, tp.partition)
            self._held[key] = (tp.offset if tp.offset >= 0 else None, waiting[key])
        if held:
            consumer.pause(held)
            log.info(
                "%s: %s wait for a truncate", self.sink.name, [f"{tp.topic}[{tp.partition}]" for tp in held]
            )

    def _stored_offsets_in_callback(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        # A few tries only: blocking here blocks the group. If the destination stays down, the
        # partitions start at the Kafka-committed offsets and the sink's offset fence (OffsetConflict)
        # corrects the position before anything is applied twice.
        for attempt in range(1, _ASSIGN_TRIES + 1):
            try:
                return self.sink.stored_offsets(keys)
            except TransientError as exc:
                # No rollback: the sink may be applying a batch in the worker thread right now.
                log.warning("%s: stored offsets unavailable (%s), try %d", self.sink.name, exc, attempt)
                time.sleep(min(2.0, 0.5 * attempt))
        return {}

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._generation[key] = self._generation.get(key, 0) + 1
            self._assigned.discard(key)
            self._held.pop(key, None)
        log.info("%s: revoked %s", self.sink.name, [f"{tp.topic}[{tp.partition}]" for tp in partitions])

    def _add(self, batch: _Batch, message: Any) -> None:
        err = message.error()
        if err is not None:
            mapped = map_kafka_error(err, "consuming")
            if err.fatal():
                raise mapped
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("%s: %s", self.sink.name, mapped)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        key = (topic, partition)
        held = self._held.get(key)
        if held is not None:
            # Read past a truncate before the pause took effect: read again once it is applied.
            if held[0] is None:
                self._held[key] = (offset, held[1])
            if held[0] is None or offset >= held[0]:
                return
        if key not in batch.generations:
            batch.generations[key] = self._generation.get(key, 0)
        batch.next_offsets[key] = offset + 1
        decoded = self._decode(message, topic, partition, offset)
        if isinstance(decoded, RecordFailure):
            batch.dead.append((decoded, 1))
            return
        batch.records.append(decoded)
        # Only a truncate can be a barrier (a copy of a truncate written to every partition).
        event = decoded.event
        if self._barrier_of is not None and event is not None and event.op == "t":
            barrier = self._barrier_of(decoded)
            if barrier is not None:
                self._hold(key, offset + 1, barrier)

    # ------------------------------------------------------------------ truncate barriers

    def _hold(self, key: TopicPartitionKey, resume_at: int, barrier: str) -> None:
        """Stop reading a partition at a truncate copy until the truncate is applied."""
        self._held[key] = (resume_at, barrier)
        tp = TopicPartition(key[0], key[1], resume_at)
        self._consumer.pause([tp])
        try:
            self._consumer.seek(tp)  # forget what was fetched past the copy
        except KafkaException as exc:
            log.debug("seek %s[%d] to %d failed: %s", key[0], key[1], resume_at, exc)

    def _release(self, key: TopicPartitionKey, seek: bool = True) -> None:
        resume_at, _barrier = self._held.pop(key)
        if key not in self._assigned:
            return
        if seek and resume_at is not None:
            self._seek(*key, resume_at)
        self._consumer.resume([TopicPartition(*key)])

    def _release_barriers(self) -> None:
        """Resume the partitions whose truncate is applied (checked about twice a second)."""
        now = time.monotonic()
        if not self._held or now - self._held_checked < _BARRIER_CHECK_S:
            return
        self._held_checked = now
        try:
            unknown = [key for key, (_, barrier) in self._held.items() if barrier is None]
            if unknown:
                waiting = cast(BarrierSink, self.sink).barriers_waiting(unknown)
                for key in unknown:
                    if key in waiting:
                        self._held[key] = (self._held[key][0], waiting[key])
                    else:
                        self._release(key)
            pending = {(key[0], barrier) for key, (_, barrier) in self._held.items() if barrier is not None}
            applied = cast(BarrierSink, self.sink).barriers_applied(pending)
        except TransientError as exc:
            log.debug("%s: truncate barriers unavailable: %s", self.sink.name, exc)
            return
        for key, (_, barrier) in list(self._held.items()):
            if (key[0], barrier) in applied:
                log.info("%s: truncate %s applied; %s[%d] resumes", self.sink.name, barrier, *key)
                self._release(key)

    # ------------------------------------------------------------------ destination down

    def _await_destination(self, stop_event: threading.Event) -> bool:
        """Wait until the sink's destination answers (one warning a minute); False when stopped."""
        probe = getattr(self.sink, "probe", None)
        if probe is None:
            return True
        attempt = 0
        while not stop_event.is_set():
            try:
                probe()
                self._warned_at = None
                return True
            except TransientError as exc:
                attempt += 1
                self._warn(
                    "%s: destination unavailable (%s); staying out of the consumer group until it answers",
                    self.sink.name,
                    exc,
                )
                stop_event.wait(min(10.0, backoff_delay(attempt, self.settings.dlq, self._rng)))
        return False

    def _leave_while_down(self, exc: TransientError, stop_event: threading.Event) -> bool:
        """Leave the group while the destination is down (its partitions go to healthy members)."""
        probe = getattr(self.sink, "probe", None)
        if probe is None or not self.sink.owns_offsets:
            return False
        if self._answers(probe):
            return False  # it answers again: retry the batch as usual
        deadline = time.monotonic() + self.leave_after_s
        while (left := deadline - time.monotonic()) > 0 and not stop_event.is_set():
            self._warn(
                "%s: destination unavailable (%s); waiting for it in the consumer group (%.0fs at most)",
                self.sink.name,
                exc,
                left,
            )
            self._wait(min(left, 2.0), stop_event)
            if self._answers(probe):
                return False
        if stop_event.is_set():
            return False
        self._warned_at = None
        self._warn(
            "%s: destination unavailable (%s); leaving the consumer group until it answers",
            self.sink.name,
            exc,
        )
        self._ahead = _Batch()
        consumer, self._consumer = self._consumer, None
        consumer.close()  # leaves the group at once: the other members take its partitions
        self._on_revoke(consumer, [TopicPartition(t, p) for t, p in self._assigned])
        self.sink.close()  # its connections are broken; the probe opens new ones
        if self._await_destination(stop_event):
            log.info("%s: destination answers again; rejoining the consumer group", self.sink.name)
            self._consumer = self._subscribe(stop_event)
        return True

    @staticmethod
    def _answers(probe: Callable[[], None]) -> bool:
        try:
            probe()
        except TransientError:
            return False
        return True

    def _warn(self, message: str, *args: Any) -> None:
        """A warning at most once a minute while a condition lasts; debug in between."""
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(message, *args)
        else:
            log.debug(message, *args)

    def _drop_stale(self, batch: _Batch) -> None:
        """Forget records of partitions revoked (or re-assigned) since they were read."""

        def current(tp: TopicPartitionKey) -> bool:
            return tp in self._assigned and batch.generations.get(tp) == self._generation.get(tp)

        if all(current(tp) for tp in batch.next_offsets):
            return
        batch.keep(current)
        batch.generations = {tp: g for tp, g in batch.generations.items() if current(tp)}

    def _went_stale(self, batch: _Batch) -> bool:
        """A partition of the batch was revoked (or re-assigned) while the batch was applied."""
        return not all(
            tp in self._assigned and batch.generations.get(tp) == self._generation.get(tp)
            for tp in batch.next_offsets
        )

    def _rewind(self, batch: _Batch) -> None:
        """Seek so that the records of a batch read ahead are read again."""
        first: dict[TopicPartitionKey, int] = {}
        for record in [*batch.records, *(f.record for f, _ in batch.dead)]:
            tp = (record.topic, record.partition)
            first[tp] = min(first.get(tp, record.offset), record.offset)
        for (topic, partition), offset in first.items():
            if (topic, partition) in self._assigned:
                self._seek(topic, partition, offset)

    def _permanent_delay(self, batch: _Batch) -> float:
        attempts = max((self._attempts.get(_record_key(r), 0) for r in batch.records), default=1)
        return backoff_delay(max(1, attempts), self.settings.dlq, self._rng)

    def _transient_exhausted(self, batch: _Batch, exc: TransientError, attempt: int) -> bool:
        """The seed's mode: after max_attempts the whole batch goes to the DLQ."""
        if not self.settings.dlq.transient_to_dlq or attempt < self.settings.dlq.max_attempts:
            return False
        batch.dead.extend((RecordFailure(r, exc), attempt) for r in batch.records)
        batch.records = []
        return True

    def _wait(self, seconds: float, stop_event: threading.Event) -> None:
        """Sleep with consumption paused, polling so the group membership stays alive."""
        consumer = self._consumer
        paused = consumer.assignment()
        consumer.pause(paused)
        rewind: dict[TopicPartitionKey, int] = {}
        deadline = time.monotonic() + seconds
        try:
            while not stop_event.is_set() and (left := deadline - time.monotonic()) > 0:
                message = consumer.poll(min(left, 0.5))
                if message is not None and message.error() is None:
                    # Newly assigned partitions are not paused; read their records again later.
                    key = (message.topic(), message.partition())
                    rewind[key] = min(rewind.get(key, message.offset()), message.offset())
        finally:
            consumer.resume(
                [tp for tp in consumer.assignment() if (tp.topic, tp.partition) not in self._held]
            )
        for (topic, partition), offset in rewind.items():
            self._seek(topic, partition, offset)

    def _seek_to_stored(self, keys: list[TopicPartitionKey]) -> None:
        try:
            stored = self.sink.stored_offsets(keys)
        except TransientError as exc:
            log.warning("%s: cannot read stored offsets (%s); rejoining", self.sink.name, exc)
            return
        finally:
            self._safe_rollback()
        for (topic, partition), offset in stored.items():
            if (topic, partition) in self._assigned:
                self._seek(topic, partition, offset)

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        held = self._held.get((topic, partition))
        if held is not None and held[0] is not None and offset < held[0]:
            self._release((topic, partition), seek=False)  # the truncate copy is read again
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("%s: seek %s[%d] to %d failed: %s", self.sink.name, topic, partition, offset, exc)

    def _safe_rollback(self) -> None:
        try:
            self.sink.rollback()
        except WalbridgeError as exc:
            log.debug("rollback failed: %s", exc)

    def _shutdown(self) -> None:
        if self._consumer is not None:
            self._report_throughput(final=True)
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        try:
            if self._consumer is not None:
                self._consumer.close()
        finally:
            self._consumer = None
            try:
                self.dlq.close()
            finally:
                self.sink.close()

    def _count(self, what: str, n: int = 1, **labels: str) -> None:
        if self.metrics is None:
            return
        if what == "retries":
            self.metrics.retries.labels(sink=self.sink.name, **labels).inc(n)
        elif what == "dlq":
            self.metrics.dlq.labels(sink=self.sink.name).inc(n)

    def _observe(self, batch: _Batch, started: float) -> None:
        if self.metrics is None:
            return
        name = self.sink.name
        self.metrics.batches.labels(sink=name).inc()
        self.metrics.batch_seconds.labels(sink=name).observe(time.monotonic() - started)
        self.metrics.records.labels(sink=name, outcome="applied").inc(len(batch.records))
        if batch.dead:
            self.metrics.records.labels(sink=name, outcome="dlq").inc(len(batch.dead))
