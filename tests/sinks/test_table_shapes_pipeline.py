"""Generated columns, ALTER TABLE with schema blocks, and a non-UTF-8 source, in both capture modes.

Each runs capture → Kafka (3 partitions) → PostgreSQL sink and compares the destination with the
source by SQL, row for row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg import sql

from helpers import consume_all, with_dbname
from pipeline_support import MODES, capture_settings, running_capture, running_sink, wait_same_rows
from walbridge.dev.devstack import drop_database


def execute(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def events(bootstrap: str, topic: str) -> list[dict]:
    return [orjson.loads(m.value()) for m in consume_all(bootstrap, [topic], idle_s=1.0) if m.value()]


GENERATED_DDL = """
CREATE TABLE public.priced (
    id int PRIMARY KEY,
    price numeric(10, 2) NOT NULL,
    qty int NOT NULL,
    total numeric GENERATED ALWAYS AS (price * qty) STORED,
    label text GENERATED ALWAYS AS ('#' || id || ' x' || qty) STORED
)
"""


@pytest.mark.parametrize("mode", MODES)
def test_generated_columns_are_computed_by_the_destination(
    mode: str, tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Neither the snapshot nor the stream sends generated columns (pgoutput does not); the sink never
    writes them (a GENERATED ALWAYS column cannot be written), the destination computes them."""
    execute(
        pg_dsn,
        GENERATED_DDL,
        "INSERT INTO priced (id, price, qty) SELECT g, g * 1.5, g FROM generate_series(1, 20) g",
    )
    execute(dest_dsn, GENERATED_DDL)
    table = "public.priced"
    topic = f"{topic_prefix}.{table}"
    settings = capture_settings(mode, pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, [table])
    with running_sink(kafka_bootstrap, dest_dsn, [topic], f"{topic_prefix}-g"), running_capture(settings):
        wait_same_rows(pg_dsn, dest_dsn, [table])
        execute(
            pg_dsn,
            "UPDATE priced SET qty = qty + 1 WHERE id % 3 = 0",
            "DELETE FROM priced WHERE id % 5 = 0",
            "INSERT INTO priced (id, price, qty) VALUES (100, 9.99, 3), (101, 0.01, 7)",
        )
        wait_same_rows(pg_dsn, dest_dsn, [table])
    seen = events(kafka_bootstrap, topic)
    assert {e["op"] for e in seen} == {"r", "c", "u", "d"}
    for event in seen:
        for row in (event["before"], event["after"]):
            assert row is None or not {"total", "label"} & row.keys(), event


@pytest.mark.parametrize("mode", MODES)
def test_schema_block_follows_alter_table(
    mode: str, tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    ddl = "CREATE TABLE public.shaped (id int PRIMARY KEY, a text, gone int)"
    execute(pg_dsn, ddl, "INSERT INTO shaped VALUES (1, 'one', 1), (2, 'two', 2)")
    execute(dest_dsn, ddl)
    table = "public.shaped"
    topic = f"{topic_prefix}.{table}"
    settings = capture_settings(
        mode, pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, [table], events={"schemas_enable": True}
    )
    group = f"{topic_prefix}-g"
    with running_capture(settings), running_sink(kafka_bootstrap, dest_dsn, [topic], group):
        execute(
            pg_dsn,
            "INSERT INTO shaped VALUES (3, 'three', 3)",
            "DELETE FROM shaped WHERE id < 4",
            "INSERT INTO shaped VALUES (4, 'four', 4)",
        )
        wait_same_rows(pg_dsn, dest_dsn, [table])
        # The same running sink: it reads the destination table again when events bring a new column.
        execute(dest_dsn, "ALTER TABLE shaped ADD COLUMN b bigint, DROP COLUMN gone")
        execute(
            pg_dsn,
            "ALTER TABLE shaped ADD COLUMN b bigint, DROP COLUMN gone",
            "INSERT INTO shaped VALUES (5, 'five', 5000000000)",
            "UPDATE shaped SET b = 44 WHERE id = 4",
            "DELETE FROM shaped WHERE id = 5",
            "INSERT INTO shaped VALUES (6, 'six', 6)",
        )
        wait_same_rows(pg_dsn, dest_dsn, [table])
    seen = events(kafka_bootstrap, topic)
    fields: dict[object, list[str]] = {}  # the after-struct's fields of each row's first event
    for event in seen:
        after = event["payload"]["after"]
        struct = next(f for f in event["schema"]["fields"] if f["field"] == "after")
        fields.setdefault(after["id"] if after else "deleted", [f["field"] for f in struct["fields"]])
    assert fields[1] == fields[4] == ["id", "a", "gone"]
    assert fields[5] == fields[6] == ["id", "a", "b"], fields


LATIN1_WORDS = ["café", "Ñandú", "Grüße", "½ ¾ © ®", "naïve façade", "ÿ"]


@pytest.fixture
def latin1_dsn(pg_admin_dsn: str) -> Iterator[str]:
    name = f"latin1_{uuid.uuid4().hex[:10]}"
    create = "CREATE DATABASE {} ENCODING 'LATIN1' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(create).format(sql.Identifier(name)))
    try:
        yield with_dbname(pg_admin_dsn, name)
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.mark.parametrize("mode", MODES)
def test_non_utf8_source_round_trips(
    mode: str, tmp_path: Path, latin1_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    ddl = "CREATE TABLE public.words (id int PRIMARY KEY, wort text, tags text[], doc jsonb, c char(6))"
    execute(latin1_dsn, ddl)
    execute(dest_dsn, ddl)
    with psycopg.connect(latin1_dsn, autocommit=True) as conn:
        assert conn.execute("SHOW server_encoding").fetchone() == ("LATIN1",)
        for n, word in enumerate(LATIN1_WORDS[:3]):
            conn.execute(
                "INSERT INTO words VALUES (%s, %s, %s, %s, %s)",
                (n, word, [word, "ü"], f'{{"w": "{word}"}}', word[:6]),
            )
    table = "public.words"
    topic = f"{topic_prefix}.{table}"
    settings = capture_settings(mode, latin1_dsn, kafka_bootstrap, topic_prefix, tmp_path, [table])
    with running_sink(kafka_bootstrap, dest_dsn, [topic], f"{topic_prefix}-g"), running_capture(settings):
        wait_same_rows(latin1_dsn, dest_dsn, [table])
        with psycopg.connect(latin1_dsn, autocommit=True) as conn:
            for n, word in enumerate(LATIN1_WORDS, start=10):
                conn.execute(
                    "INSERT INTO words VALUES (%s, %s, %s, %s, %s)",
                    (n, word, [word, "é"], f'{{"w": "{word}"}}', word[:6]),
                )
            conn.execute("UPDATE words SET wort = wort || ' ñ' WHERE id = 0")
        wait_same_rows(latin1_dsn, dest_dsn, [table])
    with psycopg.connect(dest_dsn) as conn:
        assert conn.execute("SELECT wort FROM words WHERE id = 0").fetchone() == ("café ñ",)
