"""``walbridge demo``: the whole pipeline on embedded defaults, watched live.

Starts its own PostgreSQL (source ``ecommerce_db`` with the seed's schema and a destination
``ecommerce_replica``), its own Kafka-protocol broker and the Salesforce emulator; runs logical
capture, the PostgreSQL sink and the Salesforce sink; makes a few inserts, updates and deletes;
shows events arriving in Kafka, rows in the destination and Platform Events in the emulator;
then proves source and destination agree. Runs until Ctrl-C (or ``--duration`` seconds).
State lives under ``.walbridge/demo`` (delete it to start over).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import psycopg
import typer
from confluent_kafka import Consumer, TopicPartition
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from walbridge.cli_common import console, handle_errors, stop_on_signals
from walbridge.config import PostgresSinkSettings, SalesforceSinkSettings, Settings, load_settings
from walbridge.dev.samples import ECOMMERCE_CHANGES, ECOMMERCE_SCHEMA
from walbridge.errors import ConfigError, WalbridgeError

__all__ = ["demo"]

log = logging.getLogger(__name__)
# The live view shares the logging console, so log lines print above it instead of tearing it.
out = console

SOURCE_DB = "ecommerce_db"
DEST_DB = "ecommerce_replica"
TABLES = ["inventory.customers", "inventory.orders"]
ONCE_TIMEOUT_S = 120.0
PREFIX = "ecommerce"


@dataclass
class _Board:
    """What the live view shows; written by the watcher threads."""

    kafka: Counter[str] = field(default_factory=Counter)
    recent: deque[tuple[str, str, str, str]] = field(default_factory=lambda: deque(maxlen=12))
    emulator_events: int = 0
    emulator_calls: int = 0
    emulated_accounts: int | None = None
    dest_rows: dict[str, int] = field(default_factory=dict)
    source_rows: dict[str, int] = field(default_factory=dict)
    step: str = "starting"
    errors: list[str] = field(default_factory=list)


def _prepare_databases(admin_dsn: str, stack: Any) -> tuple[str, str]:
    pg = stack.postgres
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    for name in (SOURCE_DB, DEST_DB):
        if name not in existing:
            pg.create_database(name)
    source, dest = pg.dsn(SOURCE_DB), pg.dsn(DEST_DB)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(ECOMMERCE_SCHEMA)
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(ECOMMERCE_SCHEMA.split("INSERT INTO")[0])
        conn.execute("ALTER TABLE inventory.orders DROP CONSTRAINT IF EXISTS orders_customer_id_fkey")
    return source, dest


def _settings(
    source: str, dest: str, bootstrap: str, emulator_url: str, state_dir: Path, pubsub_url: str | None = None
) -> Settings:
    from walbridge.dev.devstack import EMBEDDED_BROKER_KAFKA

    transport = {"transport": "pubsub", "pubsub_url": pubsub_url} if pubsub_url else {}
    return load_settings(
        source={"dsn": source, "tables": TABLES, "slot": "walbridge_demo", "publication": "walbridge_demo"},
        events={"topic_prefix": PREFIX},
        kafka={"bootstrap_servers": bootstrap, "partitions": 3, **EMBEDDED_BROKER_KAFKA},
        sinks=[
            {
                "type": "postgres",
                "name": "replica",
                "dsn": dest,
                "topics": [f"{PREFIX}.{t}" for t in TABLES],
                "linger_ms": 50,
            },
            {
                "type": "salesforce",
                "name": "salesforce",
                "instance_url": emulator_url,
                "client_id": "walbridge-emulator",
                "client_secret": "walbridge-emulator-secret",
                "topics": [f"{PREFIX}.inventory.customers"],
                "linger_ms": 50,
                **transport,
            },
        ],
        metrics={"enabled": True, "port": 0},
        state_dir=str(state_dir),
    )


def _thread(
    name: str, target: Callable[[threading.Event], None], stop: threading.Event, board: _Board
) -> Any:
    def body() -> None:
        try:
            target(stop)
        except WalbridgeError as exc:
            board.errors.append(f"{name}: {exc.message}")
        except Exception as exc:
            board.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.exception("%s failed", name)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread


def _watch_kafka(bootstrap: str, board: _Board, stop: threading.Event) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-view-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    topics = [f"{PREFIX}.{t}" for t in TABLES]
    while not stop.is_set():
        meta = consumer.list_topics(timeout=5)
        if all(t in meta.topics for t in topics):
            break
        stop.wait(0.5)
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in meta.topics[t].partitions])
    while not stop.is_set():
        for msg in consumer.consume(500, timeout=0.3):
            if msg.error():
                continue
            table = (msg.topic() or ".").split(".", 1)[1]
            raw = msg.value()
            if raw is None:
                board.kafka["tombstone"] += 1
                continue
            value = orjson.loads(raw)
            board.kafka[value["op"]] += 1
            row = value["after"] or value["before"] or {}
            label = row.get("email") or row.get("order_number") or ""
            board.recent.appendleft((value["op"], table, (msg.key() or b"").decode(), str(label)))
    consumer.close()


def _watch_state(source: str, dest: str, emulator_url: str, board: _Board, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for dsn, target in ((source, board.source_rows), (dest, board.dest_rows)):
                with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
                    for table in TABLES:
                        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                        target[table] = int(row[0]) if row else 0
            stats = httpx.get(f"{emulator_url}/emulator/stats", timeout=3).json()
            board.emulator_events = int(stats.get("events", 0))
            board.emulator_calls = int(stats.get("calls", 0))
            accounts = httpx.get(f"{emulator_url}/emulator/records", params={"sobject": "Account"}, timeout=3)
            board.emulated_accounts = len(accounts.json()["records"])
        except (psycopg.Error, httpx.HTTPError, ValueError):
            pass
        stop.wait(0.5)


def _view(board: _Board, settings: Settings, dsn_hint: str, hint: str | None) -> Group:
    """The demo's board; ``hint`` says how it stops (the final view, after the stop, has none)."""
    flow = Table.grid(padding=(0, 2))
    flow.add_row(
        "[bold]Kafka events[/]", ", ".join(f"{op}={n}" for op, n in sorted(board.kafka.items())) or "-"
    )
    for table in TABLES:
        flow.add_row(
            f"[bold]{table}[/]",
            f"source {board.source_rows.get(table, '-')} rows → "
            f"replica {board.dest_rows.get(table, '-')} rows",
        )
    flow.add_row(
        "[bold]Salesforce emulator[/]",
        f"{board.emulator_events} PostgreSQL_Data__e events in {board.emulator_calls} API calls → "
        f"{board.emulated_accounts if board.emulated_accounts is not None else '-'} Accounts "
        "(the Apex handler's contract, emulated)",
    )
    recent = Table("op", "topic", "key", "row", title="latest events in Kafka", expand=True)
    for op, table, key, label in board.recent:
        recent.add_row(op, table, key, label)
    parts: list[Any] = [Panel(flow, title=f"walbridge demo — {board.step}"), recent]
    if board.errors:
        parts.append(Panel("\n".join(board.errors[-5:]), title="errors", style="red"))
    if hint is not None:
        parts.append(f"[dim]make your own changes: psql '{dsn_hint}'   ·   {hint}[/]")
    return Group(*parts)


def _follow_steps(board: _Board, stop: threading.Event, deadline: float | None) -> None:
    """Print each step of the demo once, as a line, until stopped (the non-terminal view)."""
    shown = None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
        if board.step != shown:
            shown = board.step
            out.print(f"demo: {shown}", soft_wrap=True, highlight=False)
        stop.wait(0.25)


def _settled(board: _Board) -> bool:
    """The scripted changes are in the replica (same row counts) and Salesforce has events."""
    return (
        board.step.startswith("scripted changes")
        and bool(board.source_rows)
        and board.source_rows == board.dest_rows
        and board.emulator_events > 0
    )


def _stop_when_settled(board: _Board, stop: threading.Event) -> None:
    while not stop.wait(0.25):
        if _settled(board):
            stop.set()


def _run_changes(source: str, board: _Board, stop: threading.Event) -> None:
    with psycopg.connect(source, autocommit=True) as conn:
        done = conn.execute(
            "SELECT count(*) FROM inventory.customers WHERE customer_code = 'CUST003'"
        ).fetchone()
        if done and done[0]:
            board.step = "scripted changes already applied earlier; streaming"
            return
        for index, statement in enumerate(ECOMMERCE_CHANGES, 1):
            if stop.wait(1.0):
                return
            board.step = f"change {index}/{len(ECOMMERCE_CHANGES)}: {statement.split(' (')[0][:60]}"
            conn.execute(statement)
    board.step = "scripted changes applied; streaming (try your own)"


def _start_pipeline(settings: Settings, stop: threading.Event, board: _Board) -> list[Any]:
    from walbridge.cli_capture import run_capture
    from walbridge.sinks.postgres import PostgresSink
    from walbridge.sinks.runner import SinkRunner
    from walbridge.sinks.salesforce.sink import SalesforceSink

    threads = [_thread("capture", lambda s: run_capture(settings, s), stop, board)]
    pg_settings = settings.sink("postgres")
    sf_settings = settings.sink("salesforce")
    assert isinstance(pg_settings, PostgresSinkSettings) and isinstance(sf_settings, SalesforceSinkSettings)
    threads.append(
        _thread(
            "postgres sink", SinkRunner(PostgresSink(pg_settings), settings, pg_settings).run, stop, board
        )
    )
    threads.append(
        _thread(
            "salesforce sink", SinkRunner(SalesforceSink(sf_settings), settings, sf_settings).run, stop, board
        )
    )
    return threads


@handle_errors
def demo(
    duration: Annotated[
        float | None, typer.Option(help="stop after this many seconds (default: until Ctrl-C)")
    ] = None,
    state_dir: Annotated[Path, typer.Option(help="where the demo keeps its databases")] = Path(
        ".walbridge/demo"
    ),
    transport: Annotated[
        str, typer.Option(help="Salesforce sink transport: rest or pubsub (the Pub/Sub API, gRPC)")
    ] = "rest",
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help=f"stop once the scripted changes reached the replica and Salesforce (at most "
            f"{ONCE_TIMEOUT_S:.0f} s, or --duration); exit 1 if they did not",
        ),
    ] = False,
) -> None:
    """Run the whole pipeline on embedded services and watch changes flow (Ctrl-C stops)."""
    import shutil

    from walbridge.dev.devstack import DevStack, require_embedded
    from walbridge.emulator.server import EmulatorConfig, EmulatorServer

    require_embedded("walbridge demo")
    stop = stop_on_signals()
    if once and duration is None:
        duration = ONCE_TIMEOUT_S
    board = _Board()
    out.print(
        "[bold]walbridge demo[/]: starting PostgreSQL, the Kafka-protocol broker "
        "and the Salesforce emulator…",
        soft_wrap=True,
    )
    # The broker keeps topics in memory only, so every demo run starts from a clean state.
    shutil.rmtree(state_dir, ignore_errors=True)
    if transport not in ("rest", "pubsub"):
        raise ConfigError(f"--transport must be rest or pubsub, not {transport!r}")
    pubsub_port = 0 if transport == "pubsub" else None
    emulator = EmulatorServer(EmulatorConfig(latency_ms=20, handler=True, pubsub_port=pubsub_port)).start()
    with DevStack(state_dir, durable=False) as stack:
        source, dest = _prepare_databases(stack.postgres.dsn(), stack)
        settings = _settings(
            source, dest, stack.kafka.bootstrap, emulator.url, state_dir, emulator.pubsub_url
        )
        threads = _start_pipeline(settings, stop, board)
        watchers = [
            _thread("kafka view", lambda s: _watch_kafka(stack.kafka.bootstrap, board, s), stop, board),
            _thread("state view", lambda s: _watch_state(source, dest, emulator.url, board, s), stop, board),
            _thread("changes", lambda s: _run_changes(source, board, s), stop, board),
        ]
        if once:
            watchers.append(_thread("once", lambda s: _stop_when_settled(board, s), stop, board))
        deadline = time.monotonic() + duration if duration else None
        hint = "stops once the changes have arrived; Ctrl-C stops sooner" if once else "Ctrl-C stops"
        if out.is_terminal:  # the live view while it runs; the final one below, after the stop's log lines
            with Live(
                _view(board, settings, source, hint), console=out, refresh_per_second=4, transient=True
            ) as live:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    live.update(_view(board, settings, source, hint))
                    stop.wait(0.25)
        else:  # a log or a pipe: one line per step, the full view once at the end
            out.print(f"make your own changes: psql '{source}'   ·   {hint}", soft_wrap=True, highlight=False)
            _follow_steps(board, stop, deadline)
        if once and not _settled(board):
            board.errors.append(f"the scripted changes did not reach every destination in {duration:.0f} s")
            out.print(f"[red]{board.errors[-1]}[/]", highlight=False)
        stop.set()
        for thread in threads + watchers:
            thread.join(20)
        emulator.stop()
        out.print(_view(board, settings, source, None), soft_wrap=True)
        out.print()
        agree = board.source_rows == board.dest_rows
        out.print(
            ("[green]✓ source and replica agree[/]" if agree else "[yellow]source and replica differ[/]")
            + f": {board.source_rows}"
        )
        if board.errors:
            raise typer.Exit(1)
