"""``walbridge setup | teardown | capture``: the capture side of the command line."""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from walbridge.cli_common import (
    CAPTURE_USES,
    ConfigOption,
    MetricsPortOption,
    handle_errors,
    settings_from,
    stop_on_signals,
)
from walbridge.config import Settings
from walbridge.errors import ConfigError

__all__ = ["register", "run_capture"]

log = logging.getLogger(__name__)
out = Console()


class CaptureMode(enum.StrEnum):
    logical = "logical"
    trigger = "trigger"


class SnapshotMode(enum.StrEnum):
    initial = "initial"
    never = "never"
    when_needed = "when_needed"
    initial_only = "initial_only"
    incremental = "incremental"


Mode = Annotated[CaptureMode | None, typer.Option("--mode", help="capture mode (default: source.mode)")]


def _mode(settings: Settings, mode: str | None) -> str:
    chosen = mode or settings.source.mode
    if chosen not in ("logical", "trigger"):
        raise ConfigError(f"--mode must be logical or trigger, not {chosen!r}")
    return chosen


def setup_logical(settings: Settings) -> list[str]:
    """Check the server, create the publication and the slot (idempotent); what was done."""
    from walbridge.capture import catalog, signals, state
    from walbridge.capture.connection import connect_source
    from walbridge.capture.privileges import setup_problems
    from walbridge.capture.signals import EXECUTE, ensure_signal_table, send_signal, without_signal_table
    from walbridge.capture.slot import (
        create_slot,
        ensure_publication,
        publication_tables,
        set_replica_identity_full,
        slot_info,
    )

    src = settings.source
    done: list[str] = []
    with connect_source(src.dsn) as conn:
        relations = catalog.resolve_tables(conn, src.tables, src.exclude_tables)
        problems = catalog.check_logical_capture(conn, relations) + setup_problems(conn, src, relations)
        if problems:
            raise ConfigError("; ".join(str(p) for p in problems))
        if src.replica_identity_full:
            done += [
                f"REPLICA IDENTITY FULL on {name}" for name in set_replica_identity_full(conn, relations)
            ]
            relations = catalog.resolve_tables(conn, src.tables, src.exclude_tables)
        catalog.refuse_keyless(relations)
        published = relations = without_signal_table(relations, src.signal_table)
        if src.signal_table:
            if ensure_signal_table(conn, src.signal_table):
                done.append(f"created signal table {src.signal_table}")
            published = [*relations, signals.signal_relation(conn, src.signal_table)]
        before = publication_tables(conn, src.publication)
        if ensure_publication(conn, src.publication, published, src.slot):
            done.append(f"publication {src.publication} for {len(relations)} table(s)")
        if state.ensure_table(conn):
            done.append(f"created {state.SNAPSHOT_TABLE_NAME} (whether each snapshot finished)")
        added = [rel.qualified_name for rel in relations if (rel.schema, rel.table) not in before]
        if added and before and src.signal_table and state.load(conn, src.slot) in ("done", "skipped"):
            # A running (or the next) capture snapshots the new tables alone, incrementally.
            send_signal(conn, src.signal_table, EXECUTE, {"data-collections": added, "type": "incremental"})
            done.append(f"incremental snapshot of {', '.join(added)} requested")
        if slot_info(conn, src.slot) is None:
            state.forget(conn, src.slot)  # a new slot owes its snapshot, whatever an earlier one recorded
            lsn = create_slot(conn, src.slot)
            done.append(f"replication slot {src.slot} at {lsn} (capture takes the initial snapshot)")
    return done


def owner_setup_sql(settings: Settings) -> list[str]:
    """The SQL an owner runs so that ``setup`` by the capture role needs no ownership."""
    from walbridge.capture import catalog
    from walbridge.capture.connection import connect_source
    from walbridge.capture.privileges import owner_sql

    src = settings.source
    with connect_source(src.dsn) as conn:
        return owner_sql(conn, src, catalog.resolve_tables(conn, src.tables, src.exclude_tables))


def setup_sink_tables(settings: Settings, name: str) -> list[str]:
    """Create the named PostgreSQL sink's missing destination tables from the source; what was done."""
    from walbridge.config import PostgresSinkSettings
    from walbridge.sinks.pg_create import create_tables
    from walbridge.sinks.table_pairs import table_pairs

    sink = next((s for s in settings.sinks if s.type == "postgres" and s.sink_name == name), None)
    if not isinstance(sink, PostgresSinkSettings):
        raise ConfigError(f"no postgres sink named {name!r} in the configuration")
    created = create_tables(settings.source.dsn, sink.dsn, table_pairs(settings, sink, None, "setup --sink"))
    return [f"created destination table {table}" for table in created]


def teardown_logical(settings: Settings) -> list[str]:
    from walbridge.capture import state
    from walbridge.capture.connection import connect_source
    from walbridge.capture.privileges import teardown_problems
    from walbridge.capture.slot import drop_publication, drop_slot

    src = settings.source
    done = []
    with connect_source(src.dsn) as conn:
        problems = teardown_problems(conn, src)
        if problems:
            raise ConfigError("; ".join(str(p) for p in problems))
        if drop_slot(conn, src.slot):
            done.append(f"dropped replication slot {src.slot}")
        dropped = drop_publication(conn, src.publication, src.slot)
        if dropped:
            done.append(dropped)
        if state.forget(conn, src.slot):
            done.append(f"forgot the snapshot state of slot {src.slot}")
        done += state.drop_if_unused(conn)
    return done


def setup_trigger(settings: Settings) -> list[str]:
    from walbridge.capture import state
    from walbridge.capture.connection import connect_source
    from walbridge.capture.signals import EXECUTE, ensure_signal_table, send_signal
    from walbridge.capture.trigger import install_trigger_capture
    from walbridge.capture.trigger_setup import installed_tables

    src = settings.source
    with connect_source(src.dsn) as conn:
        before = {(schema, table) for schema, table, _ok in installed_tables(conn)}
        done = install_trigger_capture(conn, settings)
        if state.ensure_table(conn):
            done.append(f"created {state.SNAPSHOT_TABLE_NAME} (whether each snapshot finished)")
        if src.signal_table:
            if ensure_signal_table(conn, src.signal_table):
                done.append(f"created signal table {src.signal_table}")
            # The signal table's rows reach capture through the change log, like a captured table's.
            signal_only = settings.model_copy(
                update={"source": src.model_copy(update={"tables": [src.signal_table]})}
            )
            done += install_trigger_capture(conn, signal_only)
            added = sorted(
                f"{schema}.{table}"
                for schema, table, _ok in installed_tables(conn)
                if (schema, table) not in before and f"{schema}.{table}" != src.signal_table
            )
            if added and before and state.load(conn, src.slot) in ("done", "skipped"):
                send_signal(
                    conn, src.signal_table, EXECUTE, {"data-collections": added, "type": "incremental"}
                )
                done.append(f"incremental snapshot of {', '.join(added)} requested")
        return done


def teardown_trigger(settings: Settings) -> list[str]:
    from walbridge.capture import state
    from walbridge.capture.connection import connect_source
    from walbridge.capture.trigger import uninstall_trigger_capture

    with connect_source(settings.source.dsn) as conn:
        done = []
        if state.forget(conn, settings.source.slot):
            done.append(f"forgot the snapshot state of capture {settings.source.slot}")
        done += state.drop_if_unused(conn)
        return done + uninstall_trigger_capture(conn, settings)


def _capture_for(settings: Settings, progress: Any) -> Any:
    if settings.source.mode == "trigger":
        from walbridge.capture.trigger import TriggerCapture

        return TriggerCapture(settings, progress=progress)
    from walbridge.capture.logical import LogicalCapture

    return LogicalCapture(settings, progress=progress)


class SnapshotProgress:
    """Snapshot progress per table (rows read of the planner's estimate): a rich bar on a terminal, a
    log line every few seconds otherwise, and :attr:`tables` for ``/status``."""

    LOG_EVERY_S = 5.0

    def __init__(self, interactive: bool | None = None) -> None:
        from walbridge.cli_common import console

        self.interactive = console.is_terminal if interactive is None else interactive
        self.progress = Progress(
            TextColumn("snapshot {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self._logged_at: dict[str, float] = {}

    def __call__(self, table: str, rows: int, estimate: int | None, done: bool) -> None:
        self.tables[table] = {"rows": rows, "estimate": estimate, "done": done}
        if self.interactive:
            if table not in self.tasks:
                if not self.tasks:
                    self.progress.start()
                self.tasks[table] = self.progress.add_task(table, total=estimate)
            self.progress.update(self.tasks[table], completed=rows, total=estimate)
            return
        now = time.monotonic()
        if rows == 0 or done or now - self._logged_at.get(table, 0.0) >= self.LOG_EVERY_S:
            self._logged_at[table] = now
            of = f" of ~{estimate:,}" if estimate else ""
            state = "done" if done else "started" if rows == 0 else "in progress"
            log.info("snapshot %s: %s rows%s (%s)", table, f"{rows:,}", of, state)

    def close(self) -> None:
        if self.tasks:
            self.progress.stop()


def run_capture(settings: Settings, stop: threading.Event, progress: Any = None) -> None:
    """Run the configured capture mode until ``stop`` is set, with the ops endpoint when enabled."""
    capture = _capture_for(settings, progress)
    from walbridge.capture.connection import wait_for_source
    from walbridge.capture.monitor import CaptureMonitor
    from walbridge.web import start_ops

    started = time.time()

    def status() -> dict[str, Any]:
        return {
            "mode": settings.source.mode,
            "uptime_s": round(time.time() - started, 1),
            "streaming": capture.ready.is_set(),
            "received": getattr(capture, "received", None),
            "confirmed": getattr(capture, "confirmed", None),
            "snapshot": getattr(progress, "tables", None),
            "last_progress_s_ago": round(capture.liveness.age(), 1),
            "incremental": capture.incremental.status() if getattr(capture, "incremental", None) else None,
        }

    reached = threading.Event()  # the source answered: capture is past its start-up wait

    def ready() -> bool:
        return reached.is_set() and capture.liveness.healthy()

    ops = start_ops(settings.metrics, "capture", status, capture.liveness.healthy, ready=ready)
    monitor = None
    try:
        wait_for_source(settings.source.dsn, settings.source.connect_wait_s, stop)
        reached.set()
        monitor = CaptureMonitor(settings, capture, capture.liveness).start()
        capture.run(stop)
    finally:
        if monitor is not None:
            monitor.stop()
        if ops is not None:
            ops.stop()


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def setup(
        config: ConfigOption = None,
        mode: Mode = None,
        sink: Annotated[
            str | None,
            typer.Option(
                "--sink",
                help="instead: create the missing destination tables of this postgres sink (its name, or "
                "'postgres' for an unnamed one) from the source's definitions",
            ),
        ] = None,
        print_sql: Annotated[
            bool,
            typer.Option(
                "--print-sql",
                help="print, without running it, the SQL a table owner runs so that setup by the capture "
                "role needs no ownership (logical mode)",
            ),
        ] = False,
    ) -> None:
        """Check the source and create what capture needs (publication + slot, or triggers). Idempotent.

        With --sink NAME: create that PostgreSQL sink's missing destination tables like the source's
        (columns, types, NOT NULL, generated columns, primary key; not foreign keys or other indexes)."""
        if print_sql:
            typer.echo(
                "\n".join(owner_setup_sql(settings_from(config, uses=CAPTURE_USES))) or "-- nothing to do"
            )
            return
        if sink is not None:
            done = setup_sink_tables(settings_from(config, uses=("source", "sinks.postgres")), sink)
        else:
            from walbridge.capture.connection import wait_for_source

            settings = settings_from(config, uses=CAPTURE_USES)
            wait_for_source(settings.source.dsn, settings.source.connect_wait_s)
            done = setup_trigger(settings) if _mode(settings, mode) == "trigger" else setup_logical(settings)
        for line in done or ["nothing to do: everything is in place"]:
            out.print(f"[green]✓[/] {line}")

    @app.command()
    @handle_errors
    def teardown(config: ConfigOption = None, mode: Mode = None) -> None:
        """Drop the slot and publication (or the triggers). An abandoned slot retains WAL until dropped."""
        settings = settings_from(config, uses=CAPTURE_USES)
        if _mode(settings, mode) == "trigger":
            done = teardown_trigger(settings)
        else:
            done = teardown_logical(settings)
        for line in done or ["nothing to drop"]:
            out.print(f"[green]✓[/] {line}")

    @app.command()
    @handle_errors
    def check(config: ConfigOption = None, mode: Mode = None) -> None:
        """Check the source server for the capture mode; list each problem with its fix."""
        from walbridge.capture import catalog
        from walbridge.capture.connection import connect_source
        from walbridge.capture.privileges import setup_problems
        from walbridge.capture.signals import find_signal_relation
        from walbridge.capture.slot import publication_problems
        from walbridge.capture.trigger import check_trigger_capture

        settings = settings_from(config, uses=CAPTURE_USES)
        src = settings.source
        chosen = _mode(settings, mode)
        with connect_source(src.dsn) as conn:
            relations = catalog.resolve_tables(conn, src.tables, src.exclude_tables)
            if chosen == "trigger":
                problems = check_trigger_capture(conn, settings)
            else:
                problems = catalog.check_logical_capture(conn, relations)
                if not src.replica_identity_full:
                    problems += [p for p in map(catalog.identity_problem, relations) if p is not None]
                if not catalog.in_recovery(conn):
                    signal_rel = find_signal_relation(conn, src.signal_table) if src.signal_table else None
                    published = [*relations, signal_rel] if signal_rel is not None else relations
                    problems += publication_problems(conn, src.publication, src.slot, published)
                    problems += setup_problems(conn, src, relations)
        table = Table("table", "event key", "replica identity")
        identities = {"d": "default", "f": "full", "i": "index", "n": "nothing"}
        for rel in relations:
            name = f"{rel.qualified_name} (partitioned)" if rel.partitioned else rel.qualified_name
            identity = identities.get(rel.replica_identity, rel.replica_identity)
            if rel.replica_identity == "i":
                identity += f" ({', '.join(rel.identity_columns)})"
            table.add_row(name, ", ".join(rel.key_columns) or "(none)", identity)
        out.print(table)
        if problems:
            raise ConfigError("; ".join(str(p) for p in problems))
        out.print(f"[green]✓[/] the server is ready for {chosen} capture")

    @app.command()
    @handle_errors
    def capture(
        config: ConfigOption = None,
        snapshot: Annotated[
            SnapshotMode | None,
            typer.Option(
                help="initial or when_needed: snapshot the tables when the slot is new or a snapshot did "
                "not finish, then stream; never: stream only; initial_only: snapshot, then stop; "
                "incremental: stream at once, read the tables in chunks beside it "
                "(default: source.snapshot)"
            ),
        ] = None,
        metrics_port: MetricsPortOption = None,
    ) -> None:
        """Capture changes into Kafka (snapshot, then stream) until Ctrl-C."""
        overrides: dict[str, Any] = {"source": {"snapshot": snapshot.value}} if snapshot else {}
        settings = settings_from(config, metrics_port, CAPTURE_USES, **overrides)
        stop = stop_on_signals()
        progress = SnapshotProgress()
        try:
            run_capture(settings, stop, progress)
        finally:
            progress.close()
