"""The PostgreSQL sink: apply change events to a destination database, exactly once in effect.

Per batch, inside one destination transaction:

1. *offset fence*: the rows of ``walbridge.offsets(group_id, topic, partition, next_offset)`` for
   the batch's partitions are locked; if one already points past the batch's first record there,
   another group member applied it and :class:`OffsetConflict` is raised (nothing is applied);
   then the batch's truncate copies record their arrival at their barrier, and only a truncate whose
   barrier completes here is applied, after the batch's rows (:mod:`~walbridge.sinks.pg_barrier`);
2. per destination table, the events collapse to the last change per primary key (create, read
   and update → upsert; delete → delete; truncate drops what came before it; an update that
   changes the key also deletes the old key) and are applied in one go: ``COPY`` into a
   temporary stage table, then ``DELETE … USING`` and ``INSERT … SELECT … ON CONFLICT DO UPDATE``
   (``apply_method: copy``, the default) or ``executemany`` in pipeline mode (``executemany``).
   With ``copy``, rows travel as the events' JSON (one ``json`` line each, serialised by orjson)
   and PostgreSQL converts each value by destination column type
   (:func:`~walbridge.sinks.pg_types.sql_expr`); tables with a column that has no SQL conversion
   (arrays, ``money``) get rows converted in Python (:mod:`~walbridge.sinks.pg_types`);
3. when that fails for a permanent reason, the table's records are applied one by one in
   savepoints to find the offenders, which are returned as failures (the rest stays applied);
4. :meth:`PostgresSink.commit` stores the next offsets and commits.

Values are converted by destination column type (:mod:`walbridge.sinks.pg_types`), in SQL or
in Python, with the same result; when the SQL form refuses a value, step 3 converts in Python.
Errors are classified by SQLSTATE in :func:`walbridge.pgerrors.map_pg_error`. Records are
decoded by :func:`~walbridge.sinks.lean.decode_lean` (``decode_event``): only the change is used.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import sql

from walbridge.config import PostgresSinkSettings
from walbridge.errors import FatalError, PermanentError, TransientError, UnknownColumn
from walbridge.events import ChangeEvent
from walbridge.pgerrors import map_pg_error
from walbridge.sinks.base import OffsetConflict, RecordFailure, SinkRecord, TopicPartitionKey
from walbridge.sinks.lean import decode_lean
from walbridge.sinks.pg_barrier import BarrierLog, ensure_table, is_barrier
from walbridge.sinks.pg_types import (
    Converter,
    TableInfo,
    connect_type,
    converter,
    read_table,
    sql_expr,
)
from walbridge.unavailable import is_unavailable, mentions_unavailable, unavailable_names

__all__ = ["OFFSETS_TABLE", "PostgresSink", "map_pg_error"]  # map_pg_error: see walbridge.pgerrors

log = logging.getLogger(__name__)

OFFSETS_TABLE = "walbridge.offsets"

_OFFSETS_DDL = """
CREATE SCHEMA IF NOT EXISTS walbridge;
CREATE TABLE IF NOT EXISTS walbridge.offsets (
    group_id text NOT NULL,
    topic text NOT NULL,
    "partition" integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, "partition")
)
"""

_FENCE_SQL = """
INSERT INTO walbridge.offsets (group_id, topic, "partition", next_offset)
SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)
ON CONFLICT (group_id, topic, "partition") DO UPDATE SET next_offset = walbridge.offsets.next_offset
RETURNING topic, "partition", next_offset
"""

_STORED_SQL = """
SELECT topic, "partition", next_offset FROM walbridge.offsets
WHERE group_id = %s AND (topic, "partition") IN (SELECT * FROM unnest(%s::text[], %s::int[]))
"""

_STORE_SQL = """
INSERT INTO walbridge.offsets (group_id, topic, "partition", next_offset)
SELECT %s, t, p, o FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS x(t, p, o)
ON CONFLICT (group_id, topic, "partition")
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""

Key = tuple[Any, ...]
Group = tuple[tuple[str, ...], bool]
"""Rows applied by one statement: their column names, and whether they are partial."""
_NONE: frozenset[str] = frozenset()
_JSON_STAGE = "_wb_json"


class MissingRow(PermanentError):
    """An update that leaves out unchanged TOASTed columns found no destination row to keep them in.

    Inserting it would write NULL (or defaults) in place of values the event does not carry; so
    the record fails, with this error, instead.
    """

    retryable = False


def _json_default(value: Any) -> str:
    """orjson fallback: precise decimals (decoded from a schema block) travel as their text."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@dataclass(slots=True)
class _Step:
    record: SinkRecord
    op: str
    """``u`` upsert, ``d`` delete, ``t`` truncate."""
    key: Key = ()
    row: dict[str, Any] = field(default_factory=dict)
    old_key: Key | None = None
    unavailable: frozenset[str] = _NONE
    """Columns the event left unchanged (Debezium's unavailable-value placeholder): not in ``row``."""


@dataclass(slots=True)
class _TableOps:
    """The changes of one destination table in a batch, collapsed to the last per key."""

    info: TableInfo
    truncate: bool = False
    upserts: dict[Key, dict[str, Any]] = field(default_factory=dict)
    deletes: dict[Key, None] = field(default_factory=dict)
    steps: list[_Step] = field(default_factory=list)
    """Python path: the converted changes, in order (applied one by one when the batch fails)."""
    records: list[SinkRecord] = field(default_factory=list)
    """JSON path: the records, in order (converted only when the batch fails)."""
    partial: dict[Key, frozenset[str]] = field(default_factory=dict)
    """Upserts that leave out unchanged TOASTed columns, by key: they only update an existing row."""

    def add(self, step: _Step) -> None:
        self.steps.append(step)
        self.change(step.op, step.key, step.row, step.old_key, step.unavailable)

    def change(
        self, op: str, key: Key, row: dict[str, Any], old_key: Key | None, unavailable: frozenset[str] = _NONE
    ) -> None:
        if op == "t":
            self.truncate = True
            self.upserts.clear()
            self.deletes.clear()
            self.partial.clear()
            return
        if old_key is not None and old_key != key:
            self.upserts.pop(old_key, None)
            self.partial.pop(old_key, None)
            self.deletes[old_key] = None
        if op == "d":
            self.upserts.pop(key, None)
            self.partial.pop(key, None)
            self.deletes[key] = None
            return
        previous = self.upserts.get(key)
        if unavailable and previous is not None:
            # An earlier change of this batch may carry what this one leaves out.
            row = {**previous, **row}
            unavailable = (unavailable - previous.keys()) | (self.partial.get(key, _NONE) - row.keys())
        if unavailable:
            self.partial[key] = unavailable  # a delete before it stays: the update must then miss
        else:
            self.deletes.pop(key, None)
            self.partial.pop(key, None)
        self.upserts[key] = row

    def json_groups(self) -> dict[Group, list[dict[str, Any]]]:
        """Raw JSON rows grouped by their column set and partialness (the JSON path)."""
        groups: dict[Group, list[dict[str, Any]]] = {}
        partial = self.partial
        for key, row in self.upserts.items():
            groups.setdefault((tuple(row), key in partial), []).append(row)
        return groups

    def upsert_groups(self) -> dict[Group, list[tuple[Any, ...]]]:
        """Rows grouped by their column set and partialness (unchanged TOAST values left out)."""
        groups: dict[Group, list[tuple[Any, ...]]] = {}
        partial = self.partial
        for key, row in self.upserts.items():
            groups.setdefault((tuple(row), key in partial), []).append(tuple(row.values()))
        return groups


@dataclass(slots=True)
class _Prepared:
    """A batch collapsed ahead by :meth:`PostgresSink.prepare`."""

    records: tuple[SinkRecord, ...]
    version: int
    """The sink's ``_tables_version`` when it began."""
    tables: dict[tuple[str, str], _TableOps]
    failures: list[RecordFailure]


class _NotCached(Exception):
    """A table of the batch is not described yet: only :meth:`PostgresSink.write_batch` reads it."""


_Planner = Callable[
    [psycopg.Connection[Any] | None, tuple[str, str], SinkRecord, dict[tuple[str, str], _TableOps]],
    tuple[_TableOps, bool] | None,
]


def _is_truncate(record: SinkRecord) -> bool:
    event = record.event
    return event is not None and event.op == "t"


class PostgresSink:
    """Applies change events to a PostgreSQL database (see the module docstring)."""

    owns_offsets = True
    decode_event = staticmethod(decode_lean)
    barrier_of = staticmethod(is_barrier)

    def __init__(
        self, settings: PostgresSinkSettings, group_id: str | None = None, source_dsn: str | None = None
    ) -> None:
        self.settings = settings
        self.source_dsn = source_dsn
        """With ``auto_create``: where to read a missing table's definition when events carry no schema."""
        self.name = settings.sink_name
        self.group_id = group_id or settings.consumer_group
        self._conn: psycopg.Connection[Any] | None = None
        self._tables: dict[tuple[str, str], TableInfo] = {}
        self._converters: dict[tuple[str, str], dict[str, Converter]] = {}
        self._exprs: dict[tuple[str, str], dict[str, sql.Composable] | None] = {}
        """Per table: SQL conversions of every column (the JSON path), or None (Python path)."""
        self._stages: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self._filled: set[str] = set()
        """Stages written in the current transaction: emptied before their next use (ON COMMIT DELETE
        ROWS empties the others). A savepoint rolled back leaves them here: rows of a released one stay."""
        self._stage_names: dict[tuple[str, str, tuple[str, ...]], str] = {}
        self._skipped: set[str] = set()
        self._barriers = BarrierLog(settings.dsn, self.group_id, f"walbridge-{self.name}")
        self._tables_version = 0
        """Bumped whenever a table's cached description is read or forgotten (see :meth:`prepare`)."""
        self._prepared: _Prepared | None = None

    # ------------------------------------------------------------------ Sink

    def open(self) -> None:
        """Nothing: :meth:`probe` connects (the runner waits for it before joining the group)."""

    def probe(self) -> None:
        """Connect to the destination; TransientError while it does not answer."""
        self._connection()

    def close(self) -> None:
        self._barriers.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def stored_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        if not partitions:
            return {}
        try:
            with self._connect(autocommit=True) as conn:
                self._ensure_offsets_table(conn)
                rows = conn.execute(
                    _STORED_SQL,
                    (self.group_id, [t for t, _ in partitions], [p for _, p in partitions]),
                ).fetchall()
        except psycopg.Error as exc:
            raise map_pg_error(exc, "reading stored offsets") from exc
        return {(t, p): o for t, p, o in rows}

    def hold_offsets(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Stored offsets, locked in the batch transaction until commit or rollback.

        For ``dlq replay`` (:mod:`walbridge.sinks.replay`): a running member waits at its offset
        fence meanwhile, so what it applies cannot slip between the replay's check and its writes.
        """
        conn = self._connection()
        try:
            rows = conn.execute(
                _STORED_SQL + ' ORDER BY topic COLLATE "C", "partition" FOR SHARE',
                (self.group_id, [t for t, _ in partitions], [p for _, p in partitions]),
            ).fetchall()
        except psycopg.Error as exc:
            raise map_pg_error(exc, "locking stored offsets", sink=self.name) from exc
        return {(t, p): o for t, p, o in rows}

    def write_batch(self, records: list[SinkRecord], *, fence: bool = True) -> list[RecordFailure]:
        """Apply records; ``fence=False`` (replayed dead letters) skips the offset fence."""
        if not records:
            return []
        conn = self._connection()
        try:
            if fence:
                self._fence(conn, records)
            records = self._barriers.arrive(conn, records)
            failures: list[RecordFailure] = []
            tables = self._take_prepared(records, failures)
            if tables is None:
                tables = self._collapse(conn, records, failures)
            for ops in tables.values():
                failures.extend(self._apply_table(conn, ops))
            return failures
        except psycopg.Error as exc:
            raise map_pg_error(exc, "applying a batch", sink=self.name) from exc

    def prepare(self, records: list[SinkRecord]) -> None:
        """Collapse the next batch per table while the current one is applied (the runner's prefetch).

        Runs on the runner's thread, at the same time as :meth:`write_batch` of the batch before: it
        uses only table descriptions already cached, never the connection. :meth:`write_batch` takes
        the result when it is given the same records and no cached description changed meanwhile;
        otherwise (and for a batch with a truncate barrier, a table not described yet, or a column the
        description lacks) it collapses the batch itself, as without ``prepare``.
        """
        self._prepared = None
        if not records or any(_is_truncate(record) for record in records):
            return
        version = self._tables_version
        failures: list[RecordFailure] = []
        try:
            tables = self._collapse_once(None, records, failures, self._cached_plan)
        except _NotCached:
            return
        if any(isinstance(failure.error, UnknownColumn) for failure in failures):
            return  # write_batch reads the table again first
        self._prepared = _Prepared(tuple(records), version, tables, failures)

    def _cached_plan(
        self,
        conn: psycopg.Connection[Any] | None,
        ident: tuple[str, str],
        record: SinkRecord,
        tables: dict[tuple[str, str], _TableOps],
    ) -> tuple[_TableOps, bool] | None:
        """:meth:`_plan` from the cached descriptions only."""
        dest = self._destination(*ident)
        info = self._tables.get(dest)
        if info is None:
            raise _NotCached
        return self._table_ops(tables, dest, info)

    def _take_prepared(
        self, records: list[SinkRecord], failures: list[RecordFailure]
    ) -> dict[tuple[str, str], _TableOps] | None:
        """The tables :meth:`prepare` collapsed ``records`` into, when still valid; taken once."""
        prepared, self._prepared = self._prepared, None
        if (
            prepared is None
            or prepared.version != self._tables_version
            or len(prepared.records) != len(records)
            or not all(map(operator.is_, prepared.records, records))
        ):
            return None
        failures += prepared.failures
        return prepared.tables

    def barriers_waiting(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, str]:
        """Partitions stopped at a truncate not applied yet (see :mod:`walbridge.sinks.pg_barrier`)."""
        return self._barriers.waiting(partitions)

    def barriers_applied(self, barriers: set[tuple[str, str]]) -> set[tuple[str, str]]:
        return self._barriers.applied(barriers)

    def commit(self, next_offsets: dict[TopicPartitionKey, int]) -> None:
        conn = self._connection()
        items = sorted(next_offsets.items())
        try:
            if items:
                conn.execute(
                    _STORE_SQL,
                    (
                        self.group_id,
                        [t for (t, _), _ in items],
                        [p for (_, p), _ in items],
                        [o for _, o in items],
                    ),
                )
            conn.commit()
        except psycopg.Error as exc:
            self._stages.clear()
            raise map_pg_error(exc, "committing a batch", sink=self.name) from exc
        finally:
            self._filled.clear()

    def rollback(self) -> None:
        self._stages.clear()
        self._filled.clear()
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            return
        try:
            conn.rollback()
        except psycopg.Error as exc:
            raise map_pg_error(exc, "rolling back") from exc

    # ------------------------------------------------------------------ connection

    def _connect(self, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.settings.dsn,
                autocommit=autocommit,
                connect_timeout=5,
                application_name=f"walbridge-{self.name}",
            )
        except psycopg.Error as exc:
            raise map_pg_error(exc, "connecting to the destination") from exc

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        self._conn = None
        self._stages.clear()
        self._filled.clear()
        self._stage_names.clear()
        conn = self._connect()
        try:
            self._ensure_offsets_table(conn)
            ensure_table(conn)
            conn.commit()
        except psycopg.Error as exc:
            conn.close()
            raise map_pg_error(exc, "creating walbridge.offsets") from exc
        self._conn = conn
        return conn

    @staticmethod
    def _ensure_offsets_table(conn: psycopg.Connection[Any]) -> None:
        if conn.execute("SELECT to_regclass('walbridge.offsets')").fetchone() != (None,):
            return
        try:
            with conn.transaction():
                conn.execute(_OFFSETS_DDL)
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
            pass  # another sink created it at the same moment

    # ------------------------------------------------------------------ the batch

    def _fence(self, conn: psycopg.Connection[Any], records: list[SinkRecord]) -> None:
        first: dict[TopicPartitionKey, int] = {}
        for record in records:
            key = (record.topic, record.partition)
            if key not in first or record.offset < first[key]:
                first[key] = record.offset
        items = sorted(first.items())
        rows = conn.execute(
            _FENCE_SQL,
            (self.group_id, [t for (t, _), _ in items], [p for (_, p), _ in items], [o for _, o in items]),
        ).fetchall()
        for topic, partition, stored in rows:
            if stored > first[(topic, partition)]:
                raise OffsetConflict(
                    f"group {self.group_id} already applied {topic}[{partition}] up to {stored}, "
                    f"past this batch's first offset {first[(topic, partition)]}",
                    topic=topic,
                    partition=partition,
                )

    def _collapse(
        self, conn: psycopg.Connection[Any], records: list[SinkRecord], failures: list[RecordFailure]
    ) -> dict[tuple[str, str], _TableOps]:
        """The batch's changes per destination table. A column the cached description of a table lacks
        may have been added since (ALTER TABLE on the destination): that table is read again, once per
        batch, before the record counts as refused."""
        refreshed: set[tuple[str, str]] = set()
        while True:
            found: list[RecordFailure] = []
            tables = self._collapse_once(conn, records, found)
            stale = {
                dest
                for failure in found
                if isinstance(failure.error, UnknownColumn)
                and (dest := self._destination(*_ident(failure.record))) not in refreshed
            }
            if not stale:
                failures += found
                return tables
            for dest in stale:
                self._forget_table(dest)
            refreshed |= stale

    def _forget_table(self, dest: tuple[str, str]) -> None:
        self._tables_version += 1
        for cache in (self._tables, self._converters, self._exprs):
            cache.pop(dest, None)

    def _collapse_once(
        self,
        conn: psycopg.Connection[Any] | None,
        records: Iterable[SinkRecord],
        failures: list[RecordFailure],
        plan_of: _Planner | None = None,
    ) -> dict[tuple[str, str], _TableOps]:
        make_plan = plan_of or self._plan
        tables: dict[tuple[str, str], _TableOps] = {}
        plans: dict[tuple[str, str], tuple[_TableOps, bool] | None] = {}
        for record in records:
            event = record.event
            if event is None:
                continue
            source = event.source
            ident = (source.schema, source.table)
            try:
                if ident in plans:
                    plan = plans[ident]
                else:
                    plan = plans[ident] = make_plan(conn, ident, record, tables)
                if plan is None:
                    continue
                ops, raw = plan
                if raw:
                    self._add_raw(ops, record)
                else:
                    ops.add(self._step(ops.info, record))
            except PermanentError as exc:
                failures.append(RecordFailure(record, exc))
        return tables

    def _plan(
        self,
        conn: psycopg.Connection[Any] | None,
        ident: tuple[str, str],
        record: SinkRecord,
        tables: dict[tuple[str, str], _TableOps],
    ) -> tuple[_TableOps, bool] | None:
        """Where a source table's events of this batch go, and whether by the JSON path."""
        assert conn is not None
        dest = self._destination(*ident)
        info = self._table(conn, dest, record)
        if info is None:
            return None
        return self._table_ops(tables, dest, info)

    def _table_ops(
        self, tables: dict[tuple[str, str], _TableOps], dest: tuple[str, str], info: TableInfo
    ) -> tuple[_TableOps, bool]:
        """The batch's operations on ``dest`` (created on first use), and whether by the JSON path."""
        ops = tables.get(dest)
        if ops is None:
            ops = tables[dest] = _TableOps(info)
        return ops, self._json_path(info)

    def _destination(self, schema: str, table: str) -> tuple[str, str]:
        mapped = self.settings.table_map.get(f"{schema}.{table}")
        if mapped is None:
            return schema, table
        dest_schema, _, dest_table = mapped.rpartition(".")
        return dest_schema or schema, dest_table

    def _table(
        self, conn: psycopg.Connection[Any], dest: tuple[str, str], record: SinkRecord
    ) -> TableInfo | None:
        info = self._tables.get(dest)
        if info is not None:
            return info
        self._tables_version += 1
        info = read_table(conn, *dest)
        if info is None:
            info = self._missing_table(dest, record)
            if info is None:
                return None
        info = _keyed_by_event(info, record.key)
        if not info.key:
            raise FatalError(
                f"destination table {info.qualified} has no primary key; walbridge upserts by key: add one",
                table=info.qualified,
            )
        if record.key is not None:  # keyless (truncate): the key columns are decided by a keyed event
            self._tables[dest] = info
        self._converters[dest] = {name: converter(col) for name, col in info.columns.items()}
        exprs = {name: sql_expr(col, sql.Identifier("x", name)) for name, col in info.columns.items()}
        complete = all(e is not None for e in exprs.values())
        self._exprs[dest] = {k: e for k, e in exprs.items() if e is not None} if complete else None
        return info

    def _json_path(self, info: TableInfo) -> bool:
        return self.settings.apply_method == "copy" and self._exprs.get((info.schema, info.name)) is not None

    def _missing_table(self, dest: tuple[str, str], record: SinkRecord) -> TableInfo | None:
        qualified = f"{dest[0]}.{dest[1]}"
        if self.settings.auto_create:
            return self._create_table(dest, record)
        if not self.settings.strict:
            if qualified not in self._skipped:
                self._skipped.add(qualified)
                log.warning("%s: no destination table %s; skipping its events", self.name, qualified)
            return None
        raise FatalError(
            f"destination table {qualified} does not exist: create it, map the source table to another one "
            "with table_map, or set auto_create: true",
            table=qualified,
        )

    def _create_table(self, dest: tuple[str, str], record: SinkRecord) -> TableInfo:
        qualified = f"{dest[0]}.{dest[1]}"
        if _row_fields(record.value) is None and self.source_dsn is not None and record.event is not None:
            from walbridge.sinks.pg_create import create_tables

            source_table = f"{record.event.schema}.{record.event.table}"
            create_tables(self.source_dsn, self.settings.dsn, [(source_table, qualified)])
            with self._connect(autocommit=True) as conn:
                info = read_table(conn, *dest)
            if info is None:
                raise PermanentError(f"destination table {qualified} could not be created", table=qualified)
            log.info("%s: created destination table %s like %s", self.name, qualified, source_table)
            return info
        ddl = _create_table_sql(dest, record)
        try:
            with self._connect(autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(dest[0])))
                conn.execute(ddl)
                info = read_table(conn, *dest)
        except psycopg.Error as exc:
            raise map_pg_error(exc, f"creating table {qualified}", table=qualified) from exc
        if info is None:
            raise FatalError(f"destination table {qualified} could not be created", table=qualified)
        log.info("%s: created destination table %s", self.name, qualified)
        return info

    def _step(self, info: TableInfo, record: SinkRecord) -> _Step:
        event = record.event
        assert event is not None
        if event.op == "t":
            return _Step(record, "t")
        if event.op == "d":
            source = {**(event.key or {}), **(event.before or {})}
            return _Step(record, "d", self._key(info, source, record))
        row, unavailable = self._row(info, event.after or {}, record)
        key = tuple(row[name] for name in info.key)
        old_key = None
        if event.op == "u" and event.before and all(event.before.get(k) is not None for k in info.key):
            old_key = self._key(info, event.before, record)
        return _Step(record, "u", key, row, old_key, unavailable)

    def _add_raw(self, ops: _TableOps, record: SinkRecord) -> None:
        """The JSON path: collapse by raw key, after the checks Python conversion would make first."""
        op, key, row, old_key, unavailable = self._raw_change(ops.info, record)
        ops.records.append(record)
        ops.change(op, key, row, old_key, unavailable)

    def _raw_change(
        self, info: TableInfo, record: SinkRecord
    ) -> tuple[str, Key, dict[str, Any], Key | None, frozenset[str]]:
        event = record.event
        assert event is not None
        if event.op == "t":
            return "t", (), {}, None, _NONE
        if event.op == "d":
            source = {**event.key, **(event.before or {})} if event.key else event.before or {}
            key = tuple(source.get(name) for name in info.key)
            if None in key:
                raise PermanentError(
                    f"event for {info.qualified} lacks key column {info.key[key.index(None)]}",
                    table=info.qualified,
                    offset=record.offset,
                )
            return "d", key, {}, None, _NONE
        row, unavailable = _raw_row(info, event, record, self.settings.strict)
        key = (row.get(info.key[0]),) if len(info.key) == 1 else tuple([row.get(name) for name in info.key])
        if None in key:
            missing = [name for name in info.key if row.get(name) is None]
            raise PermanentError(
                f"event for {info.qualified} lacks key column(s) {missing}", table=info.qualified
            )
        old_key = None
        if event.op == "u" and event.before:
            before_key = tuple(event.before.get(name) for name in info.key)
            old_key = None if None in before_key else before_key
        return "u", key, row, old_key, unavailable

    def _key(self, info: TableInfo, values: dict[str, Any], record: SinkRecord) -> Key:
        convert = self._converters[(info.schema, info.name)]
        try:
            return tuple(convert[name](values[name]) for name in info.key)
        except KeyError as exc:
            raise PermanentError(
                f"event for {info.qualified} lacks key column {exc.args[0]}",
                table=info.qualified,
                offset=record.offset,
            ) from None
        except (ValueError, TypeError, ArithmeticError, OverflowError) as exc:
            raise PermanentError(f"{info.qualified} key: {exc}", table=info.qualified) from None

    def _row(
        self, info: TableInfo, values: dict[str, Any], record: SinkRecord
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """The converted row, and the columns it leaves unchanged (unavailable-value placeholders)."""
        convert = self._converters[(info.schema, info.name)]
        row: dict[str, Any] = {}
        unavailable: list[str] = []
        check = mentions_unavailable(record.value)
        for name, value in values.items():
            fn = convert.get(name)
            if fn is None:
                if self.settings.strict and name not in info.generated:
                    raise UnknownColumn(
                        f"destination table {info.qualified} has no column {name!r}",
                        table=info.qualified,
                        column=name,
                    )
                continue
            if check and is_unavailable(value):
                unavailable.append(name)
                continue
            try:
                row[name] = None if value is None else fn(value)
            except (ValueError, TypeError, ArithmeticError, OverflowError) as exc:
                raise PermanentError(
                    f"{info.qualified}.{name} ({info.columns[name].type}): {exc}",
                    table=info.qualified,
                    column=name,
                ) from None
        missing = [name for name in info.key if row.get(name) is None]
        if missing:
            raise PermanentError(
                f"event for {info.qualified} lacks key column(s) {missing}", table=info.qualified
            )
        return row, frozenset(unavailable)

    # ------------------------------------------------------------------ applying

    def _apply_table(self, conn: psycopg.Connection[Any], ops: _TableOps) -> list[RecordFailure]:
        try:
            with conn.transaction():
                if self.settings.apply_method == "executemany":
                    self._apply_executemany(conn, ops)
                else:
                    self._apply_copy(conn, ops)
            return []
        except MissingRow as exc:
            self._stages.clear()  # the savepoint's rollback dropped the stages it created
            log.info("%s: %s; one by one", self.name, exc)
            return self._apply_one_by_one(conn, ops)
        except psycopg.Error as exc:
            self._stages.clear()
            error = map_pg_error(exc, f"applying to {ops.info.qualified}", table=ops.info.qualified)
            if isinstance(error, TransientError | FatalError) or conn.broken:
                raise error from exc
            self._forget_table_if_changed(ops.info, exc)
            log.info("%s: %s refused the batch (%s); one by one", self.name, ops.info.qualified, error)
            return self._apply_one_by_one(conn, ops)

    def _forget_table_if_changed(self, info: TableInfo, exc: psycopg.Error) -> None:
        if getattr(exc, "sqlstate", None) in ("42703", "42P01"):
            self._tables_version += 1
            self._tables.pop((info.schema, info.name), None)

    def _apply_json(self, conn: psycopg.Connection[Any], ops: _TableOps) -> None:
        """One COPY of every row of the table's statements into the stage (each row tagged with its
        statement), then the statements in one round trip (they take no parameters: one simple query);
        partial rows last, each group alone (their row count tells a missing row). Keys are in one
        statement only, but a delete may precede a partial update of its key (which must then miss):
        deletes run first."""
        info = ops.info
        exprs = self._exprs[(info.schema, info.name)]
        assert exprs is not None
        statements: list[sql.Composable] = []
        partials: list[tuple[tuple[str, ...], sql.Composed, int]] = []
        chunks: list[bytes] = []
        stage = _JSON_STAGE
        if ops.truncate:
            statements.append(sql.SQL("TRUNCATE {}").format(info.ident))
        if ops.deletes:
            chunks.append(_json_lines(0, [dict(zip(info.key, key, strict=True)) for key in ops.deletes]))
            source = _json_select(info.key, exprs, stage, 0)
            statements.append(
                sql.SQL("DELETE FROM {t} AS d USING ({src}) AS s WHERE {cond}").format(
                    t=info.ident, src=source, cond=_key_match(info.key, "d", "s")
                )
            )
        for (names, partial), rows in ops.json_groups().items():
            columns = tuple(n for n in names if n in exprs)
            group = len(chunks)
            chunks.append(_json_lines(group, rows))
            source = _json_select(columns, exprs, stage, group)
            if partial:
                partials.append((columns, source, len(rows)))
            else:
                statements.append(_upsert_sql(info, columns, source))
        with conn.cursor() as cur:
            if chunks:
                self._json_stage(cur)
                # COPY's text format reads backslash escapes; orjson never writes tabs, newlines or CRs raw.
                data = b"".join(chunks).replace(b"\\", b"\\\\")
                with cur.copy(sql.SQL("COPY {} (g, j) FROM STDIN").format(sql.Identifier(stage))) as copy:
                    copy.write(data)
            if statements:
                cur.execute(sql.SQL("; ").join(statements))
            for columns, select, count in partials:
                _write(cur, info, columns, select, True, count)

    def _json_stage(self, cur: psycopg.Cursor[Any]) -> None:
        """The JSON path's stage (``g``: the statement a row is for, ``j``: the row), empty.

        It is shared by every table of a batch and only emptied at commit, so when this transaction
        wrote it before it is emptied first: rows left by an earlier table would otherwise be applied
        again here.
        """
        ident = ("", "json", ())
        if ident not in self._stages:
            create = sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (g int4, j json) ON COMMIT DELETE ROWS")
            cur.execute(create.format(sql.Identifier(_JSON_STAGE)))
            self._stages[ident] = _JSON_STAGE
        self._empty(cur, _JSON_STAGE)

    def _empty(self, cur: psycopg.Cursor[Any], stage: str) -> None:
        """Empty a stage when this transaction wrote it before; it is about to be written."""
        if stage in self._filled:
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
        self._filled.add(stage)

    def _apply_copy(self, conn: psycopg.Connection[Any], ops: _TableOps) -> None:
        info = ops.info
        if self._json_path(info):
            self._apply_json(conn, ops)
            return
        with conn.cursor() as cur:
            if ops.truncate:
                cur.execute(sql.SQL("TRUNCATE {}").format(info.ident))
            if ops.deletes:
                stage = self._stage(cur, info, info.key, "d")
                _copy(cur, stage, info.key, ops.deletes)
                cur.execute(
                    sql.SQL("DELETE FROM {t} AS d USING {s} AS s WHERE {cond}").format(
                        t=info.ident, s=sql.Identifier(stage), cond=_key_match(info.key, "d", "s")
                    )
                )
            for (columns, partial), rows in ops.upsert_groups().items():
                stage = self._stage(cur, info, columns, "u")
                _copy(cur, stage, columns, rows)
                source = sql.SQL("SELECT {} FROM {}").format(_idents(columns), sql.Identifier(stage))
                _write(cur, info, columns, source, partial, len(rows))

    def _apply_executemany(self, conn: psycopg.Connection[Any], ops: _TableOps) -> None:
        info = ops.info
        with conn.cursor() as cur:
            if ops.truncate:
                cur.execute(sql.SQL("TRUNCATE {}").format(info.ident))
            if ops.deletes:
                cur.executemany(_delete_sql(info), list(ops.deletes))
            for (columns, partial), rows in ops.upsert_groups().items():
                if not partial:
                    cur.executemany(_upsert_sql(info, columns, _values(len(columns))), rows)
                    continue
                for row in rows:  # rare: rowcount per row is what tells a missing row
                    _write(cur, info, columns, _values(len(columns)), True, 1, row)

    def _apply_one_by_one(self, conn: psycopg.Connection[Any], ops: _TableOps) -> list[RecordFailure]:
        failures: list[RecordFailure] = []
        info = ops.info
        for step in self._converted_steps(ops, failures):
            try:
                with conn.transaction(), conn.cursor() as cur:
                    if step.op == "t":
                        cur.execute(sql.SQL("TRUNCATE {}").format(info.ident))
                        continue
                    if step.old_key is not None and step.old_key != step.key:
                        cur.execute(_delete_sql(info), step.old_key)
                    if step.op == "d":
                        cur.execute(_delete_sql(info), step.key)
                    else:
                        columns = tuple(step.row)
                        values = tuple(step.row.values())
                        _write(cur, info, columns, _values(len(columns)), bool(step.unavailable), 1, values)
            except MissingRow as exc:
                failures.append(RecordFailure(step.record, _missing_row(info, step, exc)))
            except psycopg.Error as exc:
                error = map_pg_error(exc, f"applying to {info.qualified}", table=info.qualified)
                if isinstance(error, TransientError | FatalError) or conn.broken:
                    raise error from exc
                if step.op == "t":
                    message = f"cannot apply a TRUNCATE: {error.message}"
                    raise FatalError(message, table=info.qualified) from exc
                failures.append(RecordFailure(step.record, error))
        return failures

    def _converted_steps(self, ops: _TableOps, failures: list[RecordFailure]) -> list[_Step]:
        """The Python path's steps (JSON path: converted now; records that do not convert fail)."""
        if ops.steps:
            return ops.steps
        steps = []
        for record in ops.records:
            try:
                steps.append(self._step(ops.info, record))
            except PermanentError as exc:
                failures.append(RecordFailure(record, exc))
        return steps

    def _stage(
        self, cur: psycopg.Cursor[Any], info: TableInfo, columns: tuple[str, ...], purpose: str
    ) -> str:
        """A temporary table shaped like ``columns`` of ``info``, created once per transaction at most.

        Names are stable per (table, purpose, columns) for the session, so ``IF NOT EXISTS`` never
        finds a stage of another shape; one created in a rolled-back transaction is created again.
        """
        ident = (info.qualified, purpose, columns)
        name = self._stage_names.setdefault(ident, f"_wb_stage_{len(self._stage_names)}")
        if ident not in self._stages:
            create = sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS"
                " AS SELECT {c} FROM {t} WITH NO DATA"
            )
            cur.execute(create.format(s=sql.Identifier(name), c=_idents(columns), t=info.ident))
            self._stages[ident] = name
        self._empty(cur, name)  # used before in this transaction (e.g. a retry of the table): start empty
        return name


# --------------------------------------------------------------------------- SQL builders


def _idents(names: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def _values(n: int) -> sql.Composable:
    return sql.SQL("VALUES ({})").format(sql.SQL(", ").join(sql.Placeholder() * n))


def _key_match(key: tuple[str, ...], left: str, right: str) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, k), sql.Identifier(right, k)) for k in key
    )


def _upsert_sql(info: TableInfo, columns: tuple[str, ...], source: sql.Composable) -> sql.Composed:
    updates = [c for c in columns if c not in info.key]
    action: sql.Composable
    if updates:
        action = sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates)
        )
    else:
        action = sql.SQL("DO NOTHING")
    return sql.SQL("INSERT INTO {t} ({c}) {src} ON CONFLICT ({k}) {action}").format(
        t=info.ident, c=_idents(columns), src=source, k=_idents(info.key), action=action
    )


def _update_sql(info: TableInfo, columns: tuple[str, ...], source: sql.Composable) -> sql.Composed:
    """UPDATE the rows of ``source`` (one per key) in place: a missing row is not inserted."""
    updates = [c for c in columns if c not in info.key] or list(info.key[:1])
    return sql.SQL("UPDATE {t} AS d SET {sets} FROM ({src}) AS s ({c}) WHERE {cond}").format(
        t=info.ident,
        sets=sql.SQL(", ").join(sql.SQL("{0} = s.{0}").format(sql.Identifier(c)) for c in updates),
        src=source,
        c=_idents(columns),
        cond=_key_match(info.key, "d", "s"),
    )


def _update_row_sql(info: TableInfo, updates: list[str]) -> sql.Composed:
    return sql.SQL("UPDATE {t} SET {sets} WHERE {cond}").format(
        t=info.ident,
        sets=sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in updates),
        cond=sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in info.key),
    )


def _write(
    cur: psycopg.Cursor[Any],
    info: TableInfo,
    columns: tuple[str, ...],
    source: sql.Composable,
    partial: bool,
    expected: int,
    params: tuple[Any, ...] | None = None,
) -> None:
    """Upsert ``source``'s rows; partial rows (unchanged TOAST left out) only update existing rows.

    Raises :class:`MissingRow` when fewer than ``expected`` partial rows found their row.
    """
    if not partial:
        cur.execute(_upsert_sql(info, columns, source), params)
        return
    if params is None:
        cur.execute(_update_sql(info, columns, source))
    else:
        # One row's parameters: SET col = %s assigns them like INSERT does (a VALUES list would type
        # them as text, which a jsonb or date column refuses).
        values = dict(zip(columns, params, strict=True))
        updates = [c for c in columns if c not in info.key] or list(info.key[:1])
        cur.execute(_update_row_sql(info, updates), [values[c] for c in (*updates, *info.key)])
    if cur.rowcount < expected:
        raise MissingRow(
            f"{expected - cur.rowcount} of {expected} partial updates of {info.qualified} found no row"
        )


def _missing_row(info: TableInfo, step: _Step, cause: MissingRow) -> MissingRow:
    """The error of one record whose partial update found no row."""
    key = dict(zip(info.key, step.key, strict=True))
    return MissingRow(
        f"{info.qualified} {key}: the change leaves {', '.join(sorted(step.unavailable))} unchanged "
        "(Debezium's unavailable-value placeholder for an unchanged TOASTed value) but the destination "
        "has no such row to keep them from; writing it would lose those values. Give the source table "
        "REPLICA IDENTITY FULL so that capture sends them, and re-snapshot or repair the row",
        table=info.qualified,
        key=key,
        columns=sorted(step.unavailable),
    )


def _delete_sql(info: TableInfo) -> sql.Composed:
    return sql.SQL("DELETE FROM {t} WHERE {cond}").format(
        t=info.ident,
        cond=sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in info.key),
    )


def _copy(
    cur: psycopg.Cursor[Any], stage: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]
) -> None:
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage), _idents(columns))) as copy:
        for row in rows:
            copy.write_row(row)


def _json_lines(group: int, rows: list[dict[str, Any]]) -> bytes:
    """COPY text lines ``group<TAB>row as JSON`` (backslashes not escaped yet)."""
    prefix = b"%d\t" % group
    lines = [orjson.dumps(row, default=_json_default) for row in rows]
    return prefix + (b"\n" + prefix).join(lines) + b"\n"


def _json_select(
    columns: tuple[str, ...], exprs: dict[str, sql.Composable], stage: str, group: int
) -> sql.Composed:
    """SELECT the columns converted from the stage's JSON rows of ``group`` (each value read as text)."""
    return sql.SQL("SELECT {exprs} FROM {s} AS s, json_to_record(s.j) AS x({defs}) WHERE s.g = {g}").format(
        exprs=sql.SQL(", ").join(sql.SQL("{} AS {}").format(exprs[c], sql.Identifier(c)) for c in columns),
        s=sql.Identifier(stage),
        defs=sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns),
        g=sql.Literal(group),
    )


def _ident(record: SinkRecord) -> tuple[str, str]:
    event = record.event
    assert event is not None
    return event.source.schema, event.source.table


def _raw_row(
    info: TableInfo, event: ChangeEvent, record: SinkRecord, strict: bool
) -> tuple[dict[str, Any], frozenset[str]]:
    """The event's row without unchanged (placeholder) values and generated columns; the former's names."""
    row = event.after or {}
    if info.generated and not info.generated.isdisjoint(row):
        row = {name: value for name, value in row.items() if name not in info.generated}
    if strict and not info.columns.keys() >= row.keys():
        name = next(name for name in row if name not in info.columns)
        raise UnknownColumn(
            f"destination table {info.qualified} has no column {name!r}", table=info.qualified, column=name
        )
    placeholders = unavailable_names(row, record.value)
    if not placeholders:
        return row, _NONE
    row = {name: value for name, value in row.items() if name not in placeholders}
    return row, frozenset(name for name in placeholders if name in info.columns)


def _create_table_sql(dest: tuple[str, str], record: SinkRecord) -> sql.Composed:
    """CREATE TABLE from the record's Kafka Connect schema block (the only typed description)."""
    qualified = f"{dest[0]}.{dest[1]}"
    fields = _row_fields(record.value)
    if fields is None:
        raise FatalError(
            f"destination table {qualified} does not exist and cannot be created: auto_create needs the "
            "events' schema block (value.converter.schemas.enable=true / events.schemas_enable)",
            table=qualified,
        )
    key_names = _key_names(record.key)
    columns = []
    for fld in fields:
        pg_type = connect_type(fld)
        if pg_type is None:
            what = fld.get("name") or fld.get("type")
            raise FatalError(
                f"cannot create {qualified}: no type mapping for column {fld.get('field')!r} ({what})",
                table=qualified,
            )
        not_null = sql.SQL(" NOT NULL") if fld.get("optional") is False else sql.SQL("")
        columns.append(sql.SQL("{} {}{}").format(sql.Identifier(fld["field"]), sql.SQL(pg_type), not_null))
    if not key_names:
        raise FatalError(
            f"cannot create {qualified}: the records have no key to make a primary key", table=qualified
        )
    return sql.SQL("CREATE TABLE IF NOT EXISTS {t} ({cols}, PRIMARY KEY ({k}))").format(
        t=sql.Identifier(*dest), cols=sql.SQL(", ").join(columns), k=_idents(key_names)
    )


def _row_fields(value: bytes | None) -> list[dict[str, Any]] | None:
    try:
        doc = orjson.loads(value or b"null")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), dict):
        return None
    fields = doc["schema"].get("fields") or []
    for fld in fields:
        if fld.get("field") == "after" and fld.get("type") == "struct":
            return list(fld.get("fields") or [])
    return [f for f in fields if not str(f.get("field", "")).startswith("__")]


def _key_names(key: bytes | None) -> list[str]:
    try:
        doc = orjson.loads(key or b"null")
    except orjson.JSONDecodeError:
        return []
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        doc = doc["payload"]
    return list(doc) if isinstance(doc, dict) else []


def _keyed_by_event(info: TableInfo, key: bytes | None) -> TableInfo:
    """The table keyed by the events' key columns when they are not its primary key but a unique index.

    A source table whose replica identity is a unique index without the primary key has events keyed
    by that index (a delete carries nothing else): rows are then matched, upserted and deleted by it.
    """
    names = tuple(_key_names(key))
    if not names or set(names) == set(info.key) or not set(names) <= info.columns.keys():
        return info
    if frozenset(names) not in info.unique_keys:
        return info
    return replace(info, key=names)
