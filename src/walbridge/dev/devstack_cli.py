"""``walbridge devstack up|down|status``: the embedded PostgreSQL and Kafka broker for the demo.

``devstack_app`` is a typer app; the main CLI mounts it with ``app.add_typer(devstack_app, name="devstack")``.
``up`` runs in the foreground until Ctrl-C or SIGTERM (then stops everything), or with ``--detach`` leaves
the services running and records their pids in ``<state-dir>/state.json`` for ``down`` and ``status``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from walbridge.dev.devstack import DEFAULT_STATE_DIR, EMBEDDED_BROKER_KAFKA, DevStack, require_embedded
from walbridge.errors import WalbridgeError
from walbridge.logs import redact
from walbridge.signals import stop_on_signals

__all__ = ["devstack_app"]

devstack_app = typer.Typer(help="Start, stop and inspect the embedded dev stack (PostgreSQL, Kafka broker).")
console = Console()

StateDir = Annotated[Path, typer.Option("--state-dir", help="Directory holding all dev-stack state.")]


@devstack_app.command("up")
def up(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Leave the services running.")] = False,
    pg_port: Annotated[int | None, typer.Option(help="PostgreSQL port (default: previous or free).")] = None,
    kafka_port: Annotated[int | None, typer.Option(help="Kafka port (default: free).")] = None,
    pg_password: Annotated[str, typer.Option(envvar="WALBRIDGE_DEVSTACK_PG_PASSWORD")] = "postgres",
    fast: Annotated[bool, typer.Option(help="fsync=off etc.: faster, unsafe on a machine crash.")] = False,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help=f"Also create database {SAMPLE_SOURCE_DB} (the e-commerce sample: inventory.customers and "
            f"inventory.orders with rows) and an empty {SAMPLE_DEST_DB}, to try a pipeline on.",
        ),
    ] = False,
) -> None:
    """Start the services; in the foreground until Ctrl-C unless --detach."""
    try:
        require_embedded("walbridge devstack up")
    except WalbridgeError as exc:
        console.print(f"[red]devstack failed:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(1) from None
    stack = DevStack(
        state_dir, pg_port=pg_port, kafka_port=kafka_port, pg_password=pg_password, durable=not fast
    )
    try:
        stack.start()
        if sample:
            _load_sample(stack)
        rows = stack.status()
        _print_table(rows)
        _print_settings(rows)
        if detach:
            stack.detach()
            console.print(f"left running; stop with: walbridge devstack down --state-dir {state_dir}")
            return
        console.print("running; press Ctrl-C to stop")
        stop_on_signals().wait()
        console.print("stopping...")
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


SAMPLE_SOURCE_DB, SAMPLE_DEST_DB = "shop", "replica"


def _load_sample(stack: DevStack) -> None:
    import psycopg

    from walbridge.dev.samples import ECOMMERCE_SCHEMA

    with psycopg.connect(stack.postgres.dsn(), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    if SAMPLE_DEST_DB not in existing:
        stack.postgres.create_database(SAMPLE_DEST_DB)
    if SAMPLE_SOURCE_DB not in existing:
        source = stack.postgres.create_database(SAMPLE_SOURCE_DB)
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(ECOMMERCE_SCHEMA)
    console.print(f"sample: database {SAMPLE_SOURCE_DB} (source, with rows) and {SAMPLE_DEST_DB} (empty)")


@devstack_app.command("env")
def env(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Print shell exports for a running stack: SRC_DSN and DEST_DSN (the --sample databases),
    KAFKA_BOOTSTRAP, and the local Salesforce emulator's URL and client secret."""
    from psycopg.conninfo import make_conninfo

    from walbridge.emulator.server import DEFAULT_APP, DEFAULT_URL

    try:
        services = DevStack(state_dir).read_state()["services"]
    except (WalbridgeError, KeyError, OSError) as exc:
        console.print(f"[red]devstack env failed:[/red] no running stack in {state_dir} ({exc})")
        raise typer.Exit(1) from None
    admin = services["postgres"]["dsn"]
    exports = {
        "SRC_DSN": make_conninfo(admin, dbname=SAMPLE_SOURCE_DB),
        "DEST_DSN": make_conninfo(admin, dbname=SAMPLE_DEST_DB),
        "KAFKA_BOOTSTRAP": services["kafka"]["bootstrap"],
        "WALBRIDGE_EMULATOR_URL": DEFAULT_URL,
        "SF_CLIENT_SECRET": DEFAULT_APP.client_secret,
    }
    for name, value in exports.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


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
