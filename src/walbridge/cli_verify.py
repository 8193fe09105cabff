"""``walbridge verify --config FILE``: source and destination compared; exit 1 and a table of
missing/extra/different keys when the tables differ."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from walbridge.cli_common import (
    ConfigOption,
    SinkNameOption,
    console,
    handle_errors,
    postgres_sink,
    settings_from,
)
from walbridge.sinks.table_pairs import table_pairs
from walbridge.verify import TableDiff, verify_tables

__all__ = ["verify"]

out = Console()  # results on stdout; logs and errors go to stderr

def verify(
    config: ConfigOption = None,
    name: SinkNameOption = None,
    table: Annotated[list[str] | None, typer.Option("--table", help="schema.table (repeatable)")] = None,
    chunk_rows: Annotated[int, typer.Option(help="rows fetched per round trip")] = 10_000,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="compare again every 2 s for up to this many seconds until they agree (a pipeline "
            "catching up); default 0: compare once",
        ),
    ] = 0.0,
) -> None:
    """Compare source and destination tables; exit 1 when they differ."""
    deadline = time.monotonic() + wait
    diffs = _run_verify(config, name, table, chunk_rows)
    while not all(d.clean for d in diffs) and time.monotonic() < deadline:
        time.sleep(2.0)
        diffs = _run_verify(config, name, table, chunk_rows)
    out.print(_diff_table(diffs))
    differing = [d for d in diffs if not d.clean]
    rows = sum(d.source_rows for d in diffs)
    out.print(
        f"{len(diffs)} table(s), {rows:,} source rows compared: "
        + (f"{len(differing)} table(s) differ" if differing else "all agree")
    )
    if differing:
        raise typer.Exit(1)


@handle_errors
def _run_verify(
    config: ConfigOption, name: str | None, table: list[str] | None, chunk_rows: int
) -> list[TableDiff]:
    settings = settings_from(config, uses=("source", "events", "sinks.postgres"))
    sink = postgres_sink(settings, name)
    pairs = table_pairs(settings, sink, table, "verify")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("verifying")
        return verify_tables(
            settings.source.dsn,
            sink.dsn,
            pairs,
            chunk_rows=chunk_rows,
            progress=lambda t, n: bar.update(task, description=f"{t}: {n:,} rows"),
        )


def _diff_table(diffs: list[TableDiff]) -> Table:
    table = Table("source", "destination", "rows (src/dst)", "missing", "extra", "different", "example keys")
    for d in diffs:
        examples = "; ".join(
            f"{kind} {keys[0]}"
            for kind, keys in (("missing", d.missing), ("extra", d.extra), ("different", d.different))
            if keys
        )
        table.add_row(
            d.source,
            d.destination,
            f"{d.source_rows}/{d.destination_rows}",
            str(d.missing_count),
            str(d.extra_count),
            str(d.different_count),
            examples or "clean",
        )
    return table
