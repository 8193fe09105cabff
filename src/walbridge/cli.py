"""The ``walbridge`` command line: one entry point for capture, sinks, operations and the demo.

Every command catches :class:`walbridge.errors.WalbridgeError` once, prints one clear line
and exits non-zero; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import enum
import importlib
import sys
from typing import Annotated

import typer

from walbridge import __version__
from walbridge.cli_common import console
from walbridge.errors import WalbridgeError
from walbridge.logs import configure_logging

__all__ = ["app", "main"]

class LogFormatChoice(enum.StrEnum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


app = typer.Typer(
    name="walbridge",
    help="PostgreSQL change-data-capture through Kafka into Salesforce Platform Events and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    log_format: Annotated[
        LogFormatChoice,
        typer.Option(
            "--log-format",
            help="auto (rich on a terminal, plain lines otherwise), rich, plain, or json "
            "(one object per line with stage, table, topic, offset, lsn where known)",
        ),
    ] = LogFormatChoice.auto,
) -> None:
    configure_logging(verbose, log_format.value)





@app.command()
def version() -> None:
    """Print the walbridge version."""
    typer.echo(__version__)


_SUB_APPS = (
    ("walbridge.devstack_cli", "devstack_app", "devstack", "Start/stop the embedded dev stack."),
    ("walbridge.emulator.cli", "emulator_app", "sf-emulator", "The local Salesforce API emulator."),
    ("walbridge.sinks.cli", "sink_app", "sink", "Run a sink (postgres, salesforce)."),
    ("walbridge.sinks.cli", "dlq_app", "dlq", "Inspect and replay dead-letter queues."),
    ("walbridge.sinks.cli", "topics_app", "topics", "Kafka topic administration."),
    ("walbridge.sinks.cli", "groups_app", "groups", "Kafka consumer groups."),
)
_COMMANDS = (
    ("walbridge.sinks.cli", "verify", "verify"),
    ("walbridge.cli_status", "status", "status"),
    ("walbridge.demo", "demo", "demo"),
    ("walbridge.soak.cli", "soak", "soak"),
)


def _assemble() -> None:
    from walbridge import cli_capture

    cli_capture.register(app)
    for module, attr, name, help_text in _SUB_APPS:
        app.add_typer(getattr(importlib.import_module(module), attr), name=name, help=help_text)
    for module, attr, name in _COMMANDS:
        app.command(name)(getattr(importlib.import_module(module), attr))


_assemble()


def main() -> None:
    try:
        app()
    except WalbridgeError as exc:  # raised outside a command's own handler
        console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
