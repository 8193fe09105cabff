"""The ``walbridge`` command line: one entry point for capture, sinks, operations and the demo.

Every command catches :class:`walbridge.errors.WalbridgeError` once, prints one clear line
and exits non-zero; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from walbridge import __version__
from walbridge.config import Settings, load_settings
from walbridge.errors import ConfigError, WalbridgeError

__all__ = ["app", "main"]

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="walbridge",
    help="PostgreSQL change-data-capture through Kafka into Salesforce Platform Events and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML or TOML settings file (env WALBRIDGE_* overrides)")
]


def handle_errors(func: F) -> F:
    """Turn WalbridgeError into one red line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WalbridgeError as exc:
            console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def configure_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def settings_from(config: Path | None) -> Settings:
    if config is not None and not config.exists():
        raise ConfigError(f"configuration file {config} does not exist")
    return load_settings(config)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM, for clean shutdowns."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    configure_logging(verbose)


@app.command()
def version() -> None:
    """Print the walbridge version."""
    typer.echo(__version__)


from walbridge import cli_capture as _cli_capture  # noqa: E402

_cli_capture.register(app)


def _mount_optional(module: str, attr: str, name: str, help_text: str) -> None:
    """Mount a sub-application from a module of the package."""
    import importlib

    sub = getattr(importlib.import_module(module), attr)
    app.add_typer(sub, name=name, help=help_text)


_mount_optional("walbridge.devstack_cli", "devstack_app", "devstack", "Start/stop the embedded dev stack.")
_mount_optional("walbridge.emulator.cli", "emulator_app", "sf-emulator", "The local Salesforce API emulator.")
_mount_optional("walbridge.sinks.cli", "sink_app", "sink", "Run a sink (postgres, salesforce).")
_mount_optional("walbridge.sinks.cli", "dlq_app", "dlq", "Inspect and replay dead-letter queues.")
_mount_optional("walbridge.sinks.cli", "topics_app", "topics", "Kafka topic administration.")
_mount_optional("walbridge.sinks.cli", "groups_app", "groups", "Kafka consumer groups.")

from walbridge import demo as _demo  # noqa: E402
from walbridge.sinks import cli as _sinks_cli  # noqa: E402

app.command("verify")(handle_errors(_sinks_cli.verify))
app.command("demo")(handle_errors(_demo.demo))


def main() -> None:
    try:
        app()
    except WalbridgeError as exc:  # errors raised outside commands (e.g. while mounting)
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
