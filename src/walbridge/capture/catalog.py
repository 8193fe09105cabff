"""Catalog lookups for capture over a psycopg 3 connection (this module does I/O).

:func:`resolve_tables` turns include/exclude patterns (``schema.table``, ``*`` and ``?`` wildcards)
into :class:`RelationInfo` values; :func:`load_type_registry` adds the database's user types (enums,
domains, arrays of them) to a :class:`~walbridge.capture.values.TypeRegistry`;
:func:`check_logical_capture` lists what keeps a server from logical capture as :class:`Problem` values.
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
    "load_type_registry",
    "resolve_tables",
]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    typmod: int
    not_null: bool
    attnum: int


@dataclass(frozen=True, slots=True)
class RelationInfo:
    oid: int
    schema: str
    table: str
    columns: tuple[ColumnInfo, ...]
    key_columns: tuple[str, ...]
    """Primary key columns in key order; empty when the table has no primary key."""
    replica_identity: str
    """``d`` default, ``f`` full, ``i`` index, ``n`` nothing."""

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class Problem:
    setting: str
    found: str
    fix: str

    def __str__(self) -> str:
        return f"{self.setting} is {self.found}: {self.fix}"


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT a.attrelid, a.attname, a.atttypid, a.atttypmod, a.attnotnull, a.attnum
FROM pg_attribute a
WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_KEYS_SQL = """
SELECT i.indrelid, a.attname
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indisprimary AND i.indrelid = ANY(%s)
ORDER BY i.indrelid, k.ord
"""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def resolve_tables(
    conn: psycopg.Connection[Any], include: Sequence[str] = ("*.*",), exclude: Sequence[str] = ()
) -> list[RelationInfo]:
    """The ordinary and partitioned tables matching ``include`` and not ``exclude``, by name.

    An empty ``include`` means every user table. Tables of the ``walbridge`` schema (capture's own
    bookkeeping) never match. A name without wildcards that matches no table is a
    :class:`ConfigError` naming it.
    """
    rows = conn.execute(_TABLES_SQL).fetchall()
    include = include or ("*.*",)
    exclude = (*exclude, "walbridge.*")
    names = {f"{row[1]}.{row[2]}" for row in rows}
    missing = [name for name in include if not any(ch in name for ch in "*?[") and name not in names]
    if missing:
        raise ConfigError(
            f"source.tables: no such table in database {conn.info.dbname}: {', '.join(missing)} "
            "(names are schema.table, case-sensitive)"
        )
    chosen = [
        row
        for row in rows
        if _matches(f"{row[1]}.{row[2]}", include) and not _matches(f"{row[1]}.{row[2]}", exclude)
    ]
    oids = [row[0] for row in chosen]
    columns: dict[int, list[ColumnInfo]] = {oid: [] for oid in oids}
    for relid, name, type_oid, typmod, not_null, attnum in conn.execute(_COLUMNS_SQL, (oids,)):
        columns[relid].append(ColumnInfo(name, type_oid, typmod, not_null, attnum))
    keys: dict[int, list[str]] = {oid: [] for oid in oids}
    for relid, name in conn.execute(_KEYS_SQL, (oids,)):
        keys[relid].append(name)
    return [
        RelationInfo(oid, schema, table, tuple(columns[oid]), tuple(keys[oid]), str(identity))
        for oid, schema, table, identity in chosen
    ]


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
