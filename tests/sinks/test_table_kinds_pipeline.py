"""Partitioned tables and REPLICA IDENTITY USING INDEX end to end: capture → Kafka (3 partitions) →
PostgreSQL sink, in both capture modes, each destination table compared with its source by SQL.

- ``public.parted``: partitioned by region; captured as one table (one topic) in snapshot and stream;
  a cross-partition update, a partition created and one attached while capture runs, one detached.
- ``public.idx_t``: a primary key ``id`` and ``REPLICA IDENTITY USING INDEX`` on ``code``: events are
  keyed by ``code`` (what a delete's old row carries); deletes, a ``code`` change and an ``id`` change
  all apply.
- ``public.nopk``: no primary key, ``REPLICA IDENTITY USING INDEX`` on ``code``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capture_support import RunningCapture, make_settings
from helpers import consume_all, json_or_none, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.capture.trigger import TriggerCapture, install_trigger_capture
from walbridge.config import Settings, load_settings
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner

TABLES = ["public.parted", "public.idx_t", "public.nopk"]

SOURCE_SCHEMA = """
CREATE TABLE public.parted (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE public.parted_eu PARTITION OF public.parted FOR VALUES IN ('eu');
CREATE TABLE public.parted_us PARTITION OF public.parted FOR VALUES IN ('us');
INSERT INTO public.parted
    SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g FROM generate_series(1, 20) g;
CREATE TABLE public.idx_t (id int PRIMARY KEY, code text NOT NULL, v int);
CREATE UNIQUE INDEX idx_t_code ON public.idx_t (code);
ALTER TABLE public.idx_t REPLICA IDENTITY USING INDEX idx_t_code;
INSERT INTO public.idx_t SELECT g, 'c' || g, g FROM generate_series(1, 10) g;
CREATE TABLE public.nopk (code text NOT NULL, v int);
CREATE UNIQUE INDEX nopk_code ON public.nopk (code);
ALTER TABLE public.nopk REPLICA IDENTITY USING INDEX nopk_code;
INSERT INTO public.nopk SELECT 'n' || g, g FROM generate_series(1, 10) g;
"""

DEST_SCHEMA = """
CREATE TABLE public.parted (id int, region text, v int, PRIMARY KEY (id, region));
CREATE TABLE public.idx_t (id int PRIMARY KEY, code text NOT NULL UNIQUE, v int);
CREATE TABLE public.nopk (code text NOT NULL UNIQUE, v int);
"""

CHANGES = (
    "INSERT INTO public.parted VALUES (100, 'eu', 1), (101, 'us', 1)",
    "UPDATE public.parted SET v = v + 1000 WHERE id <= 5",
    "UPDATE public.parted SET region = 'eu' WHERE id = 7",  # moves the row to another partition
    "DELETE FROM public.parted WHERE id IN (2, 3)",
    "CREATE TABLE public.parted_asia PARTITION OF public.parted FOR VALUES IN ('asia')",
    "INSERT INTO public.parted VALUES (200, 'asia', 2)",
    "CREATE TABLE public.parted_sa (LIKE public.parted)",
    "ALTER TABLE public.parted ATTACH PARTITION public.parted_sa FOR VALUES IN ('sa')",
    "INSERT INTO public.parted VALUES (300, 'sa', 3)",
    "UPDATE public.parted SET v = 301 WHERE id = 300",
    "UPDATE public.idx_t SET v = v + 100 WHERE id <= 3",
    "UPDATE public.idx_t SET code = 'renamed' WHERE id = 4",  # the replica identity changes
    "UPDATE public.idx_t SET id = 50 WHERE id = 5",  # the primary key changes, the identity does not
    "DELETE FROM public.idx_t WHERE id IN (6, 7)",
    "INSERT INTO public.idx_t VALUES (60, 'c6', 6)",  # the deleted row's identity again
    "UPDATE public.nopk SET v = -v WHERE code IN ('n1', 'n2')",
    "UPDATE public.nopk SET code = 'n3x' WHERE code = 'n3'",
    "DELETE FROM public.nopk WHERE code IN ('n4', 'n5')",
)

SELECTS = {
    "public.parted": "SELECT id, region, v FROM public.parted ORDER BY id, region",
    "public.idx_t": "SELECT id, code, v FROM public.idx_t ORDER BY id",
    "public.nopk": "SELECT code, v FROM public.nopk ORDER BY code",
}


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(SELECTS[table]).fetchall()  # type: ignore[arg-type]


def same(source: str, dest: str) -> bool:
    return all(table_rows(source, t) == table_rows(dest, t) for t in TABLES)


@pytest.fixture
def dest_dsn(dest_dsn: str) -> str:
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute(DEST_SCHEMA)
    return dest_dsn


def sink_runner(bootstrap: str, prefix: str, dest: str) -> tuple[SinkRunner, Settings]:
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "session_timeout_ms": 6000},
        sinks=[
            {
                "type": "postgres",
                "dsn": dest,
                "topics": [f"{prefix}.{t}" for t in TABLES],
                "group_id": f"g-{prefix}",
                "linger_ms": 50,
            }
        ],
        metrics={"enabled": False},
    )
    pg_sink = settings.sink("postgres")
    return SinkRunner(PostgresSink(pg_sink), settings, pg_sink), settings


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_partitioned_and_identity_index_tables_round_trip(
    mode: str, tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SOURCE_SCHEMA)
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, TABLES, mode=mode)
    if mode == "trigger":
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            install_trigger_capture(conn, settings)
        capture: Any = TriggerCapture(settings)
    else:
        capture = LogicalCapture(settings)
    runner, _ = sink_runner(kafka_bootstrap, topic_prefix, dest_dsn)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    try:
        with RunningCapture(capture):
            thread.start()
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                for statement in CHANGES:
                    conn.execute(statement)  # type: ignore[arg-type]
            wait_until(lambda: same(pg_dsn, dest_dsn), timeout_s=60)

            # A detached partition leaves the partitioned table: its later changes are not captured.
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                conn.execute("ALTER TABLE public.parted DETACH PARTITION public.parted_sa")
                conn.execute("INSERT INTO public.parted_sa VALUES (301, 'sa', 0)")
                conn.execute("INSERT INTO public.parted VALUES (400, 'asia', 4)")
            wait_until(lambda: (400, "asia", 4) in table_rows(dest_dsn, "public.parted"), timeout_s=30)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(30)
    dest_parted = table_rows(dest_dsn, "public.parted")
    assert (301, "sa", 0) not in dest_parted
    # The detached partition's rows stay in the destination (no row change removed them at the source).
    source_parted = [*table_rows(pg_dsn, "public.parted"), (300, "sa", 301)]
    assert sorted(dest_parted) == sorted(source_parted)
    for table in ("public.idx_t", "public.nopk"):
        assert table_rows(dest_dsn, table) == table_rows(pg_dsn, table)

    # One topic per partitioned table, never one per partition; identity-index tables keyed by it.
    topics = [f"{topic_prefix}.{t}" for t in TABLES]
    messages = consume_all(kafka_bootstrap, topics, min_count=40, idle_s=1.0)
    assert {m.topic() for m in messages} == set(topics)
    keys = {m.topic().rsplit(".", 1)[1]: json_or_none(m.key()) for m in messages}
    assert set(keys["idx_t"]) == {"code"} and set(keys["nopk"]) == {"code"}
    assert set(keys["parted"]) == {"id", "region"}
