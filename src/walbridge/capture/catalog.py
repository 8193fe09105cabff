"""Catalog lookups for capture over a psycopg 3 connection (this module does I/O).

:func:`load_type_registry` adds the database's user types (enums, domains, arrays of them) to a
:class:`~walbridge.capture.values.TypeRegistry`; :func:`check_logical_capture` lists what keeps a server
from logical capture as :class:`Problem` values; :func:`identity_problem` says why a table's changes cannot
be keyed. Tables themselves are read by :mod:`walbridge.pgcatalog` (the one reader, shared with the sink
and ``verify``), whose names capture imports from here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from walbridge.capture.values import PgType, TypeRegistry
from walbridge.errors import ConfigError
from walbridge.pgcatalog import (
    ColumnInfo,
    RelationInfo,
    event_key_columns,
    read_relations,
    relation_by_oid,
    resolve_tables,
)

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
    "relation_by_oid",
    "resolve_tables",
]


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
