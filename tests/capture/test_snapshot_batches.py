"""The snapshot publishes a batch of rows at a time: each table's first and last rows keep their flags
across the fetch batches (the first batch is 64 rows, the next ones larger), on the batch encoder and on
the row-at-a-time path (excluded columns), and a row too large for Kafka in the middle of a batch still
stops capture naming it. Events are read back from Kafka (3 partitions)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from capture_support import make_settings
from helpers import consume_all, json_or_none
from walbridge import pgcatalog
from walbridge.capture import catalog
from walbridge.capture.publisher import EventPublisher
from walbridge.capture.rows import RowCodec
from walbridge.capture.snapshot import SnapshotSource, snapshot_tables
from walbridge.capture.values import ValueOptions
from walbridge.errors import RecordTooLarge

ROWS = {"many": 150, "none": 0, "one": 1}


def _tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, count in ROWS.items():
            conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, note text, secret text)")
            conn.execute(
                f"INSERT INTO public.{name} SELECT g, 'n' || g, 's' FROM generate_series(1, {count}) g"
            )


def _snapshot(
    dsn: str, publisher: EventPublisher[Any], order: list[str], exclude: tuple[str, ...] = ()
) -> int:
    with psycopg.connect(dsn) as conn:
        registry = catalog.load_type_registry(conn)
        codecs = []
        for name in order:
            relation = pgcatalog.read_table(conn, "public", name)
            assert relation is not None
            codecs.append(RowCodec(relation, registry, ValueOptions(), exclude))
        publisher.ensure_topics(("public", name) for name in order)
        count = snapshot_tables(conn, codecs, publisher, SnapshotSource("postgresql", "test", "db"))
    publisher.flush()
    return count


def _flags(bootstrap: str, prefix: str, order: list[str]) -> dict[str, dict[int, str]]:
    """Per table: row id → its snapshot flag."""
    expected = sum(ROWS[name] for name in order)
    topics = [f"{prefix}.public.{name}" for name in order]
    messages = consume_all(bootstrap, topics, min_count=expected, idle_s=0.5)
    flags: dict[str, dict[int, str]] = {name: {} for name in order}
    for message in messages:
        value = json_or_none(message.value())
        assert value["op"] == "r"
        flags[value["source"]["table"]][value["after"]["id"]] = value["source"]["snapshot"]
    assert sum(map(len, flags.values())) == len(messages) == expected
    return flags


@pytest.mark.parametrize("exclude", [(), ("secret",)], ids=["batch-encoder", "row-path"])
@pytest.mark.parametrize("order", [["many", "none", "one"], ["one", "none", "many"]])
def test_first_and_last_rows_keep_their_flags_across_batches(
    pg_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    order: list[str],
    exclude: tuple[str, ...],
) -> None:
    _tables(pg_dsn)
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, [f"public.{n}" for n in order])
    assert _snapshot(pg_dsn, EventPublisher(settings), order, exclude) == 151
    flags = _flags(kafka_bootstrap, topic_prefix, order)
    many = flags["many"]
    assert sorted(many) == list(range(1, 151))
    assert Counter(many.values())["true"] == 148
    if order[0] == "many":
        assert (many[1], many[150], flags["one"]) == ("first", "last_in_data_collection", {1: "last"})
    else:
        assert (flags["one"], many[1], many[150]) == ({1: "first"}, "first_in_data_collection", "last")


def test_a_row_too_large_in_the_middle_of_a_batch_stops_naming_it(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    _tables(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE public.many SET note = repeat('x', 20000) WHERE id = 100")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.many"])
    publisher: EventPublisher[Any] = EventPublisher(settings)
    publisher.max_bytes = 10_000
    with pytest.raises(RecordTooLarge) as caught:
        _snapshot(pg_dsn, publisher, ["many"])
    assert "public.many" in caught.value.message and '{"id":100}' in caught.value.message
