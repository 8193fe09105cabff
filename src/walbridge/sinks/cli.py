"""``walbridge sink postgres|salesforce --config FILE``, mounted by ``walbridge.cli`` as ``sink_app``.

Each serves ``/metrics``, ``/healthz`` and ``/status`` from ``settings.metrics`` while it runs.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from walbridge.cli_common import (
    ConfigOption,
    MetricsPortOption,
    SinkNameOption,
    handle_errors,
    postgres_sink,
    settings_from,
    sink_uses,
    stop_on_signals,
)
from walbridge.sinks.salesforce.cli import salesforce
from walbridge.sinks.workers import run_sink_process, run_workers

__all__ = ["sink_app"]

log = logging.getLogger(__name__)

sink_app = typer.Typer(no_args_is_help=True, add_completion=False)


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
    sink_settings = postgres_sink(settings, name)
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
