"""Debezium-compatible signals: the signal table, sending a signal, reading one.

The signal table (``source.signal_table``) has Debezium's columns ``id, type, data``; a row inserted
into it reaches capture through the change stream (logical mode: the table is in the publication;
its rows are never published as data events). Signal types, as Debezium names them:

- ``execute-snapshot``: ``{"data-collections": ["schema.table", ...], "type": "incremental",
  "additional-conditions": [{"data-collection": "schema.table", "filter": "<SQL condition>"}]}``
- ``stop-snapshot`` (``data-collections`` optional: all when absent), ``pause-snapshot``,
  ``resume-snapshot``, ``log`` (``{"message": ...}``)
- ``snapshot-window-open`` / ``snapshot-window-close``: the incremental snapshot's own watermarks
  (ids ``<chunk id>-open`` / ``<chunk id>-close``), written by capture around each chunk read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql

from walbridge.capture import catalog
from walbridge.capture.catalog import RelationInfo
from walbridge.errors import ConfigError
from walbridge.pgerrors import map_pg_error

__all__ = [
    "EXECUTE",
    "WINDOW_CLOSE",
    "WINDOW_OPEN",
    "Signal",
    "ensure_signal_table",
    "find_signal_relation",
    "parse_signal",
    "send_signal",
    "signal_relation",
    "split_name",
    "without_signal_table",
]

EXECUTE = "execute-snapshot"
STOP = "stop-snapshot"
PAUSE = "pause-snapshot"
RESUME = "resume-snapshot"
LOG = "log"
WINDOW_OPEN = "snapshot-window-open"
WINDOW_CLOSE = "snapshot-window-close"


@dataclass(frozen=True, slots=True)
class Signal:
    id: str
    type: str
    data: dict[str, Any]


def split_name(name: str) -> tuple[str, str]:
    """``schema.table`` → (schema, table); ConfigError for anything else."""
    schema, dot, table = name.partition(".")
    if not dot or not schema or not table:
        raise ConfigError(f"{name!r} must be schema.table")
    return schema, table


def ensure_signal_table(conn: psycopg.Connection[Any], name: str) -> bool:
    """Create the signal table (Debezium's columns) when missing; True if created."""
    schema, table = split_name(name)
    if conn.execute(
        "SELECT to_regclass(%s)", (sql.Identifier(schema, table).as_string(conn),)
    ).fetchone() != (None,):
        return False
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data text)"
                ).format(sql.Identifier(schema, table))
            )
        return True
    except psycopg.Error as exc:
        raise map_pg_error(exc, f"creating the signal table {name}") from exc


def send_signal(conn: psycopg.Connection[Any], name: str, kind: str, data: dict[str, Any] | None) -> str:
    """Insert a signal row (committed at once on an autocommit connection); its id."""
    schema, table = split_name(name)
    ident = str(uuid.uuid4())
    try:
        conn.execute(
            sql.SQL("INSERT INTO {} (id, type, data) VALUES (%s, %s, %s)").format(
                sql.Identifier(schema, table)
            ),
            (ident, kind, orjson.dumps(data).decode() if data is not None else None),
        )
    except psycopg.Error as exc:
        raise map_pg_error(exc, f"writing a signal into {name}") from exc
    return ident


def parse_signal(ident: str | None, kind: str | None, data: str | None) -> Signal | str:
    """A signal row's values → :class:`Signal`, or a one-line reason it cannot be used."""
    if not ident or not kind:
        return "a signal without id or type"
    if not data:
        return Signal(ident, kind, {})
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return f"signal {ident} ({kind}): data is not JSON ({exc})"
    if not isinstance(parsed, dict):
        return f"signal {ident} ({kind}): data is not a JSON object"
    return Signal(ident, kind, parsed)


def find_signal_relation(conn: psycopg.Connection[Any], name: str) -> RelationInfo | None:
    """The signal table's catalog description; None when it does not exist."""
    schema, table = split_name(name)
    row = conn.execute(
        "SELECT to_regclass(%s)::oid", (sql.Identifier(schema, table).as_string(conn),)
    ).fetchone()
    return catalog.relation_by_oid(conn, row[0]) if row and row[0] is not None else None


def signal_relation(conn: psycopg.Connection[Any], name: str) -> RelationInfo:
    """The signal table's catalog description; ConfigError when it does not exist."""
    found = find_signal_relation(conn, name)
    if found is None:
        raise ConfigError(f"source.signal_table {name} does not exist; run walbridge setup (it creates it)")
    return found


def without_signal_table(relations: list[RelationInfo], name: str | None) -> list[RelationInfo]:
    """The captured tables: a wildcard in source.tables never makes the signal table one of them."""
    return [rel for rel in relations if rel.qualified_name != name]
