"""``walbridge sink salesforce --config FILE``: run the Salesforce sink until SIGINT/SIGTERM.

Contract: :func:`salesforce` is a plain typer command function (the main CLI mounts it); it builds
:class:`~walbridge.sinks.salesforce.sink.SalesforceSink` and the shared
:class:`~walbridge.sinks.runner.SinkRunner` from the settings file and runs until a signal. Any
:class:`~walbridge.errors.WalbridgeError` (bad credentials, wrong URL, unknown event...) ends it
with one ``error: ...`` line on stderr and exit code 2. ``python -m walbridge.sinks.salesforce.cli``
runs the same command on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from walbridge import metrics
from walbridge.cli_common import (
    ConfigOption,
    MetricsPortOption,
    SinkNameOption,
    handle_errors,
    settings_from,
    sink_uses,
)
from walbridge.config import MetricsSettings, SalesforceSinkSettings
from walbridge.signals import stop_on_signals
from walbridge.sinks.runner import SinkRunner
from walbridge.sinks.salesforce.sink import SalesforceSink
from walbridge.web import OpsServer, start_ops

__all__ = ["salesforce"]

log = logging.getLogger(__name__)


@handle_errors
def salesforce(
    config: ConfigOption = None,
    name: SinkNameOption = None,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Publish change events from Kafka to Salesforce Platform Events."""
    _run(config, name, metrics_port)


def _run(config: Path | None, name: str | None, metrics_port: int | None) -> None:
    settings = settings_from(config, metrics_port, sink_uses("salesforce"))
    sink_settings = settings.sink("salesforce", name)
    assert isinstance(sink_settings, SalesforceSinkSettings)
    sink = SalesforceSink(sink_settings, metrics=metrics.salesforce)
    runner = SinkRunner(sink, settings, sink_settings, metrics=metrics.sink)
    stop = stop_on_signals()
    ops = _start_ops(sink, runner, settings.metrics)
    try:
        runner.run(stop)
    finally:
        if ops is not None:
            ops.stop()
        _summary(sink)


def _start_ops(sink: SalesforceSink, runner: SinkRunner, settings: MetricsSettings) -> OpsServer | None:

    def status() -> dict[str, object]:
        stats = sink.publisher.stats if sink.publisher is not None else None
        return {
            **runner.status(),
            "calls": stats.calls if stats else 0,
            "accepted": stats.accepted if stats else 0,
            "rejected": stats.rejected if stats else 0,
            "api_usage": dict(stats.api_usage) if stats else {},
        }

    return start_ops(settings, "sink-salesforce", status, runner.healthy, ready=runner.ready)


def _summary(sink: SalesforceSink) -> None:
    stats = sink.publisher.stats if sink.publisher is not None else None
    if stats is None:
        return
    log.info(
        "%s: %d calls, %d events accepted, %d rejected, %d re-sends avoided, api usage %s",
        sink.name,
        stats.calls,
        stats.accepted,
        stats.rejected,
        sink.skipped_resends,
        stats.api_usage,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    typer.run(salesforce)
