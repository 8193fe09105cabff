"""Destination tables made from the source's own definitions (``walbridge setup --sink``, ``auto_create``).

What is created: the schema if missing, and per table its columns with their exact types
(``format_type``: typmods, arrays, domains and enums by name), ``NOT NULL``, generated columns with
their expression (the destination computes them; the sink never writes them), and a primary key made of
the columns that key the table's events (the primary key, or the replica identity index's columns).
What is not: foreign keys (the sink applies rows in partition order, not in dependency order), other
indexes and constraints, defaults, triggers, grants, partitioning (the destination table is a plain
table). User types (enums, domains, extension types) must exist in the destination: a missing one is a
:class:`~walbridge.errors.ConfigError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from walbridge import pgcatalog
from walbridge.errors import ConfigError, ConnectionLost
from walbridge.pgerrors import map_pg_error, one_line

__all__ = ["create_tables", "table_ddl"]

def table_ddl(
    source_table: pgcatalog.RelationInfo, dest: tuple[str, str]
) -> tuple[sql.Composed, list[tuple[str, str]]]:
    """CREATE TABLE for ``dest`` shaped like ``source_table``, and the non-built-in types it uses."""
    key_columns = source_table.key_columns
    columns = []
    user_types = []
    for col in source_table.columns:
        parts = [sql.Identifier(col.name), sql.SQL(col.type_text)]
        if col.expression is not None:
            parts.append(sql.SQL("GENERATED ALWAYS AS ({}) STORED").format(sql.SQL(col.expression)))
        elif col.not_null:
            parts.append(sql.SQL("NOT NULL"))
        columns.append(sql.SQL(" ").join(parts))
        if col.type_schema not in ("pg_catalog", "information_schema"):
            user_types.append((col.type_schema, col.type_name.lstrip("_")))
    if not key_columns:
        raise ConfigError(
            f"cannot create a destination for {source_table.qualified_name}: its events have no key"
        )
    body = [
        *columns,
        sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, key_columns))),
    ]
    ddl = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        sql.Identifier(*dest), sql.SQL(", ").join(body)
    )
    return ddl, user_types


def create_tables(source_dsn: str, dest_dsn: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Create each missing destination table of ``(source schema.table, dest schema.table)`` pairs from
    the source's definition; the names of those created. Nothing is created unless all can be."""
    try:
        source = psycopg.connect(source_dsn, autocommit=True, client_encoding="UTF8")
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to the source database: {one_line(exc)}") from exc
    with source:
        relations = {r.qualified_name: r for r in pgcatalog.resolve_tables(source, [s for s, _ in pairs])}
        try:
            with psycopg.connect(dest_dsn, autocommit=True) as dest_conn:
                planned = []
                for source_table, dest_table in pairs:
                    found = dest_conn.execute("SELECT to_regclass(%s)", (dest_table,)).fetchone()
                    if found and found[0] is not None:
                        continue
                    schema, table = dest_table.split(".", 1)
                    ddl, user_types = table_ddl(relations[source_table], (schema, table))
                    _require_types(dest_conn, user_types, source_table)
                    planned.append((dest_table, schema, ddl))
                with dest_conn.transaction():
                    for _, schema, ddl in planned:
                        dest_conn.execute(
                            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
                        )
                        dest_conn.execute(ddl)
        except psycopg.Error as exc:
            raise map_pg_error(exc, "creating destination tables") from exc
    return [dest_table for dest_table, _, _ in planned]


def _require_types(conn: psycopg.Connection[Any], types: list[tuple[str, str]], source_table: str) -> None:
    for schema, name in types:
        found = conn.execute(
            "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname = %s",
            (schema, name),
        ).fetchone()
        if found is None:
            raise ConfigError(
                f"{source_table} uses type {schema}.{name}, which the destination does not have: create it "
                "there first (CREATE TYPE / CREATE DOMAIN / CREATE EXTENSION)"
            )
