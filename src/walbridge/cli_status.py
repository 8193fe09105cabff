"""``walbridge status --config F``: one screen for the whole pipeline (see :mod:`walbridge.status`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from walbridge.cli_common import ConfigOption, handle_errors, settings_from
from walbridge.status import PipelineStatus, pipeline_status

__all__ = ["status"]

out = Console()


@handle_errors
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document, for tools")] = False,
    wal_warn_mb: Annotated[
        int, typer.Option("--wal-warn-mb", help="warn when the slot retains more WAL than this")
    ] = 1024,
) -> None:
    """Capture position and lag, WAL the slot retains, each sink group's lag, DLQ sizes, and each
    process's last error; exit 1 when something needs attention."""
    report = pipeline_status(settings_from(config), wal_warn_bytes=wal_warn_mb << 20)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str, indent=2))
    else:
        _show(report)
    if report.warnings:
        raise typer.Exit(1)


def _show(report: PipelineStatus) -> None:
    source = Table("source", "", title="capture source", show_header=False)
    for key, value in report.source.items():
        source.add_row(key, "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value))
    out.print(source)
    for sink in report.sinks:
        table = Table(
            "topic",
            "partition",
            "committed",
            "end",
            "lag",
            title=f"sink {sink['sink']} ({sink['type']}) — group {sink['group']}",
        )
        for p in sink.get("partitions", []):
            table.add_row(
                p["topic"],
                str(p["partition"]),
                "-" if p["committed"] is None else str(p["committed"]),
                str(p["end"]),
                "-" if p["lag"] is None else str(p["lag"]),
            )
        if "error" in sink:
            table.add_row(f"[red]{sink['error']}[/]", "", "", "", "")
        out.print(table)
    dlq = Table("DLQ topic", "records", title="dead letters")
    for topic, count in report.dlq.items():
        dlq.add_row(topic, f"{count:,}")
    if not report.dlq:
        dlq.add_row("(none)", "0")
    out.print(dlq)
    processes = Table("process", "status url", "running", "last warning or error", title="processes")
    for proc in report.processes:
        last = proc.get("last_error")
        processes.add_row(
            proc["process"],
            proc["url"],
            "[green]yes[/]" if proc["running"] else "[red]no answer[/]",
            f"{last['level']} {last['age_s']}s ago: {last['message']}" if last else "-",
        )
    out.print(processes)
    for warning in report.warnings:
        out.print(f"[yellow]warning:[/] {warning}")
    if not report.warnings:
        out.print("[green]✓[/] nothing needs attention")
