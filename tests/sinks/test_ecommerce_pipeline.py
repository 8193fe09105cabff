"""The seed's ecommerce schema end to end: logical capture → Kafka → PostgreSQL sink, on the fast path."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psycopg
import pytest

from capture_support import RunningCapture, make_settings
from helpers import scratch_database, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.config import load_settings
from walbridge.dev.samples import ECOMMERCE_CHANGES, ECOMMERCE_SCHEMA
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.verify import verify_tables

TABLES = ["inventory.customers", "inventory.orders"]


def test_ecommerce_replicates_without_falling_back(
    tmp_path: Path,
    pg_admin_dsn: str,
    pg_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with scratch_database(pg_admin_dsn, "dest") as dest:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(ECOMMERCE_SCHEMA)
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute(ECOMMERCE_SCHEMA.split("INSERT INTO")[0])
            conn.execute("ALTER TABLE inventory.orders DROP CONSTRAINT orders_customer_id_fkey")
        capture_settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, TABLES)
        sink_settings = load_settings(
            kafka={"bootstrap_servers": kafka_bootstrap, "session_timeout_ms": 6000},
            sinks=[
                {
                    "type": "postgres",
                    "dsn": dest,
                    "topics": [f"{topic_prefix}.{t}" for t in TABLES],
                    "group_id": f"g-{topic_prefix}",
                    "linger_ms": 50,
                }
            ],
            metrics={"enabled": False},
        )
        pg_sink = sink_settings.sink("postgres")
        stop = threading.Event()
        runner = SinkRunner(PostgresSink(pg_sink), sink_settings, pg_sink)
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        caplog.set_level(logging.INFO, logger="walbridge")
        with RunningCapture(LogicalCapture(capture_settings)):
            thread.start()
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                for statement in ECOMMERCE_CHANGES:
                    conn.execute(statement)

            def clean() -> bool:
                return all(d.clean for d in verify_tables(pg_dsn, dest, [(t, t) for t in TABLES]))

            try:
                wait_until(clean, timeout_s=60)
            finally:
                stop.set()
                thread.join(30)
        assert "one by one" not in caplog.text, caplog.text


def test_one_batch_deleting_in_one_table_and_upserting_in_another(pg_dsn: str) -> None:
    """Regression: the JSON stages are shared by the tables of a batch; rows left by one table's
    deletes must not be applied as rows of the next table (they were, as all-null rows)."""
    from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source, decode_record
    from walbridge.sinks.base import SinkRecord

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.a (id int PRIMARY KEY, v text)")
        conn.execute(
            "CREATE TABLE public.b (id int PRIMARY KEY, v text)"
        )  # nullable: corruption would be silent
        conn.execute("INSERT INTO public.a VALUES (7, 'gone')")
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="p"))

    def record(table: str, op: str, row: dict[str, object], offset: int) -> SinkRecord:
        source = Source("postgresql", "p", "db", "public", table, 0)
        before, after = (row, None) if op == "d" else (None, row)
        encoded = encoder.encode(ChangeEvent(op, source, {"id": row["id"]}, before, after))[0]
        event = decode_record(encoded.topic, encoded.key, encoded.value)
        return SinkRecord(encoded.topic, 0, offset, encoded.key, encoded.value, None, 0, event)

    settings = load_settings(sinks=[{"type": "postgres", "dsn": pg_dsn}]).sink("postgres")
    sink = PostgresSink(settings)
    sink.open()
    try:
        batch = [record("a", "d", {"id": 7, "v": "gone"}, 0), record("b", "c", {"id": 1, "v": "kept"}, 1)]
        assert sink.write_batch(batch) == []
        sink.commit({("p.public.a", 0): 1, ("p.public.b", 0): 2})
    finally:
        sink.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT id, v FROM public.b ORDER BY id").fetchall() == [(1, "kept")]
        assert conn.execute("SELECT count(*) FROM public.a").fetchone()[0] == 0
