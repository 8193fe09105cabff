"""``walbridge dlq list|show|replay``: dead letters read, shown, and applied again through their sink."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

from walbridge.cli_common import ConfigOption, console, handle_errors, settings_from
from walbridge.config import Settings
from walbridge.sinks.dlq import DlqEntry, list_dlq_topics, parse_since, parse_where, read_dlq
from walbridge.sinks.replay import replay

__all__ = ["dlq_app"]

dlq_app = typer.Typer(no_args_is_help=True, add_completion=False)

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
