"""Trigger-mode capture: publish ``walbridge.change_log`` rows in commit order, confirm after Kafka acks.

For databases without logical replication. ``trigger_setup.py`` installs the log and the triggers;
this module reads the log and emits the same :class:`ChangeEvent` values as logical mode (values go
through the same :class:`RowCodec`), with ``source.connector = "postgresql-trigger"``, the log row id
as ``source.change_id`` and the writing transaction's id as ``txId`` (``lsn`` is null).

Ordering method (never skips a row, never waits for long transactions)
----------------------------------------------------------------------
Log ids come from a sequence, so they are not commit-ordered: a transaction holding id 10 may
commit after one holding id 11, and "everything after id 11" would lose id 10. Each log row records
its transaction id (``pg_current_xact_id()``). The poller works in *commit intervals*: with ``lo``
the last PostgreSQL snapshot fully published and ``hi`` a fresh ``pg_current_snapshot()``, the next
interval is exactly the rows whose transaction is visible in ``hi`` but not in ``lo``
(``pg_visible_in_snapshot``): the transactions that committed between the two snapshots, whatever
their ids. A transaction still running at ``hi`` is in neither, so it falls into a later interval,
complete. Inside an interval rows go out in id order, read in pages of consecutive ids (``after_id``:
the last id read), so that a page costs its own rows, not the rest of the interval.

Why that is commit order per key: two transactions changing the same row serialize on its row lock,
and the trigger of the second runs (and takes its id) only after the first committed. So the first
one's row has the smaller id and commits in the same or an earlier interval. Across keys, events
are ordered by commit interval (one poll period wide), then by id.

Latency cost: one poll interval (``source.poll_interval_ms``, the period at which polls start: the next
one starts at once when publishing an interval took longer) plus the read; a long transaction
holds back only its own rows. (The simpler "read below ``pg_snapshot_xmin``" method would delay
*every* change behind the oldest running transaction.) The price is on the read side: the scan
covers ``txid >= xmin(lo)``, so while a transaction stays open for a long time, already-published
rows after its id are re-examined each poll; retention (delete published rows) keeps that small.

Position and restart
--------------------
:class:`TriggerPosition` ``(lo, hi, after_id)`` is sealed after each batch; the
:class:`EventPublisher` returns it once Kafka acknowledged every event up to it, and only then is it
written to ``walbridge.capture_offset`` (row ``source.slot``). A restart resumes from that row:
duplicates are possible within the unacknowledged window, loss is not. The initial snapshot reads
the tables in a REPEATABLE READ transaction and starts streaming at that transaction's own snapshot
(``lo``), so streaming continues exactly where the snapshot ends. ``snapshot: never`` streams the whole
log instead (every change since setup).

Retention: after each recorded position, rows visible in every capture's ``lo`` (and, with
``retention_hours > 0``, older than that) are deleted in batches of 1,000; ``retention_hours: null``
keeps everything.

Schema changes: a change whose columns the table no longer has (a column renamed or dropped while
changes were pending), or of a table that was dropped, stops the capture with an error naming the
log row; so does a captured table losing its triggers. Added columns are picked up (older rows
carry null for them). Trigger mode always has the full old row, so ``before`` is complete for
updates and deletes (as logical mode with ``REPLICA IDENTITY FULL``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from itertools import groupby
from typing import Any, NamedTuple

import orjson
import psycopg
from psycopg import IsolationLevel

from walbridge import metrics
from walbridge.capture import catalog, signals
from walbridge.capture import state as snapshot_state
from walbridge.capture.connection import connect_source
from walbridge.capture.incremental import IncrementalSnapshot
from walbridge.capture.log_rows import encode_change_rows
from walbridge.capture.logical import value_options
from walbridge.capture.publisher import EventPublisher
from walbridge.capture.reconnect import run_with_reconnect
from walbridge.capture.rows import RowCodec
from walbridge.capture.runtime import collect_garbage_seldom
from walbridge.capture.signal_topic import SignalTopic
from walbridge.capture.snapshot import ProgressFn, SnapshotSource, snapshot_tables
from walbridge.capture.trigger_setup import (
    CHANGE_LOG,
    OFFSET_TABLE,
    SCHEMA,
    capture_relations,
    check_trigger_capture,
    install_trigger_capture,
    installed_tables,
    uninstall_trigger_capture,
)
from walbridge.config import Settings
from walbridge.errors import ConfigError, DecodeError, TransientError
from walbridge.events import TRIGGER_CONNECTOR, ChangeEvent, PreparedSource, Source
from walbridge.liveness import Liveness
from walbridge.pgerrors import map_pg_error

__all__ = [
    "NOTHING_PUBLISHED",
    "ChangeRow",
    "TriggerCapture",
    "TriggerPosition",
    "check_trigger_capture",
    "install_trigger_capture",
    "load_position",
    "next_position",
    "uninstall_trigger_capture",
]

log = logging.getLogger(__name__)

NOTHING_PUBLISHED = "1:1:"
"""A snapshot in which no transaction is visible: the whole log is still to be published."""

_RETENTION_BATCH = 1_000
_RETENTION_BUDGET_S = 0.2
_RETENTION_EVERY_S = 1.0
_RETENTION_RESTART_S = 30.0
_RECORD_IDLE_S = 5.0
_CHECK_TABLES_S = 30.0
_PROGRESS_S = 10.0


@dataclass(frozen=True, slots=True)
class TriggerPosition:
    """Published: every transaction visible in snapshot ``lo``, and rows ``<= after_id`` of (lo, hi]."""

    lo: str
    hi: str | None = None
    after_id: int = 0
    rows: int = field(default=0, compare=False)
    """Change rows read by this process when the position was sealed (not stored)."""


class ChangeRow(NamedTuple):
    """One ``walbridge.change_log`` row as read by the poller (a tuple: cheap to build per row)."""

    id: int
    txid: int
    schema: str
    table: str
    op: str
    before: dict[str, str | None] | None
    after: dict[str, str | None] | None
    changed_us: int


def next_position(
    pos: TriggerPosition, hi: str, batch: Sequence[ChangeRow], until: int | None
) -> TriggerPosition:
    """The position after reading ``batch``, the rows of interval (pos.lo, hi] with ids up to ``until``
    (``None``: the rest of the interval)."""
    rows = pos.rows + len(batch)
    if until is None:
        return TriggerPosition(hi, None, 0, rows)
    return TriggerPosition(pos.lo, hi, until, rows)


# ----------------------------------------------------------------------------- SQL

_IN_INTERVAL = """
txid >= pg_snapshot_xmin(%(lo)s::pg_snapshot) AND txid < pg_snapshot_xmax(%(hi)s::pg_snapshot)
  AND NOT pg_visible_in_snapshot(txid, %(lo)s::pg_snapshot)
  AND pg_visible_in_snapshot(txid, %(hi)s::pg_snapshot)
"""

# The highest id of the log, and (first page only) the interval's lowest id, where its first page starts.
# OFFSET 0 keeps the planner from answering min(id) by walking the primary key from the log's oldest row:
# the txid range does.
_TOP_SQL = f"SELECT max(id), NULL FROM {SCHEMA}.{CHANGE_LOG}"
_BOUNDS_SQL = f"""
SELECT (SELECT max(id) FROM {SCHEMA}.{CHANGE_LOG}),
       (SELECT min(id) FROM (SELECT id FROM {SCHEMA}.{CHANGE_LOG} WHERE {_IN_INTERVAL} OFFSET 0) i)
"""

# One page: the interval's rows in a window of ids, so that a page costs the window, not the whole interval
# (a LIMIT after ORDER BY id sorted every remaining row of the interval for each page of a backlog).
_READ_SQL = f"""
SELECT id, txid::text, schema_name, table_name, op, before::text, after::text,
       (extract(epoch FROM changed_at) * 1000000)::bigint
FROM {SCHEMA}.{CHANGE_LOG}
WHERE id > %(after_id)s AND id <= %(until)s AND {_IN_INTERVAL}
ORDER BY id
"""

_RECORD_SQL = f"""
INSERT INTO {SCHEMA}.{OFFSET_TABLE} (name, lo, hi, after_id, updated_at)
VALUES (%s, %s::pg_snapshot, %s::pg_snapshot, %s, now())
ON CONFLICT (name) DO UPDATE SET lo = EXCLUDED.lo, hi = EXCLUDED.hi, after_id = EXCLUDED.after_id,
                                 updated_at = EXCLUDED.updated_at
"""

# Rows published by every capture: visible in each stored ``lo``. No offset row → the lowest xmax is null →
# nothing. Walks the primary key upward from a floor, so a pass never re-reads the dead rows of its earlier
# batches. ORDER BY ... LIMIT 1, not min(): min(xid8) exists only from PostgreSQL 15 on.
_RETENTION_SQL = f"""
DELETE FROM {SCHEMA}.{CHANGE_LOG} WHERE id IN (
    SELECT l.id FROM {SCHEMA}.{CHANGE_LOG} l
    WHERE l.id > %s
      AND l.txid < (SELECT pg_snapshot_xmax(o.lo) FROM {SCHEMA}.{OFFSET_TABLE} o ORDER BY 1 LIMIT 1)
      AND NOT EXISTS (SELECT 1 FROM {SCHEMA}.{OFFSET_TABLE} o WHERE NOT pg_visible_in_snapshot(l.txid, o.lo))
      AND l.changed_at < now() - make_interval(secs => %s)
    ORDER BY l.id
    LIMIT %s)
RETURNING id
"""


def load_position(conn: psycopg.Connection[Any], name: str) -> TriggerPosition | None:
    """The confirmed position stored for capture ``name``; ``None`` before the first one."""
    row = conn.execute(
        f"SELECT lo::text, hi::text, after_id FROM {SCHEMA}.{OFFSET_TABLE} WHERE name = %s", (name,)
    ).fetchone()
    return TriggerPosition(row[0], row[1], int(row[2])) if row else None


def read_changes(
    conn: psycopg.Connection[Any], pos: TriggerPosition, limit: int
) -> tuple[str, list[ChangeRow], int | None]:
    """One page of the next commit interval, in one REPEATABLE READ transaction: (hi, rows, until).

    A page holds the interval's rows among the next ``limit`` ids (from the interval's lowest id on its
    first page); ``until`` is the last id it covered, ``None`` when no id of the log is left after it.
    """
    with conn.transaction():
        hi = pos.hi
        if hi is None:
            row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
            assert row is not None
            hi = str(row[0])
        if hi == pos.lo:
            return hi, [], None
        params: dict[str, Any] = {"lo": pos.lo, "hi": hi}
        bounds = conn.execute(_TOP_SQL if pos.after_id else _BOUNDS_SQL, params).fetchone()
        assert bounds is not None
        last, first = bounds
        if not pos.after_id and first is None:
            return hi, [], None  # no row in the interval
        start = pos.after_id or int(first) - 1
        until = start + limit
        params.update(after_id=start, until=until)
        rows = conn.execute(_READ_SQL, params).fetchall()
    more = until if last is not None and until < int(last) else None
    loads = orjson.loads
    changes = [
        ChangeRow(
            int(r[0]),
            int(r[1]),
            r[2],
            r[3],
            r[4],
            loads(r[5]) if r[5] is not None else None,
            loads(r[6]) if r[6] is not None else None,
            int(r[7]),
        )
        for r in rows
    ]
    return hi, changes, more


# ----------------------------------------------------------------------------- capture


class TriggerCapture:
    """``run(stop)`` captures until ``stop`` is set; transient failures reconnect with backoff.

    ``publisher`` is reused across reconnects when given; otherwise one is built per attempt.
    """

    def __init__(
        self,
        settings: Settings,
        publisher: EventPublisher[TriggerPosition] | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> None:
        self.settings = settings
        self.source = settings.source
        self.name = settings.source.slot
        self.options = value_options(settings)
        self.progress = progress
        self._publisher = publisher
        self._codecs: dict[tuple[str, str], RowCodec] = {}
        self._registry: Any = None
        self._dbname = ""
        self.confirmed: TriggerPosition | None = None
        self._retention_floor = 0
        self._retention_restarted = 0.0
        self.published_rows = 0
        self.ready = threading.Event()
        """Set once streaming has started (after any snapshot)."""
        self.liveness = Liveness(settings.metrics.stall_s)
        self.publisher: EventPublisher[TriggerPosition] | None = None
        """The current attempt's (read by :class:`~walbridge.capture.monitor.CaptureMonitor`)."""
        self.incremental: IncrementalSnapshot | None = None
        """The incremental snapshot (signals, watermark chunks) when ``source.signal_table`` is set."""
        self.signal_topic: SignalTopic | None = None

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        collect_garbage_seldom()
        transient = (TransientError, psycopg.OperationalError)

        def attempt() -> None:
            publisher = self._publisher or EventPublisher[TriggerPosition](self.settings)
            self.publisher = publisher
            try:
                self._run_once(stop, publisher)
            except transient:
                _discard(publisher)
                raise
            finally:
                if self.incremental is not None:
                    self.incremental.close()
                if self.signal_topic is not None:
                    self.signal_topic.close()

        run_with_reconnect(
            stop, attempt, ready=self.ready, position=lambda: self.confirmed, transient=transient
        )

    def _run_once(self, stop: threading.Event, publisher: EventPublisher[TriggerPosition]) -> None:
        with connect_source(self.source.dsn) as reader, connect_source(self.source.dsn) as writer:
            self._load_catalog(reader)
            publisher.ensure_topics(self._codecs)
            position = load_position(writer, self.name)
            state = snapshot_state.load(writer, self.name)
            # No state row beside a stored position: written by a version that stored the position only
            # once the snapshot was acknowledged, so the snapshot is done.
            owed = position is None or state == "pending"
            incremental = self._prepare_incremental(writer, owed)
            if owed and self.source.snapshot not in ("never", "incremental"):
                position = self._snapshot_and_record(
                    publisher, writer, position if state == "pending" else None
                )
                if self.source.snapshot == "initial_only":
                    self._finish(publisher, writer)
                    return
            elif position is None:
                position = TriggerPosition(NOTHING_PUBLISHED)
                publisher.seal(position)
                snapshot_state.record(writer, self.name, "done" if incremental else "skipped")
            else:
                log.info("resuming trigger capture %s from %s", self.name, _describe(position))
            reader.isolation_level = IsolationLevel.REPEATABLE_READ
            reader.read_only = True
            poller = _Poller(self, publisher, reader, writer, position)
            try:
                poller.loop(stop)
            finally:
                poller.close()  # before the reader connection closes
            self._finish(publisher, writer)

    def _prepare_incremental(self, writer: psycopg.Connection[Any], owed: bool) -> bool:
        """Load the incremental snapshot's progress; ``snapshot: incremental`` with a snapshot owed queues
        every table (True: the stream then starts at the beginning of the change log)."""
        table = self.source.signal_table
        if table is None:
            if self.source.snapshot == "incremental" or self.source.signal_topic:
                raise ConfigError(
                    "source.snapshot: incremental and source.signal_topic need source.signal_table"
                )
            return False
        if self.source.signal_topic and self.signal_topic is None:
            self.signal_topic = SignalTopic(self.settings)
        self._codecs.pop(tuple(signals.split_name(table)), None)  # type: ignore[arg-type]
        if tuple(signals.split_name(table)) not in {(s, t) for s, t, _ok in installed_tables(writer)}:
            raise ConfigError(
                f"source.signal_table {table} has no capture trigger: run walbridge setup --mode trigger"
            )
        self.incremental = IncrementalSnapshot(
            self.source.dsn,
            self.name,
            table,
            self.source.incremental_chunk_size,
            self._codec_by_name,
            lambda: sorted(f"{schema}.{name}" for schema, name in self._codecs),
            self.progress,
        )
        if owed and self.source.snapshot == "incremental":
            self.incremental.start(writer, sorted(f"{schema}.{name}" for schema, name in self._codecs))
            return True
        self.incremental.load(writer)
        return False

    def _codec_by_name(self, name: str) -> RowCodec | None:
        """A captured table's codec; a table whose triggers setup installed since the start joins."""
        if "." not in name:
            return None
        schema, table = name.split(".", 1)
        codec = self._codecs.get((schema, table))
        if codec is not None:
            return codec
        with connect_source(self.source.dsn) as conn:
            if (schema, table) not in {(s, t) for s, t, ok in installed_tables(conn) if ok}:
                return None
            codec = self.reload_table(conn, schema, table)
        if codec is not None and not codec.relation.key_columns:
            self._codecs.pop((schema, table), None)
            return None
        return codec

    def _finish(self, publisher: EventPublisher[TriggerPosition], writer: psycopg.Connection[Any]) -> None:
        confirmed = publisher.flush()
        if confirmed is not None:
            self._record(writer, confirmed)

    # ------------------------------------------------------------------ catalog

    def _load_catalog(self, conn: psycopg.Connection[Any]) -> None:
        self._dbname = conn.info.dbname
        problems = check_trigger_capture(conn, self.settings, installed=True)
        if problems:
            raise ConfigError("trigger capture is not ready: " + "; ".join(str(p) for p in problems))
        self._registry = catalog.load_type_registry(conn)
        self._codecs = {
            (rel.schema, rel.table): self._codec_for(rel) for rel in capture_relations(conn, self.settings)
        }

    def _codec_for(self, rel: catalog.RelationInfo) -> RowCodec:
        excluded = self.source.excluded_columns(rel.schema, rel.table)
        return RowCodec(rel, self._registry, self.options, excluded)

    def check_tables(self, conn: psycopg.Connection[Any]) -> None:
        """ConfigError when a captured table was dropped or lost its triggers; new tables only warn."""
        try:
            installed = {(schema, table): ok for schema, table, ok in installed_tables(conn)}
            exists = {(rel.schema, rel.table) for rel in catalog.resolve_tables(conn, ["*.*"])}
        except psycopg.Error as exc:
            raise map_pg_error(exc, "checking the captured tables") from exc
        for schema, table in self._codecs:
            if (schema, table) not in exists:
                raise ConfigError(
                    f"captured table {schema}.{table} was dropped (or renamed): remove it from source.tables "
                    f"and run `walbridge setup --mode trigger`; its unpublished changes stay in "
                    f"{SCHEMA}.{CHANGE_LOG}"
                )
            if not installed.get((schema, table)):
                raise ConfigError(
                    f"the walbridge triggers on {schema}.{table} are missing or disabled, so its changes are "
                    "not captured: run `walbridge setup --mode trigger`"
                )

    def wants(self, schema: str, table: str) -> bool:
        """Whether ``schema.table`` matches the configured tables (it may be new since the start)."""
        name = f"{schema}.{table}"
        include = self.source.tables or ["*.*"]
        exclude = [*self.source.exclude_tables, f"{SCHEMA}.*"]
        return any(fnmatchcase(name, p) for p in include) and not any(fnmatchcase(name, p) for p in exclude)

    def reload_table(self, conn: psycopg.Connection[Any], schema: str, table: str) -> RowCodec | None:
        """Re-read one table's columns (after an ALTER TABLE); ``None`` when it no longer exists."""
        try:
            self._registry = catalog.load_type_registry(conn)
            found = catalog.resolve_tables(conn, [f"{schema}.{table}"])
        except ConfigError:
            return None
        except psycopg.Error as exc:
            raise map_pg_error(exc, f"reading the columns of {schema}.{table}") from exc
        exact = [rel for rel in found if (rel.schema, rel.table) == (schema, table)]
        if not exact:
            return None
        codec = self._codecs[(schema, table)] = self._codec_for(exact[0])
        return codec

    # ------------------------------------------------------------------ snapshot and offsets

    def _snapshot_and_record(
        self,
        publisher: EventPublisher[TriggerPosition],
        writer: psycopg.Connection[Any],
        interrupted: TriggerPosition | None,
    ) -> TriggerPosition:
        """Take the snapshot; the position streaming starts from, once every snapshot row is acknowledged.

        Before the first row goes out, the snapshot's own position is stored with the state "pending":
        retention keeps every change after it, and a restart after an interruption (``interrupted``:
        that stored position) takes the snapshot again and then streams from there, so the changes
        made meanwhile (deletes of rows the first attempt already published) are replayed after it.
        """

        def started(position: TriggerPosition) -> None:
            if interrupted is None:
                self._store(writer, position)
            snapshot_state.record(writer, self.name, "pending")

        if interrupted is not None:
            log.info("the snapshot of trigger capture %s was interrupted: taking it again", self.name)
        position = self._snapshot(publisher, started)
        while publisher.poll(0.1) != position:
            pass
        snapshot_state.record(writer, self.name, "done")
        publisher.tracker.reset(None)  # streaming confirms its own positions from here
        if interrupted is None:
            return position
        log.info("streaming from the interrupted attempt's position %s", _describe(interrupted))
        return interrupted

    def _snapshot(
        self,
        publisher: EventPublisher[TriggerPosition],
        started: Callable[[TriggerPosition], None] | None = None,
    ) -> TriggerPosition:
        """Publish every row as ``op: r``; the position is the snapshot's own PostgreSQL snapshot.

        ``started`` is called with that position before the first row is published."""
        codecs = list(self._codecs.values())
        with connect_source(self.source.dsn) as conn:
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    row = conn.execute("SELECT pg_current_snapshot()::text").fetchone()
                    assert row is not None
                    if started is not None:
                        started(TriggerPosition(str(row[0])))
                    origin = SnapshotSource(
                        TRIGGER_CONNECTOR, self.settings.events.topic_prefix, self._dbname
                    )
                    count = snapshot_tables(conn, codecs, publisher, origin, self.progress)
            except psycopg.Error as exc:
                raise map_pg_error(exc, "taking the initial snapshot") from exc
        position = TriggerPosition(str(row[0]))
        publisher.seal(position)
        log.info(
            "snapshot of %d tables published: %d rows; streaming from %s", len(codecs), count, position.lo
        )
        return position

    def _record(self, conn: psycopg.Connection[Any], pos: TriggerPosition) -> None:
        self._store(conn, pos)
        self.confirmed = pos

    def _store(self, conn: psycopg.Connection[Any], pos: TriggerPosition) -> None:
        try:
            conn.execute(_RECORD_SQL, (self.name, pos.lo, pos.hi, pos.after_id))
        except psycopg.Error as exc:
            raise map_pg_error(exc, "recording the capture position") from exc

    def apply_retention(self, conn: psycopg.Connection[Any]) -> int:
        """Delete published rows in batches of 1,000 (bounded time per call); returns rows deleted.

        Each call continues upward from the highest id deleted so far; every ``_RETENTION_RESTART_S``
        a pass restarts from the bottom, for rows of long transactions that committed late.
        """
        hours = self.source.retention_hours
        if hours is None:
            return 0
        now = time.monotonic()
        if now - self._retention_restarted >= _RETENTION_RESTART_S:
            self._retention_floor, self._retention_restarted = 0, now
        deleted = 0
        deadline = now + _RETENTION_BUDGET_S
        try:
            while time.monotonic() < deadline:
                ids = conn.execute(_RETENTION_SQL, (self._retention_floor, hours * 3600.0, _RETENTION_BATCH))
                batch = [row[0] for row in ids.fetchall()]
                deleted += len(batch)
                if batch:
                    self._retention_floor = max(self._retention_floor, *batch)
                if len(batch) < _RETENTION_BATCH:
                    break
        except psycopg.Error as exc:
            raise map_pg_error(exc, f"deleting published rows from {SCHEMA}.{CHANGE_LOG}") from exc
        return deleted


class _Poller:
    """The streaming loop of one connection pair: read a page, publish, seal, record, retain."""

    def __init__(
        self,
        capture: TriggerCapture,
        publisher: EventPublisher[TriggerPosition],
        reader: psycopg.Connection[Any],
        writer: psycopg.Connection[Any],
        position: TriggerPosition,
    ) -> None:
        self.capture = capture
        self.publisher = publisher
        self.reader = reader
        self.writer = writer
        self.position = position
        self.limit = capture.source.poll_batch_size
        self.interval_s = capture.source.poll_interval_ms / 1000.0
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="walbridge-log-read")
        self._ahead: Future[tuple[str, list[ChangeRow], int | None]] | None = None
        """The next page of the same interval, read while this one is published (a backlog only)."""
        self.prefix = capture.settings.events.topic_prefix
        self.db = capture._dbname
        self.recorded: TriggerPosition | None = None
        self.recorded_at = 0.0
        self.retained_at = 0.0
        self.checked_at = time.monotonic()
        self.progress_at = time.monotonic()
        self.progress_rows = 0
        self.misfits: dict[tuple[str, str], frozenset[str]] = {}
        """Per table, the last column set of a log row that did not fit its codec (re-read once)."""
        self.incremental = capture.incremental
        signal = capture.source.signal_table
        self.signal_table = tuple(signals.split_name(signal)) if signal else None
        self.sealed: list[tuple[int, TriggerPosition]] = []
        """Positions sealed in this process, numbered: the incremental snapshot's progress points."""
        self._prepared: dict[tuple[str, str], tuple[RowCodec, PreparedSource | None]] = {}
        """Per table: the codec its spliced encoder was made for, and that encoder (None: general path)."""

    def loop(self, stop: threading.Event) -> None:
        self.capture.ready.set()
        polled_at = time.monotonic()
        while not stop.is_set():
            if self.position.hi is None:  # this read starts the next commit interval
                polled_at = time.monotonic()
            if self.capture.signal_topic is not None:
                self.capture.signal_topic.relay()
            if self.incremental is not None:
                known = len(self.capture._codecs)
                self.incremental.tick()
                if len(self.capture._codecs) != known:  # a table joined capture by a signal
                    self.publisher.ensure_topics(self.capture._codecs)
            full = self.step()
            self._confirm(self.publisher.poll(0))
            self._retain(caught_up=not full)
            self._housekeeping()
            if not full:
                if not self.publisher.in_flight:
                    self.capture.liveness.touch()  # idle with nothing to do
                # A chunk waiting for its close watermark: poll again soon.
                waiting = self.incremental is not None and self.incremental.chunk is not None
                period = min(self.interval_s, 0.01) if waiting else self.interval_s
                # Polls start one period apart: after an interval that took longer to publish, at once.
                stop.wait(max(0.0, period - (time.monotonic() - polled_at)))

    def step(self) -> bool:
        """Read and publish one page; True when more of the interval is waiting."""
        try:
            hi, batch, until = self._read()
        except psycopg.Error as exc:
            raise map_pg_error(exc, f"reading {SCHEMA}.{CHANGE_LOG}") from exc
        inc = self.incremental
        if inc is None:
            for _, run in groupby(batch, key=_table_of):
                self._publish_run(list(run))
        else:
            for row in batch:
                if (row.schema, row.table) == self.signal_table:
                    if row.op == "c" and row.after is not None:
                        self._signal(inc, row)
                    continue
                self._publish_row(row, inc)
        if batch:
            metrics.capture.behind_source_ms.set(max(0.0, time.time() * 1000 - batch[-1].changed_us / 1000))
        self.position = next_position(self.position, hi, batch, until)
        self.publisher.seal(self.position)
        if inc is not None:
            number = self.sealed[-1][0] + 1 if self.sealed else 1
            self.sealed.append((number, self.position))
            inc.committed(number)
        self._throttle()
        return until is not None

    def _publish_row(self, row: ChangeRow, inc: IncrementalSnapshot | None) -> None:
        """Publish the events of one log row, row at a time."""
        if self._publish_fast(row, inc):
            return
        for event in self.events(row):
            self._seen(inc, row, event.key)
            self.publisher.publish(event)

    def _publish_run(self, rows: list[ChangeRow]) -> None:
        """Publish consecutive log rows of one table (no incremental snapshot running): encoded in one call
        where the table and the encoding allow, the rows that call leaves row at a time."""
        codec = self.capture._codecs.get((rows[0].schema, rows[0].table))
        prepared = self._prepared_for(codec) if codec is not None else None
        plan = codec.text_rows_plan() if codec is not None else None
        if prepared is None or prepared.source_pieces is None or plan is None:
            for row in rows:
                self._publish_row(row, None)
            return
        names, typed, key_names = plan
        events = encode_change_rows(
            rows, names, typed, key_names, prepared.source_pieces, time.time_ns() // 1_000_000,
            prepared.value_schema, prepared.key_schema,
        )  # fmt: skip
        self.publisher.publish_spliced(prepared, events, lambda index: self._publish_row(rows[index], None))

    def _read(self) -> tuple[str, list[ChangeRow], int | None]:
        """The page at ``position``. When the interval goes on, its next page (the following ids) is read
        in a thread while this one is converted and published: the database's work
        overlaps capture's."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            hi, batch, until = ahead.result()
        else:
            hi, batch, until = read_changes(self.reader, self.position, self.limit)
        if until is not None:
            following = next_position(self.position, hi, batch, until)
            self._ahead = self._reads.submit(read_changes, self.reader, following, self.limit)
        return hi, batch, until

    def _settle(self) -> None:
        """Wait for the page being read ahead (kept): the reader connection is free afterwards."""
        if self._ahead is not None:
            wait([self._ahead])  # its error, if any, is raised where the page is taken

    def close(self) -> None:
        self._settle()
        self._reads.shutdown()

    def _signal(self, inc: IncrementalSnapshot, row: ChangeRow) -> None:
        """A signal-table row; at a chunk's close watermark, its remaining rows as ``op: r`` events."""
        chunk = inc.on_signal(dict(row.after or {}), 0)
        if chunk is None:
            return
        codec = chunk.codec
        rel = codec.relation
        now_ms = time.time_ns() // 1_000_000
        source = Source(
            TRIGGER_CONNECTOR,
            self.prefix,
            self.db,
            rel.schema,
            rel.table,
            now_ms,
            "incremental",
            row.txid,
            None,
            None,
            row.id,
        )
        for key, after in chunk.rows():
            self.publisher.publish(ChangeEvent("r", source, key, None, after, now_ms, codec.table_schema))

    @staticmethod
    def _seen(inc: IncrementalSnapshot | None, row: ChangeRow, key: dict[str, Any] | None) -> None:
        """Tell the incremental snapshot's open chunk about a streamed change of its table."""
        if inc is not None and inc.chunk is not None:
            relation = inc.chunk.codec.relation
            if (relation.schema, relation.table) == (row.schema, row.table):
                inc.seen(key, row.txid & 0xFFFFFFFF)

    def _throttle(self) -> None:
        limit = self.capture.source.max_in_flight
        while self.publisher.in_flight > limit:
            self._confirm(self.publisher.poll(0.05))

    # ------------------------------------------------------------------ events

    def events(self, row: ChangeRow) -> list[ChangeEvent]:
        """The events of one log row; re-reads the table's columns once if they do not fit."""
        codec = self.capture._codecs.get((row.schema, row.table))
        if codec is None and not self.capture.wants(row.schema, row.table):
            return []  # logged for another capture sharing this database's change log
        try:
            if codec is None:
                raise DecodeError(f"{row.schema}.{row.table} is not a captured table")
            if not self._fits(row, codec):
                raise DecodeError(f"{row.schema}.{row.table}: the change's columns are not the table's")
            return self._decode(row, codec)
        except DecodeError as first:
            self._settle()  # the reader connection is the read-ahead's until then
            codec = self.capture.reload_table(self.reader, row.schema, row.table)
            if codec is None:
                raise ConfigError(
                    f"change-log row {row.id} belongs to {row.schema}.{row.table}, which no longer exists "
                    f"(dropped or renamed): restore the table, or discard its changes with "
                    f"DELETE FROM {SCHEMA}.{CHANGE_LOG} WHERE schema_name = '{row.schema}' "
                    f"AND table_name = '{row.table}'"
                ) from first
            try:
                return self._decode(row, codec)
            except DecodeError as exc:
                raise DecodeError(
                    f"change-log row {row.id} ({row.schema}.{row.table}, op {row.op}) does not fit the "
                    f"table's current columns: {exc.message}. A column was renamed or dropped while "
                    "changes were pending; drain the capture before such ALTER TABLEs",
                    change_id=row.id,
                ) from exc

    def _fits(self, row: ChangeRow, codec: RowCodec) -> bool:
        """False when the log row's columns differ from the codec's for the first time (ALTER TABLE):
        the caller re-reads the table, so that events and their schema follow its current shape."""
        image = row.after if row.after is not None else row.before
        if image is None or image.keys() == codec.column_set:
            return True
        shape = frozenset(image)
        if self.misfits.get((row.schema, row.table)) == shape:
            return True  # re-read already: changes logged before the ALTER TABLE
        self.misfits[(row.schema, row.table)] = shape
        return False

    def _publish_fast(self, row: ChangeRow, inc: IncrementalSnapshot | None) -> bool:
        """Publish a row change whose images have exactly its table's columns without building event
        objects (source block spliced); False for everything else (:meth:`events` handles it)."""
        codec = self.capture._codecs.get((row.schema, row.table))
        if codec is None or row.op == "t":
            return False
        columns = codec.column_set
        before, after = row.before, row.after
        if (before is not None and before.keys() != columns) or (
            after is not None and after.keys() != columns
        ):
            return False
        prepared = self._prepared_for(codec)
        if prepared is None:
            return False
        convert = codec.row_from_fitting_mapping
        changes = _changes(
            row,
            codec,
            convert(before) if before is not None else None,
            convert(after) if after is not None else None,
        )
        source = prepared.source_for(row.changed_us // 1000, row.changed_us, row.txid, row.id)
        now_ms = time.time_ns() // 1_000_000
        publish = self.publisher.publish_prepared
        for op, key, old, new in changes:
            if inc is not None:
                self._seen(inc, row, key)
            publish(prepared, op, key, old, new, 0, now_ms, source, row.id)
        return True

    def _prepared_for(self, codec: RowCodec) -> PreparedSource | None:
        """The spliced encoder of ``codec``'s table, made again when the codec is (ALTER TABLE)."""
        rel = codec.relation
        cached = self._prepared.get((rel.schema, rel.table))
        if cached is None or cached[0] is not codec:
            template = Source(
                TRIGGER_CONNECTOR,
                self.prefix,
                self.db,
                rel.schema,
                rel.table,
                0,
                "false",
                0,
                None,
                None,
                0,
                0,
            )
            cached = self._prepared[(rel.schema, rel.table)] = (
                codec,
                self.publisher.encoder.prepare_per_event(template, codec.table_schema),
            )
        return cached[1]

    def _decode(self, row: ChangeRow, codec: RowCodec) -> list[ChangeEvent]:
        source = Source(
            TRIGGER_CONNECTOR,
            self.prefix,
            self.db,
            row.schema,
            row.table,
            row.changed_us // 1000,
            "false",
            row.txid,
            None,
            None,
            row.id,
            row.changed_us,
        )
        schema = codec.table_schema
        now_ms = time.time_ns() // 1_000_000
        if row.op == "t":
            return [ChangeEvent("t", source, None, None, None, now_ms, schema)]
        before = codec.row_from_mapping(row.before) if row.before is not None else None
        after = codec.row_from_mapping(row.after) if row.after is not None else None
        return [
            ChangeEvent(op, source, key, old, new, now_ms, schema)
            for op, key, old, new in _changes(row, codec, before, after)
        ]

    # ------------------------------------------------------------------ offsets and upkeep

    def _confirm(self, confirmed: TriggerPosition | None) -> None:
        if confirmed is not None and self.incremental is not None and self.sealed:
            done = [number for number, position in self.sealed if position == confirmed]
            if done:
                self.sealed = [(n, p) for n, p in self.sealed if n > done[-1]]
                self.incremental.confirmed(done[-1])
        if confirmed is None or confirmed == self.recorded:
            return
        moved = self.recorded is None or confirmed.rows != self.recorded.rows
        if not moved and time.monotonic() - self.recorded_at < _RECORD_IDLE_S:
            return
        self.capture._record(self.writer, confirmed)
        self.capture.published_rows = confirmed.rows
        self.recorded, self.recorded_at = confirmed, time.monotonic()

    def _retain(self, caught_up: bool) -> None:
        """Retention when the log is drained, or once a second while a backlog is being read."""
        now = time.monotonic()
        if caught_up or now - self.retained_at >= _RETENTION_EVERY_S:
            self.capture.apply_retention(self.writer)
            self.retained_at = now

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self.checked_at >= _CHECK_TABLES_S:
            self.capture.check_tables(self.writer)
            self.checked_at = now
        if now - self.progress_at >= _PROGRESS_S:
            rows = self.position.rows - self.progress_rows
            log.info(
                "trigger capture: %d changes read (%.0f/s), confirmed %s",
                self.position.rows,
                rows / (now - self.progress_at),
                _describe(self.recorded),
            )
            self.progress_at, self.progress_rows = now, self.position.rows


Row = dict[str, Any]


def _changes(
    row: ChangeRow, codec: RowCodec, before: Row | None, after: Row | None
) -> list[tuple[str, Row | None, Row | None, Row | None]]:
    """(op, key, before, after) of each event of a row change (``before``/``after`` converted)."""
    if row.op == "c" and after is not None:
        return [("c", codec.key(after), None, after)]
    if row.op == "d" and before is not None:
        return [("d", codec.key(before), before, None)]
    if row.op == "u" and before is not None and after is not None:
        old_key, new_key = codec.key(before), codec.key(after)
        if old_key != new_key:
            # Primary key changed: as Debezium, a delete (+ tombstone) under the old key, then a create.
            return [("d", old_key, before, None), ("c", new_key, None, after)]
        return [("u", new_key, before, after)]
    raise DecodeError(f"change-log row {row.id} has op {row.op!r} without its row images", change_id=row.id)


def _table_of(row: ChangeRow) -> tuple[str, str]:
    return row.schema, row.table


def _describe(pos: TriggerPosition | None) -> str:
    if pos is None:
        return "nothing yet"
    if pos.hi is None:
        return f"snapshot {pos.lo}"
    return f"snapshot {pos.lo}, then rows up to id {pos.after_id} of {pos.hi}"


def _discard(publisher: EventPublisher[TriggerPosition]) -> None:
    """Drop what an abandoned attempt left in the producer (it is resent from the stored position)."""
    try:
        publisher.producer.purge()
        publisher.producer.poll(0)
        publisher.tracker.reset(None)
    except Exception:
        pass
