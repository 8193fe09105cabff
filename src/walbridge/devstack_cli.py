"""``walbridge devstack up|down|status``: the embedded PostgreSQL and Kafka broker for the demo.

``devstack_app`` is a typer app; the main CLI mounts it with ``app.add_typer(devstack_app, name="devstack")``.
``up`` runs in the foreground until Ctrl-C or SIGTERM (then stops everything), or with ``--detach`` leaves
the services running and records their pids in ``<state-dir>/state.json`` for ``down`` and ``status``.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from walbridge.devstack import DEFAULT_STATE_DIR, EMBEDDED_BROKER_KAFKA, DevStack
from walbridge.errors import WalbridgeError
from walbridge.logs import redact

__all__ = ["devstack_app"]

devstack_app = typer.Typer(help="Start, stop and inspect the embedded dev stack (PostgreSQL, Kafka broker).")
console = Console()

StateDir = Annotated[Path, typer.Option("--state-dir", help="Directory holding all dev-stack state.")]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _wait_forever() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    while True:
        time.sleep(3600)


@devstack_app.command("up")
def up(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the services running.")] = False,
    pg_port: Annotated[int | None, typer.Option(help="PostgreSQL port (default: previous or free).")] = None,
    kafka_port: Annotated[int | None, typer.Option(help="Kafka port (default: free).")] = None,
    pg_password: Annotated[str, typer.Option(envvar="WALBRIDGE_DEVSTACK_PG_PASSWORD")] = "postgres",
    fast: Annotated[bool, typer.Option(help="fsync=off etc.: faster, unsafe on a machine crash.")] = False,
) -> None:
    """Start the services; in the foreground until Ctrl-C unless --detach."""
    stack = DevStack(
        state_dir, pg_port=pg_port, kafka_port=kafka_port, pg_password=pg_password, durable=not fast
    )
    try:
        stack.start()
        rows = stack.status()
        _print_table(rows)
        _print_settings(rows)
        if detach:
            stack.detach()
            console.print(f"left running; stop with: walbridge devstack down --state-dir {state_dir}")
            return
        console.print("running; press Ctrl-C to stop")
        _wait_forever()
    except KeyboardInterrupt:
        console.print("stopping...")
    except WalbridgeError as exc:
        console.print(f"[red]devstack failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        if not detach:
            stack.stop()


@devstack_app.command("down")
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop services started with up --detach."""
    try:
        DevStack(state_dir).stop()
    except WalbridgeError as exc:
        console.print(f"[red]devstack down failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print("stopped")


@devstack_app.command("status")
def status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Show each service, whether it runs, its port, pid and address."""
    try:
        rows = DevStack(state_dir).status()
    except WalbridgeError as exc:
        console.print(f"[red]devstack status failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    _print_table(rows)


def _print_settings(rows: list[dict[str, Any]]) -> None:
    """The settings a walbridge config needs for this stack (the embedded broker's included)."""
    found = {row["name"]: row for row in rows}
    kafka = {"bootstrap_servers": found.get("kafka", {}).get("bootstrap", "?"), **EMBEDDED_BROKER_KAFKA}
    lines = ["# settings for this stack (the session timeout makes consumer groups join fast here):"]
    lines.append("kafka: {" + ", ".join(f"{k}: {v}" for k, v in kafka.items()) + "}")
    dsn = found.get("postgres", {}).get("dsn")
    if dsn:
        lines.append("# source.dsn / sinks[].dsn: env:VARIABLE holding " + redact(str(dsn)))
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="walbridge dev stack")
    for column in ("service", "running", "port", "pid", "address"):
        table.add_column(column)
    for row in rows:
        address = row.get("dsn") or row.get("bootstrap") or row.get("url") or ""
        running = "[green]yes[/green]" if row["running"] else "[red]no[/red]"
        table.add_row(row["name"], running, str(row.get("port") or ""), str(row.get("pid") or ""), address)
    console.print(table)
