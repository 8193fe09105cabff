"""The ``walbridge soak`` command: options → :func:`walbridge.soak.run.run_soak` → summary and exit code."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from walbridge.cli_common import console, handle_errors, stop_on_signals
from walbridge.errors import ConfigError

__all__ = ["soak"]

_KIND_NAMES = (
    "capture_kill, sink_worker_kill, graceful_restart, source_restart, dest_stop, broker_cut, emulator_503, "
    "token_expiry, request_limit, poison, add_column"
)


class Mode(enum.StrEnum):
    logical = "logical"
    trigger = "trigger"


@handle_errors
def soak(
    mode: Annotated[Mode, typer.Option(help="capture mode")] = Mode.logical,
    minutes: Annotated[float, typer.Option(help="how long the load runs")] = 10.0,
    rate: Annotated[float, typer.Option(help="changes per second asked of the writers (in total)")] = 2000.0,
    seed: Annotated[int, typer.Option(help="seed of the load and of the fault schedule")] = 1,
    out: Annotated[Path, typer.Option(help="where soak-MODE.json, the plots and the run's logs go")] = Path(
        ".walbridge/soak"
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            help="a walbridge config naming your PostgreSQL source, Kafka and a postgres sink's destination "
            "(scratch databases: the soak drops and creates its tables); default: embedded services"
        ),
    ] = None,
    faults: Annotated[
        str, typer.Option(help="fault kinds, comma-separated: all, none, or some of: " + _KIND_NAMES)
    ] = "all",
    fault_repeat: Annotated[int, typer.Option(min=0, help="how often each fault kind is injected")] = 2,
    writers: Annotated[int, typer.Option(min=1, help="concurrent writers")] = 4,
    drain_timeout: Annotated[float, typer.Option(help="seconds to wait for the pipeline to drain")] = 300.0,
) -> None:
    """Run the whole pipeline under load and faults, then check that nothing was lost or duplicated.

    Writes OUT/soak-MODE.json and OUT/soak-MODE-*.png; exits 1 on any loss or mismatch.
    """
    from walbridge.soak.faults import KINDS
    from walbridge.soak.output import summary_table
    from walbridge.soak.run import SoakOptions, run_soak

    if faults == "all":
        kinds = list(KINDS)
    elif faults == "none":
        kinds = []
    else:
        kinds = [k.strip() for k in faults.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"unknown fault kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    options = SoakOptions(
        mode=mode.value,
        minutes=minutes,
        rate=rate,
        seed=seed,
        out=out,
        config=config,
        faults=kinds,
        fault_repeat=fault_repeat,
        writers=writers,
        drain_timeout_s=drain_timeout,
    )
    report = run_soak(options, stop_on_signals(), console)
    console.print(summary_table(report))
    console.print(f"report: {out / f'soak-{mode.value}.json'}; plots: {', '.join(report['plots']) or 'none'}")
    if not report["ok"]:
        raise typer.Exit(1)
