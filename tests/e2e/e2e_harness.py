"""End-to-end pipelines through the command line a user runs: ``walbridge setup``, ``capture``,
``sink postgres`` and ``verify``, each a subprocess reading one YAML config (topics of 3 partitions).

:class:`CliPipeline` writes the config, runs ``setup``, starts ``capture`` and ``sink postgres``
(output to a log file each), and then:

- :meth:`CliPipeline.wait_converged`: every table of the destination equals its source, compared by
  SQL row for row (each column rendered as text by PostgreSQL, so types without ``=`` compare too),
  and the sink has applied every record of the topics (offsets stored in the destination), and the
  tables still agree after that. Fails early, with the logs, when a process exits.
- :meth:`CliPipeline.assert_verify_clean`: ``walbridge verify`` exits 0.
- :meth:`CliPipeline.stop`: SIGTERM, then the exit codes.

Every failure the harness raises carries the processes' logs and any dead letters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from confluent_kafka.admin import AdminClient
from psycopg import sql

from helpers import consume_all, free_port, wait_until
from walbridge.config import DlqSettings
from walbridge.events import EncodingOptions, EnvelopeEncoder
from walbridge.sinks.dlq import CONNECT_HEADER_PREFIX
from walbridge.sinks.postgres import OFFSETS_TABLE

__all__ = [
    "MODES",
    "CliPipeline",
    "ProcessExited",
    "both",
    "execute",
    "source_columns",
    "table_rows",
    "wait_for",
]

MODES = ["logical", "trigger"]

# Identical text renderings on both sides, whatever the servers' or databases' defaults.
_SESSION = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; "
    "SET extra_float_digits = 3; SET bytea_output = 'hex'; SET client_encoding = 'UTF8'"
)
_LOG_TAIL = 6000


class ProcessExited(AssertionError):
    """A process the test relies on exited: fail at once, not at the end of a wait."""


def execute(dsn: str, *statements: str | tuple[str, Any]) -> None:
    """Run each statement in autocommit (a statement may be ``(sql, params)``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            if isinstance(statement, tuple):
                conn.execute(statement[0], statement[1])
            else:
                conn.execute(statement)


def both(source_dsn: str, destination_dsn: str, *statements: str) -> None:
    """The same DDL on the source and the destination (the sink does not create tables)."""
    execute(source_dsn, *statements)
    execute(destination_dsn, *statements)


def _split(table: str) -> tuple[str, str]:
    schema, _, name = table.rpartition(".")
    return schema or "public", name


def source_columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The table's columns in order (dropped ones left out)."""
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        (sql.Identifier(*_split(table)).as_string(conn),),
    ).fetchall()
    return [r[0] for r in rows]


def table_rows(conn: psycopg.Connection[Any], table: str, columns: list[str]) -> list[tuple[str | None, ...]]:
    """Every row of ``table`` as the text of ``columns``, sorted (nulls first in each column).

    Each value is its type's output text (what COPY, pgoutput and every client read): for ``xml`` that
    leaves out a default ``<?xml version="1.0"?>`` declaration, which a ``::text`` cast would keep."""
    rendered = "CASE WHEN {c} IS NULL THEN NULL ELSE concat({c}) END"
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL(rendered).format(c=sql.Identifier(c)) for c in columns),
        sql.Identifier(*_split(table)),
    )
    rows = conn.execute(query).fetchall()
    return sorted(rows, key=lambda row: tuple((v is not None, v or "") for v in row))


@dataclass
class TableComparison:
    table: str
    source: list[tuple[str | None, ...]]
    destination: list[tuple[str | None, ...]] | None
    """None: the destination table does not exist (or cannot be read)."""
    columns: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.destination is not None and self.source == self.destination

    def describe(self) -> str:
        if self.destination is None:
            return f"{self.table}: destination table missing or unreadable"
        if self.equal:
            return f"{self.table}: equal ({len(self.source)} rows)"
        src, dst = set(self.source), set(self.destination)
        only_src, only_dst = sorted(src - dst, key=str), sorted(dst - src, key=str)
        lines = [
            f"{self.table}: {len(self.source)} source rows, {len(self.destination)} destination rows; "
            f"{len(only_src)} only in the source, {len(only_dst)} only in the destination "
            f"(columns {', '.join(self.columns)})"
        ]
        # Rows on both sides with the same first column (usually the key): only the columns that differ.
        by_first = {row[0]: row for row in only_dst}
        paired = [(row, by_first[row[0]]) for row in only_src if row[0] in by_first]
        for source_row, destination_row in paired[:3]:
            lines.append(f"  {self.columns[0]}={source_row[0]} differs:")
            for name, a, b in zip(self.columns, source_row, destination_row, strict=True):
                if a != b:
                    lines.append(f"    {name}: source {_value(a)}, destination {_value(b)}")
        paired_firsts = {row[0] for row, _ in paired}
        lines += [f"  source only:      {_short(r)}" for r in only_src if r[0] not in paired_firsts][:3]
        lines += [f"  destination only: {_short(r)}" for r in only_dst if r[0] not in paired_firsts][:3]
        return "\n".join(lines)


def _value(value: str | None, width: int = 200) -> str:
    return "NULL" if value is None else repr(value[:width] + ("…" if len(value) > width else ""))


def _short(row: tuple[str | None, ...]) -> str:
    return "(" + ", ".join(_value(v, 60) for v in row) + ")"


class CliPipeline:
    """One capture → Kafka → PostgreSQL sink pipeline run through the CLI, for one test."""

    def __init__(
        self,
        workdir: Path,
        source_dsn: str,
        destination_dsn: str,
        bootstrap: str,
        prefix: str,
        mode: str,
        tables: list[str],
        *,
        source: dict[str, Any] | None = None,
        events: dict[str, Any] | None = None,
        sink: dict[str, Any] | None = None,
        state_dir: Path | None = None,
        sink_dsn: str | None = None,
    ) -> None:
        """``sink_dsn``: the sink's connection when it differs from ``destination_dsn`` (another role);
        ``state_dir``: unset, each command uses its working directory's default."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.source_dsn = source_dsn
        self.destination_dsn = destination_dsn
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.mode = mode
        self.tables = [t if "." in t else f"public.{t}" for t in tables]
        self.group_id = f"{prefix}-sink"
        encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
        self.topics = [encoder.topic(*_split(t)) for t in self.tables]
        self.env = {
            **os.environ,
            "E2E_SRC_DSN": source_dsn,
            "E2E_DST_DSN": sink_dsn or destination_dsn,
            "COLUMNS": "200",
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.config = self._write_config(source or {}, events or {}, sink or {}, state_dir)

    def _write_config(
        self, source: dict[str, Any], events: dict[str, Any], sink: dict[str, Any], state_dir: Path | None
    ) -> Path:
        ident = self.prefix.replace("-", "_")
        doc: dict[str, Any] = {
            "source": {
                "mode": self.mode,
                "dsn": "env:E2E_SRC_DSN",
                "tables": self.tables,
                "slot": ident,
                "publication": ident,
                "poll_interval_ms": 50,
                "heartbeat_ms": 1000,
                **source,
            },
            "events": {"topic_prefix": self.prefix, **events},
            "kafka": {"bootstrap_servers": self.bootstrap, "partitions": 3, "session_timeout_ms": 6000},
            "sinks": [
                {
                    "type": "postgres",
                    "dsn": "env:E2E_DST_DSN",
                    "topics": self.topics,
                    "group_id": self.group_id,
                    "linger_ms": 50,
                    "batch_size": 200,
                    **sink,
                }
            ],
            "dlq": {"max_attempts": 2, "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
            "metrics": {"enabled": False},
        }
        if state_dir is not None:  # otherwise the default, relative to each command's working directory
            doc["state_dir"] = str(state_dir)
        path = self.workdir / "walbridge.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    # ------------------------------------------------------------------ commands

    def cli(self, *args: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str, str]:
        """Run ``walbridge ARGS --config <config>`` to completion: (exit code, stdout, stderr)."""
        result = subprocess.run(
            [sys.executable, "-m", "walbridge.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=cwd or self.workdir,
        )
        return result.returncode, result.stdout, result.stderr

    def setup(self, cwd: Path | None = None) -> None:
        code, out, err = self.cli("setup", cwd=cwd)
        assert code == 0, f"walbridge setup failed ({code}):\n{out}{err}"

    def start(
        self, name: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``walbridge ARGS --config <config>`` in the background as ``name``; output to its log."""
        if name in self.processes and self.processes[name].poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = self.workdir / f"{name}.log"
        self.logs[name] = log
        with log.open("ab") as out:
            out.write(f"--- walbridge {' '.join(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", "walbridge.cli", *args, "--config", str(self.config)],
                env={**self.env, **(env or {})},
                cwd=cwd or self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes[name] = proc
        return proc

    def start_capture(self, cwd: Path | None = None, wait: bool = True) -> None:
        """Start capture with its status endpoint; ``wait``: until it streams (the snapshot is done, so
        changes made from now on travel through the stream, not the snapshot)."""
        self.capture_port = free_port()
        metrics = {"WALBRIDGE_METRICS__ENABLED": "true", "WALBRIDGE_METRICS__PORT": str(self.capture_port)}
        self.start("capture", "capture", cwd=cwd, env=metrics)
        if wait:
            self.wait_streaming()

    def wait_streaming(self, timeout_s: float = 30) -> None:
        """Until capture's ``/status`` says it streams; fails at once when capture exits."""

        def streaming() -> bool:
            if self.exited("capture") is not None:
                raise ProcessExited(f"capture exited with {self.exited('capture')}\n{self.report()}")
            try:
                status = httpx.get(f"http://127.0.0.1:{self.capture_port}/status", timeout=2).json()
            except (httpx.HTTPError, ValueError):
                return False
            return bool(status.get("streaming"))

        wait_for(streaming, "capture streams", self, timeout_s)

    def start_sink(self, workers: int = 1) -> None:
        args = ["sink", "postgres"] + (["--workers", str(workers)] if workers > 1 else [])
        self.start("sink", *args)

    def start_all(self, workers: int = 1) -> None:
        """The sink (it waits for the topics capture creates, and joins its group meanwhile), ``setup``,
        then capture, until it streams."""
        self.start_sink(workers)
        self.setup()
        self.start_capture()

    def stop_process(self, name: str, timeout_s: float = 15) -> int:
        """SIGTERM ``name`` (once: a second one interrupts at once) and return its exit code."""
        proc = self.processes[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return self._reap(name, timeout_s)

    def _reap(self, name: str, timeout_s: float) -> int:
        """The exit code of ``name``; killed after ``timeout_s``, and that is a failure."""
        proc = self.processes[name]
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(
                f"{name} did not stop within {timeout_s}s on SIGTERM\n{self.report()}"
            ) from None

    def stop(self, timeout_s: float = 15) -> dict[str, int]:
        """Stop every process (one SIGTERM each, all at once, then wait); their exit codes."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {name: self._reap(name, timeout_s) for name in list(self.processes)}

    def assert_clean_stop(self) -> None:
        """Stop everything; each process exited 0 and printed no traceback."""
        codes = self.stop()
        bad = {n: c for n, c in codes.items() if c != 0}
        tracebacks = [n for n, log in self.logs.items() if "Traceback" in log.read_text(errors="replace")]
        assert not bad and not tracebacks, f"exit codes {bad}, tracebacks in {tracebacks}\n{self.report()}"

    def exited(self, name: str) -> int | None:
        return self.processes[name].poll()

    # ------------------------------------------------------------------ comparison

    def compare(self, tables: Iterable[str] | None = None) -> list[TableComparison]:
        """Each table's source and destination rows (text of the source's columns)."""
        result = []
        with (
            psycopg.connect(self.source_dsn, autocommit=True) as src,
            psycopg.connect(self.destination_dsn, autocommit=True) as dst,
        ):
            src.execute(_SESSION)
            dst.execute(_SESSION)
            for table in tables or self.tables:
                columns = source_columns(src, table)
                source_rows = table_rows(src, table, columns)
                try:
                    destination_rows: list[tuple[str | None, ...]] | None = table_rows(dst, table, columns)
                except psycopg.Error:
                    destination_rows = None
                result.append(TableComparison(table, source_rows, destination_rows, columns))
        return result

    def topic_ends(self) -> dict[tuple[str, int], int]:
        """The next offset of every non-empty partition of the pipeline's topics (read, not listed:
        the test broker's listed high watermark is wrong for batched writes)."""
        ends: dict[tuple[str, int], int] = {}
        for message in consume_all(self.bootstrap, self.topics, idle_s=0.3, timeout_s=20):
            key = (message.topic(), message.partition())
            ends[key] = max(ends.get(key, 0), message.offset() + 1)
        return ends

    def applied_offsets(self) -> dict[tuple[str, int], int]:
        """The sink's stored next offsets (``walbridge.offsets`` in the destination)."""
        with psycopg.connect(self.destination_dsn, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass(%s)", (OFFSETS_TABLE,)).fetchone() == (None,):
                return {}
            query = f'SELECT topic, "partition", next_offset FROM {OFFSETS_TABLE} WHERE group_id = %s'
            rows = conn.execute(query, (self.group_id,)).fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def caught_up(self) -> bool:
        """The sink has applied (or dead-lettered) every record now in the topics."""
        applied = self.applied_offsets()
        return all(applied.get(key, 0) >= end for key, end in self.topic_ends().items())

    def dead_letters(self) -> list[str]:
        """``topic[partition]@offset: error`` of every record in the pipeline's DLQ topics."""
        dlq_topics = [t + DlqSettings().topic_suffix for t in self.topics]
        listed = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=10).topics
        present = [t for t in dlq_topics if t in listed]
        if not present:
            return []
        out = []
        for message in consume_all(self.bootstrap, present, idle_s=0.3, timeout_s=20):
            headers = dict(message.headers() or [])
            error = headers.get(CONNECT_HEADER_PREFIX + "exception.message", b"?").decode(errors="replace")
            out.append(f"{message.topic()}[{message.partition()}]@{message.offset()}: {error[:300]}")
        return out

    def wait_converged(self, timeout_s: float = 20, watch: tuple[str, ...] = ("capture", "sink")) -> None:
        """Wait until the destination equals the source, the sink applied every record in the topics,
        and the tables still agree; fail early when a watched process exits."""
        last: list[TableComparison] = []

        def converged() -> bool:
            nonlocal last
            for name in watch:
                if name in self.processes and self.processes[name].poll() is not None:
                    raise ProcessExited(
                        f"{name} exited with {self.processes[name].returncode} before the destination "
                        f"matched the source\n{self.report(last)}"
                    )
            last = self.compare()
            if not all(c.equal for c in last):
                return False
            if not self.caught_up():
                return False
            last = self.compare()
            return all(c.equal for c in last)

        try:
            wait_until(converged, timeout_s=timeout_s, interval_s=0.3)
        except ProcessExited:
            raise
        except AssertionError:
            raise AssertionError(
                f"destination did not match the source within {timeout_s}s\n{self.report(last)}"
            ) from None

    def verify(self, *tables: str) -> tuple[int, str]:
        """``walbridge verify`` (optionally ``--table`` each): exit code and output."""
        args = ["verify"]
        for table in tables:
            args += ["--table", table]
        code, out, err = self.cli(*args)
        return code, out + err

    def assert_verify_clean(self) -> None:
        code, output = self.verify()
        assert code == 0, f"walbridge verify reported a difference (exit {code}):\n{output}\n{self.report()}"

    def roundtrip(self, timeout_s: float = 20) -> None:
        """Converge, then ``walbridge verify`` must agree."""
        self.wait_converged(timeout_s)
        self.assert_verify_clean()

    # ------------------------------------------------------------------ diagnostics

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def report(self, comparisons: list[TableComparison] | None = None) -> str:
        """Tables' differences, dead letters and the tail of each process's log."""
        parts = []
        if comparisons:
            parts.append("\n".join(c.describe() for c in comparisons))
        try:
            dead = self.dead_letters()
        except Exception as exc:  # diagnostics only: never hide the real failure
            dead = [f"(could not read the DLQ: {exc!r})"]
        if dead:
            parts.append(f"{len(dead)} dead letter(s):\n" + "\n".join(dead[:10]))
        for name in self.logs:
            text = self.log(name)
            code = self.processes[name].poll()
            parts.append(f"===== {name} log (exit code {code}) =====\n{text[-_LOG_TAIL:]}")
        return "\n".join(parts)


def wait_for(predicate: Callable[[], Any], what: str, pipeline: CliPipeline, timeout_s: float = 30) -> Any:
    """``wait_until`` whose failure names ``what`` and carries the pipeline's report."""
    try:
        return wait_until(predicate, timeout_s=timeout_s, interval_s=0.2)
    except ProcessExited:
        raise
    except AssertionError:
        raise AssertionError(f"{what}: not within {timeout_s}s\n{pipeline.report()}") from None
