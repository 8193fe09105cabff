"""Trigger-mode capture against a real PostgreSQL and broker: setup, events, resume, schema changes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from helpers import consume_all, json_or_none, wait_until
from walbridge.capture.trigger import (
    TriggerCapture,
    TriggerPosition,
    check_trigger_capture,
    install_trigger_capture,
    load_position,
    next_position,
    uninstall_trigger_capture,
)
from walbridge.config import Settings, load_settings
from walbridge.errors import ConfigError, DecodeError, WalbridgeError

TYPES_DDL = """
CREATE TABLE items (
    id int PRIMARY KEY, name text, price numeric(10,2), ratio float8, born date,
    seen timestamptz, at_local timestamp, span interval, tags text[], doc jsonb, flag bool, raw bytea
)
"""
ROW = (
    "'widget', 12.50, 0.1, '2024-02-29', '2024-03-01 12:34:56.789+02', '2024-03-01 01:02:03.5', "
    "'1 day 02:00:00', '{a,\"b c\"}', '{\"k\": [1, 2]}', true, '\\x0102'"
)


def make_settings(dsn: str, bootstrap: str, prefix: str, tables: list[str], **source: Any) -> Settings:
    return load_settings(
        source={"mode": "trigger", "dsn": dsn, "tables": tables, "poll_interval_ms": 50, **source},
        kafka={"bootstrap_servers": bootstrap, "partitions": 1},
        events={"topic_prefix": prefix},
    )


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@contextmanager
def running(settings: Settings) -> Iterator[TriggerCapture]:
    """Run a capture in a thread; re-raise its error on exit."""
    capture = TriggerCapture(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            capture.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        wait_until(lambda: capture.ready.is_set() or errors, timeout_s=30)
        yield capture
    finally:
        stop.set()
        thread.join(30)
        if errors:  # raised here too when the body failed: the capture's error is often the cause
            raise errors[0]


def run_expecting_error(settings: Settings, timeout_s: float = 20.0) -> WalbridgeError:
    """Run a capture in this thread until it fails (or ``timeout_s`` passes: then the test fails)."""
    stop = threading.Event()
    timer = threading.Timer(timeout_s, stop.set)
    timer.start()
    try:
        TriggerCapture(settings).run(stop)
    except WalbridgeError as exc:
        return exc
    finally:
        timer.cancel()
    raise AssertionError(f"capture ran {timeout_s}s without an error")


def values(bootstrap: str, topic: str, count: int) -> list[dict[str, Any] | None]:
    messages = consume_all(bootstrap, [topic], min_count=count, idle_s=0.5, timeout_s=30)
    return [json_or_none(m.value()) for m in messages]


def test_next_position_pages_and_closes_interval() -> None:
    start = TriggerPosition("10:12:10")
    rows: list[Any] = [type("R", (), {"id": i})() for i in (3, 7)]
    assert next_position(start, "15:15:", rows, 9) == TriggerPosition("10:12:10", "15:15:", 9)
    assert next_position(start, "15:15:", rows[:1], None) == TriggerPosition("15:15:")
    assert next_position(start, "15:15:", rows, None).rows == 2


def test_setup_is_idempotent_and_teardown_removes_everything(pg_dsn: str) -> None:
    execute(pg_dsn, "CREATE TABLE a (id int PRIMARY KEY, v text)", "CREATE TABLE b (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, "unused:9092", "p", ["public.a", "public.b"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        first = install_trigger_capture(conn, settings)
        assert any("created schema walbridge" in step for step in first)
        assert install_trigger_capture(conn, settings) == []
        assert check_trigger_capture(conn, settings, installed=True) == []
        conn.execute("INSERT INTO a VALUES (1, 'x')")
        logged = conn.execute("SELECT op, after FROM walbridge.change_log").fetchall()
        assert logged == [("c", {"id": "1", "v": "x"})]
        assert uninstall_trigger_capture(conn, settings)
        assert conn.execute("SELECT to_regnamespace('walbridge')").fetchone() == (None,)
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'walbridge%'").fetchone()
        assert triggers == (0,)
        problems = check_trigger_capture(conn, settings, installed=True)
        assert [p.found for p in problems] == ["not installed"]


def test_setup_names_missing_table_and_privilege(pg_dsn: str) -> None:
    execute(
        pg_dsn,
        "CREATE TABLE owned (id int PRIMARY KEY)",
        "DROP ROLE IF EXISTS wb_weak",
        "CREATE ROLE wb_weak LOGIN PASSWORD 'weak'",
        "GRANT SELECT ON owned TO wb_weak",
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        missing = make_settings(pg_dsn, "unused:9092", "p", ["public.owned", "public.nope"])
        with pytest.raises(ConfigError, match=r"public\.nope"):
            install_trigger_capture(conn, missing)
    weak_dsn = psycopg.conninfo.make_conninfo(pg_dsn, user="wb_weak", password="weak")
    try:
        with psycopg.connect(weak_dsn, autocommit=True) as weak:
            settings = make_settings(weak_dsn, "unused:9092", "p", ["public.owned"])
            with pytest.raises(ConfigError) as info:
                install_trigger_capture(weak, settings)
        message = str(info.value)
        assert "TRIGGER privilege on public.owned" in message
        assert "CREATE privilege on database" in message
    finally:
        execute(pg_dsn, "DROP OWNED BY wb_weak", "DROP ROLE wb_weak")


def test_events_match_snapshot_encoding_and_debezium_shape(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    execute(pg_dsn, TYPES_DDL, f"INSERT INTO items VALUES (1, {ROW})")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.items"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    topic = f"{topic_prefix}.public.items"
    with running(settings):
        execute(
            pg_dsn,
            f"INSERT INTO items VALUES (2, {ROW})",
            "UPDATE items SET name = 'gadget' WHERE id = 2",
            "UPDATE items SET id = 3 WHERE id = 2",
            "DELETE FROM items WHERE id = 1",
            "TRUNCATE items",
        )
        got = values(kafka_bootstrap, topic, 9)
    ops = [(v["op"] if v else None) for v in got]
    assert ops == ["r", "c", "u", "d", None, "c", "d", None, "t"]
    snap, created, updated = got[0], got[1], got[2]
    assert snap is not None and created is not None and updated is not None
    # The snapshot reads COPY text and the trigger stores hstore text: the same values either way.
    assert {**snap["after"], "id": 2} == created["after"]
    assert updated["before"] == created["after"]
    assert updated["after"]["name"] == "gadget"
    source = created["source"]
    assert source["connector"] == "postgresql-trigger"
    assert source["lsn"] is None and source["txId"] > 0 and source["change_id"] > 0
    assert created["after"]["seen"].startswith("2024-03-01T10:34:56.789")  # converted from UTC text


def test_statement_triggers_log_every_row_of_bulk_writes(pg_dsn: str) -> None:
    """Inserts are logged per statement from its transition table: every row, in order, with excluded
    columns left out, also when a column is named like the trigger's aliases or variables."""
    execute(
        pg_dsn,
        "CREATE TABLE bulk (id int PRIMARY KEY, n text, o text, excluded text, rel_name text, secret text)",
    )
    settings = make_settings(
        pg_dsn, "unused:9092", "p", ["public.bulk"], exclude_columns=["public.bulk.secret"]
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
        kinds = conn.execute(
            "SELECT tgname, (tgtype & 1) = 1 FROM pg_trigger WHERE tgrelid = 'bulk'::regclass ORDER BY 1"
        ).fetchall()
        assert kinds == [
            ("walbridge_capture", True),
            ("walbridge_capture_insert", False),
            ("walbridge_capture_truncate", False),
        ]
        conn.execute("INSERT INTO bulk SELECT g, 'n' || g, 'o', 'x', 'r', 's' FROM generate_series(1, 500) g")
        conn.execute("UPDATE bulk SET n = 'changed' WHERE id = 7")
        conn.execute("DELETE FROM bulk WHERE id > 490")
        logged = conn.execute("SELECT op, before, after FROM walbridge.change_log ORDER BY id").fetchall()
    assert [op for op, _, _ in logged] == ["c"] * 500 + ["u"] + ["d"] * 10
    row = {"id": "1", "n": "n1", "o": "o", "excluded": "x", "rel_name": "r"}
    assert logged[0] == ("c", None, row)
    assert [after["id"] for _, _, after in logged[:500]] == [str(i) for i in range(1, 501)]
    assert logged[500][1:] == ({**row, "id": "7", "n": "n7"}, {**row, "id": "7", "n": "changed"})
    assert sorted(int(before["id"]) for _, before, _ in logged[501:]) == list(range(491, 501))
    assert all(after is None and "secret" not in before for _, before, after in logged[501:])


def test_delete_on_a_table_with_inheritance_children_logs_its_own_rows_only(pg_dsn: str) -> None:
    """A DELETE on an inheritance parent also deletes its children's rows; only the parent's own rows are
    changes of the captured parent (the child, captured or not, is a table of its own)."""
    execute(pg_dsn, "CREATE TABLE animal (id int PRIMARY KEY, name text)")
    execute(pg_dsn, "CREATE TABLE dog (good boolean) INHERITS (animal)")
    settings = make_settings(pg_dsn, "unused:9092", "p", ["public.animal"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
        conn.execute("INSERT INTO animal VALUES (1, 'cat'), (2, 'cow')")
        conn.execute("INSERT INTO dog VALUES (1, 'rex', true), (3, 'fido', true)")
        conn.execute("DELETE FROM animal WHERE id IN (1, 3)")
        logged = conn.execute(
            "SELECT table_name, op, coalesce(after, before) ->> 'name' FROM walbridge.change_log ORDER BY id"
        ).fetchall()
    assert logged == [("animal", "c", "cat"), ("animal", "c", "cow"), ("animal", "d", "cat")]


def test_setup_converts_an_installation_of_row_triggers(pg_dsn: str) -> None:
    """Earlier versions logged inserts with the row trigger: capture asks for setup, which converts the
    table to the statement insert trigger (each change logged once)."""
    execute(pg_dsn, "CREATE TABLE old_style (id int PRIMARY KEY, v text)")
    settings = make_settings(pg_dsn, "unused:9092", "p", ["public.old_style"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
        conn.execute("DROP TRIGGER walbridge_capture_insert ON old_style")
        conn.execute("DROP TRIGGER walbridge_capture ON old_style")
        conn.execute(
            "CREATE TRIGGER walbridge_capture AFTER INSERT OR UPDATE OR DELETE ON old_style "
            "FOR EACH ROW EXECUTE FUNCTION walbridge.capture_change()"
        )
        problems = check_trigger_capture(conn, settings, installed=True)
        assert [p.found for p in problems] == ["disabled or incomplete"]
        done = install_trigger_capture(conn, settings)
        assert any("walbridge_capture_insert" in step for step in done)
        assert check_trigger_capture(conn, settings, installed=True) == []
        conn.execute("INSERT INTO old_style VALUES (1, 'a'), (2, 'b')")
        conn.execute("UPDATE old_style SET v = 'c' WHERE id = 1")
        conn.execute("DELETE FROM old_style WHERE id = 2")
        logged = conn.execute("SELECT op FROM walbridge.change_log ORDER BY id").fetchall()
    assert [op for (op,) in logged] == ["c", "c", "u", "d"]


def test_restart_resumes_without_duplicates_and_retention_empties_log(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    execute(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v int)")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.t"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    topic = f"{topic_prefix}.public.t"
    with running(settings):
        execute(pg_dsn, "INSERT INTO t SELECT g, 0 FROM generate_series(1, 50) g")
        values(kafka_bootstrap, topic, 50)
    execute(pg_dsn, "INSERT INTO t SELECT g, 0 FROM generate_series(51, 80) g")
    with running(settings) as capture:
        got = values(kafka_bootstrap, topic, 80)
        wait_until(lambda: capture.published_rows >= 30)
    assert sorted(v["after"]["id"] for v in got if v) == list(range(1, 81))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM walbridge.change_log").fetchone() == (0,)
        position = load_position(conn, settings.source.slot)
        assert position is not None and position.hi is None


def test_table_without_primary_key_gets_null_keys(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    execute(pg_dsn, "CREATE TABLE loose (v text)", "CREATE TABLE other (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.loose"], snapshot="never")
    another = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.other"])
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        steps = install_trigger_capture(conn, settings)
        install_trigger_capture(conn, another)  # another capture's table shares the change log
    assert any("no primary key" in step for step in steps)
    execute(pg_dsn, "INSERT INTO loose VALUES ('a')", "INSERT INTO other VALUES (1)", "DELETE FROM loose")
    with running(settings):
        messages = consume_all(kafka_bootstrap, [f"{topic_prefix}.public.loose"], min_count=2, idle_s=0.5)
    assert [m.key() for m in messages] == [None, None]
    assert [json_or_none(m.value())["op"] for m in messages] == ["c", "d"]
    assert consume_all(kafka_bootstrap, [f"{topic_prefix}.public.other"], idle_s=0.5, timeout_s=3) == []


def test_renamed_column_stops_capture_with_a_clear_error(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    execute(pg_dsn, "CREATE TABLE r (id int PRIMARY KEY, old_name text)")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.r"], snapshot="never")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    execute(pg_dsn, "INSERT INTO r VALUES (1, 'x')", "ALTER TABLE r RENAME COLUMN old_name TO new_name")
    error = run_expecting_error(settings)
    assert isinstance(error, DecodeError)
    assert "renamed or dropped" in str(error) and "old_name" in str(error)


def test_dropped_table_stops_capture_with_a_clear_error(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    execute(pg_dsn, "CREATE TABLE gone (id int PRIMARY KEY)", "CREATE TABLE kept (id int PRIMARY KEY)")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.*"], snapshot="never")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    execute(pg_dsn, "INSERT INTO gone VALUES (1)", "DROP TABLE gone")
    error = run_expecting_error(settings)
    assert isinstance(error, ConfigError)
    assert "public.gone, which no longer exists" in str(error)


def test_same_scenario_gives_identical_events_in_logical_and_trigger_mode(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    from walbridge.capture.logical import LogicalCapture

    execute(
        pg_dsn, TYPES_DDL, "ALTER TABLE items REPLICA IDENTITY FULL", f"INSERT INTO items VALUES (1, {ROW})"
    )
    trigger = make_settings(pg_dsn, kafka_bootstrap, f"{topic_prefix}t", ["public.items"])
    logical = load_settings(
        source={
            "dsn": pg_dsn,
            "tables": ["public.items"],
            "slot": f"s{topic_prefix}",
            "replica_identity_full": True,
        },
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 1},
        events={"topic_prefix": f"{topic_prefix}l"},
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, trigger)
    stop = threading.Event()
    capture = LogicalCapture(logical)
    thread = threading.Thread(target=capture.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(capture.ready.is_set, timeout_s=30)
        with running(trigger):
            execute(
                pg_dsn,
                f"INSERT INTO items VALUES (2, {ROW})",
                "UPDATE items SET name = 'x', price = 99.99, tags = '{}', doc = NULL WHERE id = 2",
                "UPDATE items SET id = 3 WHERE id = 2",
                "BEGIN; DELETE FROM items WHERE id = 1; INSERT INTO items (id, name) VALUES (1, 'y'); COMMIT",
                "DELETE FROM items WHERE id = 3",
            )
            got_trigger = values(kafka_bootstrap, f"{topic_prefix}t.public.items", 11)
        got_logical = values(kafka_bootstrap, f"{topic_prefix}l.public.items", 11)
    finally:
        stop.set()
        thread.join(30)
        execute(pg_dsn, f"SELECT pg_drop_replication_slot('s{topic_prefix}')")

    def shape(events: list[dict[str, Any] | None]) -> list[tuple[Any, ...]]:
        return [(v["op"], v["before"], v["after"]) if v else None for v in events]  # type: ignore[misc]

    assert len(got_trigger) == 11  # r, c, u, d + tombstone, c, d + tombstone, c, d + tombstone
    assert shape(got_trigger) == shape(got_logical)
