"""What ``walbridge setup`` (logical mode) needs a table owner for, and the SQL an owner can run instead.

PostgreSQL lets only a table's owner add it to a publication or change its replica identity, and only
a role with CREATE on the database create a publication or the ``walbridge`` schema. A capture role
usually has neither. :func:`owner_sql` lists the statements setup would run that need them (what is
already in place is left out); :func:`setup_problems` names each one the current role cannot run, so
``check`` reports it and ``setup`` refuses before changing anything, pointing at ``setup --print-sql``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from walbridge.capture import state
from walbridge.capture.catalog import Problem, RelationInfo
from walbridge.capture.slot import other_users, publication_tables
from walbridge.config import SourceSettings

__all__ = ["owner_sql", "setup_problems"]


def _owns(conn: psycopg.Connection[Any], oid: int) -> bool:
    row = conn.execute(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = %s", (oid,)
    ).fetchone()
    return bool(row and row[0])


def _can_create_in_database(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()
    return bool(row and row[0])


def _publication(conn: psycopg.Connection[Any], name: str) -> tuple[bool, set[tuple[str, str]]] | None:
    """``(this role may alter it, its tables)``, or None when it does not exist."""
    row = conn.execute(
        "SELECT pg_has_role(current_user, pubowner, 'USAGE') FROM pg_publication WHERE pubname = %s", (name,)
    ).fetchone()
    return None if row is None else (bool(row[0]), publication_tables(conn, name))


_IDENTITY_SQL = """
SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relreplident <> 'f' AND c.relkind IN ('r', 'p')
  AND (c.oid = %(oid)s OR c.oid IN (SELECT relid FROM pg_partition_tree(%(oid)s::oid::regclass)))
"""


def _identity_targets(
    conn: psycopg.Connection[Any], relations: Sequence[RelationInfo]
) -> list[tuple[str, str, int]]:
    """Tables (and partitions) whose replica identity is not FULL yet."""
    out = []
    for rel in relations:
        for schema, table, oid in conn.execute(
            _IDENTITY_SQL,
            {"oid": rel.oid},
        ):
            out.append((str(schema), str(table), int(oid)))
    return out


def _statements(
    conn: psycopg.Connection[Any], src: SourceSettings, relations: Sequence[RelationInfo]
) -> list[tuple[str, bool]]:
    """``(statement, the current role may run it)`` for what setup still has to do as an owner."""
    out: list[tuple[str, bool]] = []
    if src.replica_identity_full:
        for schema, table, oid in _identity_targets(conn, relations):
            text = sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(schema, table))
            out.append((text.as_string(conn), _owns(conn, oid)))
    publication = _publication(conn, src.publication)
    owns_tables = all(_owns(conn, rel.oid) for rel in relations)
    names = sql.SQL(", ").join(sql.Identifier(rel.schema, rel.table) for rel in relations)
    ident = sql.Identifier(src.publication)
    if publication is None:
        create = sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true)")
        out.append(
            (create.format(ident, names).as_string(conn), owns_tables and _can_create_in_database(conn))
        )
        comment = sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
            ident, sql.Literal(f"walbridge slots: {src.slot}")
        )
        out.append((comment.as_string(conn), owns_tables and _can_create_in_database(conn)))
    else:
        may_alter, tables = publication
        missing = [rel for rel in relations if (rel.schema, rel.table) not in tables]
        if missing:
            more = sql.SQL(", ").join(sql.Identifier(rel.schema, rel.table) for rel in missing)
            add = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(ident, more)
            out.append((add.as_string(conn), may_alter and all(_owns(conn, rel.oid) for rel in missing)))
    if state.table_missing(conn):
        for statement in state.ddl_statements():
            out.append((statement, _can_create_in_database(conn)))
    return out


def owner_sql(
    conn: psycopg.Connection[Any], src: SourceSettings, relations: Sequence[RelationInfo]
) -> list[str]:
    """The SQL a table owner (or superuser) runs so that ``walbridge setup`` by the capture role has
    nothing left that needs ownership (then: ``GRANT`` the capture role what ``check`` names)."""
    statements = [text + ";" for text, _ in _statements(conn, src, relations)]
    grants = state.grant_statements("<capture role>")
    return [*statements, *(g + ";" for g in grants)] if statements else []


def setup_problems(
    conn: psycopg.Connection[Any], src: SourceSettings, relations: Sequence[RelationInfo]
) -> list[Problem]:
    """The statements setup needs that this role may not run, as one problem (empty when none)."""
    refused = [" ".join(text.split()) for text, allowed in _statements(conn, src, relations) if not allowed]
    if not refused:
        return []
    shown = "; ".join(text if len(text) <= 90 else text[:87] + "..." for text in refused)
    return [
        Problem(
            f"setup as {conn.info.user}",
            f"not allowed to run {shown} (only the tables' owner or a role with CREATE on the database may)",
            "have an owner run the SQL of `walbridge setup --print-sql`, then run setup again",
        )
    ]


def teardown_problems(conn: psycopg.Connection[Any], src: SourceSettings) -> list[Problem]:
    """What ``teardown`` would need an owner for; checked before anything is dropped."""
    publication = _publication(conn, src.publication)
    if publication is None or publication[0]:
        return []
    ident = sql.Identifier(src.publication).as_string(conn)
    if other_users(conn, src.publication, src.slot):
        return []  # kept for the other slots; only its comment would change, which is not needed
    return [
        Problem(
            f"publication {src.publication}",
            "owned by another role",
            f"have its owner run `DROP PUBLICATION {ident};`, then run teardown again (nothing was dropped)",
        )
    ]
