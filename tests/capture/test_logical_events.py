"""Logical capture event semantics: PK change, TRUNCATE, excluded columns, partitions, heartbeat query."""

from __future__ import annotations

from pathlib import Path

import psycopg
from confluent_kafka.admin import AdminClient

from capture_support import RunningCapture, make_settings
from helpers import consume_all, json_or_none, wait_until
from walbridge.capture.logical import LogicalCapture


def test_pk_change_truncate_and_excluded_columns(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.accounts (id int PRIMARY KEY, owner text, secret text)")
        conn.execute("CREATE TABLE walbridge_hb (id int PRIMARY KEY, at timestamptz)")
        conn.execute("INSERT INTO walbridge_hb VALUES (1, now())")
    settings = make_settings(
        pg_dsn,
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        ["public.accounts"],
        exclude_columns=["public.accounts.secret"],
        heartbeat_ms=300,
        heartbeat_action_query="UPDATE walbridge_hb SET at = now() WHERE id = 1",
    )
    with RunningCapture(LogicalCapture(settings)), psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.accounts VALUES (1, 'ann', 's3cret')")
        conn.execute("UPDATE public.accounts SET id = 2 WHERE id = 1")
        conn.execute("TRUNCATE public.accounts")
        topic = f"{topic_prefix}.public.accounts"
        messages = consume_all(kafka_bootstrap, [topic], min_count=5)
        first = conn.execute("SELECT at FROM walbridge_hb").fetchone()[0]
        wait_until(lambda: conn.execute("SELECT at FROM walbridge_hb").fetchone()[0] > first, timeout_s=15)
    by_offset = sorted(messages, key=lambda m: (m.partition(), m.offset()))
    events = [(json_or_none(m.key()), json_or_none(m.value())) for m in by_offset]
    ops = [(key, value["op"] if value else None) for key, value in events]
    # the PK change: delete + tombstone under the old key, create under the new key; TRUNCATE: op t, null key
    assert ({"id": 1}, "c") in ops and ({"id": 1}, "d") in ops and ({"id": 1}, None) in ops
    assert ({"id": 2}, "c") in ops and (None, "t") in ops
    old_key = [op for key, op in ops if key == {"id": 1}]
    assert old_key == ["c", "d", None]
    for _key, value in events:
        if value and value["after"]:
            assert "secret" not in value["after"]
    truncate = next(value for key, value in events if value and value["op"] == "t")
    assert truncate["before"] is None and truncate["after"] is None
    partitions = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(topic, timeout=10)
    assert len(partitions.topics[topic].partitions) == 3
