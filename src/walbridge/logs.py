"""How walbridge processes log: rich on a terminal, plain lines or JSON objects elsewhere, secrets never.

:func:`configure_logging` is called once per process (the CLI's root callback, each sink worker).
``json`` writes one object per line with ``ts``, ``level``, ``logger``, ``message`` and whatever
context a call passes in ``extra`` (``stage``, ``table``, ``topic``, ``partition``, ``offset``, ``lsn``).
Every handler carries :class:`RedactSecrets`, so a DSN or token that reaches a message is masked.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any, Literal

import orjson
from rich.console import Console

__all__ = [
    "CONTEXT_FIELDS",
    "LogFormat",
    "RedactSecrets",
    "ThrottleRepeats",
    "configure_logging",
    "console",
    "current_setup",
    "last_problem",
    "record_problems",
    "redact",
]

LogFormat = Literal["auto", "rich", "plain", "json"]

console = Console(stderr=True)
"""The process's stderr: rich log lines, progress bars and the CLI's error lines share it."""

CONTEXT_FIELDS = ("stage", "table", "topic", "partition", "offset", "lsn", "sink", "worker")
"""``extra`` keys a log call may pass; JSON lines carry them as fields."""

_SECRETS = (
    (re.compile(r"(://[^/:@\s]*:)[^@\s/]+@"), r"\1***@"),  # user:password@ in a URI
    (re.compile(r"((?:^|[\s?&])password=)[^\s&]+", re.IGNORECASE), r"\1***"),
    (
        re.compile(
            r"((?:client_secret|access_token|refresh_token|assertion)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+",
            re.IGNORECASE,
        ),
        r"\1***",
    ),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=!-]+"), r"\1***"),
)

_setup: tuple[bool, LogFormat] = (False, "auto")


def redact(text: str) -> str:
    """``text`` with passwords, client secrets and tokens masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Masks secrets in the fully formatted message of every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class ThrottleRepeats(logging.Filter):
    """Passes one record per kind of message every ``interval_s``; the next one that passes says how
    many were held back. The kind is the message with its numbers removed, so "connect to :1 failed
    (after 0ms)" repeated by a client's retry loop is one line a minute, not thousands."""

    def __init__(self, interval_s: float = 60.0, min_level: int = logging.NOTSET) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.min_level = min_level
        """Records below this level always pass."""
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        kind = re.sub(r"\d+", "#", record.getMessage())
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} more like it held back)", None
        return True


_STAGES = {"capture": "capture", "sinks": "sink", "kafka": "kafka", "emulator": "emulator"}


def _stage(logger: str) -> str:
    """The pipeline stage a walbridge logger belongs to (``walbridge.sinks.runner`` → ``sink``)."""
    parts = logger.split(".")
    return _STAGES.get(parts[1], parts[1]) if len(parts) > 1 and parts[0] == "walbridge" else logger


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "stage": _stage(record.name),
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(doc, default=str).decode()


def configure_logging(verbose: bool = False, fmt: LogFormat = "auto") -> None:
    """Set up the root logger of this process; ``auto`` is rich on a terminal, plain otherwise."""
    global _setup
    _setup = (verbose, fmt)
    if fmt == "auto":
        fmt = "rich" if sys.stderr.isatty() else "plain"
    handler: logging.Handler
    if fmt == "rich":
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s", datefmt="%H:%M:%S"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        if fmt == "json":
            handler.setFormatter(JsonFormatter())
        else:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
            )
    handler.addFilter(RedactSecrets())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    record_problems()


class _LastProblem(logging.Handler):
    """Remembers the newest warning or error of this process, for ``/status`` and ``walbridge status``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.latest: tuple[float, str, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.latest = (time.time(), record.levelname.lower(), redact(record.getMessage()))


_problems = _LastProblem()


def record_problems() -> None:
    """Keep the newest warning or error of this process (idempotent)."""
    root = logging.getLogger()
    if _problems not in root.handlers:
        root.addHandler(_problems)


def last_problem() -> dict[str, Any] | None:
    """``{level, message, at, age_s}`` of the newest warning or error, or None."""
    latest = _problems.latest
    if latest is None:
        return None
    at, level, message = latest
    return {"level": level, "message": message, "at": at, "age_s": round(time.time() - at, 1)}


def current_setup() -> tuple[bool, LogFormat]:
    """``(verbose, format)`` as this process configured them, for child processes to repeat."""
    return _setup
