"""Catalog lookups for capture over a psycopg 3 connection (this module does I/O).

:func:`resolve_tables` turns include/exclude patterns (``schema.table``, ``*`` and ``?`` wildcards)
into :class:`RelationInfo` values; :func:`load_type_registry` adds the database's user types (enums,
domains, arrays of them) to a :class:`~walbridge.capture.values.TypeRegistry`;
:func:`check_logical_capture` lists what keeps a server from logical capture as :class:`Problem` values.
:func:`read_relations` is the one reader of a table's columns, generated columns, keys, replica identity
and partitioning; every capture path takes its :class:`RelationInfo` from it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from walbridge.capture.values import PgType, TypeRegistry
from walbridge.errors import ConfigError

__all__ = [
    "ColumnInfo",
    "Problem",
    "RelationInfo",
    "check_logical_capture",
    "event_key_columns",
    "identity_problem",
    "in_recovery",
    "load_type_registry",
    "read_relations",
    "refuse_keyless",
    "resolve_tables",
]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    typmod: int
    not_null: bool
    attnum: int
    generated: bool = False
    """A generated column (``attgenerated``): computed by the server; never captured, never written."""


@dataclass(frozen=True, slots=True)
class RelationInfo:
    oid: int
    schema: str
    table: str
    columns: tuple[ColumnInfo, ...]
    key_columns: tuple[str, ...]
    """The event key's columns (:func:`event_key_columns`); empty when events have a null key."""
    replica_identity: str
    """``d`` default, ``f`` full, ``i`` index, ``n`` nothing."""
    primary_key: tuple[str, ...] = ()
    """Primary key columns in key order; empty when the table has none."""
    identity_columns: tuple[str, ...] = ()
    """The columns whose old values the WAL carries for an UPDATE/DELETE (replica identity)."""
    partitioned: bool = False
    """A partitioned table: captured as one table (its partitions' changes arrive under its name)."""

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


def event_key_columns(
    primary_key: Sequence[str], identity: str, index_columns: Sequence[str]
) -> tuple[str, ...]:
    """The columns of a table's event key.

    The primary key, as Debezium does, whenever the old row images the WAL carries contain it. With
    ``REPLICA IDENTITY USING INDEX`` on an index without every primary-key column, a delete's old row
    holds only the index columns, so a key made of the primary key would be null there: the index
    columns (unique, not null) are the key instead, for every event of the table, so that all
    events of a row share one key (one partition, in order) and every delete can be applied.
    """
    if identity == "i" and index_columns and not (primary_key and set(primary_key) <= set(index_columns)):
        return tuple(index_columns)
    return tuple(primary_key)


def identity_problem(rel: RelationInfo) -> Problem | None:
    """Why the table's updates and deletes cannot be captured with a key, or None when they can."""
    target = f'"{rel.schema}"."{rel.table}"'
    if rel.replica_identity == "n":
        return Problem(
            f"replica identity of {rel.qualified_name}",
            "NOTHING",
            "PostgreSQL refuses its UPDATEs and DELETEs once published: "
            f"ALTER TABLE {target} REPLICA IDENTITY DEFAULT (with a primary key), USING INDEX <unique index> "
            "or FULL",
        )
    if not rel.key_columns and rel.replica_identity != "f":
        return Problem(
            f"table {rel.qualified_name}",
            "without a key",
            f"it has no primary key, so PostgreSQL refuses its UPDATEs and DELETEs once published: add a "
            f"primary key, or ALTER TABLE {target} REPLICA IDENTITY USING INDEX <unique index on NOT NULL "
            "columns> (they become the event key), or set source.replica_identity_full: true (events get a "
            "null key)",
        )
    return None


def refuse_keyless(relations: Iterable[RelationInfo]) -> None:
    """ConfigError (one line) when a table's updates or deletes cannot be captured with a key."""
    problems = [problem for problem in map(identity_problem, relations) if problem is not None]
    if problems:
        raise ConfigError("; ".join(str(problem) for problem in problems))


def in_recovery(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server is a standby (where ``pg_current_wal_lsn()`` and DDL fail)."""
    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class Problem:
    setting: str
    found: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting} is {self.found}: {self.fix}"


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, c.relkind,
       CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::oid END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attnum, a.attgenerated <> ''
FROM pg_attribute a
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Primary key (indisprimary) and replica identity index (indisreplident) columns, in index order.
_KEYS_SQL = """
SELECT i.indrelid, i.indisprimary, a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE (i.indisprimary OR i.indisreplident) AND i.indrelid = ANY(%s)
ORDER BY i.indrelid, i.indisprimary, k.ord
"""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def resolve_tables(
    conn: psycopg.Connection[Any], include: Sequence[str] = ("*.*",), exclude: Sequence[str] = ()
) -> list[RelationInfo]:
    """The ordinary and partitioned tables matching ``include`` and not ``exclude``, by name.

    A partition stands for its partitioned root (pgoutput publishes its changes under the root's
    name, ``publish_via_partition_root``): a name or pattern that matches a partition selects the
    root, and the partitions are never captured as tables of their own. An empty ``include`` means
    every user table. Tables of the ``walbridge`` schema (capture's own bookkeeping) never match. A
    name that matches no table, or a pattern that matches none, is a :class:`ConfigError` naming it.
    """
    rows = conn.execute(_TABLES_SQL).fetchall()
    include = include or ("*.*",)
    exclude = (*exclude, "walbridge.*")
    by_oid = {row[0]: row for row in rows}
    names = {f"{row[1]}.{row[2]}" for row in rows}
    missing = [name for name in include if not _is_pattern(name) and name not in names]
    if missing:
        raise ConfigError(
            f"source.tables: no such table in database {conn.info.dbname}: {', '.join(missing)} "
            "(names are schema.table, case-sensitive)"
        )
    chosen: dict[int, tuple[Any, ...]] = {}
    empty = []
    for pattern in include:
        hits = 0
        for row in rows:
            if not fnmatch.fnmatchcase(f"{row[1]}.{row[2]}", pattern):
                continue
            top = by_oid.get(row[5], row) if row[5] is not None else row
            if _matches(f"{top[1]}.{top[2]}", exclude):
                continue
            chosen[top[0]] = top
            hits += 1
        if not hits:
            empty.append(pattern)
    if empty:
        raise ConfigError(
            f"source.tables: {', '.join(empty)} match(es) no table in database {conn.info.dbname} "
            "(after source.exclude_tables; names are schema.table, case-sensitive)"
        )
    return read_relations(conn, sorted(chosen.values(), key=lambda row: (row[1], row[2])))


def read_relations(conn: psycopg.Connection[Any], tables: Sequence[Sequence[Any]]) -> list[RelationInfo]:
    """The one catalog reader: columns, types, generated columns, keys and replica identity of tables
    given as ``(oid, schema, table, relreplident, relkind, ...)`` rows of ``_TABLES_SQL``."""
    oids = [row[0] for row in tables]
    columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
    for relid, name, type_oid, typmod, not_null, attnum, generated in conn.execute(_COLUMNS_SQL, (oids,)):
        columns[relid].append(ColumnInfo(name, type_oid, typmod, not_null, attnum, bool(generated)))
    primary: dict[int, list[str]] = {oid: [] for oid in oids}
    index: dict[int, list[str]] = {oid: [] for oid in oids}
    for relid, is_primary, name in conn.execute(_KEYS_SQL, (oids,)):
        (primary if is_primary else index)[relid].append(name)
    out = []
    for oid, schema, table, identity, kind, *_ in tables:
        identity = str(identity)
        pk = tuple(primary[oid])
        if identity == "i" and not index[oid] and pk:
            index[oid] = list(pk)  # USING INDEX on the primary key's own index
        wal = {"d": pk, "i": tuple(index[oid]), "f": tuple(c.name for c in columns[oid])}.get(identity, ())
        out.append(
            RelationInfo(
                oid,
                schema,
                table,
                tuple(columns[oid]),
                event_key_columns(pk, identity, index[oid]),
                identity,
                pk,
                wal,
                str(kind) == "p",
            )
        )
    return out


def relation_by_oid(conn: psycopg.Connection[Any], oid: int) -> RelationInfo | None:
    """The current catalog description of one table, or None when it no longer exists."""
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = %s",
        (oid,),
    ).fetchone()
    if row is None:
        return None
    found = resolve_tables(conn, [f"{row[0]}.{row[1]}"])
    return found[0] if found else None


_USER_TYPES_SQL = """
SELECT t.oid, t.typname, t.typtype, t.typbasetype, t.typtypmod,
       COALESCE((SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                 FROM pg_enum e WHERE e.enumtypid = t.oid), '{}') AS labels
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typtype IN ('e', 'd', 'b', 'r', 'c') AND t.typelem = 0
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""

_USER_ARRAYS_SQL = """
SELECT t.oid, t.typname, t.typelem
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.typcategory = 'A' AND t.typelem <> 0
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


def load_type_registry(conn: psycopg.Connection[Any], registry: TypeRegistry | None = None) -> TypeRegistry:
    """A registry with the built-in types plus this database's enums, domains and extension types."""
    registry = registry if registry is not None else TypeRegistry()
    for oid, name, typtype, base_oid, base_typmod, labels in conn.execute(_USER_TYPES_SQL):
        registry.add(PgType(oid, name, str(typtype), 0, base_oid, base_typmod, tuple(labels)))
    for oid, name, element_oid in conn.execute(_USER_ARRAYS_SQL):
        registry.add(PgType(oid, name, "b", element_oid=element_oid))
    return registry


_SETTINGS_SQL = """
SELECT name, setting FROM pg_settings
WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders')
"""

_ROLE_SQL = "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user"


def check_logical_capture(
    conn: psycopg.Connection[Any], tables: Sequence[RelationInfo] = ()
) -> list[Problem]:
    """What keeps this server and role from logical capture of ``tables``; empty when ready."""
    settings = dict(conn.execute(_SETTINGS_SQL).fetchall())
    problems: list[Problem] = []
    if settings.get("wal_level") != "logical":
        problems.append(
            Problem(
                "wal_level", str(settings.get("wal_level")), "set wal_level = logical and restart PostgreSQL"
            )
        )
    for name in ("max_replication_slots", "max_wal_senders"):
        if int(settings.get(name) or 0) < 1:
            problems.append(Problem(name, str(settings.get(name)), f"set {name} to at least 1 and restart"))
    if in_recovery(conn):
        problems.append(
            Problem(
                "the source server",
                "a standby (in recovery)",
                "walbridge captures from the primary: point source.dsn at it (on PostgreSQL 17+ "
                "walbridge's failover slots follow a promoted standby)",
            )
        )
    superuser, replication = conn.execute(_ROLE_SQL).fetchone() or (False, False)
    if not (superuser or replication):
        problems.append(
            Problem("replication privilege", "missing", "ALTER ROLE <capture role> WITH REPLICATION")
        )
    for rel in tables:
        row = conn.execute("SELECT has_table_privilege(%s, 'SELECT')", (rel.oid,)).fetchone()
        if not (row and row[0]):
            problems.append(
                Problem(
                    f"SELECT on {rel.qualified_name}",
                    "missing",
                    f'GRANT SELECT ON "{rel.schema}"."{rel.table}" TO <capture role>',
                )
            )
    return problems
