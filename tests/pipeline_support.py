"""In-process pipelines for table tests: capture (either mode) → Kafka (3 partitions) → PostgreSQL sink.

- :func:`capture_settings` — settings for ``logical`` or ``trigger`` capture of some tables.
- :func:`running_capture` — the capture in a thread (trigger mode: its triggers installed first).
- :func:`running_sink` — a :class:`SinkRunner` with a :class:`PostgresSink` in a thread.
- :func:`table_rows` / :func:`wait_same_rows` — a table's rows by SQL (every column, generated ones
  too, as Python values), and waiting until a destination holds exactly the source's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from capture_support import RunningCapture
from helpers import wait_until
from walbridge.config import Settings, load_settings
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner

__all__ = ["capture_settings", "running_capture", "running_sink", "table_rows", "wait_same_rows"]

MODES = ("logical", "trigger")


def capture_settings(
    mode: str, dsn: str, bootstrap: str, prefix: str, tmp_path: Path, tables: list[str], **options: Any
) -> Settings:
    """Capture settings; ``events={...}`` in ``options`` sets event options, the rest are source options."""
    events = options.pop("events", {})
    ident = prefix.replace("-", "_")
    source = {"mode": mode, "dsn": dsn, "tables": tables, "slot": ident, "publication": ident}
    if mode == "trigger":
        source["poll_interval_ms"] = 50
    return load_settings(
        source={**source, **options},
        events={"topic_prefix": prefix, **events},
        kafka={"bootstrap_servers": bootstrap, "partitions": 3},
        metrics={"enabled": False},
        state_dir=str(tmp_path / "state"),
    )


@contextmanager
def running_capture(settings: Settings) -> Iterator[Any]:
    """Capture in a thread until the block ends; its error (if any) is raised on entry or exit."""
    if settings.source.mode == "trigger":
        from walbridge.capture.trigger import TriggerCapture, install_trigger_capture

        with psycopg.connect(settings.source.dsn, autocommit=True) as conn:
            install_trigger_capture(conn, settings)
        capture: Any = TriggerCapture(settings)
    else:
        from walbridge.capture.logical import LogicalCapture

        capture = LogicalCapture(settings)
    running = RunningCapture(capture)
    with running:
        yield capture
    if running.error is not None:
        raise running.error


@contextmanager
def running_sink(
    bootstrap: str, dest_dsn: str, topics: list[str], group: str, source_dsn: str | None = None, **sink: Any
) -> Iterator[SinkRunner]:
    """A PostgreSQL sink consuming ``topics`` into ``dest_dsn`` in a thread until the block ends
    (``source_dsn``: where ``auto_create`` reads table definitions)."""
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "partitions": 3, "session_timeout_ms": 6000},
        dlq={"max_attempts": 2, "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
        sinks=[
            {
                "type": "postgres",
                "dsn": dest_dsn,
                "topics": topics,
                "group_id": group,
                "linger_ms": 50,
                **sink,
            }
        ],
        metrics={"enabled": False},
    )
    sink_settings = settings.sink("postgres")
    runner = SinkRunner(PostgresSink(sink_settings, source_dsn=source_dsn), settings, sink_settings)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield runner
    finally:
        stop.set()
        thread.join(30)


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``schema.table``, every column (generated ones too), as Python values; sorted."""
    schema, name = table.split(".")
    with psycopg.connect(dsn, options="-c client_encoding=UTF8") as conn:  # psycopg reads json as UTF-8
        rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, name))).fetchall()
    return sorted(rows, key=repr)  # in Python: the databases' collations and encodings may differ


def wait_same_rows(source_dsn: str, dest_dsn: str, tables: list[str], timeout_s: float = 60) -> None:
    """Wait until each destination table holds exactly its source table's rows; else fail saying how."""
    last: dict[str, Any] = {}

    def same() -> bool:
        for table in tables:
            src, dst = table_rows(source_dsn, table), table_rows(dest_dsn, table)
            if src != dst:
                last.update(table=table, source=len(src), destination=len(dst))
                last["first_difference"] = next(
                    ((_short(a), _short(b)) for a, b in zip(src, dst, strict=False) if a != b),
                    "row counts differ",
                )
                return False
        return True

    try:
        wait_until(same, timeout_s=timeout_s, interval_s=0.5)
    except AssertionError:
        raise AssertionError(f"destination differs from source: {str(last)[:3000]}") from None


def _short(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(value)[:60] for value in row)
