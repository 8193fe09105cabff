"""walbridge.pgerrors: every SQLSTATE psycopg knows in classes 08/40/53/57 is transient, in 22/23/42
permanent; single-state overrides, missing SQLSTATEs and psycopg2-style errors are classified too."""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.errors
import pytest

from walbridge.errors import (
    ConfigError,
    ConnectionLost,
    ConstraintViolation,
    FatalError,
    OperationTimeout,
    PermanentError,
    ServerBusy,
    TransientError,
    UnknownColumn,
)
from walbridge.pgerrors import map_pg_error, one_line, sqlstate_of


def _psycopg_classes() -> list[type[psycopg.Error]]:
    found = []
    for name in dir(psycopg.errors):
        cls = getattr(psycopg.errors, name)
        if isinstance(cls, type) and issubclass(cls, psycopg.Error) and getattr(cls, "sqlstate", None):
            found.append(cls)
    return sorted(set(found), key=lambda c: str(c.sqlstate))


CLASSES = _psycopg_classes()
TRANSIENT = [c for c in CLASSES if str(c.sqlstate)[:2] in {"08", "40", "53", "57"}]
PERMANENT = [c for c in CLASSES if str(c.sqlstate)[:2] in {"22", "23", "42"}]
FATAL_STATES = {"42P01", "42501"}
"""No record causes them and every record meets them: stop, never the DLQ."""


def test_psycopg_registry_covers_the_classes() -> None:
    assert {str(c.sqlstate)[:2] for c in TRANSIENT} == {"08", "40", "53", "57"}
    assert {str(c.sqlstate)[:2] for c in PERMANENT} == {"22", "23", "42"}
    assert len(TRANSIENT) >= 20 and len(PERMANENT) >= 100


@pytest.mark.parametrize("cls", TRANSIENT, ids=lambda c: str(c.sqlstate))
def test_transient_classes(cls: type[psycopg.Error]) -> None:
    error = map_pg_error(cls("boom"), "testing")
    assert isinstance(error, TransientError), (cls, type(error))
    assert error.sqlstate == cls.sqlstate


@pytest.mark.parametrize(
    "cls", [c for c in PERMANENT if c.sqlstate not in FATAL_STATES], ids=lambda c: str(c.sqlstate)
)
def test_permanent_classes(cls: type[psycopg.Error]) -> None:
    error = map_pg_error(cls("boom"), "testing")
    assert isinstance(error, PermanentError), (cls, type(error))
    assert error.sqlstate == cls.sqlstate
    if str(cls.sqlstate).startswith("23"):
        assert isinstance(error, ConstraintViolation)


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (psycopg.errors.LockNotAvailable, ServerBusy),  # 55P03 lock timeout
        (psycopg.errors.QueryCanceled, OperationTimeout),  # 57014 statement timeout
        (psycopg.errors.UndefinedColumn, UnknownColumn),  # 42703
        (psycopg.errors.SerializationFailure, ServerBusy),  # 40001
        (psycopg.errors.DeadlockDetected, ServerBusy),  # 40P01
        (psycopg.errors.AdminShutdown, ConnectionLost),  # 57P01
        (psycopg.errors.InvalidPassword, ConfigError),  # 28P01
        (psycopg.errors.InvalidCatalogName, ConfigError),  # 3D000
        (psycopg.errors.FeatureNotSupported, PermanentError),  # 0A000: not listed, permanent
        (psycopg.errors.UndefinedTable, FatalError),  # 42P01
        (psycopg.errors.InsufficientPrivilege, FatalError),  # 42501
        (psycopg.errors.InvalidSchemaName, FatalError),  # 3F000
        (psycopg.errors.DiskFull, ServerBusy),  # 53100: waits
        (psycopg.errors.ReadOnlySqlTransaction, ServerBusy),  # 25006: a standby; waits
    ],
)
def test_single_states(cls: type[psycopg.Error], expected: type[Exception]) -> None:
    error = map_pg_error(cls("boom"), "testing")
    assert type(error) is expected


def test_without_sqlstate() -> None:
    assert isinstance(map_pg_error(psycopg.OperationalError("server closed"), "x"), ConnectionLost)
    assert isinstance(map_pg_error(psycopg.InterfaceError("connection is closed"), "x"), ConnectionLost)
    assert isinstance(map_pg_error(OSError("reset by peer"), "x"), ConnectionLost)
    # client-side: a Python value psycopg cannot send as the column's type; retrying cannot help
    assert type(map_pg_error(psycopg.DataError("int too large"), "x")) is PermanentError
    assert type(map_pg_error(psycopg.ProgrammingError("wrong placeholders"), "x")) is PermanentError
    # a refused login cannot heal by retrying: one line, like a wrong password with a SQLSTATE
    refused = 'connection failed: FATAL:  password authentication failed for user "sink"'
    assert type(map_pg_error(psycopg.OperationalError(refused), "x")) is ConfigError
    missing_role = 'connection failed: FATAL:  role "nobody" does not exist'
    assert type(map_pg_error(psycopg.OperationalError(missing_role), "x")) is ConfigError


def test_fatal_errors_say_what_to_fix() -> None:
    error = map_pg_error(psycopg.errors.UndefinedTable('relation "public.t" does not exist'), "applying")
    assert "create the table" in error.message


class _Psycopg2Style(Exception):
    def __init__(self, pgcode: str) -> None:
        super().__init__("psycopg2 error\nDETAIL: noise")
        self.pgcode = pgcode


def test_psycopg2_pgcode_and_context() -> None:
    error = map_pg_error(_Psycopg2Style("40P01"), "streaming", table="t")
    assert isinstance(error, ServerBusy)
    assert error.context == {"table": "t", "sqlstate": "40P01"}
    assert error.message == "PostgreSQL failed while streaming: psycopg2 error"
    assert sqlstate_of(_Psycopg2Style("23505")) == "23505"
    assert one_line(_Psycopg2Style("23505")) == "psycopg2 error"


def test_real_check_violation_names_the_constraint(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v integer CONSTRAINT v_positive CHECK (v > 0))")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("INSERT INTO t VALUES (-1)")
    error: Any = map_pg_error(info.value, "applying", table="public.t")
    assert isinstance(error, ConstraintViolation)
    assert error.sqlstate == "23514"
    assert error.constraint == "v_positive"
    assert "violates check constraint" in error.message
