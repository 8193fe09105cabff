"""Connections to the source database, pinned to the text formats that ``values.py`` converts."""

from __future__ import annotations

from typing import Any

import psycopg

from walbridge.capture.values import SESSION_SETTINGS
from walbridge.errors import ConnectionLost
from walbridge.pgerrors import one_line

__all__ = ["CLIENT_ENCODING", "connect_source", "session_options"]


CLIENT_ENCODING = "UTF8"
"""Every source session speaks UTF-8, whatever the database's encoding: the server converts the text
of COPY, queries and the pgoutput stream (which capture decodes as UTF-8) to it."""


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
