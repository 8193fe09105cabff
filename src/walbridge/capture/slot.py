"""Publication and replication slot: inspect, create idempotently, drop; the snapshot decision.

An abandoned slot keeps every WAL segment from its position on: ``walbridge teardown``
drops it, and the ``walbridge_capture_slot_retained_wal_bytes`` metric shows the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from walbridge.capture.catalog import RelationInfo
from walbridge.errors import ConfigError

__all__ = [
    "SlotInfo",
    "drop_publication",
    "drop_slot",
    "ensure_publication",
    "needs_snapshot",
    "set_replica_identity_full",
    "slot_info",
]


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str | None
    database: str | None
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: str | None
    restart_lsn: str | None
    retained_bytes: int | None
    wal_status: str | None


def slot_info(conn: psycopg.Connection[Any], slot: str) -> SlotInfo | None:
    row = conn.execute(
        """SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text,
                  restart_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status
             FROM pg_replication_slots WHERE slot_name = %s""",
        (slot,),
    ).fetchone()
    return SlotInfo(*row) if row else None


def check_slot_usable(info: SlotInfo, dbname: str) -> None:
    """Raise ConfigError when the slot exists but cannot serve this capture."""
    if info.plugin != "pgoutput":
        raise ConfigError(
            f"replication slot {info.name} uses plugin {info.plugin}, not pgoutput; "
            "drop it (walbridge teardown) or choose another source.slot"
        )
    if info.database != dbname:
        raise ConfigError(
            f"replication slot {info.name} belongs to database {info.database}, not {dbname}; "
            "choose another source.slot"
        )
    if info.active:
        raise ConfigError(
            f"replication slot {info.name} is in use by another process (pid {info.active_pid}); "
            "stop that process or choose another source.slot"
        )
    if info.wal_status == "lost":
        raise ConfigError(
            f"replication slot {info.name} has lost required WAL (wal_status=lost); "
            "drop it with walbridge teardown and capture again with a snapshot"
        )


def needs_snapshot(mode: str, slot_exists: bool, snapshot_pending: bool) -> bool:
    """Snapshot-or-stream, from the snapshot mode and the stored state."""
    if mode == "never":
        return False
    if mode == "initial_only":
        return True
    if mode in ("initial", "when_needed"):
        return not slot_exists or snapshot_pending
    raise ConfigError(f"source.snapshot: unknown mode {mode!r}")


def ensure_publication(conn: psycopg.Connection[Any], name: str, relations: list[RelationInfo]) -> bool:
    """Create the publication for exactly these tables, or align an existing one; True if changed."""
    tables = sql.SQL(", ").join(sql.Identifier(rel.schema, rel.table) for rel in relations)
    exists = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(sql.Identifier(name), tables))
        return True
    if exists[0]:
        return False
    current = {
        (schema, table)
        for schema, table in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,)
        )
    }
    wanted = {(rel.schema, rel.table) for rel in relations}
    if current == wanted:
        return False
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), tables))
    return True


def set_replica_identity_full(conn: psycopg.Connection[Any], relations: list[RelationInfo]) -> list[str]:
    changed = []
    for rel in relations:
        if rel.replica_identity != "f":
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(rel.schema, rel.table))
            )
            changed.append(f"{rel.schema}.{rel.table}")
    return changed


def create_slot(conn: psycopg.Connection[Any], slot: str) -> str:
    """Create the slot without exporting a snapshot (setup); returns its consistent point."""
    row = conn.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    info = slot_info(conn, slot)
    if info is None:
        return False
    if info.active and info.active_pid:
        raise ConfigError(
            f"replication slot {slot} is in use by pid {info.active_pid}; stop that capture first"
        )
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


def drop_publication(conn: psycopg.Connection[Any], name: str) -> bool:
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone()
    if exists:
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    return exists is not None
