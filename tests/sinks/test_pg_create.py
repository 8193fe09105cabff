"""Destination tables made from the source's definitions: ``walbridge setup --sink`` and ``auto_create``
without a schema block, each ending with the destination equal to the source (3 partitions)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import yaml

from helpers import run_cli, wait_until
from pipeline_support import capture_settings, running_capture, running_sink, wait_same_rows

SOURCE_DDL = """
CREATE SCHEMA shop;
CREATE TABLE shop.items (
    sku text, region char(2), price numeric(12, 2) NOT NULL, tags text[], added timestamptz,
    total numeric GENERATED ALWAYS AS (price * 2) STORED,
    PRIMARY KEY (sku, region)
);
CREATE TABLE shop.notes (id bigint PRIMARY KEY, body text);
"""


def _exists(dsn: str, table: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() != (None,)


def _columns(dsn: str, table: str) -> list[tuple[str, str, bool, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull, attgenerated::text "
            "FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum",
            (table,),
        ).fetchall()


def test_setup_sink_creates_destination_tables_like_the_source(
    pg_dsn: str, dest_dsn: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SOURCE_DDL)
        conn.execute("CREATE TYPE shop.mood AS ENUM ('ok', 'sad')")
        conn.execute("ALTER TABLE shop.notes ADD COLUMN m shop.mood")
    config = tmp_path / "walbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"dsn": "env:SRC_DSN", "tables": ["shop.items", "shop.notes"]},
                "sinks": [
                    {
                        "type": "postgres",
                        "name": "replica",
                        "dsn": "env:DEST_DSN",
                        "topics": ["x.shop.items"],
                        "table_map": {"shop.notes": "archive.notes"},
                    }
                ],
            }
        )
    )
    env = {"SRC_DSN": pg_dsn, "DEST_DSN": dest_dsn}
    code, out, err = run_cli("setup", "--config", str(config), "--sink", "replica", env=env)
    assert code == 2 and "uses type shop.mood, which the destination does not have" in err, (out, err)
    with psycopg.connect(dest_dsn) as conn:  # nothing was created
        assert conn.execute("SELECT to_regclass('shop.items')").fetchone() == (None,)
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shop; CREATE TYPE shop.mood AS ENUM ('ok', 'sad')")
    code, out, err = run_cli("setup", "--config", str(config), "--sink", "replica", env=env)
    assert code == 0, err
    assert "created destination table shop.items" in out and "created destination table archive.notes" in out
    assert _columns(dest_dsn, "shop.items") == _columns(pg_dsn, "shop.items")
    assert _columns(dest_dsn, "archive.notes") == _columns(pg_dsn, "shop.notes")
    with psycopg.connect(dest_dsn) as conn:
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'shop.items'::regclass "
            "AND contype = 'p'"
        ).fetchone()
    assert key == ("PRIMARY KEY (sku, region)",)
    code, out, _ = run_cli("setup", "--config", str(config), "--sink", "replica", env=env)
    assert code == 0 and "nothing to do" in out


def test_auto_create_without_a_schema_block_reads_the_source(
    pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SOURCE_DDL)
        conn.execute(
            "INSERT INTO shop.items (sku, region, price, tags, added) "
            "SELECT 's' || g, 'eu', g * 1.25, ARRAY['a', 'b' || g], now() FROM generate_series(1, 40) g"
        )
        conn.execute("INSERT INTO shop.notes SELECT g, 'n' || g FROM generate_series(1, 20) g")
    tables = ["shop.items", "shop.notes"]
    settings = capture_settings("logical", pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, tables)
    topics = [f"{topic_prefix}.{t}" for t in tables]
    with (
        running_capture(settings),
        running_sink(kafka_bootstrap, dest_dsn, topics, topic_prefix, source_dsn=pg_dsn, auto_create=True),
    ):
        wait_until(lambda: all(_exists(dest_dsn, t) for t in tables), 60)
        wait_same_rows(pg_dsn, dest_dsn, tables)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE shop.items SET price = price + 1 WHERE region = 'eu' AND sku < 's2'")
            conn.execute("DELETE FROM shop.notes WHERE id % 3 = 0")
        wait_same_rows(pg_dsn, dest_dsn, tables)
    assert _columns(dest_dsn, "shop.items") == _columns(pg_dsn, "shop.items")
