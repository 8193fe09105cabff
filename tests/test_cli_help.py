"""Every command's --help reads as plain text: no reStructuredText markup, and allowed values listed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from walbridge.cli import app

RUNNER = CliRunner()


@pytest.fixture(autouse=True)
def _keep_test_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The root callback configures this process's logging: not pytest's, here."""
    monkeypatch.setattr("walbridge.cli.configure_logging", lambda *args: None)


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``walbridge ARGS`` in this process (help needs no subprocess)."""
    result = RUNNER.invoke(app, list(args), env=env, terminal_width=200)
    return result.exit_code, result.stdout, ""


def _commands(group: typer.Typer) -> list[tuple[str, ...]]:
    found = []
    command = typer.main.get_command(group)
    with typer.Context(command) as ctx:
        for name in command.list_commands(ctx):
            found.append((name,))
            sub = command.get_command(ctx, name)
            found.extend((name, sub_name) for sub_name in getattr(sub, "commands", {}) or {})
    return found


COMMANDS = _commands(app)


def test_every_command_is_listed() -> None:
    assert ("capture",) in COMMANDS and ("dlq", "replay") in COMMANDS and ("sink", "postgres") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_is_plain_text(command: tuple[str, ...]) -> None:
    code, out, err = run_cli(*command, "--help", env={"COLUMNS": "200"})
    assert code == 0, err
    assert not re.search(r"``|:(func|class|mod|meth|attr):", out), out


def test_choices_are_listed() -> None:
    _, out, _ = run_cli("capture", "--help", env={"COLUMNS": "200"})
    assert "initial|never|when_needed|initial_only" in out
    _, out, _ = run_cli("setup", "--help", env={"COLUMNS": "200"})
    assert "logical|trigger" in out


def test_capture_never_imports_the_dev_tools() -> None:
    """The dev stack, demo and Debezium runner load only for the commands that need them."""
    code = (
        "import sys; from typer.testing import CliRunner; from walbridge.cli import app; "
        "r = CliRunner().invoke(app, ['capture', '--help']); assert r.exit_code == 0, r.stdout; "
        "print(sorted(m for m in sys.modules if m.startswith('walbridge.dev')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
