"""Every built-in type with ordinary and edge values: capture → Kafka (3 partitions) → PostgreSQL sink,
in both capture modes; the destination equals the source, compared by SQL row for row (``verify``).

Logical mode runs ``decimal.handling.mode=precise`` (numeric NaN/±Infinity by name, base64 decimals),
trigger mode walbridge's default ``string``: together they cover every decimal encoding the sink reads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest

import type_matrix
from helpers import scratch_database, wait_until
from type_matrix import SENTINEL_ID, TABLE, TABLES
from walbridge.capture.logical import LogicalCapture
from walbridge.capture.trigger import TriggerCapture, install_trigger_capture
from walbridge.config import Settings, load_settings
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.verify import verify_tables

pytestmark = pytest.mark.timeout(240)


class Databases(NamedTuple):
    source: str
    dest: str
    version: int
    """server_version_num"""
    xml: bool
    """whether the server has the xml type (built with libxml)"""


def _execute(dsn: str, statements: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def databases(pg_admin_dsn: str) -> Iterator[Databases]:
    """Source and destination with the matrix schema; the source with its snapshot rows."""
    with scratch_database(pg_admin_dsn, "tm_src") as source, scratch_database(pg_admin_dsn, "tm_dst") as dest:
        with psycopg.connect(source) as conn:
            version, xml = conn.info.server_version, type_matrix.xml_supported(conn)
        _execute(source, type_matrix.schema_statements(version, xml=xml))
        _execute(source, type_matrix.snapshot_statements(version, xml=xml))
        _execute(dest, type_matrix.schema_statements(version, xml=xml))
        yield Databases(source, dest, version, xml)


def _settings(
    source: str, dest: str, bootstrap: str, prefix: str, tmp: Path, **source_options: Any
) -> Settings:
    ident = prefix.replace("-", "_")
    events: dict[str, Any] = {"topic_prefix": prefix, **type_matrix.EVENTS_OPTIONS}
    if source_options.get("mode") != "trigger":
        events |= {"decimal_handling_mode": "precise", "schemas_enable": True}  # the sink needs the scales
    return load_settings(
        source={"dsn": source, "tables": list(TABLES), "slot": ident, "publication": ident, **source_options},
        events=events,
        kafka={"bootstrap_servers": bootstrap, "partitions": 3, "session_timeout_ms": 6000},
        sinks=[
            {
                "type": "postgres",
                "dsn": dest,
                "topics": [f"{prefix}.{table}" for table in TABLES],
                "group_id": f"g-{prefix}",
                "linger_ms": 50,
            }
        ],
        metrics={"enabled": False},
        state_dir=str(tmp / "state"),
    )


def _run(capture: Any, settings: Settings, dbs: Databases) -> None:
    source, dest = dbs.source, dbs.dest
    stop = threading.Event()
    errors: list[BaseException] = []

    def run_capture() -> None:
        try:
            capture.run(stop)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    sink_settings = settings.sink("postgres")
    runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)
    threads = [
        threading.Thread(target=run_capture, daemon=True),
        threading.Thread(target=runner.run, args=(stop,), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: capture.ready.is_set() or errors, timeout_s=60)
        assert not errors, errors
        _execute(source, type_matrix.change_statements(dbs.version, xml=dbs.xml))
        last: list[Any] = []

        def clean() -> bool:
            assert not errors, errors
            diffs = verify_tables(source, dest, [(table, table) for table in TABLES])
            last[:] = [diffs, runner.status()]
            return all(diff.clean for diff in diffs)

        try:
            wait_until(clean, timeout_s=90, interval_s=1)
        except AssertionError as exc:
            different = [(diff.source, key) for diff in last[0] for key in diff.different] if last else []
            columns = _column_differences(source, dest, different)
            raise AssertionError(f"source and destination differ: {last}; columns: {columns}") from exc
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    with psycopg.connect(dest) as conn:
        assert conn.execute(f"SELECT txt FROM {TABLE} WHERE id = {SENTINEL_ID}").fetchone() == ("the end",)


def _column_differences(source: str, dest: str, keys: list[tuple[str, Any]]) -> list[tuple[Any, ...]]:
    """(id, column, source value, destination value) of each differing value, for the failure message."""
    out: list[tuple[Any, ...]] = []
    with psycopg.connect(source) as src, psycopg.connect(dest) as dst:
        for table, (key,) in keys:
            query = f"SELECT to_jsonb(r) FROM (SELECT * FROM {table} WHERE id = %s) r"
            left = src.execute(query, (key,)).fetchone()[0]  # type: ignore[index]
            right = dst.execute(query, (key,)).fetchone()[0]  # type: ignore[index]
            out += [
                (key, name, value, right.get(name))
                for name, value in left.items()
                if right.get(name) != value
            ]
    return out


def test_type_matrix_round_trips_in_logical_mode(
    databases: Databases,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, dest = databases.source, databases.dest
    settings = _settings(source, dest, kafka_bootstrap, topic_prefix, tmp_path)
    caplog.set_level(logging.WARNING, logger="walbridge")
    caplog.set_level(logging.INFO, logger="walbridge.sinks")
    _run(LogicalCapture(settings), settings, databases)
    assert "cannot convert" not in caplog.text  # no value fell back to text
    assert "matrix.scalars refused" not in caplog.text  # the sink's SQL fast path took every value


def test_type_matrix_round_trips_in_trigger_mode(
    databases: Databases,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, dest = databases.source, databases.dest
    settings = _settings(
        source, dest, kafka_bootstrap, topic_prefix, tmp_path, mode="trigger", poll_interval_ms=50
    )
    with psycopg.connect(source, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    caplog.set_level(logging.WARNING, logger="walbridge")
    caplog.set_level(logging.INFO, logger="walbridge.sinks")
    _run(TriggerCapture(settings), settings, databases)
    assert "cannot convert" not in caplog.text
    assert "matrix.scalars refused" not in caplog.text
