"""Unchanged TOASTed values through capture → Kafka (3 partitions) → PostgreSQL sink, compared by SQL.

An UPDATE that leaves large (out-of-line) values alone gets Debezium's unavailable-value placeholder
for them from pgoutput without REPLICA IDENTITY FULL; the sink must keep the destination's values.
With FULL, capture takes them from the old row; trigger mode always sees whole rows.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from helpers import consume_all, wait_until
from pipeline_support import capture_settings, running_capture, running_sink, table_rows, wait_same_rows
from walbridge.sinks.dlq import read_dlq
from walbridge.unavailable import is_unavailable, placeholder_for

TABLE = "public.toasty"
BIG = {
    "big_text": "text",
    "big_varchar": "varchar(100000)",
    "big_bytes": "bytea",
    "big_ints": "int[]",
    "big_longs": "bigint[]",
    "big_texts": "text[]",
    "big_uuids": "uuid[]",
    "big_dates": "date[]",
    "big_nums": "numeric[]",
    "big_doc": "jsonb",
    "big_json": "json",
    "big_num": "numeric",
}
FLAT_TABLE = "public.toasty_flat"
"""Without arrays: the sink's JSON (COPY) path; the table with arrays takes its Python path."""
COLUMNS = {
    TABLE: BIG,
    FLAT_TABLE: {name: typ for name, typ in BIG.items() if not typ.endswith("[]")},
}
DDL = "; ".join(
    f"CREATE TABLE {table} (id int PRIMARY KEY, small int, "
    + ", ".join(f"{name} {typ}" for name, typ in columns.items())
    + ")"
    for table, columns in COLUMNS.items()
)
# Every value is several kB and stored uncompressed (STORAGE EXTERNAL), so it is always out of line.
_TEXT = "(SELECT string_agg(md5(g::text || {seed}), '') FROM generate_series(1, 200) g)"
_ITEMS = "ARRAY(SELECT md5(g::text) FROM generate_series(1, 150) g)"
VALUES = {
    "big_text": _TEXT,
    "big_varchar": "'v' || " + _TEXT,
    "big_bytes": f"decode({_TEXT}, 'hex')",
    "big_ints": "ARRAY(SELECT (g * 7919 + {seed}) % 100000 FROM generate_series(1, 2000) g)",
    "big_longs": "ARRAY(SELECT g::bigint * 4294967296 + {seed} FROM generate_series(1, 1000) g)",
    "big_texts": "ARRAY(SELECT md5(g::text || {seed}) FROM generate_series(1, 200) g)",
    "big_uuids": "ARRAY(SELECT md5(g::text || {seed})::uuid FROM generate_series(1, 300) g)",
    "big_dates": "ARRAY(SELECT date '2000-01-01' + g + {seed} FROM generate_series(1, 1500) g)",
    "big_nums": "ARRAY(SELECT (g * 1.25 + {seed})::numeric FROM generate_series(1, 800) g)",
    "big_doc": "jsonb_build_object('seed', {seed}, 'items', " + _ITEMS + ")",
    "big_json": "json_build_object('seed', {seed}, 'items', " + _ITEMS + ")",
    "big_num": "(repeat('7', 6000) || '.{seed}')::numeric",
}


def insert_sql(table: str, row_id: int) -> str:
    names = COLUMNS[table]
    exprs = ", ".join(VALUES[name].format(seed=row_id) for name in names)
    return f"INSERT INTO {table} (id, small, {', '.join(names)}) VALUES ({row_id}, 0, {exprs})"


def prepare_source(dsn: str, identity_full: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(DDL)
        for table, columns in COLUMNS.items():
            for name in columns:
                conn.execute(f"ALTER TABLE {table} ALTER COLUMN {name} SET STORAGE EXTERNAL")
            if identity_full:
                conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
            for row_id in range(1, 7):
                conn.execute(insert_sql(table, row_id))


@pytest.fixture
def dest_dsn(dest_dsn: str) -> str:
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute(DDL)
    return dest_dsn


def changes(dsn: str, key_change: bool) -> None:
    """Updates that leave the large values alone (most), change one, null one; inserts updated at once."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in COLUMNS:
            conn.execute(f"UPDATE {t} SET small = small + 1 WHERE id <= 4")
            conn.execute(f"UPDATE {t} SET small = small + 10 WHERE id = 1")
            conn.execute(f"UPDATE {t} SET small = 5, big_text = 'short now', big_bytes = NULL WHERE id = 4")
            conn.execute(f"UPDATE {t} SET small = 6, big_doc = '{{\"small\": true}}' WHERE id = 5")
            conn.execute(f"DELETE FROM {t} WHERE id = 6")
            with conn.transaction():  # insert + update in one transaction: likely one sink batch
                conn.execute(insert_sql(t, 7))
                conn.execute(f"UPDATE {t} SET small = 70 WHERE id = 7")
            conn.execute(insert_sql(t, 8))
            conn.execute(f"UPDATE {t} SET small = 80 WHERE id = 8")
            conn.execute(f"UPDATE {t} SET small = 81 WHERE id = 8")
            if key_change:
                conn.execute(f"UPDATE {t} SET id = 30 WHERE id = 3")


@pytest.mark.parametrize(
    ("mode", "identity_full"), [("logical", False), ("logical", True), ("trigger", False), ("trigger", True)]
)
def test_unchanged_toast_values_keep_the_destination_values(
    mode: str,
    identity_full: bool,
    tmp_path: Path,
    pg_dsn: str,
    dest_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
) -> None:
    prepare_source(pg_dsn, identity_full)
    tables = list(COLUMNS)
    settings = capture_settings(mode, pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, tables)
    topics = [f"{topic_prefix}.{t}" for t in tables]
    with running_sink(kafka_bootstrap, dest_dsn, topics, f"{topic_prefix}-g"), running_capture(settings):
        wait_same_rows(pg_dsn, dest_dsn, tables)  # the snapshot
        # A key change keeps unchanged values only with whole rows (see the DLQ test below).
        changes(pg_dsn, key_change=identity_full or mode == "trigger")
        wait_same_rows(pg_dsn, dest_dsn, tables)
    for table, topic in zip(tables, topics, strict=True):
        unchanged = _placeholder_columns(kafka_bootstrap, topic)
        if mode == "logical" and not identity_full:
            # the first update of row 1 left every large value alone
            assert unchanged.get(1) == set(COLUMNS[table]), "the test must see unchanged-TOAST markers"
        else:
            assert unchanged == {}  # FULL: taken from the old row; trigger mode: whole rows


def _placeholder_columns(bootstrap: str, topic: str) -> dict[int, set[str]]:
    """Per row id, the columns of its first event that carries placeholders (checked per type)."""
    found: dict[int, set[str]] = {}
    for message in consume_all(bootstrap, [topic], idle_s=1.0, timeout_s=30):
        value = message.value()
        event = orjson.loads(value) if value else None
        after = (event or {}).get("after") or {}
        names = {name for name, v in after.items() if is_unavailable(v)}
        for name in names:
            typ = BIG[name].split("(")[0]
            array = typ.endswith("[]")
            pg_name = {"int": "int4", "bigint": "int8", "varchar": "varchar"}.get(
                typ.rstrip("[]"), typ.rstrip("[]")
            )
            assert after[name] == placeholder_for(("_" if array else "") + pg_name, array), name
        if names and after["id"] not in found:
            found[after["id"]] = names
    return found


def test_update_leaving_toast_unchanged_on_a_missing_row_goes_to_the_dlq(
    tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Without REPLICA IDENTITY FULL a key change (or a row the destination lost) leaves the sink an
    update without the large values and no row to keep them from: the record goes to the DLQ with
    the reason, and no row with NULLs in their place is written."""
    prepare_source(pg_dsn, identity_full=False)
    settings = capture_settings("logical", pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, [TABLE])
    topic = f"{topic_prefix}.{TABLE}"
    sink = running_sink(kafka_bootstrap, dest_dsn, [topic], f"{topic_prefix}-g")
    with sink as runner, running_capture(settings):
        wait_same_rows(pg_dsn, dest_dsn, [TABLE])
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {TABLE} SET id = 30 WHERE id = 3")
            conn.execute(f"UPDATE {TABLE} SET small = 99 WHERE id = 1")
        with psycopg.connect(dest_dsn, autocommit=True) as conn:
            conn.execute(f"DELETE FROM {TABLE} WHERE id = 2")  # the destination loses a row
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {TABLE} SET small = 22 WHERE id = 2")
        dlq = wait_until(lambda: _dead(runner, topic, 2), timeout_s=60)
    errors = sorted(error for _, error in dlq)
    assert [key for key, _ in sorted(dlq)] == [2, 30]
    assert all("no such row" in error and "REPLICA IDENTITY FULL" in error for error in errors), errors
    source = {row[0]: row for row in table_rows(pg_dsn, TABLE)}
    dest = {row[0]: row for row in table_rows(dest_dsn, TABLE)}
    assert dest[1] == source[1]  # the update of an existing row applied, large values kept
    assert 30 not in dest and 2 not in dest and 3 not in dest
    assert {k: v for k, v in dest.items()} == {k: v for k, v in source.items() if k not in (2, 30)}


def _dead(runner: Any, topic: str, count: int) -> list[tuple[int, str]] | None:
    records = read_dlq(runner.settings, [topic + ".dlq"])
    out = []
    for record in records:
        event = orjson.loads(record.value) if getattr(record, "value", None) else None
        out.append(((event or {}).get("after", {}).get("id"), getattr(record, "error", "")))
    return out if len(out) >= count else None


EMPLOYEES_TOAST_DDL = """
CREATE TABLE public.employees (
    emp_id int PRIMARY KEY, salary int, t text, b bytea, i int[], l bigint[], s text[], u uuid[], d date[],
    j jsonb, n numeric, h text
)
"""


@pytest.mark.parametrize("apply_method", ["copy", "executemany"])
def test_sink_keeps_the_value_for_every_placeholder_form(
    apply_method: str, kafka_bootstrap: str, topic_prefix: str, pg_dsn: str
) -> None:
    """Events as Debezium writes them (every form of the placeholder) update only the other columns."""
    from pg_support import Pipeline, change

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(EMPLOYEES_TOAST_DDL)
        conn.execute(
            "INSERT INTO employees VALUES (1, 10, 'text', '\\xdead', '{1,2}', '{3}', '{a}',"
            " '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', '{2000-01-01}', '{\"k\": 1}', 1.5, 'h')"
        )
        before = conn.execute("SELECT * FROM employees").fetchall()
    forms = {
        "t": placeholder_for("text", False),
        "b": placeholder_for("bytea", False),
        "i": placeholder_for("_int4", True),
        "l": placeholder_for("_int8", True),
        "s": placeholder_for("_text", True),
        "u": placeholder_for("_uuid", True),
        "d": placeholder_for("_date", True),
        "j": placeholder_for("jsonb", False),
        "n": placeholder_for("numeric", False),
        "h": '{"__debezium_unavailable_value":"__debezium_unavailable_value"}',  # hstore, json mode
    }
    pipe = Pipeline(kafka_bootstrap, topic_prefix, pg_dsn, apply_method=apply_method)
    try:
        pipe.start()
        pipe.send(change("u", None, {"emp_id": 1, "salary": 11, **forms}))
        # typed values beside the placeholders: jsonb and date[] assigned from parameters
        changed = {"j": '{"k": 2}', "d": [10957], "n": "2.5"}
        pipe.send(change("u", None, {"emp_id": 1, "salary": 12, **forms, **changed}))

        def salary() -> int:
            with psycopg.connect(pg_dsn) as conn:
                return conn.execute("SELECT salary FROM employees").fetchone()[0]  # type: ignore[index]

        wait_until(lambda: salary() == 12, timeout_s=60)
    finally:
        pipe.stop()
    with psycopg.connect(pg_dsn) as conn:
        after = conn.execute("SELECT * FROM employees").fetchall()
    names = ["emp_id", "salary", *forms]
    expected = dict(zip(names, before[0], strict=True))
    expected.update(salary=12, j={"k": 2}, d=[date(2000, 1, 1)], n=Decimal("2.5"))
    assert after == [tuple(expected.values())]
