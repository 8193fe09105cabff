"""The incremental snapshot's chunk bookkeeping on a real database, the stream played by the test: which
streamed changes drop which rows read, for the chunk waiting for its close watermark and for the next
one, read ahead in the reader thread while the current one's window is still open.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from walbridge.capture import signals
from walbridge.capture.incremental import READ_AHEAD, Chunk, IncrementalSnapshot
from walbridge.capture.rows import RowCodec
from walbridge.capture.values import TypeRegistry, ValueOptions
from walbridge.pgcatalog import read_table

SIGNAL = "public.wb_signal"
CHUNK = 4


@pytest.fixture
def snapshot(pg_dsn: str) -> Iterator[IncrementalSnapshot]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("INSERT INTO public.items SELECT g, g FROM generate_series(1, 10) g")
        conn.execute(
            "CREATE TABLE public.wb_signal (id varchar(42) PRIMARY KEY, type varchar(32), data text)"
        )
        relation = read_table(conn, "public", "items")
        assert relation is not None
        codec = RowCodec(relation, TypeRegistry(), ValueOptions())
        inc = IncrementalSnapshot(
            pg_dsn, "slot_chunks", SIGNAL, CHUNK, lambda name: codec if name == "public.items" else None,
            lambda: ["public.items"],
        )  # fmt: skip
        inc.start(conn, ["public.items"])
    try:
        yield inc
    finally:
        inc.close()


def _first_chunk_read(inc: IncrementalSnapshot) -> Chunk:
    """Start the snapshot; its first chunk once read (not taken: no tick since)."""
    inc.tick()
    first = inc.chunk
    assert first is not None
    _read(first)
    return first


def _read(chunk: Chunk) -> None:
    """Wait until the reader thread has read the chunk and written its close watermark."""
    chunk.read.result(timeout=30)


def _open(inc: IncrementalSnapshot, chunk: Chunk) -> None:
    assert inc.on_signal({"id": f"{chunk.id}-open", "type": signals.WINDOW_OPEN, "data": "{}"}, 0) is None


def _close(inc: IncrementalSnapshot, chunk: Chunk) -> list[int]:
    closed = inc.on_signal({"id": f"{chunk.id}-close", "type": signals.WINDOW_CLOSE, "data": "{}"}, 0)
    assert closed is chunk
    return sorted(row["id"] for _key, row in closed.rows())


def _new_xid(dsn: str) -> int:
    """The xid of a transaction begun now: after every snapshot taken so far."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        return int(row[0]) & 0xFFFFFFFF


def test_changes_heard_while_a_chunk_is_read_apply_once_its_rows_are_in(
    snapshot: IncrementalSnapshot, pg_dsn: str
) -> None:
    inc = snapshot
    inc.tick()
    first = inc.chunk
    assert first is not None and first.buffer is None
    _read(first)
    # Not taken yet (no tick): the stream's changes are noted, as they would be during the read.
    inc.seen({"id": 2}, 3)  # before the window, from a transaction the read saw: the row read stands
    _open(inc, first)
    inc.seen({"id": 3}, 3)  # in the window: the stream's state is the newer one
    assert first.buffer is None and len(first.heard) == 2
    assert _close(inc, first) == [1, 2, 4]
    assert inc.progress.tables[0].last_key == ["4"]


def test_the_next_chunks_are_read_ahead_and_keep_windows_of_their_own(
    snapshot: IncrementalSnapshot, pg_dsn: str
) -> None:
    inc = snapshot
    assert READ_AHEAD == 3
    inc.tick()  # the first chunks, read one after the other by the reader thread
    first, second, third = inc.chunks
    _open(inc, first)
    inc.seen({"id": 1}, 3)  # first's window: dropped from first
    inc.seen({"id": 6}, 3)  # second's row, before second's window, seen by its read: kept
    _read(second)
    inc.seen({"id": 7}, _new_xid(pg_dsn))  # a transaction begun after second's read: its row is stale
    inc.tick()
    assert first.buffer is not None and second.buffer is not None and not second.heard
    assert _close(inc, first) == [2, 3, 4]
    # Unless the third was taken (and is the table's last), a fourth read was queued as the first closed.
    assert inc.chunks[:2] == [second, third] and len(inc.chunks) == (2 if third.final else 3)
    _open(inc, second)
    inc.seen({"id": 8}, 3)
    assert _close(inc, second) == [5, 6]
    assert inc.progress.tables[0].last_key == ["8"]
    _read(third)
    _open(inc, third)
    assert _close(inc, third) == [9, 10]  # fewer than a chunk: the table is done
    assert not inc.active and not inc.chunks
    assert inc.progress.rows == 7 and inc.progress.chunks == 3


def test_a_truncate_heard_during_the_read_empties_the_chunk(snapshot: IncrementalSnapshot) -> None:
    inc = snapshot
    first = _first_chunk_read(inc)
    inc.seen(None, 3)
    _open(inc, first)
    assert _close(inc, first) == []


def test_a_close_watermark_of_a_chunk_not_waited_for_is_ignored(snapshot: IncrementalSnapshot) -> None:
    inc = snapshot
    first = _first_chunk_read(inc)
    stale: Any = {"id": "0000-close", "type": signals.WINDOW_CLOSE, "data": "{}"}
    assert inc.on_signal(stale, 0) is None
    assert inc.chunk is first


def test_a_chunk_read_leaves_no_warning(snapshot: IncrementalSnapshot, pg_dsn: str) -> None:
    """Its statements go in one query: each COMMIT ends a transaction begun explicitly."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items SELECT g, g FROM generate_series(11, 40) g")
    notices: list[str] = []
    inc = snapshot
    first = _first_chunk_read(inc)
    reader = inc._reader_conn
    assert reader is not None
    reader.add_notice_handler(lambda diag: notices.append(f"{diag.severity}: {diag.message_primary}"))
    _open(inc, first)
    _close(inc, first)  # queues the next read, on the same connection
    fourth = inc.chunks[-1]
    _read(fourth)
    assert fourth.read.result() is not None
    assert not notices, notices
