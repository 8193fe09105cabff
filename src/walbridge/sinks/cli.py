"""Typer apps for the sink side, mounted by ``walbridge.cli``.

``sink_app``: ``walbridge sink postgres|salesforce --config FILE`` (each serves ``/metrics``,
``/healthz`` and ``/status`` from ``settings.metrics`` while it runs, see
:mod:`walbridge.sinks.ops`); ``dlq_app``: ``walbridge dlq list|show|replay``; ``verify``:
``walbridge verify --config FILE`` (exit 1 and a table of missing/extra/different keys when the
tables differ); ``topics_app``: ``walbridge topics list|create|delete|describe``;
``groups_app``: ``walbridge groups describe``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from walbridge import admin
from walbridge.cli_common import (
    ConfigOption,
    MetricsPortOption,
    SinkNameOption,
    console,
    handle_errors,
    settings_from,
    sink_uses,
    stop_on_signals,
)
from walbridge.config import PostgresSinkSettings, Settings
from walbridge.errors import ConfigError
from walbridge.sinks.dlq import DlqEntry, list_dlq_topics, parse_since, parse_where, read_dlq
from walbridge.sinks.replay import replay
from walbridge.sinks.salesforce.cli import salesforce
from walbridge.sinks.table_pairs import table_pairs
from walbridge.sinks.workers import run_sink_process, run_workers
from walbridge.verify import TableDiff, verify_tables

__all__ = ["dlq_app", "groups_app", "sink_app", "topics_app", "verify"]

log = logging.getLogger(__name__)
out = Console()  # results on stdout; logs and errors go to stderr

sink_app = typer.Typer(no_args_is_help=True, add_completion=False)
dlq_app = typer.Typer(no_args_is_help=True, add_completion=False)
topics_app = typer.Typer(no_args_is_help=True, add_completion=False)
groups_app = typer.Typer(no_args_is_help=True, add_completion=False)



def _postgres_settings(settings: Settings, name: str | None) -> PostgresSinkSettings:
    sink = settings.sink("postgres", name)
    assert isinstance(sink, PostgresSinkSettings)
    return sink


@sink_app.command("postgres")
@handle_errors
def sink_postgres(
    config: ConfigOption = None,
    name: SinkNameOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=1, help="sink processes in the group (default: the sink's workers, 1)"),
    ] = None,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Apply change events from Kafka to a PostgreSQL database (exactly-once effect)."""
    settings = settings_from(config, metrics_port, sink_uses("postgres"))
    sink_settings = _postgres_settings(settings, name)
    stop = stop_on_signals()
    count = sink_settings.workers if workers is None else workers
    if count == 1:
        run_sink_process(settings, sink_settings, stop)
        return
    log.info("sink postgres: starting %d worker processes", count)
    code = run_workers(settings, sink_settings, count, stop)
    if code:
        raise typer.Exit(code)


sink_app.command("salesforce")(salesforce)


# --------------------------------------------------------------------------- dlq

TopicOption = Annotated[
    list[str] | None, typer.Option("--topic", help="DLQ topic (repeatable; default: all)")
]
SinceOption = Annotated[str | None, typer.Option("--since", help="30m, 2h, 1d or an ISO-8601 time")]
WhereOption = Annotated[
    str | None, typer.Option("--where", help="FIELD~REGEX or FIELD=VALUE, e.g. error~check")
]


def _entries(
    settings: Settings, topics: list[str] | None, since: str | None, where: str | None
) -> list[DlqEntry]:
    return read_dlq(
        settings,
        topics or list_dlq_topics(settings),
        since_ms=parse_since(since) if since else None,
        where=parse_where(where) if where else None,
    )


@dlq_app.command("list")
@handle_errors
def dlq_list(
    config: ConfigOption = None,
    topic: TopicOption = None,
    since: SinceOption = None,
    where: WhereOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per record instead (no total line)")
    ] = False,
) -> None:
    """One line per DLQ record: where it is, where it came from, its key, which sink refused it and why.

    Text: DLQ_TOPIC[PARTITION]@OFFSET  ORIGINAL_TOPIC[PARTITION]@OFFSET  time  sink  key  error, then
    the total. The full record: dlq show.
    """
    entries = _entries(settings_from(config), topic, since, where)
    for e in entries:
        if as_json:
            typer.echo(json.dumps(_list_json(e)))
        else:
            typer.echo(_list_line(e))
    if not as_json:
        topics = len({e.dlq_topic for e in entries})
        typer.echo(f"{len(entries)} dead letter(s) in {topics} DLQ topic(s)")


_ERROR_WIDTH = 160


def _list_json(e: DlqEntry) -> dict[str, object]:
    detail = e.detail_json()
    detail.pop("original_value")
    return detail


def _list_line(e: DlqEntry) -> str:
    when = datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = " ".join((e.seed_json()["original_key"] or "-").split())
    error = " ".join(e.error.split())
    if len(error) > _ERROR_WIDTH:
        error = error[: _ERROR_WIDTH - 1] + "…"
    return (
        f"{e.dlq_topic}[{e.dlq_partition}]@{e.dlq_offset}  "
        f"{e.original_topic}[{e.original_partition}]@{e.original_offset}  "
        f"{when}  {e.sink or '-'}  {key}  {error}"
    )


@dlq_app.command("show")
@handle_errors
def dlq_show(
    config: ConfigOption = None,
    topic: TopicOption = None,
    since: SinceOption = None,
    where: WhereOption = None,
    detail: Annotated[bool, typer.Option(help="add DLQ position and walbridge headers")] = False,
) -> None:
    """DLQ records in the seed's JSON form, one per line."""
    for e in _entries(settings_from(config), topic, since, where):
        typer.echo(json.dumps(e.detail_json() if detail else e.seed_json()))


@dlq_app.command("replay")
@handle_errors
def dlq_replay(
    config: ConfigOption = None,
    topic: TopicOption = None,
    since: SinceOption = None,
    where: WhereOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide every outcome, write nothing")] = False,
) -> None:
    """Apply dead letters again, each through the sink that refused it, to that sink's destination only.

    Nothing is re-published to Kafka, so no other consumer sees the records again. Each dead letter
    ends as one of:

    applied: written to the destination.
    superseded: its topic partition holds a later change of the same row (or a truncate); the sink
    applied that newer state or will, so the old one is not written over it.
    pending: the sink's group has not read past the record yet; the sink will apply it itself.
    unknown: later records of its partition were deleted by retention, so whether the row changed
    since cannot be told; not written (re-sync the row from the source).
    failed: refused again; it stays in the DLQ and a later replay tries it again.
    already replayed: applied or found superseded by an earlier replay (remembered in the topic
    DLQ_TOPIC.replayed).
    not this configuration's: written by a sink this configuration does not name.

    A PostgreSQL sink may keep running: its members wait while the replay checks and writes. A
    Salesforce sink must be stopped: the replay refuses while its group has members. Exit 1 when a
    dead letter failed again.
    """
    settings = settings_from(config)
    entries = list(_entries(settings, topic, since, where))
    with Progress(
        SpinnerColumn(),
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=len(entries))
        report = replay(
            settings, entries, dry_run=dry_run, progress=lambda done: bar.update(task, completed=done)
        )
    for entry in report["failed"]:
        where_from = f"{entry.original_topic}[{entry.original_partition}]@{entry.original_offset}"
        error = report.errors.get((entry.dlq_topic, entry.dlq_partition, entry.dlq_offset), "")
        typer.echo(f"failed {where_from} key {(entry.seed_json()['original_key'] or '')[:60]}: {error}")
    typer.echo(("dry run: " if dry_run else "") + report.summary())
    if report["failed"]:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- verify


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
    sink = _postgres_settings(settings, name)
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


# --------------------------------------------------------------------------- topics and groups


@topics_app.command("list")
@handle_errors
def topics_list(config: ConfigOption = None) -> None:
    table = Table("topic", "partitions", "replicas")
    for t in admin.list_topics(settings_from(config).kafka):
        table.add_row(t.name, str(t.partitions), str(t.replicas))
    out.print(table)


@topics_app.command("create")
@handle_errors
def topics_create(
    names: list[str],
    config: ConfigOption = None,
    partitions: Annotated[int | None, typer.Option(help="default: kafka.partitions")] = None,
) -> None:
    created = admin.create_topics(settings_from(config).kafka, names, partitions)
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@topics_app.command("delete")
@handle_errors
def topics_delete(names: list[str], config: ConfigOption = None) -> None:
    deleted = admin.delete_topics(settings_from(config).kafka, names)
    typer.echo(f"deleted: {', '.join(deleted) or 'none'}")


@topics_app.command("describe")
@handle_errors
def topics_describe(name: str, config: ConfigOption = None) -> None:
    typer.echo(json.dumps(admin.describe_topic(settings_from(config).kafka, name), indent=2))


@groups_app.command("describe")
@handle_errors
def groups_describe(
    group: Annotated[str | None, typer.Argument(help="group id (default: the configured sink's)")] = None,
    config: ConfigOption = None,
    topic: Annotated[list[str] | None, typer.Option("--topic", help="default: the sink's topics")] = None,
) -> None:
    """Committed offset, end offset and lag per partition."""
    settings = settings_from(config)
    sink = settings.sinks[0] if settings.sinks else None
    group_id = group or (sink and sink.consumer_group)
    topics = topic or (sink.topics if sink else [])
    if not group_id or not topics:
        raise ConfigError("name the group and --topic (or configure a sink)")
    table = Table("topic", "partition", "committed", "end", "lag", title=f"group {group_id}")
    for p in admin.describe_group(settings.kafka, group_id, topics):
        table.add_row(
            p.topic,
            str(p.partition),
            "-" if p.committed is None else str(p.committed),
            str(p.high_watermark),
            "-" if p.lag is None else str(p.lag),
        )
    out.print(table)
