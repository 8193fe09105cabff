"""Kafka administration: ``walbridge topics list|create|delete|describe``, ``walbridge groups describe``."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from walbridge import admin
from walbridge.cli_common import ConfigOption, handle_errors, settings_from
from walbridge.errors import ConfigError

__all__ = ["groups_app", "topics_app"]

out = Console()  # results on stdout; logs and errors go to stderr

topics_app = typer.Typer(no_args_is_help=True, add_completion=False)
groups_app = typer.Typer(no_args_is_help=True, add_completion=False)

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
