"""Publication and replication slot: inspect, create idempotently, drop; the snapshot decision.

An abandoned slot keeps every WAL segment from its position on: ``walbridge teardown``
drops it, and the ``walbridge_capture_slot_retained_wal_bytes`` metric shows the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from walbridge.capture.catalog import Problem, RelationInfo
from walbridge.errors import ConfigError

__all__ = [
    "SlotInfo",
    "SlotWal",
    "drop_publication",
    "drop_slot",
    "ensure_publication",
    "needs_snapshot",
    "other_users",
    "publication_problems",
    "publication_tables",
    "set_replica_identity_full",
    "slot_info",
    "slot_wal",
    "wal_dir_bytes",
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
                  restart_lsn::text,
                  pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                  ELSE pg_current_wal_lsn() END, restart_lsn)::bigint,
                  wal_status
             FROM pg_replication_slots WHERE slot_name = %s""",
        (slot,),
    ).fetchone()
    return SlotInfo(*row) if row else None


@dataclass(frozen=True, slots=True)
class SlotWal:
    """What the slot costs the source's disk, and how much room is left before it is invalidated."""

    retained_bytes: int | None
    wal_status: str | None
    safe_wal_size: int | None
    """Bytes that can still be written before the slot loses WAL; None without a limit."""
    max_slot_wal_keep_size: int
    """The server's ``max_slot_wal_keep_size`` in bytes; -1: unlimited."""


def slot_wal(conn: psycopg.Connection[Any], slot: str) -> SlotWal | None:
    """The slot's WAL figures (PostgreSQL 13+), or None when the slot does not exist."""
    row = conn.execute(
        """SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                  ELSE pg_current_wal_lsn() END, restart_lsn)::bigint,
                  wal_status, safe_wal_size,
                  pg_size_bytes(current_setting('max_slot_wal_keep_size') ||
                                CASE WHEN current_setting('max_slot_wal_keep_size') ~ '^-?[0-9]+$'
                                     AND current_setting('max_slot_wal_keep_size') <> '-1'
                                     THEN 'MB' ELSE '' END)
             FROM pg_replication_slots WHERE slot_name = %s""",
        (slot,),
    ).fetchone()
    return SlotWal(*row) if row else None


def wal_dir_bytes(conn: psycopg.Connection[Any]) -> int | None:
    """The size of the source's WAL directory, or None without the privilege to read it
    (``pg_ls_waldir``: superuser or ``pg_monitor``)."""
    try:
        row = conn.execute("SELECT coalesce(sum(size), 0)::bigint FROM pg_ls_waldir()").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return int(row[0]) if row else None


def check_slot_usable(info: SlotInfo, dbname: str, holder: str = "another process") -> None:
    """Raise ConfigError when the slot exists but cannot serve this capture (``holder``: who holds it)."""
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
            f"replication slot {info.name} is in use by {holder}; "
            "stop that process or choose another source.slot"
        )
    if info.wal_status == "lost":
        raise ConfigError(
            f"replication slot {info.name} has lost required WAL (wal_status=lost); "
            "drop it with walbridge teardown and capture again with a snapshot"
        )


def needs_snapshot(mode: str, slot_exists: bool, snapshot_pending: bool) -> bool:
    """Snapshot-or-stream, from the snapshot mode and the stored state."""
    if mode in ("never", "incremental"):  # incremental: chunks beside the stream, never a blocking snapshot
        return False
    if mode == "initial_only":
        return True
    if mode in ("initial", "when_needed"):
        return not slot_exists or snapshot_pending
    raise ConfigError(f"source.snapshot: unknown mode {mode!r}")


_USERS_PREFIX = "walbridge slots: "
"""A walbridge publication's comment names the slots whose captures use it (one home for that fact)."""


def _publication(conn: psycopg.Connection[Any], name: str) -> tuple[bool, bool, set[str]] | None:
    """(for all tables, publish_via_partition_root, slots using it) of a publication; None when absent."""
    row = conn.execute(
        "SELECT puballtables, "
        + ("pubviaroot" if conn.info.server_version >= 130000 else "false")
        + ", obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s",
        (name,),
    ).fetchone()
    if row is None:
        return None
    comment = str(row[2] or "")
    users: set[str] = set()
    if comment.startswith(_USERS_PREFIX):
        users = {slot.strip() for slot in comment[len(_USERS_PREFIX) :].split(",") if slot.strip()}
    return bool(row[0]), bool(row[1]), users


def publication_tables(conn: psycopg.Connection[Any], name: str) -> set[tuple[str, str]]:
    """The tables named in the publication (partitioned tables by their own name, not their partitions)."""
    rows = conn.execute(
        """SELECT n.nspname, c.relname FROM pg_publication_rel r
           JOIN pg_publication p ON p.oid = r.prpubid
           JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE p.pubname = %s""",
        (name,),
    ).fetchall()
    return {(str(schema), str(table)) for schema, table in rows}


def other_users(conn: psycopg.Connection[Any], name: str, slot: str) -> set[str]:
    """The other existing slots whose captures use publication ``name``."""
    found = _publication(conn, name)
    if found is None:
        return set()
    others = found[2] - {slot}
    if not others:
        return set()
    rows = conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY(%s)", (sorted(others),)
    ).fetchall()
    return {str(row[0]) for row in rows}


def _set_users(conn: psycopg.Connection[Any], name: str, users: set[str]) -> None:
    """Record the slots using the publication; skipped when this role does not own it (a DBA's own
    publication: walbridge then never narrows nor drops it on behalf of another slot it cannot see)."""
    owner = conn.execute(
        "SELECT pg_has_role(pubowner, 'USAGE') FROM pg_publication WHERE pubname = %s", (name,)
    ).fetchone()
    if not (owner and owner[0]):
        return
    comment = _USERS_PREFIX + ",".join(sorted(users))
    conn.execute(
        sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(sql.Identifier(name), sql.Literal(comment))
    )


def ensure_publication(
    conn: psycopg.Connection[Any], name: str, relations: list[RelationInfo], slot: str
) -> bool:
    """Create the publication for these tables, or align an existing one; True if its tables changed.

    A publication that another slot's capture also uses (its comment names the slots) only gains
    tables: it never loses one another capture may need. Partitioned tables are published under
    their own name (``publish_via_partition_root``), so that snapshot and stream share one topic.
    """
    if not relations:
        raise ConfigError(f"publication {name}: no table to publish (source.tables matches none)")
    tables = sql.SQL(", ").join(sql.Identifier(rel.schema, rel.table) for rel in relations)
    via_root = conn.info.server_version >= 130000
    found = _publication(conn, name)
    if found is None:
        options = sql.SQL(" WITH (publish_via_partition_root = true)") if via_root else sql.SQL("")
        conn.execute(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(sql.Identifier(name), tables, options)
        )
        _set_users(conn, name, {slot})
        return True
    all_tables, by_root, users = found
    if slot not in users:
        _set_users(conn, name, users | {slot})
    if via_root and not by_root:
        conn.execute(
            sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(
                sql.Identifier(name)
            )
        )
    if all_tables:
        return False
    current = publication_tables(conn, name)
    wanted = {(rel.schema, rel.table) for rel in relations}
    if other_users(conn, name, slot):
        added = [rel for rel in relations if (rel.schema, rel.table) not in current]
        if not added:
            return False
        more = sql.SQL(", ").join(sql.Identifier(rel.schema, rel.table) for rel in added)
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(sql.Identifier(name), more))
        return True
    if current == wanted:
        return False
    conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(sql.Identifier(name), tables))
    return True


def publication_problems(
    conn: psycopg.Connection[Any], name: str, slot: str, relations: list[RelationInfo]
) -> list[Problem]:
    """Where the publication and this slot's configured tables disagree (nothing when it does not exist
    and neither does the slot: setup creates both)."""
    found = _publication(conn, name)
    if found is None:
        if slot_info(conn, slot) is None:
            return []
        return [
            Problem(
                f"publication {name}",
                f"missing while replication slot {slot} exists",
                "run walbridge setup (it creates the publication again)",
            )
        ]
    all_tables, by_root, _users = found
    problems = []
    if not by_root and conn.info.server_version >= 130000 and any(rel.partitioned for rel in relations):
        problems.append(
            Problem(
                f"publication {name}",
                "without publish_via_partition_root",
                "run walbridge setup (partitioned tables are captured under their own name)",
            )
        )
    if all_tables:
        return problems
    current = publication_tables(conn, name)
    wanted = {(rel.schema, rel.table) for rel in relations}
    missing = sorted(f"{schema}.{table}" for schema, table in wanted - current)
    extra = sorted(f"{schema}.{table}" for schema, table in current - wanted)
    if missing:
        problems.append(
            Problem(
                f"publication {name}",
                f"missing {', '.join(missing)}",
                "run walbridge setup (it adds them), or fix source.tables",
            )
        )
    if extra and not other_users(conn, name, slot):
        problems.append(
            Problem(
                f"publication {name}",
                f"also publishing {', '.join(extra)}, which source.tables does not name",
                "run walbridge setup to align it, or add them to source.tables",
            )
        )
    return problems


def set_replica_identity_full(conn: psycopg.Connection[Any], relations: list[RelationInfo]) -> list[str]:
    """REPLICA IDENTITY FULL on each table and each partition (a partition's own identity decides what
    the WAL carries; the setting does not recurse); the names changed."""
    changed = []
    for rel in relations:
        targets = [(rel.schema, rel.table)] if rel.replica_identity != "f" else []
        if rel.partitioned:
            targets += [
                (str(schema), str(table))
                for schema, table in conn.execute(
                    """SELECT n.nspname, c.relname FROM pg_partition_tree(%s) t
                       JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE t.relid <> %s AND c.relreplident <> 'f'""",
                    (rel.oid, rel.oid),
                )
            ]
        for schema, table in targets:
            conn.execute(
                sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(sql.Identifier(schema, table))
            )
            changed.append(f"{schema}.{table}")
    return changed


def create_slot(conn: psycopg.Connection[Any], slot: str) -> str:
    """Create the slot without exporting a snapshot (setup); returns its consistent point.

    On PostgreSQL 17+ the slot is a failover slot: standbys that synchronise slots keep it, so
    capture resumes on a promoted standby.
    """
    if conn.info.server_version >= 170000:
        query = "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput', failover => true)"
    else:
        query = "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, 'pgoutput')"
    row = conn.execute(query, (slot,)).fetchone()
    assert row is not None
    return str(row[0])


def drop_slot(conn: psycopg.Connection[Any], slot: str) -> bool:
    info = slot_info(conn, slot)
    if info is None:
        return False
    if info.active and info.active_pid:
        from walbridge.capture.connection import slot_holder

        holder = slot_holder(conn, info.active_pid)
        raise ConfigError(f"replication slot {slot} is in use by {holder}; stop that capture first")
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


def drop_publication(conn: psycopg.Connection[Any], name: str, slot: str) -> str | None:
    """Drop the publication unless another slot's capture still uses it; what was done, or None."""
    found = _publication(conn, name)
    if found is None:
        return None
    others = other_users(conn, name, slot)
    if others:
        _set_users(conn, name, found[2] - {slot})
        return f"kept publication {name}: slot(s) {', '.join(sorted(others))} still use it"
    conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(name)))
    return f"dropped publication {name}"
