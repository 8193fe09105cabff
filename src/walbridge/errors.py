"""The one exception tree of walbridge.

::

    WalbridgeError
    ├── ConfigError                      bad settings; fail at startup
    ├── FatalError                       affects every record (missing table, privilege): stop
    ├── TransientError                   retry with backoff; never skip ahead
    │   ├── ConnectionLost
    │   ├── OperationTimeout
    │   ├── RateLimited                  HTTP 429, REQUEST_LIMIT_EXCEEDED
    │   ├── AuthExpired                  re-authenticate once, then retry
    │   └── ServerBusy                   HTTP 5xx, deadlock, serialization failure
    └── PermanentError                   a few attempts, then the DLQ
        ├── DecodeError                  malformed message (fatal in capture)
        ├── ConstraintViolation
        ├── UnknownColumn
        ├── RecordRejected               Salesforce 400 field errors
        └── RecordTooLarge               a record over the Kafka message limit (stops capture)

Context travels in attributes (``topic``, ``partition``, ``offset``, ``sqlstate``, ...)
so that the DLQ and the logs can show it without parsing messages. ``retryable`` (a class
attribute) says whether trying the same input again can succeed: False for a malformed message
and a record Salesforce's field validation refused, which go to the DLQ at once.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthExpired",
    "ConfigError",
    "ConnectionLost",
    "ConstraintViolation",
    "DecodeError",
    "FatalError",
    "OperationTimeout",
    "PermanentError",
    "RateLimited",
    "RecordRejected",
    "RecordTooLarge",
    "ServerBusy",
    "TransientError",
    "UnknownColumn",
    "WalbridgeError",
]


class WalbridgeError(Exception):
    """Base of every error walbridge raises on purpose."""

    retryable: bool = True
    """False: the same input fails the same way every time; skip the remaining attempts."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: dict[str, Any] = context

    def __getattr__(self, name: str) -> Any:
        context = self.__dict__.get("context", {})
        if name in context:
            return context[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        return self.message


class ConfigError(WalbridgeError):
    """Settings are missing, malformed or contradictory; raised at startup."""


class FatalError(WalbridgeError):
    """A condition that affects every record, not one record's data: a missing table or schema, a
    missing privilege. Stop with one clear line saying what to fix; never the DLQ."""

    retryable = False


class TransientError(WalbridgeError):
    """The operation may succeed if retried later; never skip past it."""


class ConnectionLost(TransientError):
    """A connection to PostgreSQL, Kafka or Salesforce failed or dropped."""


class OperationTimeout(TransientError):
    """An operation took longer than allowed."""


class RateLimited(TransientError):
    """The remote side asks us to slow down (HTTP 429, REQUEST_LIMIT_EXCEEDED)."""

    def __init__(self, message: str, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)


class AuthExpired(TransientError):
    """The access token expired or was revoked: re-authenticate once, then retry."""


class ServerBusy(TransientError):
    """The server failed in a way that usually passes: 5xx, deadlock, serialization failure."""


class PermanentError(WalbridgeError):
    """Retrying the same input will fail the same way: after a few attempts it goes to the DLQ."""


class DecodeError(PermanentError):
    """Bytes that are not a valid message (replication protocol or Kafka record)."""

    retryable = False


class ConstraintViolation(PermanentError):
    """The destination refused the row (unique, check, foreign key, not null)."""


class UnknownColumn(PermanentError):
    """A column or field that the destination does not have."""


class RecordRejected(PermanentError):
    """Salesforce rejected one record (field errors, too long, wrong type)."""

    retryable = False


class RecordTooLarge(PermanentError):
    """A Kafka record over the message size limit: capture stops rather than skip the row."""

    retryable = False
