"""Support for capture tests: settings, an in-thread capture, a CLI config file, the source's true history."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import psycopg
import yaml

from helpers import wait_until
from walbridge.config import Settings, load_settings

__all__ = ["RunningCapture", "history_slot", "make_settings", "read_history", "write_config"]


def make_settings(
    dsn: str, bootstrap: str, prefix: str, tmp_path: Path, tables: list[str], **source: Any
) -> Settings:
    ident = prefix.replace("-", "_")
    return load_settings(
        source={"dsn": dsn, "tables": tables, "slot": ident, "publication": ident, **source},
        events={"topic_prefix": prefix},
        kafka={"bootstrap_servers": bootstrap, "partitions": 3},
        metrics={"enabled": False},
        state_dir=str(tmp_path / "state"),
    )


def write_config(
    path: Path, bootstrap: str, prefix: str, tables: list[str], state_dir: Path, **source: Any
) -> Path:
    """A YAML config for the CLI; the DSN comes from the environment variable SRC_DSN."""
    ident = prefix.replace("-", "_")
    doc = {
        "source": {"dsn": "env:SRC_DSN", "tables": tables, "slot": ident, "publication": ident, **source},
        "events": {"topic_prefix": prefix},
        "kafka": {"bootstrap_servers": bootstrap, "partitions": 3},
        "metrics": {"enabled": False},
        "state_dir": str(state_dir),
    }
    path.write_text(yaml.safe_dump(doc))
    return path


class RunningCapture:
    """A LogicalCapture (or any object with run/ready) in a thread, as a context manager."""

    def __init__(self, capture: Any) -> None:
        self.capture = capture
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.capture.run(self.stop)
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> RunningCapture:
        self.thread.start()
        wait_until(lambda: self.capture.ready.is_set() or self.error is not None, timeout_s=120)
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)


def history_slot(dsn: str, name: str) -> None:
    """A test_decoding slot that records the source's true history from now on."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (name,))


_CHANGE = re.compile(r"^table (\S+?)\.(\S+?): (INSERT|UPDATE|DELETE): (.*)$")
_OPS = {"INSERT": "c", "UPDATE": "u", "DELETE": "d"}


def read_history(dsn: str, slot: str, key_column: str) -> list[tuple[str, int, str, int]]:
    """(table, key, op, lsn) of every change the history slot saw (integer keys only)."""
    out = []
    key_pattern = re.compile(rf"\b{key_column}\[\w+\]:(-?\d+)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, NULL)", (slot,)
        ).fetchall()
    for lsn_text, data in rows:
        match = _CHANGE.match(data)
        if not match or match.group(1) == "walbridge":  # capture's own bookkeeping (snapshot state)
            continue
        key = key_pattern.search(match.group(4))
        assert key is not None, data
        high, low = lsn_text.split("/")
        out.append(
            (match.group(2), int(key.group(1)), _OPS[match.group(3)], (int(high, 16) << 32) | int(low, 16))
        )
    return out
