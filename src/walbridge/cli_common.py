"""What every ``walbridge`` command shares: the config option, error handling, signals, logging."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from walbridge.config import PostgresSinkSettings, Settings, load_settings
from walbridge.errors import ConfigError, WalbridgeError
from walbridge.logs import console
from walbridge.signals import stop_on_signals

__all__ = [
    "CAPTURE_USES",
    "ConfigOption",
    "MetricsPortOption",
    "SinkNameOption",
    "console",
    "handle_errors",
    "postgres_sink",
    "settings_from",
    "sink_uses",
    "stop_on_signals",
]

F = TypeVar("F", bound=Callable[..., Any])

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML or TOML settings file (env WALBRIDGE_* overrides)")
]
SinkNameOption = Annotated[
    str | None, typer.Option("--name", help="which configured sink of this type (default: the first)")
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="serve /metrics, /healthz and /status on this port (default: metrics.port, else the "
        "role's own: capture 9187, sink postgres 9188, sink salesforce 9189)",
    ),
]


def handle_errors(func: F) -> F:
    """Turn WalbridgeError into one red line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WalbridgeError as exc:
            console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


CAPTURE_USES = ("source", "events", "kafka", "metrics")
"""The sections capture-side commands (check, setup, teardown, capture) read."""


def sink_uses(kind: str) -> tuple[str, ...]:
    """The sections ``walbridge sink KIND`` reads."""
    return ("events", "kafka", "dlq", "metrics", f"sinks.{kind}")
    # ``source`` is read when it resolves (auto_create from the source catalog), not required.


def settings_from(
    config: Path | None,
    metrics_port: int | None = None,
    uses: tuple[str, ...] | None = None,
    **overrides: Any,
) -> Settings:
    """The settings of ``config`` with ``overrides``; ``metrics_port`` (``--metrics-port``) sets
    ``metrics.port`` and enables the endpoint; ``uses`` limits which sections' ``env:`` variables
    must be set (see :func:`walbridge.config.load_settings`)."""
    if config is not None and not config.exists():
        raise ConfigError(f"configuration file {config} does not exist")
    if metrics_port is not None:
        overrides["metrics"] = {**overrides.get("metrics", {}), "port": metrics_port, "enabled": True}
    return load_settings(config, uses, **overrides)


def postgres_sink(settings: Settings, name: str | None) -> PostgresSinkSettings:
    """The configured PostgreSQL sink called ``name`` (default: the first)."""
    sink = settings.sink("postgres", name)
    assert isinstance(sink, PostgresSinkSettings)
    return sink
