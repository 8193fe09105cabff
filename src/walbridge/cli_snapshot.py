"""``walbridge snapshot``: send Debezium-compatible snapshot signals to a running capture.

The signal goes into ``source.signal_table`` (capture reads it from the change stream, so it also
reaches a capture that starts later); ``status`` prints the incremental snapshot's recorded progress.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

import typer
from rich.console import Console

from walbridge.cli_common import CAPTURE_USES, ConfigOption, handle_errors, settings_from
from walbridge.errors import ConfigError

__all__ = ["snapshot"]

out = Console()


class SnapshotAction(enum.StrEnum):
    execute = "execute"
    stop = "stop"
    pause = "pause"
    resume = "resume"
    status = "status"


_SIGNALS = {
    SnapshotAction.execute: "execute-snapshot",
    SnapshotAction.stop: "stop-snapshot",
    SnapshotAction.pause: "pause-snapshot",
    SnapshotAction.resume: "resume-snapshot",
}


@handle_errors
def snapshot(
    action: Annotated[
        SnapshotAction, typer.Argument(help="execute (default), stop, pause, resume, or status")
    ] = SnapshotAction.execute,
    config: ConfigOption = None,
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="schema.table to snapshot (or stop); repeatable")
    ] = None,
    where: Annotated[
        str | None, typer.Option("--where", help="SQL condition: snapshot only the rows it selects")
    ] = None,
) -> None:
    """Ask the running capture for an incremental snapshot of tables, or stop, pause or resume it."""
    from walbridge.capture import state
    from walbridge.capture.connection import connect_source
    from walbridge.capture.signals import send_signal

    settings = settings_from(config, uses=CAPTURE_USES)
    src = settings.source
    if not src.signal_table:
        raise ConfigError("walbridge snapshot needs source.signal_table (then run walbridge setup)")
    tables = table or []
    with connect_source(src.dsn) as conn:
        if action is SnapshotAction.status:
            _print_status(state.load_incremental(conn, src.slot))
            return
        data: dict[str, Any] = {"type": "incremental"}
        if action is SnapshotAction.execute:
            if not tables:
                raise ConfigError("walbridge snapshot: name the tables with --table schema.table")
            data["data-collections"] = tables
            if where:
                data["additional-conditions"] = [
                    {"data-collection": name, "filter": where} for name in tables
                ]
        elif tables:
            data["data-collections"] = tables
        ident = send_signal(conn, src.signal_table, _SIGNALS[action], data)
    out.print(f"[green]✓[/] {_SIGNALS[action]} signal {ident} written to {src.signal_table}")


def _print_status(progress: dict[str, Any] | None) -> None:
    if not progress or not progress.get("tables"):
        done = f" ({progress['rows']:,} rows in {progress['chunks']:,} chunks)" if progress else ""
        out.print(f"no incremental snapshot in progress{done}")
        return
    state = "paused" if progress.get("paused") else "running"
    out.print(
        f"incremental snapshot {state}: {progress['rows']:,} rows in {progress['chunks']:,} chunks so far"
    )
    for task in progress["tables"]:
        of = f" of ~{task['estimate']:,}" if task.get("estimate") else ""
        where = f" where {task['filter']}" if task.get("filter") else ""
        out.print(f"  {task['table']}: {task['rows']:,} rows{of}{where}")
