"""The ``walbridge`` command line: one entry point for capture, sinks, operations and the demo.

Every command catches :class:`walbridge.errors.WalbridgeError` once, prints one clear line
and exits non-zero; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import enum
import importlib
import sys
from typing import Annotated, Any

import typer
import typer.core
import typer.main
from rich.markup import escape
from typer.models import CommandInfo, TyperInfo

from walbridge import __version__, accel
from walbridge.cli_common import console
from walbridge.errors import WalbridgeError
from walbridge.logs import configure_logging

__all__ = ["app", "main"]

class LogFormatChoice(enum.StrEnum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


_SUB_APPS = {
    "devstack": ("walbridge.dev.devstack_cli", "devstack_app", "Start/stop the embedded dev stack."),
    "sf-emulator": ("walbridge.emulator.cli", "emulator_app", "The local Salesforce API emulator."),
    "sink": ("walbridge.sinks.cli", "sink_app", "Run a sink (postgres, salesforce)."),
    "dlq": ("walbridge.cli_dlq", "dlq_app", "Inspect and replay dead-letter queues."),
    "topics": ("walbridge.cli_admin", "topics_app", "Kafka topic administration."),
    "groups": ("walbridge.cli_admin", "groups_app", "Kafka consumer groups."),
}
_COMMANDS = {
    "verify": ("walbridge.cli_verify", "verify"),
    "status": ("walbridge.cli_status", "status"),
    "snapshot": ("walbridge.cli_snapshot", "snapshot"),
    "demo": ("walbridge.dev.demo", "demo"),
    "soak": ("walbridge.soak.cli", "soak"),
}


def _load(name: str) -> Any:  # a click command (typer vendors click)
    """The command ``name`` as ``add_typer``/``command`` would mount it, its module imported only now:
    ``capture`` and the sinks never load the dev tools."""
    markup = typer.core.DEFAULT_MARKUP_MODE
    if name in _SUB_APPS:
        module, attr, help_text = _SUB_APPS[name]
        info = TyperInfo(getattr(importlib.import_module(module), attr), name=name, help=help_text)
        return typer.main.get_group_from_info(
            info, pretty_exceptions_short=True, suggest_commands=True, rich_markup_mode=markup
        )
    if name in _COMMANDS:
        module, attr = _COMMANDS[name]
        command = CommandInfo(name=name, callback=getattr(importlib.import_module(module), attr))
        return typer.main.get_command_from_info(
            command, pretty_exceptions_short=True, rich_markup_mode=markup
        )
    return None


class _LazyGroup(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        loaded = super().list_commands(ctx)
        return [*loaded, *(name for name in (*_SUB_APPS, *_COMMANDS) if name not in loaded)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and (loaded := _load(cmd_name)) is not None:
            self.add_command(loaded, cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    name="walbridge",
    help="PostgreSQL change-data-capture through Kafka into Salesforce Platform Events and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_LazyGroup,
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
    """Print the walbridge version and which hot path runs (compiled or pure Python)."""
    typer.echo(f"{__version__} (hot path: {accel.describe()})")


def _assemble() -> None:
    from walbridge import cli_capture

    cli_capture.register(app)


_assemble()


def main() -> None:
    try:
        app()
    except WalbridgeError as exc:  # raised outside a command's own handler
        console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
