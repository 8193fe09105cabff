"""PostgreSQL errors (psycopg 3 and psycopg2) → the walbridge error tree, by SQLSTATE class.

Classes "08" (connection), "40" (rollback: deadlock, serialization), "53" (resources),
"57" (operator intervention: shutdown) are transient; "22" (data), "23" (constraints),
"42" (syntax, undefined objects, privileges) are permanent. A failure without SQLSTATE is a
connection failure: transient.
"""

from __future__ import annotations

from walbridge.errors import (
    ConnectionLost,
    ConstraintViolation,
    PermanentError,
    ServerBusy,
    TransientError,
    UnknownColumn,
    WalbridgeError,
)

__all__ = ["map_pg_error", "one_line"]

_TRANSIENT_CLASSES = {
    "08": ConnectionLost,
    "40": ServerBusy,
    "53": ServerBusy,
    "57": ConnectionLost,
    "55": ServerBusy,
    "58": ServerBusy,
    "XX": ServerBusy,
}
_PERMANENT_CLASSES = {"22": PermanentError, "23": ConstraintViolation, "42": PermanentError}
_UNDEFINED_COLUMN = "42703"


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if state is None:
        diag = getattr(exc, "diag", None)
        state = getattr(diag, "sqlstate", None)
    return str(state) if state else None


def one_line(exc: BaseException) -> str:
    """The first line of a driver message, without libpq's trailing noise."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def map_pg_error(exc: BaseException, doing: str) -> WalbridgeError:
    """Classify a driver exception; the original stays reachable as ``__cause__`` when raised ``from``."""
    state = _sqlstate(exc)
    message = f"PostgreSQL failed while {doing}: {one_line(exc)}"
    if state is None:
        return ConnectionLost(message)
    if state == _UNDEFINED_COLUMN:
        return UnknownColumn(message, sqlstate=state)
    cls: type[WalbridgeError] = _TRANSIENT_CLASSES.get(state[:2]) or _PERMANENT_CLASSES.get(
        state[:2], PermanentError
    )
    if state == "57014":  # query_canceled (statement_timeout): worth retrying
        cls = ServerBusy
    error = cls(message, sqlstate=state)
    assert isinstance(error, TransientError | PermanentError)
    return error
