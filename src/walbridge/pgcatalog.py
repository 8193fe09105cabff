"""The one reader of a PostgreSQL table's definition: columns, types, generated columns, keys, unique
indexes, replica identity and partitioning (this module does I/O, over a psycopg 3 connection).

Capture (both modes), the PostgreSQL sink (a destination table), ``setup --sink`` and ``verify`` all take
their :class:`RelationInfo` from :func:`read_relations`: through :func:`resolve_tables` (the source's
tables by name or pattern, partitions folded into their root), :func:`relation_by_oid` or
:func:`read_table` (one table by name).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from walbridge.errors import ConfigError

__all__ = [
    "ColumnInfo",
    "RelationInfo",
    "event_key_columns",
    "read_relations",
    "read_table",
    "relation_by_oid",
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
    type_name: str = ""
    """``pg_type.typname`` (``int4``, ``_int4`` for an array, a domain's or enum's own name)."""
    type_schema: str = "pg_catalog"
    base_type: str = ""
    """The type name with domains resolved to their base type."""
    element: str | None = None
    """Element type name of an array column."""
    sql_type: str = ""
    """The type as SQL without its modifier (``character varying``, a domain's name, ...)."""
    type_text: str = ""
    """The type as SQL with its modifier (``character varying(20)``, ``numeric(10,2)``)."""
    expression: str | None = None
    """A stored generated column's expression."""


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
    unique_keys: tuple[tuple[str, ...], ...] = ()
    """Column sets of the primary key and every unique index without predicate or expressions."""

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


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, c.relkind,
       CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::oid END
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attnum, a.attgenerated <> '',
       t.typname, tn.nspname, COALESCE(bt.typname, t.typname), et.typname,
       format_type(a.atttypid, NULL), format_type(a.atttypid, a.atttypmod),
       CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd'
LEFT JOIN pg_type et ON et.oid = COALESCE(bt.typelem, t.typelem)
      AND COALESCE(bt.typcategory, t.typcategory) = 'A'
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

# Primary key, replica identity index and the other unique indexes (not partial, no expressions): columns
# in index order.
_KEYS_SQL = """
SELECT i.indrelid, i.indexrelid, i.indisprimary, i.indisreplident, a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE (i.indisprimary OR i.indisreplident OR (i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL))
  AND i.indrelid = ANY(%s)
ORDER BY i.indrelid, i.indexrelid, k.ord
"""

_TABLE_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident, c.relkind, NULL
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
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
    for relid, *fields in conn.execute(_COLUMNS_SQL, (oids,)):
        columns[relid].append(ColumnInfo(*fields))
    primary: dict[int, list[str]] = {oid: [] for oid in oids}
    index: dict[int, list[str]] = {oid: [] for oid in oids}
    unique: dict[int, dict[int, list[str]]] = {oid: {} for oid in oids}
    for relid, index_oid, is_primary, is_identity, name in conn.execute(_KEYS_SQL, (oids,)):
        unique[relid].setdefault(index_oid, []).append(name)
        if is_primary:
            primary[relid].append(name)
        elif is_identity:
            index[relid].append(name)
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
                tuple(map(tuple, unique[oid].values())),
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




def read_table(conn: psycopg.Connection[Any], schema: str, table: str) -> RelationInfo | None:
    """One table by name, in any schema (a destination's too); None when there is no such table."""
    regclass = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute(_TABLE_SQL, (regclass,)).fetchone()
    return None if row is None else read_relations(conn, [row])[0]
