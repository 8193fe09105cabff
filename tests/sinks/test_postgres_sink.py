"""PostgresSink applied directly (no Kafka): collapse, conversions, failures, offsets, fence."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import psycopg
import pytest
from pg_support import change, employee, rows

from walbridge.config import PostgresSinkSettings
from walbridge.errors import ConstraintViolation, FatalError, UnknownColumn
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source, decode_record
from walbridge.sinks.base import OffsetConflict, SinkRecord
from walbridge.sinks.postgres import PostgresSink

TOPIC = "p.public.employees"


def records(*events, start: int = 0, partition: int = 0) -> list[SinkRecord]:
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="p"))
    out = []
    for event in events:
        for rec in encoder.encode(event):
            offset = start + len(out)
            out.append(
                SinkRecord(
                    rec.topic,
                    partition,
                    offset,
                    rec.key,
                    rec.value,
                    None,
                    0,
                    decode_record(rec.topic, rec.key, rec.value),
                )
            )
    return out


@pytest.fixture(params=["copy", "executemany"])
def sink(request: pytest.FixtureRequest, employees_db: str):
    s = PostgresSink(PostgresSinkSettings(dsn=employees_db, apply_method=request.param, group_id="g"))
    s.open()
    yield s
    s.close()


def test_batch_collapses_to_last_change_per_key(sink: PostgresSink, employees_db: str) -> None:
    batch = records(
        change("c", None, employee(200, "David", salary=65000)),
        change("c", None, employee(201, "Emma", salary=70000)),
        change("c", None, employee(202, "Frank", salary=72000)),
        change("u", employee(200, "David", salary=65000), employee(200, "David", salary=75000)),
        change("d", employee(202, "Frank"), None),
        change("c", None, employee(100, "Test", dob=7305)),
        change("d", employee(100), None),
        change("c", None, employee(100, "Again")),
    )
    assert sink.write_batch(batch) == []
    sink.commit({(TOPIC, 0): batch[-1].offset + 1})
    assert rows(employees_db, "SELECT emp_id, first_name, salary FROM employees ORDER BY 1") == [
        (100, "Again", 50000),
        (200, "David", 75000),
        (201, "Emma", 70000),
    ]
    assert rows(employees_db, "SELECT dob FROM employees WHERE emp_id = 100") == [(date(1990, 1, 1),)]
    assert sink.stored_offsets([(TOPIC, 0), (TOPIC, 1)]) == {(TOPIC, 0): len(batch)}


def test_primary_key_change_and_truncate(sink: PostgresSink, employees_db: str) -> None:
    first = records(change("c", None, employee(1)), change("c", None, employee(2)))
    sink.write_batch(first)
    sink.commit({(TOPIC, 0): 2})
    second = records(change("u", employee(1), employee(10)), start=2)
    assert sink.write_batch(second) == []
    sink.commit({(TOPIC, 0): 3})
    assert [r[0] for r in rows(employees_db)] == [2, 10]
    trunc = change("t", None, None)
    third = records(change("c", None, employee(3)), trunc, change("c", None, employee(4)), start=3)
    assert sink.write_batch(third) == []
    sink.commit({(TOPIC, 0): 6})
    assert [r[0] for r in rows(employees_db)] == [4]


def test_check_violation_fails_only_that_record(sink: PostgresSink, employees_db: str) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees ADD CONSTRAINT salary_positive CHECK (salary > 0)")
    batch = records(
        change("c", None, employee(1)),
        change("c", None, employee(2, salary=-5)),
        change("c", None, employee(3)),
    )
    failures = sink.write_batch(batch)
    assert [f.record.offset for f in failures] == [1]
    assert isinstance(failures[0].error, ConstraintViolation)
    assert "salary_positive" in str(failures[0].error)
    sink.commit({(TOPIC, 0): 3})
    assert [r[0] for r in rows(employees_db)] == [1, 3]


def test_unknown_column_and_bad_value(sink: PostgresSink, employees_db: str) -> None:
    extra = {**employee(1), "nickname": "x"}
    bad = {**employee(2), "salary": "lots"}
    batch = records(change("c", None, extra), change("c", None, bad), change("c", None, employee(3)))
    failures = sink.write_batch(batch)
    assert type(failures[0].error) is UnknownColumn
    assert [f.record.offset for f in failures] == [0, 1]
    assert "employees.salary" in str(failures[1].error)
    sink.commit({(TOPIC, 0): 3})
    assert [r[0] for r in rows(employees_db)] == [3]


def test_missing_table_stops_the_sink_naming_it(sink: PostgresSink) -> None:
    """Not one record's problem: every record of the table meets it; never the DLQ."""
    batch = records(change("c", None, employee(1), table="nowhere"))
    with pytest.raises(FatalError, match=r"public\.nowhere does not exist"):
        sink.write_batch(batch)
    sink.rollback()


def test_offset_fence_detects_a_second_apply(sink: PostgresSink, employees_db: str) -> None:
    batch = records(change("c", None, employee(1)), change("c", None, employee(2)))
    sink.write_batch(batch)
    sink.commit({(TOPIC, 0): 2})
    with pytest.raises(OffsetConflict):
        sink.write_batch(records(change("c", None, employee(2)), start=1))
    sink.rollback()


def test_debezium_encodings_by_column_type(employees_db: str) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("""CREATE TABLE public.types (id int PRIMARY KEY, d date, ts timestamp, ts3 timestamp(3),
            tstz timestamptz, t time, n numeric(10,2), j jsonb, b bytea, iv interval, tags text[], u uuid)""")
    sink = PostgresSink(PostgresSinkSettings(dsn=employees_db))
    after = {
        "id": 1,
        "d": 19723,
        "ts": 1_704_067_200_123_456,
        "ts3": 1_704_067_200_123,
        "tstz": "2024-01-01T00:00:00.5Z",
        "t": 3_600_000_000,
        "n": "12.50",
        "j": '{"a": 1}',
        "b": "AQID",
        "iv": 90_000_000,
        "tags": ["x", "y"],
        "u": "6f1c1b0e-0000-4000-8000-000000000001",
    }
    batch = records(_types_event(after))
    assert sink.write_batch(batch) == []
    sink.commit({(batch[0].topic, 0): 1})
    (row,) = rows(employees_db, "SELECT d, ts, ts3, n, j, b, tags, t::text, iv::text FROM types")
    assert row[0] == date(2024, 1, 1)
    assert row[1] == datetime(2024, 1, 1, 0, 0, 0, 123456)
    assert row[2] == datetime(2024, 1, 1, 0, 0, 0, 123000)
    assert row[3] == Decimal("12.50")
    assert row[4] == {"a": 1}
    assert row[5] == b"\x01\x02\x03"
    assert row[6] == ["x", "y"]
    assert row[7:] == ("01:00:00", "00:01:30")
    precise = records(_types_event({"id": 2, "n": "AQID"}), start=1)
    failures = sink.write_batch(precise)
    assert "decimal.handling.mode" in str(failures[0].error)
    sink.rollback()
    sink.close()


def _types_event(after):
    from walbridge.events import ChangeEvent, Source

    src = Source(connector="postgresql", name="p", db="src", schema="public", table="types", ts_ms=1)
    return ChangeEvent("c", src, {"id": after["id"]}, None, after, 1)


def test_prepared_batch_applies_as_write_batch_would(sink: PostgresSink, employees_db: str) -> None:
    """The runner's prefetch collapses the next batch ahead (``prepare``); write_batch applies that."""
    first = records(change("c", None, employee(1)), change("c", None, employee(2)))
    sink.write_batch(first)  # describes the table: the next batch can be prepared
    sink.commit({(TOPIC, 0): 2})
    keyless = change("c", None, {**employee(3), "emp_id": None})
    second = records(
        change("u", employee(1), employee(1, salary=60_000)),
        ChangeEvent("c", keyless.source, {"emp_id": 3}, None, keyless.after, 1),  # refused: no key value
        change("d", employee(2), None),
        change("c", None, employee(4, city="Rome")),
        start=2,
    )
    sink.prepare(second)
    assert sink._prepared is not None
    failures = sink.write_batch(second)
    assert sink._prepared is None  # taken
    assert [f.record.offset for f in failures] == [3]
    assert "lacks key column" in str(failures[0].error)
    sink.commit({(TOPIC, 0): 6})
    assert rows(employees_db, "SELECT emp_id, city, salary FROM employees ORDER BY 1") == [
        (1, "C", 60_000),
        (4, "Rome", 50_000),
    ]


def test_prepared_batch_is_not_applied_for_other_records(sink: PostgresSink, employees_db: str) -> None:
    """A batch retried without a refused record, or a table described again meanwhile: collapsed anew."""
    sink.write_batch(records(change("c", None, employee(1))))
    sink.commit({(TOPIC, 0): 1})
    batch = records(change("c", None, employee(2)), change("c", None, employee(3)), start=1)
    sink.prepare(batch)
    assert sink.write_batch(batch[1:]) == []
    sink.commit({(TOPIC, 0): 3})
    assert [r[0] for r in rows(employees_db)] == [1, 3]

    later = records(change("u", employee(3), employee(3, salary=1)), start=3)
    sink.prepare(later)
    sink._forget_table(("public", "employees"))  # as a batch applied meanwhile may (ALTER TABLE)
    assert sink._take_prepared(later, []) is None
    assert sink.write_batch(later) == []
    sink.commit({(TOPIC, 0): 4})
    assert rows(employees_db, "SELECT emp_id, salary FROM employees WHERE emp_id = 3") == [(3, 1)]


def test_batch_with_a_new_column_or_a_truncate_is_not_prepared(sink: PostgresSink, employees_db: str) -> None:
    sink.write_batch(records(change("c", None, employee(1))))
    sink.commit({(TOPIC, 0): 1})
    sink.prepare(records(change("c", None, employee(2)), change("t", None, None), start=1))
    assert sink._prepared is None
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE employees ADD COLUMN nickname text")
    batch = records(change("c", None, {**employee(2), "nickname": "n"}), start=1)
    sink.prepare(batch)
    assert sink._prepared is None  # write_batch reads the table again first
    assert sink.write_batch(batch) == []
    sink.commit({(TOPIC, 0): 2})
    assert rows(employees_db, "SELECT emp_id, nickname FROM employees ORDER BY 1") == [(1, None), (2, "n")]


def test_rows_staged_for_a_table_are_never_applied_to_another(employees_db: str) -> None:
    """Tables of a batch share the COPY stages: a table refused in between (its savepoint rolled back,
    with the emptying of the stage) must not leave the first table's rows to the third."""
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t1 (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE public.t2 (id int PRIMARY KEY CHECK (id < 100))")
        conn.execute("CREATE TABLE public.t3 (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t1 VALUES (1); INSERT INTO t3 VALUES (1), (7)")

    def event(op: str, table: str, key: int) -> ChangeEvent:
        source = Source(connector="postgresql", name="test", db="src", schema="public", table=table, ts_ms=1)
        row = {"id": key}
        return ChangeEvent(op, source, row, row if op == "d" else None, None if op == "d" else row, 1)

    sink = PostgresSink(PostgresSinkSettings(dsn=employees_db, apply_method="copy", group_id="g"))
    try:
        for start in (0, 5):  # the second batch: every stage exists and was used before
            batch = records(event("d", "t1", 1), event("c", "t2", 500), event("d", "t3", 7), start=start)
            failures = [f.record.offset for f in sink.write_batch(batch)]
            assert failures == [start + 2]  # t2's record (the delete's tombstone follows it)
            sink.commit({(f"p.public.t{n}", 0): start + end for n, end in ((1, 2), (2, 3), (3, 5))})
            assert rows(employees_db, "SELECT id FROM t3") == [(1,)]
            with psycopg.connect(employees_db, autocommit=True) as conn:
                conn.execute("INSERT INTO t1 VALUES (1); INSERT INTO t3 VALUES (7)")
    finally:
        sink.close()
