"""What every ``walbridge`` command shares: the config option, error handling, signals, logging."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from walbridge.config import Settings, load_settings
from walbridge.errors import ConfigError, WalbridgeError

__all__ = [
    "ConfigOption",
    "configure_logging",
    "console",
    "handle_errors",
    "settings_from",
    "stop_on_signals",
]

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

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
        force=True,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    if config is not None and not config.exists():
        raise ConfigError(f"configuration file {config} does not exist")
    return load_settings(config, **overrides)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT/SIGTERM, for clean shutdowns; a second signal interrupts at once."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop
