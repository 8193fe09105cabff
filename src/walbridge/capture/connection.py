"""Connections to the source database, pinned to the text formats that ``values.py`` converts."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from functools import cache
from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types.string import TextLoader

from walbridge.capture.values import SESSION_SETTINGS
from walbridge.errors import ConnectionLost
from walbridge.pgerrors import one_line

__all__ = [
    "CLIENT_ENCODING",
    "application_name",
    "connect_source",
    "load_as_text",
    "session_options",
    "slot_holder",
    "text_values",
    "wait_for_source",
]

log = logging.getLogger(__name__)


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


def load_as_text(adapters: AdaptersMap) -> None:
    """Make ``adapters`` (a connection's or a cursor's) load every column as its text: the text the
    stream carries, which :class:`~walbridge.capture.rows.RowCodec` converts. Types psycopg does not
    know load as text already."""
    for info in psycopg.adapters.types:
        for oid in (info.oid, info.array_oid):
            if oid:
                adapters.register_loader(oid, TextLoader)


@cache
def text_values() -> AdaptersMap:
    """Adapters for a connection whose queries return text (``connect_source(dsn, context=...)``)."""
    adapters = AdaptersMap(psycopg.adapters)
    load_as_text(adapters)
    return adapters


def connect_source(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A regular (by default autocommit) connection to the source."""
    kwargs.setdefault("autocommit", True)
    try:
        return psycopg.connect(dsn, options=session_options(), **kwargs)
    except psycopg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to the source database: {one_line(exc)}") from exc


_NOT_A_STARTUP = ("authentication", "password", "does not exist", "pg_hba.conf", "permission denied")
"""Connection failures that waiting does not cure: they stop at once."""


def wait_for_source(dsn: str, wait_s: float, stop: threading.Event | None = None) -> None:
    """Return once the source accepts a connection, retrying for up to ``wait_s`` while it is not up
    yet (refused, starting up or shutting down, as during a container's init scripts): one line
    says so, then :class:`ConnectionLost` with one line when it never answered (or ``stop`` is set)."""
    deadline = time.monotonic() + wait_s
    delay = 0.5
    warned = False
    while True:
        try:
            connect_source(dsn, connect_timeout=max(1, min(10, int(wait_s) or 10))).close()
            if warned:
                log.info("the source database answers")
            return
        except ConnectionLost as exc:
            left = deadline - time.monotonic()
            if left <= 0 or any(marker in exc.message.lower() for marker in _NOT_A_STARTUP):
                if warned:
                    message = f"{exc.message} (retried for {wait_s:g}s, source.connect_wait_s)"
                    raise ConnectionLost(message) from None
                raise
            if not warned:
                log.warning("%s; retrying for up to %.0fs (source.connect_wait_s)", exc.message, left)
                warned = True
            if stop is not None and stop.wait(min(delay, left)):
                raise
            if stop is None:
                time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
