"""The initial snapshot: every row of the captured tables as ``op: r`` events.

The caller opens the transaction that fixes what the snapshot sees (logical mode: the
slot's exported snapshot; trigger mode: a REPEATABLE READ transaction whose snapshot is
recorded beside the change log), so that streaming continues exactly where the snapshot
ends. Rows are read as their columns' text (the same text the stream carries) and converted by the
table's :class:`RowCodec`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import psycopg
from psycopg import sql

from walbridge import metrics
from walbridge.capture.catalog import RelationInfo
from walbridge.capture.connection import load_as_text
from walbridge.capture.publisher import EventPublisher
from walbridge.capture.rows import RowCodec, encode_text_rows
from walbridge.events import ChangeEvent, PreparedSource, Source

__all__ = ["SnapshotSource", "iter_table_batches", "snapshot_tables"]


@dataclass(frozen=True, slots=True)
class SnapshotSource:
    """What every snapshot event's ``source`` block says besides the table."""

    connector: str
    name: str
    db: str
    lsn: int | None = None
    tx_id: int | None = None


ProgressFn = Callable[[str, int, int | None, bool], None]
"""``progress(schema.table, rows read so far, estimated total or None, done)`` during a snapshot."""

_ESTIMATE_SQL = """
SELECT CASE WHEN bool_and(c.reltuples >= 0) THEN sum(c.reltuples)::bigint END
FROM pg_class c
WHERE (c.oid = %(oid)s AND c.relkind <> 'p')
   OR c.oid IN (SELECT relid FROM pg_partition_tree(%(oid)s::oid::regclass) WHERE isleaf)
"""


def estimate_rows(conn: psycopg.Connection[Any], oid: int) -> int | None:
    """The planner's row estimate of a table (partitions summed); None when never analyzed."""
    row = conn.execute(_ESTIMATE_SQL, {"oid": oid}).fetchone()
    return None if row is None or row[0] is None else int(row[0])


FETCH_ROWS = 2_000
"""Rows per round trip of a snapshot's server-side cursor, at most."""

FETCH_BYTES = 8 << 20
"""About this much text per round trip: wide rows (large text, bytea, JSON) are fetched fewer at a time."""

PROGRESS_ROWS = 5_000
"""A table's progress is reported each time its row count passes a multiple of this."""

_BATCHES_AHEAD = 1
"""Fetched batches waiting for the consumer; one more is being fetched meanwhile (memory: three batches)."""


def iter_table_batches(
    conn: psycopg.Connection[Any], codec: RowCodec
) -> Iterator[list[Sequence[str | None]]]:
    """The table's rows as their columns' text, in the codec's column order, a fetched batch at a time
    (in ``conn``'s transaction; no batch is empty).

    A server-side cursor whose rows libpq receives and psycopg's C loaders turn into text, a batch at
    a time: half the cost of a COPY, whose every row is a message of its own to parse in Python.
    A thread fetches up to :data:`_BATCHES_AHEAD` batches ahead, so that the server produces the
    next batch while this one is converted and published instead of in between."""
    rel = codec.relation
    query = sql.SQL("SELECT {cols} FROM {table}").format(
        cols=sql.SQL(", ").join(sql.Identifier(col.name) for col in rel.columns),
        table=sql.Identifier(rel.schema, rel.table),
    )
    handover: queue.Queue[list[Sequence[str | None]] | BaseException | None] = queue.Queue(_BATCHES_AHEAD)
    stopped = threading.Event()

    def hand_over(item: list[Sequence[str | None]] | BaseException | None) -> bool:
        while not stopped.is_set():
            try:
                handover.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            with conn.cursor(name=f"walbridge_snapshot_{rel.oid}") as cur:
                load_as_text(cur.adapters)
                cur.execute(query)
                size = 64
                while batch := cur.fetchmany(size):
                    size = _next_fetch(batch)
                    if not hand_over(batch):
                        return
        except BaseException as exc:  # handed to the consumer, which raises it
            hand_over(exc)
            return
        hand_over(None)

    fetcher = threading.Thread(target=fetch, name=f"snapshot-fetch-{rel.oid}", daemon=True)
    fetcher.start()
    try:
        while (item := handover.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopped.set()
        fetcher.join()


def _next_fetch(batch: list[Sequence[str | None]]) -> int:
    """Rows to fetch next, from the text width of the rows just fetched."""
    width = sum(map(len, filter(None, chain.from_iterable(batch)))) / len(batch) + 1
    return max(1, min(FETCH_ROWS, int(FETCH_BYTES / width)))


def _snapshot_flag(first_overall: bool, first_in_table: bool, last_in_table: bool, last_overall: bool) -> str:
    if first_overall:
        return "first"
    if last_overall:
        return "last"
    if first_in_table:
        return "first_in_data_collection"
    if last_in_table:
        return "last_in_data_collection"
    return "true"


def snapshot_tables(
    conn: psycopg.Connection[Any],
    codecs: Sequence[RowCodec],
    publisher: EventPublisher[Any],
    origin: SnapshotSource,
    progress: ProgressFn | None = None,
) -> int:
    """Publish every row of every table (in ``conn``'s current transaction); returns the row count."""
    total = 0
    ts_ms = time.time_ns() // 1_000_000
    estimates = {codec.relation.oid: estimate_rows(conn, codec.relation.oid) for codec in codecs}
    for table_index, codec in enumerate(codecs):
        rel = codec.relation
        name = f"{rel.schema}.{rel.table}"
        rows_metric = metrics.capture.snapshot_rows.labels(table=name)
        estimate = estimates[rel.oid]
        if progress is not None:
            progress(name, 0, estimate, False)
        last_table = table_index == len(codecs) - 1
        publish = _table_publisher(publisher, codec, origin, ts_ms)
        publish_middle = _middle_publisher(publisher, codec, origin, ts_ms, publish)
        # A table's first and last rows carry flags of their own: the last row of each batch waits for the
        # next batch (or the table's end) to say whether it is the table's last.
        held: Sequence[str | None] | None = None
        count = 0
        for batch in iter_table_batches(conn, codec):
            if held is not None:
                publish(_snapshot_flag(total + count == 0, count == 0, False, False), held)
                count += 1
            held = batch[-1]
            middle = batch[:-1]
            if count == 0 and middle:
                publish(_snapshot_flag(total == 0, True, False, False), middle[0])
                count += 1
                middle = middle[1:]
            reported = count // PROGRESS_ROWS
            publish_middle(middle)
            count += len(middle)
            publisher.poll(0)
            rows_metric.inc(len(batch))
            if progress is not None and count // PROGRESS_ROWS != reported:
                progress(name, count, estimate, False)
        if held is not None:
            publish(_snapshot_flag(total + count == 0, count == 0, True, last_table), held)
            count += 1
        total += count
        if progress is not None:
            progress(name, count, count, True)
    return total


def _source(origin: SnapshotSource, rel: RelationInfo, ts_ms: int, flag: str) -> Source:
    return Source(
        connector=origin.connector,
        name=origin.name,
        db=origin.db,
        schema=rel.schema,
        table=rel.table,
        ts_ms=ts_ms,
        snapshot=flag,
        tx_id=origin.tx_id,
        lsn=origin.lsn,
    )


def _middle_publisher(
    publisher: EventPublisher[Any],
    codec: RowCodec,
    origin: SnapshotSource,
    ts_ms: int,
    publish: Callable[[str, Sequence[str | None]], None],
) -> Callable[[Sequence[Sequence[str | None]]], None]:
    """``publish_middle(rows)`` for rows between a table's first and last (flag ``true``): encoded a batch
    at a time in one call where the encoding and the table allow, else ``publish("true", row)`` each."""
    prepared = publisher.prepare(_source(origin, codec.relation, ts_ms, "true"), codec.table_schema)
    plan = codec.text_rows_plan()
    if prepared is None or plan is None:

        def each(rows: Sequence[Sequence[str | None]]) -> None:
            for values in rows:
                publish("true", values)

        return each
    names, typed, key_names = plan
    parts, value_schema, key_schema = prepared.parts, prepared.value_schema, prepared.key_schema

    def batched(rows: Sequence[Sequence[str | None]]) -> None:
        records = encode_text_rows(rows, names, typed, key_names, parts, ts_ms, value_schema, key_schema)
        publisher.publish_spliced(prepared, records, lambda index: publish("true", rows[index]))

    return batched


def _table_publisher(
    publisher: EventPublisher[Any], codec: RowCodec, origin: SnapshotSource, ts_ms: int
) -> Callable[[str, Sequence[str | None]], None]:
    """``publish(flag, values)`` for one table's rows; the spliced fast path when the encoding allows."""
    rel = codec.relation
    prepared: dict[str, PreparedSource | None] = {}

    def source(flag: str) -> Source:
        return _source(origin, rel, ts_ms, flag)

    def publish(flag: str, values: Sequence[str | None]) -> None:
        after = codec.row_text(values)
        if flag not in prepared:
            prepared[flag] = publisher.prepare(source(flag), codec.table_schema)
        fast = prepared[flag]
        if fast is not None:
            publisher.publish_prepared(fast, "r", codec.key(after), None, after, 0, ts_ms)
        else:
            publisher.publish(
                ChangeEvent("r", source(flag), codec.key(after), None, after, ts_ms, codec.table_schema)
            )

    return publish
