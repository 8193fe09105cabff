"""TRUNCATE through capture → Kafka (3 partitions) → PostgreSQL sink: the destination equals the source
after any interleaving of truncates and row changes, in both capture modes, with one sink and with
two sink processes (``--workers 2``). Capture writes each truncate to every partition; the sink
applies it once every partition reached it (:mod:`walbridge.sinks.pg_barrier`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from capture_support import RunningCapture, make_settings
from helpers import consume_all, scratch_database, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.capture.trigger import TriggerCapture, install_trigger_capture
from walbridge.config import Settings, load_settings
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source
from walbridge.kafka import ensure_topics, make_admin, make_producer
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.truncates import BARRIER_HEADER, PARTITIONS_HEADER, Barrier, barrier_headers, barrier_id

TABLES = ["public.t", "public.u"]
DDL = """
CREATE TABLE public.t (id integer PRIMARY KEY, v text NOT NULL);
CREATE TABLE public.u (id integer PRIMARY KEY, v text NOT NULL);
"""

# The case first (300 inserts, TRUNCATE, 150 inserts), then: single-row changes around
# truncates, one statement truncating two tables, two truncates in a row, a truncate inside a
# transaction with changes before and after it, and updates/deletes after a truncate.
WORKLOAD = [
    "INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 300) g",
    "INSERT INTO u SELECT g, 'a' || g FROM generate_series(1, 50) g",
    "TRUNCATE t",
    "INSERT INTO t SELECT g, 'b' || g FROM generate_series(1, 150) g",
    "UPDATE t SET v = 'c' || id WHERE id % 3 = 0",
    "DELETE FROM t WHERE id % 7 = 0",
    *[f"INSERT INTO t VALUES ({1000 + i}, 'single{i}')" for i in range(30)],
    "TRUNCATE t, u",
    "INSERT INTO u SELECT g, 'd' || g FROM generate_series(1, 40) g",
    *[f"INSERT INTO t VALUES ({2000 + i}, 'e{i}')" for i in range(20)],
    "TRUNCATE t",
    "TRUNCATE t",
    "INSERT INTO t SELECT g, 'f' || g FROM generate_series(1, 60) g",
    "BEGIN; INSERT INTO t SELECT g, 'g' || g FROM generate_series(100, 160) g; TRUNCATE t; "
    "INSERT INTO t SELECT g, 'h' || g FROM generate_series(1, 90) g; "
    "UPDATE t SET v = 'i' WHERE id < 10; COMMIT",
    "INSERT INTO u SELECT g, 'j' || g FROM generate_series(41, 80) g",
    "DELETE FROM u WHERE id % 5 = 0",
]
TRUNCATES = {"public.t": 5, "public.u": 1}
"""How many truncates each table saw (one barrier each)."""


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT id, v FROM {table} ORDER BY id").fetchall()


def run_workload(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in WORKLOAD:
            conn.execute(statement)


@contextmanager
def capturing(mode: str, dsn: str, bootstrap: str, prefix: str, tmp_path: Path) -> Iterator[Settings]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)
    if mode == "logical":
        settings = make_settings(dsn, bootstrap, prefix, tmp_path, TABLES)
        capture: Any = LogicalCapture(settings)
    else:
        settings = load_settings(
            source={"mode": "trigger", "dsn": dsn, "tables": TABLES, "poll_interval_ms": 50},
            kafka={"bootstrap_servers": bootstrap, "partitions": 3},
            events={"topic_prefix": prefix},
            metrics={"enabled": False},
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            install_trigger_capture(conn, settings)
        capture = TriggerCapture(settings)
    with RunningCapture(capture):
        yield settings


def sink_config(bootstrap: str, prefix: str, dest: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000},
        "dlq": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "sinks": [
            {
                "type": "postgres",
                "dsn": dest,
                "topics": [f"{prefix}.{t}" for t in TABLES],
                "group_id": f"g-{prefix}",
                "linger_ms": 50,
                "batch_size": 40,
            }
        ],
        "metrics": {"enabled": False},
    }


def converged(src: str, dest: str) -> bool:
    return all(table_rows(src, t) == table_rows(dest, t) for t in TABLES)


def assert_barriers_applied(dest: str, prefix: str) -> None:
    with psycopg.connect(dest) as conn:
        found = dict(
            conn.execute(
                "SELECT topic, count(*) FROM walbridge.truncate_barriers WHERE applied_at IS NOT NULL "
                "GROUP BY topic"
            ).fetchall()
        )
        pending = conn.execute("SELECT count(*) FROM walbridge.truncate_barriers WHERE applied_at IS NULL")
        assert pending.fetchone() == (0,)
    assert found == {f"{prefix}.{table}": n for table, n in TRUNCATES.items()}


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_truncates_interleaved_with_changes_one_sink(
    mode: str, tmp_path: Path, pg_admin_dsn: str, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with scratch_database(pg_admin_dsn, "dest") as dest:
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute(DDL)
        settings = load_settings(**sink_config(kafka_bootstrap, topic_prefix, dest))
        sink_settings = settings.sink("postgres")
        stop = threading.Event()
        runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)  # type: ignore[arg-type]
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        with capturing(mode, pg_dsn, kafka_bootstrap, topic_prefix, tmp_path):
            thread.start()
            try:
                run_workload(pg_dsn)
                wait_until(lambda: converged(pg_dsn, dest), timeout_s=90, interval_s=0.5)
            finally:
                stop.set()
                thread.join(30)
        assert table_rows(dest, "public.t") == table_rows(pg_dsn, "public.t")
        assert table_rows(dest, "public.u") == table_rows(pg_dsn, "public.u")
        assert_barriers_applied(dest, topic_prefix)
    # Every partition of the topic holds one copy of each truncate, marked for the sink.
    copies = [
        m
        for m in consume_all(kafka_bootstrap, [f"{topic_prefix}.public.u"])
        if m.value() is not None and b'"op":"t"' in m.value()
    ]
    assert sorted(m.partition() for m in copies) == [0, 1, 2]
    headers = dict(copies[0].headers() or [])
    assert headers[PARTITIONS_HEADER] == b"3" and headers[BARRIER_HEADER]


def test_truncates_with_two_sink_processes(
    tmp_path: Path, pg_admin_dsn: str, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with scratch_database(pg_admin_dsn, "dest") as dest:
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute(DDL)
        doc = sink_config(kafka_bootstrap, topic_prefix, "env:WALBRIDGE_TEST_DEST_DSN")
        config = tmp_path / "sink.yaml"
        config.write_text(yaml.safe_dump(doc))
        log = tmp_path / "sink.log"
        with capturing("logical", pg_dsn, kafka_bootstrap, topic_prefix, tmp_path):
            sink = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "walbridge.cli",
                    "sink",
                    "postgres",
                    "--config",
                    str(config),
                    "--workers",
                    "2",
                ],
                env={**os.environ, "WALBRIDGE_TEST_DEST_DSN": dest},
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
            )
            try:
                # both workers in the group before the workload, so that partitions are shared
                wait_until(lambda: log.read_text().count("assigned [") >= 2, timeout_s=60)
                run_workload(pg_dsn)
                try:
                    wait_until(lambda: converged(pg_dsn, dest), timeout_s=90, interval_s=0.5)
                except AssertionError as exc:
                    raise AssertionError(log.read_text()[-4000:]) from exc
            finally:
                sink.terminate()
                sink.wait(60)
        assert table_rows(dest, "public.t") == table_rows(pg_dsn, "public.t")
        assert table_rows(dest, "public.u") == table_rows(pg_dsn, "public.u")
        assert_barriers_applied(dest, topic_prefix)
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]


class HandFed:
    """Topic ``public.t`` (3 partitions) fed by hand: rows and truncate copies into chosen partitions,
    as a capture would write them, for the sink tests that stop between the copies."""

    def __init__(self, pg_dsn: str, bootstrap: str, prefix: str, lsn: int) -> None:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(DDL)
        self.settings = load_settings(**sink_config(bootstrap, prefix, pg_dsn))
        self.sink_settings = self.settings.sink("postgres")
        self.topic = f"{prefix}.public.t"
        ensure_topics(make_admin(self.settings.kafka), [f"{prefix}.{t}" for t in TABLES], 3, 1)
        self.encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
        self.producer = make_producer(self.settings.kafka)
        self.source = Source("postgresql", prefix, "db", "public", "t", 1, lsn=lsn)
        self.truncate = self.encoder.encode(ChangeEvent("t", self.source, None, None, None, 1))[0]

    def row(self, partition: int, ident: int, value: str) -> None:
        event = ChangeEvent("c", self.source, {"id": ident}, None, {"id": ident, "v": value}, 1)
        record = self.encoder.encode(event)[0]
        self.producer.produce(self.topic, record.value, record.key, partition=partition)

    def copies(self, partitions: list[int], sent: int = 0) -> None:
        """One set of the truncate's copies (``sent`` tells sets apart), into ``partitions`` only."""
        headers = barrier_headers(Barrier(barrier_id(self.source), 3, sent))
        for partition in partitions:
            self.producer.produce(self.topic, self.truncate.value, None, partition=partition, headers=headers)


def test_partitions_waiting_at_a_truncate_survive_a_restart(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Two partitions reach the truncate, the sink stops, the third arrives later: the new sink starts
    the two paused (the state is in the destination) and applies the truncate once the third arrives;
    rows after the truncate in the paused partitions survive it, rows before it do not."""
    feed = HandFed(pg_dsn, kafka_bootstrap, topic_prefix, lsn=4242)
    settings, sink_settings, topic, producer, row = (
        feed.settings,
        feed.sink_settings,
        feed.topic,
        feed.producer,
        feed.row,
    )

    def copy(partition: int) -> None:
        feed.copies([partition])

    for partition in range(3):
        row(partition, 10 + partition, "before")
    copy(0)
    copy(1)
    row(0, 20, "after")  # behind the copy in a paused partition: must wait for the truncate
    row(2, 12, "before again")
    producer.flush(10)

    def run_sink() -> tuple[threading.Thread, threading.Event, SinkRunner]:
        stop = threading.Event()
        runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)  # type: ignore[arg-type]
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        return thread, stop, runner

    def arrived() -> list[int] | None:
        with psycopg.connect(pg_dsn) as conn:
            if conn.execute("SELECT to_regclass('walbridge.truncate_barriers')").fetchone() == (None,):
                return None
            found = conn.execute("SELECT arrived FROM walbridge.truncate_barriers").fetchone()
        return None if found is None else found[0]

    thread, stop, first = run_sink()
    try:
        wait_until(lambda: arrived() == [0, 1], timeout_s=60)
        waiting = [f"{topic}[0]", f"{topic}[1]"]
        wait_until(lambda: first.status()["waiting_for_truncate"] == waiting, timeout_s=10)
        wait_until(
            lambda: table_rows(pg_dsn, "public.t") == [(10, "before"), (11, "before"), (12, "before again")]
        )
    finally:
        stop.set()
        thread.join(30)
    copy(2)
    row(1, 21, "after")
    row(2, 22, "after")
    producer.flush(10)
    thread, stop, _runner = run_sink()
    try:
        expected = [(20, "after"), (21, "after"), (22, "after")]
        wait_until(lambda: table_rows(pg_dsn, "public.t") == expected, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    assert arrived() == [0, 1, 2]


def test_a_truncate_sent_again_after_a_partial_send(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """At-least-once capture: the first set of copies reached two partitions only, then capture sent the
    truncate again with the rows around it. The first set is abandoned, the second applied: the rows
    sent again before the truncate are removed, those after it stay, and no partition waits forever."""
    feed = HandFed(pg_dsn, kafka_bootstrap, topic_prefix, lsn=777)
    settings, sink_settings, producer, row = feed.settings, feed.sink_settings, feed.producer, feed.row

    def copies(sent: int, partitions: list[int]) -> None:
        feed.copies(partitions, sent)

    for partition in range(3):  # first send: the copy for partition 2 was lost
        row(partition, partition, "before")
    copies(1, [0, 1])
    row(0, 10, "after")
    for partition in range(3):  # sent again from the confirmed position
        row(partition, partition, "before")
    copies(2, [0, 1, 2])
    for partition in range(3):
        row(partition, 10 + partition, "after")
    producer.flush(10)

    stop = threading.Event()
    runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)  # type: ignore[arg-type]
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        expected = [(10, "after"), (11, "after"), (12, "after")]
        wait_until(lambda: table_rows(pg_dsn, "public.t") == expected, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
    with psycopg.connect(pg_dsn) as conn:
        states = conn.execute(
            "SELECT sent, superseded, applied_at IS NOT NULL FROM walbridge.truncate_barriers ORDER BY sent"
        ).fetchall()
    assert states == [(1, True, True), (2, False, True)]
