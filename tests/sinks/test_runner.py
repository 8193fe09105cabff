"""SinkRunner with an in-memory sink on the real broker: retry_after, non-retryable refusals,
and the batch read ahead while the sink works (order, no loss, no double apply)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pg_support import change, employee

from helpers import wait_until
from walbridge.config import DlqSettings, KafkaSettings, PostgresSinkSettings, Settings
from walbridge.errors import ConstraintViolation, RateLimited, RecordRejected
from walbridge.events import EncodingOptions, EnvelopeEncoder
from walbridge.kafka import ensure_topics, make_admin, make_producer
from walbridge.sinks.base import RecordFailure, SinkRecord, TopicPartitionKey
from walbridge.sinks.dlq import read_dlq
from walbridge.sinks.runner import SinkRunner


class ListSink:
    """Keeps committed records in a list; ``behaviour`` decides each write_batch's outcome."""

    name = "list"
    owns_offsets = False

    def __init__(self, behaviour: Callable[[int, list[SinkRecord]], list[RecordFailure]]) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[float, str, list[int]]] = []
        self.pending: list[SinkRecord] = []
        self.applied: list[SinkRecord] = []
        self.lock = threading.Lock()

    def open(self) -> None: ...

    def stored_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        return {}

    def write_batch(self, records: list[SinkRecord]) -> list[RecordFailure]:
        with self.lock:
            self.calls.append(
                (time.monotonic(), threading.current_thread().name, [r.offset for r in records])
            )
        failures = self.behaviour(len(self.calls), records)
        refused = {id(f.record) for f in failures}
        self.pending = [r for r in records if id(r) not in refused]
        return failures

    def commit(self, next_offsets: dict[TopicPartitionKey, int]) -> None:
        self.applied.extend(self.pending)
        self.pending = []

    def rollback(self) -> None:
        self.pending = []

    def close(self) -> None: ...


class Harness:
    def __init__(
        self, bootstrap: str, prefix: str, partitions: int = 1, create_topic: bool = True, **dlq: Any
    ) -> None:
        self.encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix, tombstones_on_delete=False))
        self.topic = self.encoder.topic("public", "employees")
        self.sink_settings = PostgresSinkSettings(
            dsn="unused", topics=[self.topic], group_id=f"{prefix}-g", linger_ms=20, batch_size=50
        )
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000),
            dlq=DlqSettings(**{"max_attempts": 3, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, **dlq}),
        )
        if create_topic:
            self.create_topic(partitions)
        self.producer = make_producer(self.settings.kafka)
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def create_topic(self, partitions: int = 1) -> None:
        ensure_topics(make_admin(self.settings.kafka), [self.topic], partitions, 1)

    def send(self, ids: range) -> None:
        for i in ids:
            for record in self.encoder.encode(change("c", None, employee(i))):
                self.producer.produce(record.topic, key=record.key, value=record.value)
        self.producer.flush(10)

    def start(self, sink: ListSink) -> SinkRunner:
        runner = SinkRunner(sink, self.settings, self.sink_settings)
        self.thread = threading.Thread(target=runner.run, args=(self.stop,), daemon=True)
        self.thread.start()
        return runner

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)


@pytest.fixture
def harness(kafka_bootstrap: str, topic_prefix: str) -> Iterator[Harness]:
    h = Harness(kafka_bootstrap, topic_prefix, backoff_initial_s=5.0, backoff_max_s=5.0)
    try:
        yield h
    finally:
        h.close()


def _emp_ids(records: list[SinkRecord]) -> list[int]:
    return [int(r.event.after["emp_id"]) for r in records if r.event and r.event.after]


def test_non_retryable_refusal_goes_to_the_dlq_at_once(harness: Harness) -> None:
    def refuse_3(_call: int, records: list[SinkRecord]) -> list[RecordFailure]:
        return [
            RecordFailure(r, RecordRejected("STRING_TOO_LONG: too long"))
            for r in records
            if _emp_ids([r]) == [3]
        ]

    sink = ListSink(refuse_3)
    harness.send(range(1, 6))
    started = time.monotonic()
    harness.start(sink)
    wait_until(lambda: len(sink.applied) == 4, timeout_s=30)
    entries = wait_until(lambda: read_dlq(harness.settings, [harness.topic + ".dlq"]), timeout_s=20)
    assert [e.attempts for e in entries] == [1]
    assert "STRING_TOO_LONG" in entries[0].error
    # backoff_initial_s is 5 s: no retry happened
    assert time.monotonic() - started < 20
    assert sum(2 in offsets for _, _, offsets in sink.calls) == 1  # emp 3 is offset 2


def test_constraint_violations_keep_max_attempts(kafka_bootstrap: str, topic_prefix: str) -> None:
    harness = Harness(kafka_bootstrap, topic_prefix)
    try:

        def refuse_2(_call: int, records: list[SinkRecord]) -> list[RecordFailure]:
            return [RecordFailure(r, ConstraintViolation("check")) for r in records if _emp_ids([r]) == [2]]

        sink = ListSink(refuse_2)
        harness.send(range(1, 4))
        harness.start(sink)
        entries = wait_until(lambda: read_dlq(harness.settings, [harness.topic + ".dlq"]), timeout_s=30)
        assert [e.attempts for e in entries] == [3]
        wait_until(lambda: _emp_ids(sink.applied) == [1, 3])
    finally:
        harness.close()


def test_retry_after_longer_than_the_backoff_is_honoured(kafka_bootstrap: str, topic_prefix: str) -> None:
    harness = Harness(kafka_bootstrap, topic_prefix)  # backoff 0.05 s
    try:

        def limited_once(call: int, _records: list[SinkRecord]) -> list[RecordFailure]:
            if call == 1:
                raise RateLimited("REQUEST_LIMIT_EXCEEDED", retry_after=1.5)
            return []

        sink = ListSink(limited_once)
        harness.send(range(1, 3))
        harness.start(sink)
        wait_until(lambda: len(sink.applied) == 2, timeout_s=30)
        assert sink.calls[1][0] - sink.calls[0][0] >= 1.5
    finally:
        harness.close()


def test_next_batch_is_read_while_the_sink_works(kafka_bootstrap: str, topic_prefix: str) -> None:
    harness = Harness(kafka_bootstrap, topic_prefix, partitions=3)
    try:

        def slow(_call: int, _records: list[SinkRecord]) -> list[RecordFailure]:
            time.sleep(0.05)
            return []

        sink = ListSink(slow)
        harness.send(range(1000))
        runner = harness.start(sink)
        wait_until(lambda: len(sink.applied) == 1000, timeout_s=60)
        assert sorted(_emp_ids(sink.applied)) == list(range(1000))  # each once
        per_partition: dict[int, list[int]] = {}
        for record in sink.applied:
            per_partition.setdefault(record.partition, []).append(record.offset)
        assert all(offsets == sorted(offsets) for offsets in per_partition.values())
        assert {name for _, name, _ in sink.calls} == {"list-apply_0"}  # the worker thread
        assert runner.status()["applied"] == 1000 and runner.healthy()
    finally:
        harness.close()


class PreparingSink(ListSink):
    """A ListSink with ``prepare``; ``steps`` notes each write and prepare (with a write in progress?)."""

    def __init__(self, behaviour: Callable[[int, list[SinkRecord]], list[RecordFailure]]) -> None:
        super().__init__(behaviour)
        self.writing = False
        self.steps: list[tuple[str, list[int], bool]] = []

    def write_batch(self, records: list[SinkRecord]) -> list[RecordFailure]:
        self.steps.append(("write", [r.offset for r in records], False))
        self.writing = True
        try:
            return super().write_batch(records)
        finally:
            self.writing = False

    def prepare(self, records: list[SinkRecord]) -> None:
        self.steps.append(("prepare", [r.offset for r in records], self.writing))


def test_the_batch_read_ahead_is_prepared_while_the_one_before_is_written(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    harness = Harness(kafka_bootstrap, topic_prefix)
    try:

        def slow(_call: int, _records: list[SinkRecord]) -> list[RecordFailure]:
            time.sleep(0.2)
            return []

        sink = PreparingSink(slow)
        harness.send(range(300))  # 50 a batch: several batches read ahead
        harness.start(sink)
        wait_until(lambda: len(sink.applied) == 300, timeout_s=60)
        prepares = [
            (n, offsets, during) for n, (step, offsets, during) in enumerate(sink.steps) if step == "prepare"
        ]
        assert len(prepares) >= 3
        assert any(during for _, _, during in prepares)  # while the batch before was being written
        for n, offsets, _ in prepares:
            assert ("write", offsets, False) in sink.steps[n + 1 :]  # and written afterwards
        assert sorted(_emp_ids(sink.applied)) == list(range(300))
    finally:
        harness.close()


def test_a_failed_prepare_is_not_the_failure_of_the_batch_being_written(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    harness = Harness(kafka_bootstrap, topic_prefix)
    try:

        class Unprepared(PreparingSink):
            def prepare(self, records: list[SinkRecord]) -> None:
                super().prepare(records)
                raise RateLimited("no token for preparing")

        def slow(_call: int, _records: list[SinkRecord]) -> list[RecordFailure]:
            time.sleep(0.1)
            return []

        sink = Unprepared(slow)
        harness.send(range(200))
        runner = harness.start(sink)
        wait_until(lambda: len(sink.applied) == 200, timeout_s=60)
        assert any(step == "prepare" for step, _, _ in sink.steps)
        assert sorted(_emp_ids(sink.applied)) == list(range(200))
        written = sorted(offset for _, _, offsets in sink.calls for offset in offsets)
        assert written == list(range(200)) and runner.status()["retries"] == 0  # each batch written once
    finally:
        harness.close()


def test_sink_started_before_its_topic_exists_consumes_once_it_is_created(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # A topic created while the group joins is seen by a consumer already subscribed to it only at
    # its next metadata refresh (kept at librdkafka's 5 minutes here); the runner subscribes once
    # the topic exists, so a sink may start before its capture.
    h = Harness(kafka_bootstrap, topic_prefix, create_topic=False)
    h.settings.kafka.options["topic.metadata.refresh.interval.ms"] = 300_000
    try:
        sink = ListSink(lambda _call, _records: [])
        h.start(sink)
        time.sleep(3)  # the group join is under way (about half the 6 s session timeout)
        assert not sink.calls
        h.create_topic(partitions=3)
        h.send(range(1, 31))
        wait_until(lambda: len(sink.applied) == 30, timeout_s=20)
        assert sorted(_emp_ids(sink.applied)) == list(range(1, 31))
    finally:
        h.close()
