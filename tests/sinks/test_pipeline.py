"""The seed's verification steps through Kafka and the runner, plus DLQ, replay and bad records."""

from __future__ import annotations

import logging

import psycopg
import pytest
from pg_support import Pipeline, change, employee, rows

from helpers import consume_all, wait_until
from walbridge.events import KafkaRecord
from walbridge.sinks.dlq import read_dlq
from walbridge.sinks.replay import replay


def names(dsn: str) -> list[tuple[int, str, int]]:
    return rows(dsn, "SELECT emp_id, first_name, salary FROM employees ORDER BY emp_id")


def test_seed_steps_and_offset_resume(pipeline: Pipeline, employees_db: str) -> None:
    pipeline.start()
    pipeline.send(change("c", None, employee(100, "Test", salary=50000)))
    wait_until(lambda: names(employees_db) == [(100, "Test", 50000)])
    pipeline.send(change("c", None, employee(101, "Alice", salary=75000)))
    pipeline.send(
        change("u", employee(101, "Alice", salary=75000), employee(101, "Alice", city="Boston", salary=80000))
    )
    wait_until(lambda: (101, "Alice", 80000) in names(employees_db))
    pipeline.send(change("d", employee(101), None))
    wait_until(lambda: names(employees_db) == [(100, "Test", 50000)])
    pipeline.stop()
    # Restart: resumes at the stored offsets, nothing applied twice (counted by a trigger).
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE applied (n int)")
        conn.execute("""CREATE FUNCTION count_apply() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN INSERT INTO applied VALUES (1); RETURN NULL; END $$""")
        conn.execute(
            "CREATE TRIGGER c AFTER INSERT OR UPDATE OR DELETE ON employees "
            "FOR EACH ROW EXECUTE FUNCTION count_apply()"
        )
    pipeline.start()
    pipeline.send(
        change("c", None, employee(200, "David", salary=65000)),
        change("c", None, employee(201, "Emma", salary=70000)),
        change("c", None, employee(202, "Frank", salary=72000)),
    )
    pipeline.send(change("u", employee(200, "David", salary=65000), employee(200, "David", salary=75000)))
    pipeline.send(change("d", employee(202, "Frank", salary=72000), None))
    wait_until(
        lambda: names(employees_db) == [(100, "Test", 50000), (200, "David", 75000), (201, "Emma", 70000)]
    )
    assert rows(employees_db, "SELECT count(*) FROM applied")[0][0] <= 5


def test_check_violation_goes_to_dlq_then_replays(pipeline: Pipeline, employees_db: str) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees ADD CONSTRAINT salary_cap CHECK (salary < 100000)")
    pipeline.start()
    pipeline.send(*(change("c", None, employee(i, salary=200_000 if i == 5 else 1000)) for i in range(1, 10)))
    wait_until(lambda: len(names(employees_db)) == 8)
    dlq_topic = pipeline.topic + ".dlq"
    entries = wait_until(lambda: read_dlq(pipeline.settings, [dlq_topic]), timeout_s=20)
    assert len(entries) == 1
    seed = entries[0].seed_json()
    assert seed["original_topic"] == pipeline.topic and '"emp_id":5' in seed["original_key"]
    assert "salary_cap" in seed["error"]
    assert entries[0].attempts == 3
    headers = dict(
        consume_all(pipeline.settings.kafka.bootstrap_servers, [dlq_topic], min_count=1)[0].headers()
    )
    assert headers["__connect.errors.exception.class.name"] == b"walbridge.errors.ConstraintViolation"
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees DROP CONSTRAINT salary_cap")
    report = replay(pipeline.settings, entries)
    assert len(report["applied"]) == 1, report.summary()
    assert (5, "F", 200_000) in names(employees_db)  # applied by the replay itself, before it returned
    again = replay(pipeline.settings, read_dlq(pipeline.settings, [dlq_topic]))
    assert again["applied"] == [] and len(again["already"]) == 1, again.summary()


def test_garbage_and_wrong_shape_go_to_dlq(pipeline: Pipeline, employees_db: str) -> None:
    pipeline.start()
    pipeline.send_raw(KafkaRecord(pipeline.topic, b'{"emp_id": 1}', b"\x00\xffnot json"))
    pipeline.send_raw(KafkaRecord(pipeline.topic, b'{"emp_id": 2}', b'{"hello": "world"}'))
    pipeline.send_raw(KafkaRecord(pipeline.topic, b'{"emp_id": 3}', b"[1, 2, 3]"))
    pipeline.send(change("c", None, employee(4)))
    wait_until(lambda: names(employees_db) == [(4, "F", 50000)])
    entries = wait_until(lambda: len(e := read_dlq(pipeline.settings, [pipeline.topic + ".dlq"])) == 3 and e)
    assert {e.error_class for e in entries} == {"walbridge.errors.DecodeError"}


def test_throughput_lines_and_a_summary_at_stop(
    pipeline: Pipeline, employees_db: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from walbridge.sinks import runner

    monkeypatch.setattr(runner, "THROUGHPUT_EVERY_S", 0.2)
    caplog.set_level(logging.INFO, logger="walbridge.sinks.runner")
    pipeline.start()
    pipeline.send(*(change("c", None, employee(i)) for i in range(1, 301)))
    wait_until(lambda: len(names(employees_db)) == 300)
    wait_until(lambda: any("records applied (" in r.getMessage() for r in caplog.records))
    pipeline.stop()
    lines = [r.getMessage() for r in caplog.records if "records applied" in r.getMessage()]
    assert lines[-1].startswith(f"{pipeline.sink_settings.sink_name}: stopped after 300 records applied")
    assert "0 dead-lettered" in lines[-1]
