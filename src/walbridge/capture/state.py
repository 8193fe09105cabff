"""Whether a capture's initial snapshot finished, recorded in the source database.

One row per capture (its ``source.slot`` name) in ``walbridge.capture_snapshot``: ``pending`` from
just before the snapshot starts until every snapshot record is acknowledged by Kafka, then ``done``
(with the LSN it was read at, logical mode); ``skipped`` when capture streams without a snapshot
(``snapshot: never``). No row counts as pending. The decision travels with the source: every process
on every host decides the same, and a snapshot interrupted at any point (even by SIGKILL) is taken
again, never skipped.

Taken again, not resumed: a consistent snapshot cannot outlive its transaction. The interrupted
attempt may already have published rows that were deleted before the retry, so the retry keeps the
stream's starting point of the first attempt (logical mode: the slot created with it; trigger mode:
the position stored before its first row) and streams from there after the new snapshot: the
changes made in between are replayed, and the destination converges to the source (a row changed in
between may briefly show an older state while the replay passes).

``walbridge setup`` forgets the row when it creates a slot (a new slot owes its snapshot);
``walbridge teardown`` deletes it, and the table (and the schema) when nothing else is left.

Privileges: creating the table needs CREATE on the database (for the ``walbridge`` schema) or on
that schema; the capture role then needs USAGE on the schema and SELECT, INSERT, UPDATE, DELETE on
the table (it owns both when it ran ``walbridge setup``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from walbridge.capture.trigger_setup import SCHEMA, drop_schema_if_unused
from walbridge.errors import ConfigError
from walbridge.lsn import Lsn
from walbridge.pgerrors import map_pg_error

__all__ = [
    "SNAPSHOT_TABLE",
    "SNAPSHOT_TABLE_NAME",
    "drop_if_unused",
    "ensure_table",
    "forget",
    "legacy_snapshot_done",
    "load",
    "load_incremental",
    "record",
    "save_incremental",
]

SNAPSHOT_TABLE = "capture_snapshot"
SNAPSHOT_TABLE_NAME = f"{SCHEMA}.{SNAPSHOT_TABLE}"
_TABLE = SNAPSHOT_TABLE_NAME

State = Literal["pending", "done", "skipped"]

_DDL = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    slot       text PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('pending', 'done', 'skipped')),
    lsn        pg_lsn,
    updated_at timestamptz NOT NULL DEFAULT now(),
    incremental jsonb
)
"""
_ADD_INCREMENTAL = f"ALTER TABLE {_TABLE} ADD COLUMN IF NOT EXISTS incremental jsonb"
"""Tables created by an older walbridge lack the incremental snapshot's progress column."""

_GRANT_HINT = (
    f"run walbridge setup as a role with CREATE on the database, or GRANT USAGE ON SCHEMA {SCHEMA} and "
    f"SELECT, INSERT, UPDATE, DELETE ON {_TABLE} TO <capture role>"
)


def ddl_statements() -> list[str]:
    """What :func:`ensure_table` runs, for an owner to run instead (``walbridge setup --print-sql``)."""
    return [f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}", _DDL.strip(), f"REVOKE ALL ON {_TABLE} FROM PUBLIC"]


def grant_statements(role: str) -> list[str]:
    """What a capture role that did not create the table needs on it."""
    return [
        f"GRANT USAGE ON SCHEMA {SCHEMA} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_TABLE} TO {role}",
    ]


def table_missing(conn: psycopg.Connection[Any]) -> bool:
    return not _exists(conn)


def ensure_table(conn: psycopg.Connection[Any]) -> bool:
    """Create the schema and table when missing (``True`` if created); ConfigError naming the grant."""
    try:
        if _exists(conn):
            if not _has_incremental(conn):
                conn.execute(_ADD_INCREMENTAL)
            return False
        with conn.transaction():
            # Two captures starting together would both create: CREATE ... IF NOT EXISTS is not safe
            # against a concurrent creator, so the second waits for the first and then finds the table.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_TABLE,))
            if _exists(conn):
                return False
            if conn.execute("SELECT to_regnamespace(%s) IS NULL", (SCHEMA,)).fetchone() == (True,):
                conn.execute(f"CREATE SCHEMA {SCHEMA}")
            conn.execute(_DDL)
            conn.execute(f"REVOKE ALL ON {_TABLE} FROM PUBLIC")
        return True
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"{_TABLE} (where capture records whether its snapshot finished) is missing and this role "
            f"may not create it: {exc.diag.message_primary}; {_GRANT_HINT}"
        ) from exc
    except psycopg.Error as exc:
        raise map_pg_error(exc, f"creating {_TABLE}") from exc


def load(conn: psycopg.Connection[Any], slot: str) -> State | None:
    """The slot's snapshot state (``None``: no row, the snapshot is owed); creates the table if missing."""
    ensure_table(conn)
    row = _run(conn, f"SELECT state FROM {_TABLE} WHERE slot = %s", (slot,), "reading").fetchone()
    return row[0] if row is not None else None


def record(conn: psycopg.Connection[Any], slot: str, state: State, lsn: int | None = None) -> None:
    """Store the slot's snapshot state (committed at once: ``conn`` is autocommit)."""
    _run(
        conn,
        f"""INSERT INTO {_TABLE} (slot, state, lsn) VALUES (%s, %s, %s::pg_lsn) ON CONFLICT (slot)
            DO UPDATE SET state = EXCLUDED.state, lsn = EXCLUDED.lsn, updated_at = now()""",
        (slot, state, str(Lsn(lsn)) if lsn is not None else None),
        "recording",
    )


def load_incremental(conn: psycopg.Connection[Any], slot: str) -> dict[str, Any] | None:
    """The incremental snapshot's persisted progress (see :mod:`walbridge.capture.incremental`)."""
    ensure_table(conn)
    row = _run(conn, f"SELECT incremental FROM {_TABLE} WHERE slot = %s", (slot,), "reading").fetchone()
    return row[0] if row is not None and isinstance(row[0], dict) else None


def save_incremental(conn: psycopg.Connection[Any], slot: str, progress: dict[str, Any]) -> None:
    """Store the incremental snapshot's progress beside the slot's snapshot state."""
    _run(
        conn,
        f"""INSERT INTO {_TABLE} (slot, state, incremental) VALUES (%s, 'skipped', %s) ON CONFLICT (slot)
            DO UPDATE SET incremental = EXCLUDED.incremental, updated_at = now()""",
        (slot, Jsonb(progress)),
        "recording",
    )


def forget(conn: psycopg.Connection[Any], slot: str) -> bool:
    """Delete the slot's row (its snapshot is owed again); ``True`` if there was one."""
    if not _exists(conn):
        return False
    return bool(_run(conn, f"DELETE FROM {_TABLE} WHERE slot = %s", (slot,), "deleting").rowcount > 0)


def drop_if_unused(conn: psycopg.Connection[Any]) -> list[str]:
    """Teardown: drop the table when no capture has a row in it, and the schema when it is then empty."""
    if not _exists(conn):
        return []
    if _run(conn, f"SELECT 1 FROM {_TABLE} LIMIT 1", (), "reading").fetchone() is not None:
        return []
    owner = conn.execute(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = to_regclass(%s)",
        (_TABLE,),
    ).fetchone()
    if owner is not None and not owner[0]:
        return [f"kept {_TABLE} (empty; owned by another role, which may drop it)"]
    try:
        with conn.transaction():
            conn.execute(f"DROP TABLE {_TABLE}")
            return [f"dropped {_TABLE}", *drop_schema_if_unused(conn)]
    except psycopg.Error as exc:
        raise map_pg_error(exc, f"dropping {_TABLE}") from exc


def _exists(conn: psycopg.Connection[Any]) -> bool:
    """From the catalog: needs no privilege on the schema (``to_regclass`` does)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s",
        (SCHEMA, SNAPSHOT_TABLE),
    ).fetchone()
    return bool(row and row[0])


def _has_incremental(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'incremental'",
        (_TABLE,),
    ).fetchone()
    return bool(row and row[0])


def _run(conn: psycopg.Connection[Any], query: str, params: Any, doing: str) -> Any:
    try:
        return conn.execute(query, params)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"{doing} the snapshot state in {_TABLE} was refused: {exc.diag.message_primary}; {_GRANT_HINT}"
        ) from exc
    except psycopg.Error as exc:
        raise map_pg_error(exc, f"{doing} the snapshot state in {_TABLE}") from exc


def legacy_snapshot_done(state_dir: str, dbname: str, slot: str) -> bool:
    """Whether an older walbridge's local state file says the slot's snapshot finished (upgrades).

    Read only when the source has no row for an existing slot, so that upgrading does not snapshot
    every table again; a missing or unreadable file means the snapshot is owed.
    """
    path = Path(state_dir) / "capture" / f"{dbname}-{slot}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("snapshot_pending") is False
