"""``dlq replay`` reaches only the sink whose dead letters they are, and never writes an old row image
over a newer one: two PostgreSQL sink groups on one 3-partition topic, one with a CHECK constraint."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import psycopg
import pytest
from pg_support import EMPLOYEES_DDL, Pipeline, change, employee, rows

from helpers import scratch_database, wait_until
from walbridge.config import PostgresSinkSettings
from walbridge.sinks.dlq import read_dlq
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.replay import replay
from walbridge.sinks.runner import SinkRunner

ALL = "SELECT emp_id, first_name, last_name, dob, city, salary FROM employees ORDER BY emp_id"
EPOCH = date(1970, 1, 1)


class Source:
    """The source table and its change events: each SQL change is sent as the event capture makes."""

    def __init__(self, dsn: str, pipeline: Pipeline) -> None:
        self.dsn, self.pipeline = dsn, pipeline
        self.rows: dict[int, dict[str, Any]] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(EMPLOYEES_DDL)

    def _sql(self, query: str, row: dict[str, Any]) -> None:
        params = {**row, "dob": EPOCH + timedelta(days=row["dob"])}
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query, params)

    def insert(self, row: dict[str, Any]) -> None:
        self._sql(
            "INSERT INTO employees VALUES (%(emp_id)s, %(first_name)s, %(last_name)s, %(dob)s, %(city)s,"
            " %(salary)s)",
            row,
        )
        self.rows[row["emp_id"]] = row
        self.pipeline.send(change("c", None, row))

    def update(self, emp_id: int, **values: Any) -> None:
        before = self.rows[emp_id]
        after = self.rows[emp_id] = {**before, **values}
        self._sql(
            "UPDATE employees SET city = %(city)s, salary = %(salary)s WHERE emp_id = %(emp_id)s", after
        )
        self.pipeline.send(change("u", before, after))

    def delete(self, emp_id: int) -> None:
        before = self.rows.pop(emp_id)
        self._sql("DELETE FROM employees WHERE emp_id = %(emp_id)s", before)
        self.pipeline.send(change("d", before, None))


def run_sink(
    pipeline: Pipeline, sink_settings: PostgresSinkSettings
) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    runner = SinkRunner(PostgresSink(sink_settings), pipeline.settings, sink_settings)
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


@pytest.fixture
def two_sinks(
    kafka_bootstrap: str, topic_prefix: str, pg_admin_dsn: str, pg_dsn: str
) -> Iterator[tuple[Pipeline, Source, str, str]]:
    """Sink ``a`` (CHECK salary < 100000) and sink ``b`` (healthy), two groups on one topic, running."""
    with (
        scratch_database(pg_admin_dsn, "dest_a") as dest_a,
        scratch_database(pg_admin_dsn, "dest_b") as dest_b,
    ):
        for dsn in (dest_a, dest_b):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(EMPLOYEES_DDL)
        with psycopg.connect(dest_a, autocommit=True) as conn:
            conn.execute("ALTER TABLE employees ADD CONSTRAINT salary_cap CHECK (salary < 100000)")
        pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest_a, name="a")
        sink_a = pipeline.sink_settings
        sink_b = sink_a.model_copy(update={"name": "b", "dsn": dest_b, "group_id": f"{topic_prefix}-b"})
        pipeline.settings.sinks.append(sink_b)
        source = Source(pg_dsn, pipeline)
        running = [run_sink(pipeline, sink_a), run_sink(pipeline, sink_b)]
        try:
            yield pipeline, source, dest_a, dest_b
        finally:
            for _thread, stop in running:
                stop.set()
            for thread, _stop in running:
                thread.join(30)


def test_replay_reaches_only_its_sink_and_never_writes_an_older_state(
    two_sinks: tuple[Pipeline, Source, str, str],
) -> None:
    pipeline, source, dest_a, dest_b = two_sinks
    dlq_topic = pipeline.topic + ".dlq"
    for emp_id in range(1, 61):  # every 5th row breaks sink a's CHECK: 12 dead letters
        source.insert(employee(emp_id, salary=200_000 + emp_id if emp_id % 5 == 0 else 1_000 + emp_id))
    wait_until(lambda: len(read_dlq(pipeline.settings, [dlq_topic])) == 12, timeout_s=60)
    # Later changes of dead-lettered rows: valid updates, deletes, and a second dead letter of row 35.
    for emp_id in (5, 10, 15, 20):
        source.update(emp_id, city="Later", salary=50_000 + emp_id)
    for emp_id in (25, 30):
        source.delete(emp_id)
    source.update(35, city="Later", salary=300_000)
    source.update(1, city="Moved")
    source.delete(2)
    expected = rows(source.dsn, ALL)
    wait_until(lambda: rows(dest_b, ALL) == expected, timeout_s=60)
    entries = wait_until(lambda: len(e := read_dlq(pipeline.settings, [dlq_topic])) == 13 and e, timeout_s=60)
    missing_in_a = {35, 40, 45, 50, 55, 60}
    wait_until(lambda: rows(dest_a, ALL) == [r for r in expected if r[0] not in missing_in_a], timeout_s=60)
    assert {e.sink for e in entries} == {"a"}

    with psycopg.connect(dest_a, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees DROP CONSTRAINT salary_cap")
    report = replay(pipeline.settings, entries)  # both sinks keep running meanwhile

    def ids(outcome: str) -> list[int]:
        return sorted(int(e.seed_json()["original_key"].split(":")[1].rstrip("}")) for e in report[outcome])

    assert ids("applied") == [35, 40, 45, 50, 55, 60], report.summary()
    assert ids("superseded") == [5, 10, 15, 20, 25, 30, 35], report.summary()
    assert not report["failed"] and not report["pending"] and not report["elsewhere"]
    # Row for row: sink a now equals the source, and sink b was never touched by the replay.
    assert rows(dest_a, ALL) == expected
    assert rows(dest_b, ALL) == expected

    again = replay(pipeline.settings, read_dlq(pipeline.settings, [dlq_topic]))
    assert len(again["already"]) == 13 and not again["applied"] and not again["superseded"], again.summary()

    # Both sinks still apply new changes after the replay (its lock on sink a's offsets is gone).
    source.update(40, city="After", salary=40)
    source.insert(employee(61, salary=61))
    expected = rows(source.dsn, ALL)
    wait_until(lambda: rows(dest_a, ALL) == expected and rows(dest_b, ALL) == expected, timeout_s=60)


def test_running_sink_waits_while_a_replay_holds_its_offsets(pipeline: Pipeline, employees_db: str) -> None:
    """The lock that keeps a running member from applying between a replay's check and its writes."""
    pipeline.start()
    pipeline.send(change("c", None, employee(1, salary=1)))
    wait_until(lambda: rows(employees_db, "SELECT salary FROM employees") == [(1,)])
    holder = PostgresSink(pipeline.sink_settings)
    try:
        held = holder.hold_offsets([(pipeline.topic, p) for p in range(3)])
        assert sum(held.values()) == 1  # one record consumed, on one partition
        pipeline.send(change("u", employee(1, salary=1), employee(1, salary=2)))
        waiting = """SELECT count(*) FROM pg_stat_activity
                      WHERE datname = current_database() AND wait_event_type = 'Lock'"""
        wait_until(lambda: rows(employees_db, waiting) == [(1,)])  # the sink waits at its offset fence
        assert rows(employees_db, "SELECT salary FROM employees") == [(1,)]
        holder.rollback()
        wait_until(lambda: rows(employees_db, "SELECT salary FROM employees") == [(2,)])
    finally:
        holder.close()


def test_a_tombstone_does_not_supersede_its_dead_delete_and_a_truncate_supersedes(
    pipeline: Pipeline, employees_db: str, pg_admin_dsn: str
) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE badges (emp_id integer REFERENCES employees)")
        conn.execute("ALTER TABLE employees ADD CONSTRAINT salary_cap CHECK (salary < 100000)")
    with scratch_database(pg_admin_dsn, "source") as source_dsn:
        source = Source(source_dsn, pipeline)
        pipeline.start()
        for emp_id in (1, 2):
            source.insert(employee(emp_id, salary=emp_id))
        wait_until(lambda: rows(employees_db, ALL) == rows(source_dsn, ALL))
        with psycopg.connect(employees_db, autocommit=True) as conn:
            conn.execute("INSERT INTO badges VALUES (1)")
        source.delete(1)  # refused by the foreign key: a dead letter, followed by its tombstone
        dlq_topic = pipeline.topic + ".dlq"
        entries = wait_until(lambda: read_dlq(pipeline.settings, [dlq_topic]), timeout_s=30)
        with psycopg.connect(employees_db, autocommit=True) as conn:
            conn.execute("DROP TABLE badges")
        report = replay(pipeline.settings, entries)
        assert len(report["applied"]) == 1 and entries[0].value is not None, report.summary()
        assert rows(employees_db, ALL) == rows(source_dsn, ALL)

        source.insert(employee(3, salary=300_000))  # refused by the CHECK
        wait_until(lambda: len(read_dlq(pipeline.settings, [dlq_topic])) == 2, timeout_s=30)
        with psycopg.connect(source_dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE employees")
        (record,) = pipeline.encoder.encode(change("t", None, None))
        for partition in range(3):  # capture writes a truncate to every partition
            pipeline.producer.produce(record.topic, value=record.value, partition=partition)
        pipeline.producer.flush(10)
        wait_until(lambda: rows(employees_db, ALL) == [])
        with psycopg.connect(employees_db, autocommit=True) as conn:
            conn.execute("ALTER TABLE employees DROP CONSTRAINT salary_cap")
        report = replay(pipeline.settings, read_dlq(pipeline.settings, [dlq_topic]))
        assert len(report["superseded"]) == 1 and len(report["already"]) == 1, report.summary()
        assert rows(employees_db, ALL) == rows(source_dsn, ALL) == []
