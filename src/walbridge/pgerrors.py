"""PostgreSQL errors (psycopg 3 and psycopg2) → the walbridge error tree, by SQLSTATE.

The one classifier for capture, sinks and verify. By SQLSTATE class: "08" (connection), "40"
(rollback: deadlock, serialization), "53" (resources), "57" (operator intervention: shutdown,
cannot connect now), "55"/"58"/"XX" (object state, system, internal: e.g. a replication slot in
use) are transient; "22" (data: the value does not fit), "23" (constraints), "42" (syntax,
undefined objects, privileges) are permanent; "28" (authorization) and "3D" (unknown database)
are configuration errors; "3F" (the schema does not exist) is fatal; anything else is permanent.
Single states override their class: ``55P03`` lock timeout → :class:`ServerBusy`, ``57014``
statement timeout → :class:`OperationTimeout`, ``42703`` → :class:`UnknownColumn`, ``25006``
read-only transaction (a standby, before a failover completes) → :class:`ServerBusy`, and the
states that no record can cause and every record meets — ``42P01`` the table does not exist,
``42501`` a privilege is missing — → :class:`FatalError` (stop with one line and the fix from
:data:`FIXES`; never the DLQ). Disk full (``53100``) and other resource shortages are transient.
A connection refused for a wrong password or a missing role (no SQLSTATE on the client side) is
a :class:`ConfigError`.

A failure without SQLSTATE is a connection failure (transient), except the DB-API's client-side
``DataError``/``ProgrammingError``/``NotSupportedError`` (e.g. a Python value that cannot be
sent as the column's type), which are permanent. The error carries ``sqlstate`` and, for
constraint and data errors, ``constraint``, plus whatever context the caller passes.
"""

from __future__ import annotations

import re
from typing import Any

from walbridge.errors import (
    ConfigError,
    ConnectionLost,
    ConstraintViolation,
    FatalError,
    OperationTimeout,
    PermanentError,
    ServerBusy,
    UnknownColumn,
    WalbridgeError,
)

__all__ = ["CLASS_ERRORS", "FIXES", "STATE_ERRORS", "map_pg_error", "one_line", "sqlstate_of"]

CLASS_ERRORS: dict[str, type[WalbridgeError]] = {
    "08": ConnectionLost,  # connection exception
    "40": ServerBusy,  # transaction rollback: serialization failure, deadlock
    "53": ServerBusy,  # insufficient resources
    "57": ConnectionLost,  # operator intervention: admin shutdown, cannot connect now
    "55": ServerBusy,  # object not in prerequisite state: slot in use, lock not available
    "58": ServerBusy,  # system error (I/O)
    "XX": ServerBusy,  # internal error
    "22": PermanentError,  # data exception
    "23": ConstraintViolation,  # integrity constraint violation
    "42": PermanentError,  # syntax error or access rule violation
    "28": ConfigError,  # invalid authorization specification
    "3D": ConfigError,  # invalid catalog name: the database does not exist
    "3F": FatalError,  # invalid schema name: the schema does not exist
}
"""SQLSTATE class (first two characters) → error class."""

STATE_ERRORS: dict[str, type[WalbridgeError]] = {
    "55P03": ServerBusy,  # lock_not_available (lock_timeout)
    "57014": OperationTimeout,  # query_canceled (statement_timeout)
    "42703": UnknownColumn,  # undefined_column
    "42P01": FatalError,  # undefined_table
    "42501": FatalError,  # insufficient_privilege
    "25006": ServerBusy,  # read_only_sql_transaction: a standby (until a failover completes)
}
"""Single SQLSTATEs classified apart from their class."""

FIXES: dict[str, str] = {
    "42P01": "create the table (a sink can also map it with table_map or create it with auto_create: true)",
    "42501": "grant the missing privilege to the role in the DSN",
    "3F000": "create the schema",
}
"""What to do about a :class:`FatalError`, by SQLSTATE: appended to its one line."""

_AUTH_FAILURES = re.compile(
    r'password authentication failed|no password supplied|(role|database) "[^"]*" does not exist'
)
"""libpq connection failures (no SQLSTATE on the client side) that retrying cannot fix."""

_CLIENT_SIDE_PERMANENT = frozenset({"DataError", "ProgrammingError", "NotSupportedError", "IntegrityError"})


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a psycopg 3 (``sqlstate``) or psycopg2 (``pgcode``) error, if any."""
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if state is None:
        state = getattr(getattr(exc, "diag", None), "sqlstate", None)
    return str(state) if state else None


def one_line(exc: BaseException) -> str:
    """The first line of a driver message, without libpq's trailing noise."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    text = str(primary or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def map_pg_error(exc: BaseException, doing: str, **context: Any) -> WalbridgeError:
    """Classify a driver exception; raise the result ``from exc`` to keep the original as ``__cause__``."""
    state = sqlstate_of(exc)
    message = f"PostgreSQL failed while {doing}: {one_line(exc)}"
    if state is None:
        if any(cls.__name__ in _CLIENT_SIDE_PERMANENT for cls in type(exc).__mro__):
            return PermanentError(message, **context)
        if _AUTH_FAILURES.search(str(exc)):
            return ConfigError(message, **context)
        return ConnectionLost(message, **context)
    context["sqlstate"] = state
    constraint = getattr(getattr(exc, "diag", None), "constraint_name", None)
    if constraint:
        context["constraint"] = constraint
    cls = STATE_ERRORS.get(state) or CLASS_ERRORS.get(state[:2], PermanentError)
    if cls is FatalError and state in FIXES:
        message = f"{message}: {FIXES[state]}"
    return cls(message, **context)
