"""Logical-replication capture: slot + publication, consistent snapshot, pgoutput streaming.

Delivery rule: the slot's confirmed position (``flush_lsn`` in standby status updates) is
the end LSN of the newest transaction whose events, and all earlier ones, Kafka has
acknowledged (:class:`walbridge.kafka.DeliveryTracker`). After any crash the slot resends
from there: duplicates are possible, loss is not.

Snapshot consistency: the slot is created with an exported snapshot; the snapshot
transaction imports it, so rows committed before the slot's consistent point are read by
the snapshot and every later change is streamed, each exactly once.

Idle and filtered databases: every ``heartbeat_ms`` without traffic, capture writes a
transactional logical message (``pg_logical_emit_message``, PostgreSQL 14+) and, when
configured, runs the heartbeat action query; the message's transaction comes back through the
stream and its commit is confirmed like any other, so the slot does not pin WAL written by
tables outside the publication or by other databases. Keepalive positions are never
confirmed: the server may report them ahead of a transaction it is still sending.
"""

from __future__ import annotations

import dataclasses
import logging
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg2
import psycopg2.extensions
import psycopg2.extras

from walbridge import metrics
from walbridge.capture import catalog, pgoutput, signals
from walbridge.capture import state as snapshot_state
from walbridge.capture.catalog import ColumnInfo, RelationInfo
from walbridge.capture.connection import application_name, connect_source, session_options, slot_holder
from walbridge.capture.incremental import IncrementalSnapshot
from walbridge.capture.pgoutput import UNCHANGED_TOAST
from walbridge.capture.publisher import EventPublisher
from walbridge.capture.reconnect import run_with_reconnect
from walbridge.capture.rows import RowCodec
from walbridge.capture.runtime import collect_garbage_seldom
from walbridge.capture.signal_topic import SignalTopic
from walbridge.capture.slot import (
    check_slot_usable,
    drop_slot,
    ensure_publication,
    needs_snapshot,
    publication_tables,
    slot_info,
)
from walbridge.capture.snapshot import ProgressFn, SnapshotSource, snapshot_tables
from walbridge.capture.values import ValueOptions
from walbridge.config import Settings
from walbridge.errors import ConfigError, DecodeError, TransientError, WalbridgeError
from walbridge.events import LOGICAL_CONNECTOR, LSN_MARK, ChangeEvent, PreparedSource, Source
from walbridge.kafka import check_broker
from walbridge.liveness import Liveness
from walbridge.lsn import Lsn
from walbridge.pgerrors import map_pg_error

__all__ = ["LogicalCapture", "value_options"]

log = logging.getLogger(__name__)


def value_options(settings: Settings) -> ValueOptions:
    ev = settings.events
    return ValueOptions(
        decimal_handling_mode=ev.decimal_handling_mode,
        time_precision_mode=ev.time_precision_mode,
        binary_handling_mode=ev.binary_handling_mode,
        interval_handling_mode=ev.interval_handling_mode,
    )


class LogicalCapture:
    """``run(stop)`` captures until ``stop`` is set; transient failures reconnect with backoff."""

    def __init__(
        self,
        settings: Settings,
        *,
        publisher_factory: Callable[[], EventPublisher[int]] | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.settings = settings
        self.source = settings.source
        self.options = value_options(settings)
        self.progress = progress
        self._publisher_factory = publisher_factory or (lambda: EventPublisher(settings))
        self._codecs: dict[int, RowCodec] = {}
        self._relations: dict[int, RelationInfo] = {}
        self._captured: set[tuple[str, str]] = set()
        self._ignored: set[int] = set()
        """Relations a shared publication sends that this capture's tables do not name."""
        self._registry: Any = None
        self._dbname = ""
        self.confirmed: int = 0
        self.received: int = 0
        self.ready = threading.Event()
        """Set once streaming has started (after any snapshot)."""
        self.liveness = Liveness(settings.metrics.stall_s)
        self.publisher: EventPublisher[int] | None = None
        """The current attempt's (read by :class:`~walbridge.capture.monitor.CaptureMonitor`)."""
        self.signal_oid = 0
        self._signal_columns: tuple[str, ...] = ()
        self.incremental: IncrementalSnapshot | None = None
        """The incremental snapshot (signals, watermark chunks) when ``source.signal_table`` is set."""
        self.signal_topic: SignalTopic | None = None

    # ------------------------------------------------------------------ preflight

    def preflight(self) -> list[RelationInfo]:
        """Check the server and the broker; resolve tables; create the publication. Fails fast."""
        with connect_source(self.source.dsn) as conn:
            self._dbname = conn.info.dbname
            relations = catalog.resolve_tables(conn, self.source.tables, self.source.exclude_tables)
            problems = catalog.check_logical_capture(conn, relations)
            if problems:
                raise ConfigError("; ".join(str(problem) for problem in problems))
            catalog.refuse_keyless(relations)
            signal_table = self.source.signal_table
            published = relations
            if signal_table:
                relations = signals.without_signal_table(relations, signal_table)
                published = [*relations, signals.signal_relation(conn, signal_table)]
            elif self.source.snapshot == "incremental" or self.source.signal_topic:
                raise ConfigError(
                    "source.snapshot: incremental and source.signal_topic need source.signal_table"
                )
            ensure_publication(conn, self.source.publication, published, self.source.slot)
            self._registry = catalog.load_type_registry(conn)
        check_broker(self.settings.kafka)
        self._relations = {rel.oid: rel for rel in relations}
        self._captured = {(rel.schema, rel.table) for rel in relations}
        if signal_table:
            self.incremental = IncrementalSnapshot(
                self.source.dsn,
                self.source.slot,
                signal_table,
                self.source.incremental_chunk_size,
                self._codec_by_name,
                lambda: sorted(f"{schema}.{table}" for schema, table in self._captured),
                self.progress,
            )
        if self.source.signal_topic:
            self.signal_topic = SignalTopic(self.settings)
        return relations

    def _preflight_retrying(self, stop: threading.Event) -> list[RelationInfo] | None:
        """``preflight``, again after a connection that broke during it (the source restarted while
        capture started); what it finds wrong still fails at once. None when stopped meanwhile."""
        found: list[list[RelationInfo]] = []
        run_with_reconnect(
            stop,
            lambda: found.append(self.preflight()),
            ready=self.ready,
            position=lambda: self.confirmed,
            transient=(psycopg.OperationalError,),
            warning="capture could not start (%s); trying again in %.0fs",
        )
        return found[0] if found else None

    # ------------------------------------------------------------------ main loop

    def run(self, stop: threading.Event) -> None:
        collect_garbage_seldom()
        relations = self._preflight_retrying(stop)
        if relations is None:
            return

        def attempt() -> None:
            publisher = self.publisher = self._publisher_factory()
            try:
                publisher.ensure_topics((rel.schema, rel.table) for rel in relations)
                self._run_once(stop, publisher, relations)
            finally:
                _discard(publisher)
                if self.incremental is not None:
                    self.incremental.close()
                if self.signal_topic is not None:
                    self.signal_topic.close()

        run_with_reconnect(
            stop,
            attempt,
            ready=self.ready,
            position=lambda: self.confirmed,
            transient=(TransientError, psycopg2.OperationalError, psycopg.OperationalError),
        )

    def _run_once(
        self, stop: threading.Event, publisher: EventPublisher[int], relations: list[RelationInfo]
    ) -> None:
        if self.source.snapshot == "initial_only":
            self._snapshot_only(publisher, relations)
            return
        slot = self.source.slot
        with connect_source(self.source.dsn) as conn:
            info = slot_info(conn, slot)
            state = snapshot_state.load(conn, slot)
            if self.source.snapshot == "incremental":
                self._prepare_incremental(conn, info is not None, state, relations)
                info, state = slot_info(conn, slot), "done"
            if self.incremental is not None:
                self.incremental.load(conn)
            legacy = snapshot_state.legacy_snapshot_done
            if state is None and info is not None and legacy(self.settings.state_dir, self._dbname, slot):
                state = "done"  # upgrading from a version that kept this in a local file
                snapshot_state.record(conn, slot, state)
            finished = state in ("done", "skipped")
            snapshot = needs_snapshot(self.source.snapshot, info is not None, not finished)
            # An interrupted snapshot may have published rows deleted since: keep its slot, so that the
            # stream from the slot's start retracts them after the snapshot is taken again.
            retake = snapshot and info is not None and state == "pending"
            if snapshot and not retake:
                # Recorded before the slot exists: a process killed from here on leaves "pending".
                snapshot_state.record(conn, slot, "pending")
                if info is not None:
                    log.info(
                        "slot %s has no finished snapshot: recreating it for a consistent snapshot", slot
                    )
                    drop_slot(conn, slot)
            elif info is not None:
                check_slot_usable(info, self._dbname, slot_holder(conn, info.active_pid))
        repl = self._replication_connection()
        try:
            cur = repl.cursor()
            if retake:
                log.info(
                    "the snapshot of slot %s was interrupted: taking it again, then streaming from the "
                    "slot's start (changes made meanwhile are replayed after it)",
                    slot,
                )
                self._record_snapshot("done", self._snapshot_only(publisher, relations))
            elif snapshot:
                consistent_point = self._create_slot_and_snapshot(cur, publisher, relations)
                self._record_snapshot("done", consistent_point)
            else:
                if info is None:
                    self._create_slot(cur, export=False)
                if not finished:
                    self._record_snapshot("skipped", None)  # snapshot: never
            self._stream(cur, publisher, stop)
        finally:
            repl.close()

    def _prepare_incremental(
        self,
        conn: psycopg.Connection[Any],
        slot_exists: bool,
        state: snapshot_state.State | None,
        relations: list[RelationInfo],
    ) -> None:
        """``snapshot: incremental``: a slot without a snapshot, and every table queued for chunks."""
        if state == "done" and slot_exists:
            return
        assert self.incremental is not None  # preflight refuses the mode without a signal table
        if not slot_exists:
            repl = self._replication_connection()
            try:
                self._create_slot(repl.cursor(), export=False)
            finally:
                repl.close()
        self.incremental.start(conn, [rel.qualified_name for rel in relations])
        snapshot_state.record(conn, self.source.slot, "done")
        log.info("incremental snapshot of %d table(s) runs beside streaming", len(relations))

    def _codec_by_name(self, name: str) -> RowCodec | None:
        """The codec of a captured table by name; a table added to the publication since start joins."""
        for oid, rel in self._relations.items():
            if rel.qualified_name == name and (rel.schema, rel.table) in self._captured:
                return self._codecs.get(oid) or self._codec_for(rel)
        if "." not in name:
            return None
        with connect_source(self.source.dsn) as conn:
            if tuple(name.split(".", 1)) not in publication_tables(conn, self.source.publication):
                return None
            try:
                found = catalog.resolve_tables(conn, [name], [])
            except ConfigError:
                return None
        if not found or not found[0].key_columns:
            return None
        rel = found[0]
        self._relations[rel.oid] = rel
        self._captured.add((rel.schema, rel.table))
        self._ignored.discard(rel.oid)
        log.info("%s joins capture (added to publication %s)", name, self.source.publication)
        return self._codec_for(rel)

    def _record_snapshot(self, state: snapshot_state.State, lsn: int | None) -> None:
        with connect_source(self.source.dsn) as conn:
            snapshot_state.record(conn, self.source.slot, state, lsn)

    def _replication_connection(self) -> Any:
        try:
            return psycopg2.connect(
                self.source.dsn,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                options=session_options(),
                application_name=application_name(),
            )
        except psycopg2.OperationalError as exc:
            raise map_pg_error(exc, "opening the replication connection") from exc

    def _create_slot(self, cur: Any, export: bool) -> tuple[int, str | None]:
        server = cur.connection.server_version
        if server >= 170000:  # a failover slot: standbys that synchronise slots keep it
            snap = "(SNAPSHOT 'export', FAILOVER true)" if export else "(SNAPSHOT 'nothing', FAILOVER true)"
        elif server >= 150000:
            snap = "(SNAPSHOT 'export')" if export else "(SNAPSHOT 'nothing')"
        else:
            snap = "EXPORT_SNAPSHOT" if export else "NOEXPORT_SNAPSHOT"
        try:
            cur.execute(f'CREATE_REPLICATION_SLOT "{self.source.slot}" LOGICAL pgoutput {snap}')
        except psycopg2.errors.DuplicateObject as exc:
            raise ConfigError(
                f"replication slot {self.source.slot} was created by another process meanwhile"
            ) from exc
        _name, consistent_point, snapshot_name, _plugin = cur.fetchone()
        log.info("created replication slot %s at %s", self.source.slot, consistent_point)
        return Lsn.parse(consistent_point).value, snapshot_name

    def _create_slot_and_snapshot(
        self, cur: Any, publisher: EventPublisher[int], relations: list[RelationInfo]
    ) -> int:
        """Create the slot with an exported snapshot, publish every row; the slot's consistent point."""
        consistent_point, snapshot_name = self._create_slot(cur, export=True)
        codecs = [self._codec_for(rel) for rel in relations]
        with connect_source(self.source.dsn, autocommit=False) as snap:
            snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snap.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_name}'")
            origin = SnapshotSource(
                LOGICAL_CONNECTOR, self.settings.events.topic_prefix, self._dbname, lsn=consistent_point
            )
            count = snapshot_tables(snap, codecs, publisher, origin, self.progress)
            snap.rollback()
        publisher.seal(consistent_point)
        while publisher.poll(0.1) != consistent_point:
            pass
        log.info("snapshot finished: %d rows", count)
        return consistent_point

    def _snapshot_only(self, publisher: EventPublisher[int], relations: list[RelationInfo]) -> int:
        """A snapshot in a transaction of its own (no slot); its LSN once every row is acknowledged."""
        codecs = [self._codec_for(rel) for rel in relations]
        with connect_source(self.source.dsn, autocommit=False) as snap:
            snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            lsn_row = snap.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            lsn = Lsn.parse(lsn_row[0]).value if lsn_row else 0
            origin = SnapshotSource(
                LOGICAL_CONNECTOR, self.settings.events.topic_prefix, self._dbname, lsn=lsn
            )
            snapshot_tables(snap, codecs, publisher, origin, self.progress)
            snap.rollback()
        publisher.seal(0)
        while publisher.poll(0.1) != 0:
            pass
        return lsn

    # ------------------------------------------------------------------ relations

    def _codec_for(self, rel: RelationInfo) -> RowCodec:
        excluded = self.source.excluded_columns(rel.schema, rel.table)
        codec = RowCodec(rel, self._registry, self.options, excluded)
        self._codecs[rel.oid] = codec
        return codec

    def _on_relation(self, msg: pgoutput.Relation) -> None:
        if f"{msg.namespace}.{msg.name}" == self.source.signal_table:
            self.signal_oid = msg.oid
            self._signal_columns = tuple(col.name for col in msg.columns)
            self._ignored.add(msg.oid)
            return
        if (msg.namespace, msg.name) not in self._captured:
            self._ignored.add(msg.oid)
            self._codecs.pop(msg.oid, None)
            return
        self._ignored.discard(msg.oid)
        known = self._relations.get(msg.oid)
        names = tuple((col.name, col.type_oid) for col in msg.columns)
        if known is None or tuple((c.name, c.type_oid) for c in known.columns) != names:
            known = self._reload_relation(msg)
        self._codec_for(known)

    def _reload_relation(self, msg: pgoutput.Relation) -> RelationInfo:
        with connect_source(self.source.dsn) as conn:
            found = catalog.relation_by_oid(conn, msg.oid)
            self._registry = catalog.load_type_registry(conn)
        known = {col.name: col for col in found.columns} if found else {}
        columns = tuple(
            ColumnInfo(
                col.name,
                col.type_oid,
                col.typmod,
                known[col.name].not_null if col.name in known else False,
                index + 1,
                known[col.name].generated if col.name in known else False,
            )
            for index, col in enumerate(msg.columns)
        )
        identity = (
            chr(msg.replica_identity) if isinstance(msg.replica_identity, int) else str(msg.replica_identity)
        )
        if found is not None:
            rel = dataclasses.replace(found, oid=msg.oid, columns=columns, replica_identity=identity)
        else:
            key = tuple(col.name for col in msg.columns if col.flags & 1)
            rel = RelationInfo(msg.oid, msg.namespace, msg.name, columns, key, identity, (), key)
        self._relations[msg.oid] = rel
        return rel

    def _codec(self, oid: int) -> RowCodec | None:
        """The relation's codec; None for a relation this capture does not capture."""
        codec = self._codecs.get(oid)
        if codec is None:
            if oid in self._ignored:
                return None
            raise DecodeError(f"change for relation {oid} arrived before its Relation message")
        return codec

    # ------------------------------------------------------------------ streaming

    def _plugin_options(self, cur: Any) -> dict[str, str]:
        options = {"proto_version": "1", "publication_names": self.source.publication}
        if cur.connection.server_version >= 140000:
            # Heartbeats are transactional logical messages: they come back through the stream.
            options["messages"] = "true"
        return options

    def _stream(self, cur: Any, publisher: EventPublisher[int], stop: threading.Event) -> None:
        try:
            cur.start_replication(
                slot_name=self.source.slot,
                decode=False,
                start_lsn=0,
                options=self._plugin_options(cur),
                status_interval=max(1, self.source.status_interval_ms // 1000),
            )
        except psycopg2.errors.ObjectInUse as exc:
            with connect_source(self.source.dsn) as conn:
                info = slot_info(conn, self.source.slot)
                holder = slot_holder(conn, info.active_pid if info else None)
            raise ConfigError(
                f"replication slot {self.source.slot} is in use by {holder}; "
                "stop that process or choose another source.slot"
            ) from exc
        except psycopg2.OperationalError as exc:
            raise map_pg_error(exc, "starting replication") from exc
        log.info("streaming from slot %s (publication %s)", self.source.slot, self.source.publication)
        self.ready.set()
        stream = _Stream(self, publisher, cur)
        stream.loop(stop)


class _Stream:
    """The hot loop: replication messages → events → producer; feedback after Kafka acks."""

    def __init__(self, capture: LogicalCapture, publisher: EventPublisher[int], cur: Any) -> None:
        self.capture = capture
        self.publisher = publisher
        self.cur = cur
        settings = capture.settings
        self.prefix = settings.events.topic_prefix
        self.db = capture._dbname
        self.max_in_flight = settings.source.max_in_flight
        self.heartbeat_s = settings.source.heartbeat_ms / 1000
        self.heartbeat_query = settings.source.heartbeat_action_query
        self.in_txn = False
        self.xid = 0
        self.commit_ts_us = 0
        self.commit_ts_ms = 0
        self.last_commit = 0
        self.confirmed = 0
        self.sent_flush = 0
        self.next_heartbeat = time.monotonic() + self.heartbeat_s
        self.heartbeat_conn: psycopg.Connection[Any] | None = None
        self._prepared: dict[int, PreparedSource | None] = {}
        """Per relation oid, for the current transaction."""
        self._columns: dict[int, tuple[str, ...]] = {}
        self._codecs = capture._codecs
        """The capture's codecs by relation oid (the same dict: relations added later are in it)."""
        self._refresh_columns()
        self.incremental = capture.incremental
        self.commit_lsn = 0

    def loop(self, stop: threading.Event) -> None:
        read = self.cur.read_message
        decode = pgoutput.decode
        fast = pgoutput.decode_row_change
        columns = self._columns
        handlers = _HANDLERS
        row_change = self._row_change
        count = 0
        try:
            while not stop.is_set():
                msg = read()
                if msg is not None:
                    payload = msg.payload
                    # Row changes (nearly every message) skip the message objects; anything else,
                    # or anything unusual in a row change, takes the general decoder.
                    change = fast(payload, columns)
                    if change is not None:
                        row_change(change, msg.data_start)
                    else:
                        message = decode(payload)
                        handler = handlers.get(type(message))
                        if handler is not None:
                            handler(self, message, msg.data_start)
                    count += 1
                    if count & 255 == 0:
                        self._tick()
                    continue
                self._tick()
                if self.in_txn or self.publisher.in_flight:
                    select.select([self.cur], [], [], 0.005)
                else:
                    self._idle()
                    select.select([self.cur], [], [], 0.1)
            self._drain()
        except psycopg2.DatabaseError as exc:
            # Not only OperationalError: a server's shutdown ends the COPY stream, and psycopg2 then
            # raises a bare DatabaseError ("no COPY in progress"), a lost connection (no SQLSTATE).
            raise map_pg_error(exc, "streaming changes") from exc
        finally:
            self._close_heartbeat_connection()

    # --------------------------------------------------------------- positions

    def _tick(self) -> None:
        if self.capture.signal_topic is not None:
            self.capture.signal_topic.relay()
        if self.incremental is not None:
            self.incremental.tick()
            if len(self._columns) != len(self.capture._codecs):  # a table joined capture by a signal
                self._refresh_columns()
                self.publisher.ensure_topics(self.capture._captured)
        publisher = self.publisher
        confirmed = publisher.poll(0)
        while publisher.in_flight > self.max_in_flight:
            confirmed = publisher.poll(0.05)
        if confirmed is not None and confirmed > self.confirmed:
            self.confirmed = confirmed
            self._feedback()

    def _idle(self) -> None:
        """Housekeeping while nothing is waiting or in flight: liveness and heartbeats.

        The slot's WAL figures are read by :class:`~walbridge.capture.monitor.CaptureMonitor`."""
        self.capture.liveness.touch()
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.heartbeat_s
            self._heartbeat()

    def _feedback(self) -> None:
        self.cur.send_feedback(write_lsn=self.confirmed, flush_lsn=self.confirmed, apply_lsn=self.confirmed)
        self.sent_flush = self.confirmed
        self.capture.confirmed = self.confirmed
        metrics.capture.confirmed_lsn.set(self.confirmed)
        if self.incremental is not None:
            self.incremental.confirmed(self.confirmed)

    def _heartbeat(self) -> None:
        """Advance the slot on idle or filtered databases.

        The server's keepalive positions are not used: they can run ahead of transactions that
        are still being sent. Instead a transactional logical message is written; it comes back
        through the stream in its own transaction, whose commit is confirmed like any other once
        everything before it is acknowledged.
        """
        metrics.capture.heartbeats.inc()
        self.cur.send_feedback(flush_lsn=self.confirmed, reply=False, force=True)
        if self.in_txn or self.publisher.tracker.pending:
            return
        try:
            conn = self._heartbeat_connection()
            if self.heartbeat_query:
                conn.execute(self.heartbeat_query)
            if self.cur.connection.server_version >= 140000:
                conn.execute("SELECT pg_logical_emit_message(true, 'walbridge-heartbeat', '')")
        except (psycopg.Error, WalbridgeError) as exc:
            log.warning("heartbeat failed: %s", exc)
            self._close_heartbeat_connection()

    def _heartbeat_connection(self) -> psycopg.Connection[Any]:
        if self.heartbeat_conn is None or self.heartbeat_conn.closed:
            self.heartbeat_conn = connect_source(self.capture.source.dsn)
        return self.heartbeat_conn

    def _close_heartbeat_connection(self) -> None:
        if self.heartbeat_conn is not None:
            self.heartbeat_conn.close()
            self.heartbeat_conn = None

    def _drain(self) -> None:
        """On stop: wait (bounded) for outstanding acknowledgements, confirm what is safe."""
        deadline = time.monotonic() + 10.0
        while self.publisher.in_flight and time.monotonic() < deadline:
            self._tick()
            self.publisher.poll(0.05)
        self._tick()

    # --------------------------------------------------------------- messages

    def _begin(self, msg: pgoutput.Begin, _lsn: int) -> None:
        self.in_txn = True
        self.xid = msg.xid
        self.commit_ts_us = msg.commit_ts_us
        self.commit_ts_ms = msg.commit_ts_us // 1000
        self.commit_lsn = msg.final_lsn
        self._prepared.clear()

    def _commit(self, msg: pgoutput.Commit, _lsn: int) -> None:
        self.in_txn = False
        if self.incremental is not None:
            self.incremental.committed(msg.end_lsn)
        self.publisher.seal(msg.end_lsn)
        self.last_commit = msg.commit_lsn
        self._prepared.clear()
        self.capture.received = msg.end_lsn
        metrics.capture.received_lsn.set(msg.end_lsn)
        metrics.capture.behind_source_ms.set(max(0, time.time() * 1000 - self.commit_ts_ms))

    def _relation(self, msg: pgoutput.Relation, _lsn: int) -> None:
        self.capture._on_relation(msg)
        self._prepared.clear()
        self._refresh_columns()

    def _refresh_columns(self) -> None:
        """Column names per relation for the fast decoder (kept in place: the loop holds the dict)."""
        self._columns.clear()
        self._columns.update((oid, codec.column_names) for oid, codec in self.capture._codecs.items())

    def _source(self, codec: RowCodec, lsn: int) -> Source:
        rel = codec.relation
        return Source(
            LOGICAL_CONNECTOR,
            self.prefix,
            self.db,
            rel.schema,
            rel.table,
            self.commit_ts_ms,
            "false",
            self.xid,
            lsn,
            f'["{self.last_commit}","{lsn}"]',
            None,
            self.commit_ts_us,
        )

    def _prepare(self, oid: int, codec: RowCodec) -> PreparedSource | None:
        """The spliced source block of this table in the current transaction (all but the LSN)."""
        prepared = self.publisher.prepare(self._source(codec, LSN_MARK), codec.table_schema)
        self._prepared[oid] = prepared
        return prepared

    def _emit(self, op: str, codec: RowCodec, lsn: int, key: Any, before: Any, after: Any) -> None:
        oid = codec.relation.oid
        if self.incremental is not None and self.incremental.chunk_oid == oid:
            self.incremental.seen(key, self.xid)
        prepared = self._prepared[oid] if oid in self._prepared else self._prepare(oid, codec)
        ts_ms = time.time_ns() // 1_000_000
        if prepared is not None and op != "t":
            self.publisher.publish_prepared(prepared, op, key, before, after, lsn, ts_ms)
            return
        event = ChangeEvent(op, self._source(codec, lsn), key, before, after, ts_ms, codec.table_schema)
        self.publisher.publish(event)

    def _row_change(self, change: tuple[int, int, Any, Any, Any], lsn: int) -> None:
        """A row change from :func:`pgoutput.decode_row_change` (values already text)."""
        kind, oid, old, key, new = change
        codec = self._codecs.get(oid)
        if codec is None and (codec := self.capture._codec(oid)) is None:
            return
        row = codec.convert_text_row
        if kind == _INSERT:
            after = row(new)
            self._emit("c", codec, lsn, codec.key(after), None, after)
        elif kind == _UPDATE:
            self._on_update(codec, lsn, row(new), old, key, row)
        else:
            self._on_delete(codec, lsn, old if old is not None else key, row)

    def _insert(self, msg: pgoutput.Insert, lsn: int) -> None:
        if msg.relation_oid == self.capture.signal_oid and self.incremental is not None:
            texts = [v.decode() if isinstance(v, bytes | bytearray) else v for v in msg.new]
            self._signal(dict(zip(self.capture._signal_columns, texts, strict=False)), lsn)
            return
        codec = self.capture._codec(msg.relation_oid)
        if codec is None:
            return
        self._on_insert(codec, lsn, codec.row(msg.new))

    def _signal(self, values: dict[str, Any], lsn: int) -> None:
        """A signal row; at a chunk's close watermark, its remaining rows as ``op: r`` events."""
        assert self.incremental is not None
        chunk = self.incremental.on_signal(values, self.commit_lsn)
        if chunk is None:
            return
        codec = chunk.codec
        ts_ms = time.time_ns() // 1_000_000
        source = dataclasses.replace(self._source(codec, lsn), snapshot="incremental", ts_ms=ts_ms)
        prepared = self.publisher.prepare(dataclasses.replace(source, lsn=LSN_MARK), codec.table_schema)
        for key, after in chunk.rows():
            if prepared is not None:
                self.publisher.publish_prepared(prepared, "r", key, None, after, lsn, ts_ms)
            else:
                self.publisher.publish(ChangeEvent("r", source, key, None, after, ts_ms, codec.table_schema))

    def _update(self, msg: pgoutput.Update, lsn: int) -> None:
        codec = self.capture._codec(msg.relation_oid)
        if codec is None:
            return
        self._on_update(codec, lsn, codec.row(_with_old_toast(msg)), msg.old, msg.key, codec.row)

    def _delete(self, msg: pgoutput.Delete, lsn: int) -> None:
        codec = self.capture._codec(msg.relation_oid)
        if codec is None:
            return
        self._on_delete(codec, lsn, msg.old if msg.old is not None else msg.key, codec.row)

    def _on_insert(self, codec: RowCodec, lsn: int, after: dict[str, Any]) -> None:
        self._emit("c", codec, lsn, codec.key(after), None, after)

    def _on_update(
        self, codec: RowCodec, lsn: int, after: dict[str, Any], old: Any, key: Any, row: Callable[[Any], Any]
    ) -> None:
        new_key = codec.key(after)
        before = row(old) if old is not None else None
        # REPLICA IDENTITY FULL: the old key comes from `before`, converted once.
        key_row = before if before is not None else row(key) if key is not None else None
        old_key = codec.key(key_row) if key_row is not None else new_key
        # Key columns are NOT NULL: a null one was not in the old image (it is not the replica identity).
        if (
            old_key != new_key
            and key_row is not None
            and old_key is not None
            and None not in old_key.values()
        ):
            # Primary key changed: Debezium emits a delete (+ tombstone) under the old key, then a create.
            self._emit("d", codec, lsn, old_key, key_row, None)
            self._emit("c", codec, lsn, new_key, None, after)
            return
        self._emit("u", codec, lsn, new_key, before, after)

    def _on_delete(self, codec: RowCodec, lsn: int, old_tuple: Any, row: Callable[[Any], Any]) -> None:
        if old_tuple is None:
            raise DecodeError(f"delete on {codec.relation.schema}.{codec.relation.table} carries no old row")
        before = row(old_tuple)
        self._emit("d", codec, lsn, codec.key(before), before, None)

    def _truncate(self, msg: pgoutput.Truncate, lsn: int) -> None:
        for oid in msg.relation_oids:
            codec = self.capture._codecs.get(oid)
            if codec is not None:
                self._emit("t", codec, lsn, None, None, None)


# Per message type, the _Stream method that handles it. A class-level table of plain functions: bound
# methods stored on the instance would make a reference cycle that keeps the stream, its publisher
# and the producer's broker connections alive until the garbage collector runs.
_HANDLERS: dict[type, Callable[[_Stream, Any, int], None]] = {
    pgoutput.Begin: _Stream._begin,
    pgoutput.Commit: _Stream._commit,
    pgoutput.Relation: _Stream._relation,
    pgoutput.Insert: _Stream._insert,
    pgoutput.Update: _Stream._update,
    pgoutput.Delete: _Stream._delete,
    pgoutput.Truncate: _Stream._truncate,
}


_INSERT, _UPDATE = ord("I"), ord("U")


def _with_old_toast(msg: pgoutput.Update) -> Sequence[Any]:
    """The new row, its unchanged TOASTed values taken from the old row when it has them.

    With ``REPLICA IDENTITY FULL`` the server sends the old row detoasted, while the new row still
    marks unchanged TOASTed values as not sent; like Debezium, use the old row's value then.
    """
    new, old = msg.new, msg.old
    if old is None or not any(value is UNCHANGED_TOAST for value in new):
        return new
    return [o if n is UNCHANGED_TOAST else n for n, o in zip(new, old, strict=False)]


def _discard(publisher: EventPublisher[int]) -> None:
    """Drop whatever an abandoned attempt left in the producer (it will be resent)."""
    try:
        publisher.producer.purge()
        publisher.producer.poll(0)
    except Exception:
        pass
