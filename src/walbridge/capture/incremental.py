"""Incremental snapshots: DBLog's watermark chunks, as Debezium runs them, beside the change stream.

A table is read in primary-key chunks (``source.incremental_chunk_size`` rows, Debezium's default
1024), each in a short transaction of its own, while streaming goes on. For each chunk:

1. an open watermark row is committed into the signal table;
2. the chunk is read (``key > last key AND key <= the table's largest key at its start``, ordered by
   key, with the signal's filter) in a REPEATABLE READ transaction that also notes its snapshot;
3. a close watermark row is committed; the rows wait in a buffer.

The stream then reaches the open watermark (the window opens), the changes committed meanwhile, and
the close watermark. A streamed change of a buffered key while the window is open drops that key from
the buffer (the stream carries a state at least as new); so does one from a transaction the read's
snapshot did not see (closes the gap where a transaction commits just before the open watermark but
becomes visible just after the read began). At the close watermark the rest of the buffer is
published as ``op: r`` events with ``source.snapshot: "incremental"``, inside the close watermark's
transaction: the slot confirms past it only once they are acknowledged. So the snapshot never
publishes a row state older than one already streamed for that key.

The next chunk is read ahead, by a thread of its own, right after the current one: while the stream
carries the current one's window and its rows are published, the database's work for the next one
goes on. The next chunk's window follows the current one's in the stream (its open watermark is
committed after the current close watermark), and each chunk keeps its own window. A chunk is known
to the capture before its open watermark is written; the changes streamed while it is still being
read are noted and applied to its rows once they are in (:attr:`Chunk.heard`).

Progress (tables left, last key, filter, paused) is recorded in the source
(:func:`walbridge.capture.state.save_incremental`) once the stream position that holds it is
confirmed; after a restart the snapshot resumes from the last confirmed chunk, and a signal the
stream replays from before that point is not acted on twice.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg import sql

from walbridge import metrics
from walbridge.capture import signals
from walbridge.capture import state as snapshot_state
from walbridge.capture.connection import connect_source, text_values
from walbridge.capture.rows import RowCodec
from walbridge.capture.snapshot import ProgressFn, estimate_rows
from walbridge.errors import WalbridgeError
from walbridge.pgerrors import map_pg_error, one_line

__all__ = ["Chunk", "IncrementalSnapshot", "Progress", "TableTask"]

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass
class TableTask:
    table: str
    filter: str | None = None
    last_key: list[str | None] | None = None
    max_key: list[str | None] | None = None
    rows: int = 0
    estimate: int | None = None


@dataclass
class Progress:
    """What is persisted: the tables left (the first one in progress) and where the stream stood."""

    tables: list[TableTask] = field(default_factory=list)
    paused: bool = False
    lsn: int = 0
    """The stream position (end of a transaction) this progress holds at."""
    rows: int = 0
    chunks: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Progress:
        tables = [TableTask(**task) for task in data.get("tables", [])]
        return cls(
            tables,
            bool(data.get("paused")),
            int(data.get("lsn", 0)),
            data.get("rows", 0),
            data.get("chunks", 0),
        )


KeyedRow = tuple[dict[str, Any] | None, Row]
"""A row read, with its event key."""

READ_AHEAD = 3
"""Chunks read (or being read) and waiting for their close watermark at once: the current one and the
next two. Enough that the stream does not wait for the reader."""

Key = list[str | None]
"""A primary key as the text of its columns."""


@dataclass
class ChunkRead:
    """What a chunk's read (in the reader thread) found."""

    rows: list[Any]
    """Each a sequence of the columns' text (or None), in the codec's column order."""
    last_key: list[str | None] | None
    invisible: frozenset[int]
    xmax: int
    max_key: list[str | None] | None
    estimate: int | None


ChunkStart = tuple[Key | None, Key | None] | Future[ChunkRead | None]
"""Where a chunk's read starts: (after this key, up to this key), or where the read before it ends."""


@dataclass
class Chunk:
    """One chunk: being read, then waiting for its close watermark in the stream."""

    id: str
    codec: RowCodec
    read: Future[ChunkRead | None]
    window_open: bool = False
    buffer: list[KeyedRow] | None = None
    """The rows read; None while the read is not taken yet."""
    dropped: set[bytes] = field(default_factory=set)
    """Event keys (JSON) whose rows the stream overtook."""
    cleared: bool = False
    """The table was truncated: no row read stands."""
    last_key: list[str | None] | None = None
    final: bool = False
    invisible: frozenset[int] = frozenset()
    xmax: int = 0
    heard: list[tuple[bytes | None, int, bool]] = field(default_factory=list)
    """Changes streamed before the read was taken: (event key or None for a truncate, xid, window open)."""

    def rows(self) -> list[KeyedRow]:
        """The rows to publish at the close watermark: those the stream did not overtake. (Keys are
        encoded only when the stream overtook some: in a bulk snapshot, mostly none.)"""
        assert self.buffer is not None, "a chunk closes only once its rows are in"
        if self.cleared:
            return []
        if not self.dropped:
            return self.buffer
        return [(key, row) for key, row in self.buffer if orjson.dumps(key) not in self.dropped]


class IncrementalSnapshot:
    """The chunk algorithm, independent of how changes are captured.

    The capture calls :meth:`tick` when it may start a chunk, :meth:`seen` for every streamed change
    of :attr:`chunk_oid`'s table, :meth:`on_signal` for every row inserted into the signal table,
    :meth:`committed` at every transaction end and :meth:`confirmed` when a position is confirmed.
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        signal_table: str,
        chunk_size: int,
        codec_for: Callable[[str], RowCodec | None],
        captured: Callable[[], list[str]],
        progress_fn: ProgressFn | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.signal_table = signal_table
        self.chunk_size = chunk_size
        self.codec_for = codec_for
        self.captured = captured
        self.progress_fn = progress_fn
        self.progress = Progress()
        self.chunks: list[Chunk] = []
        """Chunks of the table in progress, in stream order: being read or waiting for their close."""
        self.chunk_oid = 0
        """The relation oid whose streamed changes :meth:`seen` must hear about (0: none)."""
        self._dirty = False
        self._unsaved: list[tuple[int, dict[str, Any]]] = []
        self._conn: psycopg.Connection[Any] | None = None
        """Progress records (the capture's thread)."""
        self._reader_conn: psycopg.Connection[Any] | None = None
        """Watermarks and chunk reads (the reader thread)."""
        self._reader: ThreadPoolExecutor | None = None
        self._reading: Future[ChunkRead | None] | None = None
        """The read last submitted; the reader's connection is busy until it is done."""
        self._key_types: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ lifecycle

    def load(self, conn: psycopg.Connection[Any]) -> None:
        data = snapshot_state.load_incremental(conn, self.slot)
        self.progress = Progress.from_json(data) if data else Progress()
        self._drop_chunks()
        self._unsaved.clear()
        if self.progress.tables:
            names = ", ".join(task.table for task in self.progress.tables)
            log.info("incremental snapshot resumes: %s", names)
        self._gauge()

    def start(self, conn: psycopg.Connection[Any], tables: list[str]) -> None:
        """Queue these tables (``source.snapshot: incremental``) and record it at once."""
        self.load(conn)
        self._queue([(name, None) for name in tables])
        snapshot_state.save_incremental(conn, self.slot, self.progress.to_json())
        self._dirty = False

    def close(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None
            self._reading = None
        for conn in (self._conn, self._reader_conn):
            if conn is not None:
                conn.close()
        self._conn = self._reader_conn = None

    @property
    def active(self) -> bool:
        return bool(self.progress.tables)

    @property
    def chunk(self) -> Chunk | None:
        """The chunk whose close watermark the stream reaches next."""
        return self.chunks[0] if self.chunks else None

    def status(self) -> dict[str, Any]:
        return {
            "tables_remaining": [task.table for task in self.progress.tables],
            "paused": self.progress.paused,
            "rows": self.progress.rows,
            "chunks": self.progress.chunks,
        }

    # ------------------------------------------------------------------ chunks

    def tick(self) -> None:
        """Take a finished read; start the next one when a chunk is owed and the reader is free."""
        try:
            self._take_finished()
            self._queue_reads()
        except psycopg.Error as exc:
            self._close_reader()
            if (exc.sqlstate or "")[:2] in _REFUSED_READS and self.progress.tables:
                # A signal's filter (or a table dropped since): that table only, not capture, stops.
                task = self.progress.tables[0]
                where = f" where {task.filter}" if task.filter else ""
                log.warning("incremental snapshot of %s%s skipped: %s", task.table, where, one_line(exc))
                self._drop_chunks()
                self._finish_table()
                return
            raise map_pg_error(exc, "reading an incremental snapshot chunk") from exc

    def _queue_reads(self) -> None:
        while self._may_read():
            self._submit()

    def _may_read(self) -> bool:
        if not self.progress.tables or self.progress.paused or len(self.chunks) >= READ_AHEAD:
            return False
        if not self.chunks:  # a read of chunks dropped since must be done: the reader is free
            return self._reading is None or self._reading.done()
        newest = self.chunks[-1]
        return newest.buffer is None or not newest.final

    def _submit(self) -> None:
        """Register the next chunk (before its open watermark exists) and queue its read; the reader
        thread reads the chunks in order, each from where the one before ended."""
        task = self.progress.tables[0]
        codec = self.codec_for(task.table)
        if codec is None:
            log.warning("incremental snapshot: %s is not captured; skipped", task.table)
            self._finish_table()
            return
        ident = str(uuid.uuid4())
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="incremental-read")
        newest = self.chunks[-1] if self.chunks else None
        if newest is None:
            start: ChunkStart = (task.last_key, task.max_key)
        elif newest.buffer is not None:
            start = (newest.last_key, task.max_key)
        else:
            start = newest.read  # where it ends, once read
        self._reading = self._reader.submit(self._read, ident, codec, task.filter, start)
        self.chunks.append(Chunk(ident, codec, self._reading))
        self.chunk_oid = codec.relation.oid

    def _take_finished(self) -> None:
        for chunk in list(self.chunks):
            if chunk in self.chunks and chunk.buffer is None and chunk.read.done():
                self._take(chunk)

    def _take(self, chunk: Chunk) -> None:
        """The chunk's rows are in: note them, and drop the keys the stream carried meanwhile."""
        found = chunk.read.result()  # waits only when the close watermark overtook the thread
        task = self.progress.tables[0]
        if found is None:
            place = self.chunks.index(chunk)
            if place:  # the chunk before it was the table's last
                del self.chunks[place:]
            else:  # nothing in the table to read
                self._drop_chunks()
                self._finish_table()
            return
        if task.max_key is None:
            task.max_key, task.estimate = found.max_key, found.estimate
            self._report(task, False)
        place = self.chunks.index(chunk)
        before = self.chunks[place - 1].last_key if place else task.last_key
        codec = chunk.codec
        buffer: list[KeyedRow] = []
        for values in found.rows:
            row = codec.row_text(values)
            buffer.append((codec.key(row), row))
        chunk.buffer = buffer
        chunk.last_key = found.last_key if found.last_key is not None else before
        chunk.final = len(found.rows) < self.chunk_size
        chunk.invisible, chunk.xmax = found.invisible, found.xmax
        for heard_key, xid, window_open in chunk.heard:
            _drop_seen(chunk, heard_key, xid, window_open)
        chunk.heard.clear()

    def _read(self, ident: str, codec: RowCodec, where: str | None, start: ChunkStart) -> ChunkRead | None:
        """In the reader thread: open watermark, the chunk's rows, close watermark (None: no rows left)."""
        if isinstance(start, Future):
            before = start.result()  # done: the reader runs the reads in order
            if before is None or len(before.rows) < self.chunk_size:
                return None
            after, max_key = before.last_key, before.max_key
        else:
            after, max_key = start
        conn = self._reader_connection()
        estimate = None
        if max_key is None:
            max_key = self._max_key(conn, codec, where)
            estimate = estimate_rows(conn, codec.relation.oid)
            if max_key is None:
                return None
        # The open watermark committed, the chunk read in a REPEATABLE READ transaction begun after it,
        # the close watermark committed: several statements in one simple query, one round trip.
        # (Each COMMIT ends an explicit BEGIN: one of a statement's implicit transaction warns in the log.)
        opening = sql.SQL(
            "BEGIN; {}; COMMIT; "
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT pg_current_snapshot()::text"
        ).format(self._watermark(f"{ident}-open", signals.WINDOW_OPEN, "openWindowTimestamp"))
        closing = sql.SQL("COMMIT; {}").format(
            self._watermark(f"{ident}-close", signals.WINDOW_CLOSE, "closeWindowTimestamp")
        )
        if not where:
            query = self._chunk_query(conn, codec, where, after, max_key, sql.Literal(self.chunk_size))
            snapshot, rows = _selected(conn.execute(sql.SQL("{}; {}; {}").format(opening, query, closing)), 2)
        else:
            # A filter is a signal's text: read with a parameter, so in the extended protocol, where the
            # server takes one statement only (a filter that ends the query and begins another fails).
            (snapshot,) = _selected(conn.execute(opening), 1)
            query = self._chunk_query(conn, codec, where, after, max_key, sql.Placeholder())
            rows = conn.execute(query, (self.chunk_size,)).fetchall()
            conn.execute(closing)
        invisible, xmax = _snapshot_xids(snapshot[0][0] if snapshot else "0:0:")
        positions = [codec.relation.columns.index(col) for col in self._key_cols(codec)]
        log.debug("chunk %s of %s: %d rows after %s", ident, codec.relation.qualified_name, len(rows), after)
        last_key = [rows[-1][i] for i in positions] if rows else None
        return ChunkRead(rows, last_key, invisible, xmax, max_key, estimate)

    def _drop_chunks(self) -> None:
        """Forget the chunks in progress: reads not begun are cancelled; one running finishes unheard
        (its watermarks are not known any more)."""
        for chunk in self.chunks:
            chunk.read.cancel()
        self.chunks.clear()
        self.chunk_oid = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect_source(self.dsn)
        return self._conn

    def _reader_connection(self) -> psycopg.Connection[Any]:
        if self._reader_conn is None or self._reader_conn.closed:
            self._reader_conn = connect_source(self.dsn, context=text_values())
        return self._reader_conn

    def _close_reader(self) -> None:
        """After a failed read (the reader is idle: its read is done)."""
        if self._reader_conn is not None:
            self._reader_conn.close()
            self._reader_conn = None

    def _watermark(self, ident: str, kind: str, stamp: str) -> sql.Composed:
        """The INSERT of a watermark row into the signal table."""
        schema, table = signals.split_name(self.signal_table)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data = orjson.dumps({stamp: now}).decode()
        return sql.SQL("INSERT INTO {} (id, type, data) VALUES ({}, {}, {})").format(
            sql.Identifier(schema, table), sql.Literal(ident), sql.Literal(kind), sql.Literal(data)
        )

    def _key_cols(self, codec: RowCodec) -> list[Any]:
        wanted = codec.relation.key_columns
        return [col for name in wanted for col in codec.relation.columns if col.name == name]

    def _types(self, conn: psycopg.Connection[Any], codec: RowCodec) -> list[str]:
        rel = codec.relation
        name = rel.qualified_name
        if name not in self._key_types:
            found = dict(
                conn.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = %s AND attnum > 0",
                    (rel.oid,),
                ).fetchall()
            )
            self._key_types[name] = [found[col] for col in rel.key_columns]
        return self._key_types[name]

    def _key_row(
        self, conn: psycopg.Connection[Any], codec: RowCodec, values: list[str | None]
    ) -> sql.Composable:
        cast = [
            sql.SQL("{}::{}").format(sql.Literal(value), sql.SQL(kind))
            for value, kind in zip(values, self._types(conn, codec), strict=True)
        ]
        return sql.SQL("ROW({})").format(sql.SQL(", ").join(cast))

    def _key_expr(self, codec: RowCodec) -> sql.Composable:
        return sql.SQL("ROW({})").format(
            sql.SQL(", ").join(sql.Identifier(col) for col in codec.relation.key_columns)
        )

    def _max_key(
        self, conn: psycopg.Connection[Any], codec: RowCodec, where: str | None
    ) -> list[str | None] | None:
        rel = codec.relation
        query = sql.SQL("SELECT {cols} FROM {table}{where} ORDER BY {order} LIMIT %s").format(
            cols=sql.SQL(", ").join(
                sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(f"k{i}"))
                for i, c in enumerate(rel.key_columns)
            ),
            table=sql.Identifier(rel.schema, rel.table),
            where=sql.SQL(" WHERE ({})").format(sql.SQL(where)) if where else sql.SQL(""),
            order=sql.SQL(", ").join(sql.SQL("{} DESC").format(sql.Identifier(c)) for c in rel.key_columns),
        )
        row = conn.execute(query, (1,)).fetchone()  # a parameter: one statement only (see _read)
        return list(row) if row is not None else None

    def _chunk_query(
        self,
        conn: psycopg.Connection[Any],
        codec: RowCodec,
        where: str | None,
        after: list[str | None] | None,
        max_key: list[str | None] | None,
        limit: sql.Composable,
    ) -> sql.Composed:
        rel = codec.relation
        conditions: list[sql.Composable] = []
        if after is not None:
            conditions.append(
                sql.SQL("{} > {}").format(self._key_expr(codec), self._key_row(conn, codec, after))
            )
        if max_key is not None:
            conditions.append(
                sql.SQL("{} <= {}").format(self._key_expr(codec), self._key_row(conn, codec, max_key))
            )
        if where:
            conditions.append(sql.SQL("({})").format(sql.SQL(where)))
        return sql.SQL("SELECT {cols} FROM {table} WHERE {cond} ORDER BY {order} LIMIT {limit}").format(
            cols=sql.SQL(", ").join(sql.Identifier(col.name) for col in rel.columns),
            table=sql.Identifier(rel.schema, rel.table),
            cond=sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true"),
            order=sql.SQL(", ").join(sql.Identifier(c) for c in rel.key_columns),
            limit=limit,
        )

    # ------------------------------------------------------------------ the stream

    def seen(self, key: dict[str, Any] | None, xid: int) -> None:
        """A streamed change of the chunks' table (``key`` None: a truncate)."""
        if not self.chunks:
            return
        encoded = None if key is None else orjson.dumps(key)
        for chunk in self.chunks:
            if chunk.buffer is None:
                chunk.heard.append((encoded, xid, chunk.window_open))
            else:
                _drop_seen(chunk, encoded, xid, chunk.window_open)

    def on_signal(self, values: dict[str, Any], commit_lsn: int) -> Chunk | None:
        """A row inserted into the signal table; the chunk whose rows to publish now, at its close."""
        parsed = signals.parse_signal(values.get("id"), values.get("type"), values.get("data"))
        if isinstance(parsed, str):
            log.warning("signal ignored: %s", parsed)
            return None
        if parsed.type == signals.WINDOW_OPEN:
            for pending in self.chunks:
                if parsed.id == f"{pending.id}-open":
                    pending.window_open = True
            return None
        if parsed.type == signals.WINDOW_CLOSE:
            chunk = self.chunk
            if chunk is None or parsed.id != f"{chunk.id}-close":
                return None  # a watermark of a chunk before a restart, or of another capture
            if chunk.buffer is None:
                self._take(chunk)  # its close watermark overtook the reader thread's last steps
            closed = self._close(chunk)
            self._queue_reads()  # now, not at the next tick: the reader keeps a chunk ahead
            return closed
        if commit_lsn and commit_lsn < self.progress.lsn:
            return None  # acted on before the progress now loaded was recorded
        self._dirty = True
        if parsed.type == signals.EXECUTE:
            self._execute(parsed)
        elif parsed.type == signals.STOP:
            self._stop(parsed)
        elif parsed.type == signals.PAUSE:
            log.info("incremental snapshot paused (signal %s)", parsed.id)
            self.progress.paused = True
        elif parsed.type == signals.RESUME:
            log.info("incremental snapshot resumed (signal %s)", parsed.id)
            self.progress.paused = False
        elif parsed.type == signals.LOG:
            log.info("signal %s: %s", parsed.id, parsed.data.get("message", ""))
        else:
            log.warning("signal %s: unknown type %r, ignored", parsed.id, parsed.type)
        return None

    def _close(self, chunk: Chunk) -> Chunk:
        published = chunk.buffer = chunk.rows()  # settled: the window is over
        chunk.dropped, chunk.cleared = set(), False
        self.chunks.pop(0)
        if not self.chunks:
            self.chunk_oid = 0
        task = self.progress.tables[0]
        task.last_key = chunk.last_key
        task.rows += len(published)
        self.progress.rows += len(published)
        self.progress.chunks += 1
        self._dirty = True
        name = task.table
        metrics.capture.snapshot_rows.labels(table=name).inc(len(published))
        metrics.capture.incremental_chunks.inc()
        if chunk.final:
            self._drop_chunks()  # reads queued after the table's last chunk: nothing to read
            self._finish_table()
        else:
            self._report(task, False)
        return chunk

    def _finish_table(self) -> None:
        task = self.progress.tables.pop(0)
        self._dirty = True
        self._report(task, True)
        log.info("incremental snapshot of %s finished: %d rows", task.table, task.rows)
        self._gauge()

    def _report(self, task: TableTask, done: bool) -> None:
        if self.progress_fn is not None:
            self.progress_fn(task.table, task.rows, task.rows if done else task.estimate, done)

    def _gauge(self) -> None:
        metrics.capture.incremental_tables_remaining.set(len(self.progress.tables))

    def _execute(self, signal: signals.Signal) -> None:
        data = signal.data
        kind = data.get("type", "incremental")
        if str(kind).lower() != "incremental":
            log.warning("signal %s: %s snapshots are taken incrementally here", signal.id, kind)
        collections = data.get("data-collections") or []
        if not isinstance(collections, list) or not collections:
            log.warning("signal %s: execute-snapshot without data-collections, ignored", signal.id)
            return
        filters: dict[str, str] = {}
        for condition in data.get("additional-conditions") or []:
            if isinstance(condition, dict) and condition.get("data-collection") and condition.get("filter"):
                filters[str(condition["data-collection"])] = str(condition["filter"])
        single = data.get("additional-condition")  # the form before Debezium 2.2: one for all tables
        names = list(self._match(collections, signal.id))
        wanted = [
            (name, filters.get(name, single if isinstance(single, str) and single else None))
            for name in names
        ]
        log.info("incremental snapshot requested (signal %s): %s", signal.id, ", ".join(names) or "nothing")
        self._queue(wanted)

    def _match(self, patterns: list[Any], ident: str) -> Iterator[str]:
        captured = self.captured()
        for pattern in map(str, patterns):
            if pattern in captured or (self.codec_for(pattern) is not None):
                yield pattern
                continue
            try:
                matched = [name for name in captured if re.fullmatch(pattern, name)]
            except re.error:
                matched = []
            if not matched:
                log.warning("signal %s: no captured table matches %r", ident, pattern)
            yield from matched

    def _queue(self, wanted: list[tuple[str, str | None]]) -> None:
        for name, where in wanted:
            waiting = (
                [t for t in self.progress.tables[1:] if t.table == name]
                if self.chunks
                else [t for t in self.progress.tables if t.table == name and t.max_key is None]
            )
            if waiting:
                waiting[0].filter = where
                continue
            self.progress.tables.append(TableTask(name, where))
        self._gauge()

    def _stop(self, signal: signals.Signal) -> None:
        names = signal.data.get("data-collections") or []
        if not names:
            log.info("incremental snapshot stopped (signal %s)", signal.id)
            self.progress.tables.clear()
        else:
            self.progress.tables = [t for t in self.progress.tables if t.table not in set(map(str, names))]
            log.info("incremental snapshot of %s stopped (signal %s)", ", ".join(map(str, names)), signal.id)
        if self.chunks and (
            not self.progress.tables
            or self.progress.tables[0].table != self.chunks[0].codec.relation.qualified_name
        ):
            self._drop_chunks()
        self._gauge()

    # ------------------------------------------------------------------ persistence

    def committed(self, end_lsn: int) -> None:
        """A transaction ended at ``end_lsn``: the progress as it now stands holds from there."""
        if self._dirty:
            self._dirty = False
            self.progress.lsn = end_lsn
            self._unsaved.append((end_lsn, self.progress.to_json()))

    def confirmed(self, lsn: int) -> None:
        """Record the newest progress whose position is confirmed."""
        if not self._unsaved or self._unsaved[0][0] > lsn:
            return
        latest = None
        while self._unsaved and self._unsaved[0][0] <= lsn:
            latest = self._unsaved.pop(0)[1]
        if latest is None:
            return
        try:
            snapshot_state.save_incremental(self._connection(), self.slot, latest)
        except (psycopg.Error, WalbridgeError) as exc:
            self.close()
            log.warning("recording incremental snapshot progress failed (kept for the next chunk): %s", exc)
            self._unsaved.insert(0, (lsn, latest))


_REFUSED_READS = ("42", "22")
"""SQLSTATE classes of a chunk read refused for its query (syntax, unknown column, data exception)."""


def _selected(cur: psycopg.Cursor[Any], count: int) -> list[list[Any]]:
    """The rows of each statement that returned rows, of a query of several statements."""
    found: list[list[Any]] = []
    while True:
        if cur.description is not None:
            found.append(cur.fetchall())
        if not cur.nextset():
            break
    if len(found) != count:
        raise WalbridgeError(f"expected {count} results from a chunk read, got {len(found)}")
    return found


def _snapshot_xids(text: str) -> tuple[frozenset[int], int]:
    """``pg_current_snapshot()`` text → (in-progress xids, xmax), as the 32-bit xids the stream carries."""
    _xmin, xmax, xip = text.split(":")
    return frozenset(int(x) & 0xFFFFFFFF for x in xip.split(",") if x), int(xmax) & 0xFFFFFFFF


def _drop_seen(chunk: Chunk, key: bytes | None, xid: int, window_open: bool) -> None:
    """A streamed change of one of the chunk's keys makes the row read stale when it falls in the window
    or comes from a transaction the read did not see; a truncate empties the chunk."""
    if key is None:
        chunk.cleared = True
    elif window_open or xid in chunk.invisible or _xid_follows(xid, chunk.xmax):
        chunk.dropped.add(key)


def _xid_follows(xid: int, xmax: int) -> bool:
    """Whether 32-bit ``xid`` is ``xmax`` or later (modulo wraparound): started after the snapshot."""
    return ((xid - xmax) & 0xFFFFFFFF) < 0x80000000
