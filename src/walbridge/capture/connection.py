"""Connections to the source database, pinned to the text formats that ``values.py`` converts."""

from __future__ import annotations

import os
import socket
from typing import Any

import psycopg

from walbridge.capture.values import SESSION_SETTINGS
from walbridge.errors import ConnectionLost
from walbridge.pgerrors import one_line

__all__ = ["CLIENT_ENCODING", "application_name", "connect_source", "session_options", "slot_holder"]


CLIENT_ENCODING = "UTF8"
"""Every source session speaks UTF-8, whatever the database's encoding: the server converts the text
of COPY, queries and the pgoutput stream (which capture decodes as UTF-8) to it."""


def application_name() -> str:
    """How a capture shows in ``pg_stat_replication``: host and pid of this walbridge process."""
    return f"walbridge capture {socket.gethostname()}:{os.getpid()}"[:63]


def slot_holder(conn: psycopg.Connection[Any], server_pid: int | None) -> str:
    """Who holds a slot, in words: the walbridge process (host:pid) when it is one, else the client."""
    if server_pid is None:
        return "another process"
    row = conn.execute(
        "SELECT application_name, client_addr::text, backend_start FROM pg_stat_activity WHERE pid = %s",
        (server_pid,),
    ).fetchone()
    if row is None:
        return f"server process {server_pid}"
    name, address, started = row
    where = f" from {address}" if address else ""
    since = f", connected since {started:%Y-%m-%d %H:%M:%S %Z}" if started else ""
    return f"{name or 'a client'}{where}{since} (server process {server_pid})"


def session_options() -> str:
    """libpq ``options`` that set every session setting capture relies on."""
    settings = {**SESSION_SETTINGS, "client_encoding": CLIENT_ENCODING}
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def connect_source(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A regular (by default autocommit) connection to the source."""
    kwargs.setdefault("autocommit", True)
    try:
        return psycopg.connect(dsn, options=session_options(), **kwargs)
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to the source database: {one_line(exc)}") from exc
