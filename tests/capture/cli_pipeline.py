"""A CLI pipeline for capture tests: ``walbridge capture`` and ``walbridge sink postgres`` as processes.

- ``pipeline_config(...)`` writes one YAML config for both (DSNs through the environment, 3 partitions,
  metrics off, the broker's short session timeout) and returns ``(path, env)``.
- ``Proc`` runs a ``walbridge`` command in the background with its output in a log file; ``stop()``
  ends it with SIGTERM (SIGKILL after 20 s) and returns its exit code.
- ``table_rows(dsn, query)``: a query's rows, for the SQL comparison of destination and source.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

__all__ = ["Proc", "pipeline_config", "table_rows"]


def pipeline_config(
    path: Path,
    bootstrap: str,
    prefix: str,
    tables: list[str],
    source_dsn: str,
    dest_dsn: str | None = None,
    *,
    kafka: dict[str, Any] | None = None,
    **source: Any,
) -> tuple[Path, dict[str, str]]:
    ident = prefix.replace("-", "_")
    doc: dict[str, Any] = {
        "source": {"dsn": "env:SRC_DSN", "tables": tables, "slot": ident, "publication": ident, **source},
        "events": {"topic_prefix": prefix},
        "kafka": {
            "bootstrap_servers": bootstrap,
            "partitions": 3,
            "session_timeout_ms": 6000,
            **(kafka or {}),
        },
        "metrics": {"enabled": False},
        "dlq": {"max_attempts": 2, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "state_dir": str(path.parent / f"{path.stem}-state"),
    }
    env = {"SRC_DSN": source_dsn, "COLUMNS": "250"}
    if dest_dsn is not None:
        topics = [f"{prefix}.{name}" for name in tables]
        doc["sinks"] = [
            {
                "type": "postgres",
                "dsn": "env:DST_DSN",
                "topics": topics,
                "group_id": f"{prefix}-sink",
                "linger_ms": 50,
            }
        ]
        env["DST_DSN"] = dest_dsn
    path.write_text(yaml.safe_dump(doc))
    return path, env


class Proc:
    """``python -m walbridge.cli ARGS`` in the background, output in ``log``."""

    def __init__(self, log: Path, env: dict[str, str], *args: str) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "walbridge.cli", *args],
                env={**os.environ, **env},
                stdout=out,
                stderr=out,
            )

    def running(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return self.popen.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def table_rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()
