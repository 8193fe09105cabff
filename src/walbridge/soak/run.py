"""One soak run, start to verdict: services, pipeline, load with faults, drain, checks, report.

Contract: :func:`run_soak` returns the report (see :mod:`walbridge.soak.output`) after writing it, the
plots and the processes' logs (``<out>/soak-<mode>-run/logs``) under ``options.out``. It stops early,
still checking and reporting, when ``stop`` is set. Every process and service it started is stopped
before it returns.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from walbridge.soak import checks
from walbridge.soak.faults import EMBEDDED_ONLY, KINDS, Injector, plan
from walbridge.soak.load import Load
from walbridge.soak.output import write_json, write_plots
from walbridge.soak.pipeline import (
    PG_GROUP,
    SF_GROUP,
    EmbeddedStack,
    Endpoints,
    Supervisor,
    start_emulator,
    topic_of,
)
from walbridge.soak.sampling import Sampler, SinkPositions, TopicTail
from walbridge.soak.schema import SALESFORCE_TABLE, create_source, drop_destination, stamp_destination

__all__ = ["SoakOptions", "run_soak"]

log = logging.getLogger(__name__)


@dataclass
class SoakOptions:
    mode: str = "logical"
    minutes: float = 10.0
    rate: float = 2000.0
    seed: int = 1
    out: Path = Path(".walbridge/soak")
    config: Path | None = None
    faults: list[str] = field(default_factory=lambda: list(KINDS))
    fault_repeat: int = 2
    writers: int = 4
    drain_timeout_s: float = 300.0


@dataclass
class _Progress:
    phase: str = "starting"
    faults: list[dict[str, Any]] = field(default_factory=list)
    fault_running: str = ""


def _user_endpoints(config: Path) -> Endpoints:
    from walbridge.config import PostgresSinkSettings, load_settings

    settings = load_settings(config)
    dest = next((s for s in settings.sinks if isinstance(s, PostgresSinkSettings)), None)
    if dest is None:
        from walbridge.errors import ConfigError

        raise ConfigError(f"{config}: the soak needs a postgres sink's dsn for its destination")
    return Endpoints(
        settings.source.dsn, dest.dsn, settings.kafka.bootstrap_servers, dict(settings.kafka.options)
    )


def _run_faults(
    injector: Injector,
    planned: list[Any],
    clock: Callable[[], float],
    stop: threading.Event,
    progress: _Progress,
) -> None:
    for fault in planned:
        if stop.wait(max(0.0, fault.t_s - clock())):
            return
        began = clock()
        progress.fault_running = fault.kind
        try:
            detail = injector.inject(fault.kind)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            log.exception("injecting %s failed", fault.kind)
            detail = f"INJECTION FAILED: {type(exc).__name__}: {exc}"
        progress.fault_running = ""
        entry = {
            "t_s": round(began, 1),
            "kind": fault.kind,
            "detail": detail,
            "duration_s": round(clock() - began, 1),
        }
        progress.faults.append(entry)
        log.info("soak fault at %.1fs: %s: %s", began, fault.kind, detail)


def _view(
    progress: _Progress,
    options: SoakOptions,
    load: Load,
    sampler: Sampler | None,
    supervisor: Supervisor | None,
    elapsed: float,
) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row("[bold]phase[/]", f"{progress.phase}  {elapsed:.0f}s / {options.minutes * 60:.0f}s")
    grid.add_row(
        "[bold]load[/]",
        f"{load.changes} changes, {load.transactions} transactions "
        f"({load.changes / max(elapsed, 1):.0f}/s), {load.failures} rolled back, {load.truncates} truncates",
    )
    sample = sampler.latest() if sampler else None
    if sample is not None:
        grid.add_row("[bold]kafka[/]", f"{sample.in_kafka} records")
        grid.add_row(
            "[bold]sinks[/]",
            f"postgres applied {sample.applied_pg}, lag {sample.lag_pg}; salesforce lag {sample.lag_sf}",
        )
        grid.add_row("[bold]capture RSS[/]", f"{sample.capture_rss_mb or 0:.0f} MiB")
    running = f" (now: {progress.fault_running})" if progress.fault_running else ""
    grid.add_row("[bold]faults[/]", f"{len(progress.faults)} injected{running}")
    for fault in progress.faults[-4:]:
        grid.add_row("", f"{fault['t_s']:>6.0f}s {fault['kind']}: {fault['detail'][:90]}")
    if supervisor and supervisor.unexpected:
        last = supervisor.unexpected[-1]
        grid.add_row(
            "[bold red]exits[/]",
            f"{len(supervisor.unexpected)} unexpected; last {last.name}: {last.detail[:80]}",
        )
    return grid


def _line(progress: _Progress, load: Load, sampler: Sampler | None, elapsed: float) -> str:
    sample = sampler.latest() if sampler else None
    tail = ""
    if sample is not None:
        tail = (
            f", kafka {sample.in_kafka}, pg lag {sample.lag_pg}, sf lag {sample.lag_sf}, "
            f"capture {sample.capture_rss_mb or 0:.0f} MiB"
        )
    return (
        f"soak {progress.phase} {elapsed:.0f}s: {load.changes} changes, {len(progress.faults)} faults{tail}"
    )


def _watch(
    until: Callable[[], bool],
    render: Callable[[], Any],
    line: Callable[[], str],
    console: Console,
    stop: threading.Event,
) -> None:
    if console.is_terminal:
        with Live(render(), console=console, refresh_per_second=2) as live:
            while not until() and not stop.wait(0.5):
                live.update(render())
            live.update(render())
        return
    last = 0.0
    while not until() and not stop.wait(0.5):
        if time.monotonic() - last >= 10:
            console.print(line(), highlight=False, soft_wrap=True)
            last = time.monotonic()


def _drained(
    supervisor: Supervisor, tail: TopicTail, positions: SinkPositions, emulator: Any, endpoints: Endpoints
) -> bool:
    if tail.idle_s() < 2.0:
        return False
    ends = tail.snapshot()
    pg = positions.postgres()
    sf_topics = [topic_of(SALESFORCE_TABLE)]
    sf = positions.salesforce([k for k in ends if k[0] in sf_topics])
    if pg is None or sf is None:
        return False
    if any(pg.get(k, 0) < end for k, end in ends.items()):
        return False
    if any(sf.get(k, 0) < end for k, end in ends.items() if k[0] in sf_topics):
        return False
    handler = emulator.state.handler
    if handler is not None and handler.checkpoint < emulator.state.store.latest_replay_id():
        return False
    try:
        return checks.compare_tables(endpoints.source_dsn, endpoints.dest_dsn).equal
    except Exception:  # the destination may still be starting
        return False


def run_soak(options: SoakOptions, stop: threading.Event, console: Console) -> dict[str, Any]:
    started_wall = time.time()
    options.out.mkdir(parents=True, exist_ok=True)
    run_dir = (options.out / f"soak-{options.mode}-run").absolute()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    kinds = [k for k in options.faults if options.config is None or k not in EMBEDDED_ONLY]
    skipped = sorted(set(options.faults) - set(kinds))
    progress = _Progress()
    load_began: list[float] = []

    def clock() -> float:
        return time.monotonic() - load_began[0] if load_began else 0.0

    stack = EmbeddedStack(run_dir / "stack") if options.config is None else None
    emulator = start_emulator(options.seed)
    supervisor: Supervisor | None = None
    sampler: Sampler | None = None
    tail: TopicTail | None = None
    positions: SinkPositions | None = None
    load: Load | None = None
    fault_thread: threading.Thread | None = None
    fault_stop = threading.Event()
    try:
        console.print(f"soak ({options.mode} mode): starting services", highlight=False)
        endpoints = stack.start() if stack is not None else _user_endpoints(options.config)  # type: ignore[arg-type]
        endpoints.emulator_url = emulator.url
        create_source(endpoints.source_dsn)
        drop_destination(endpoints.dest_dsn)
        supervisor = Supervisor(run_dir, endpoints, options.mode, clock)
        code, output = supervisor.cli("setup", "--sink", "replica")
        if code != 0:
            raise RuntimeError(f"walbridge setup --sink replica failed ({code}):\n{output}")
        stamp_destination(endpoints.dest_dsn)
        progress.phase = "starting the pipeline"
        supervisor.start_all()
        tail = TopicTail(endpoints.bootstrap, supervisor.topics, endpoints.kafka_options).start()
        positions = SinkPositions(
            endpoints.dest_dsn, PG_GROUP, endpoints.bootstrap, SF_GROUP, endpoints.kafka_options
        )
        load = Load(
            endpoints.source_dsn,
            rate=options.rate,
            seed=options.seed,
            writers=options.writers,
            truncate_every_s=max(20.0, options.minutes * 60 / 4),
        )
        duration = options.minutes * 60
        injector = Injector(
            supervisor,
            endpoints,
            stack,
            emulator,
            options.seed,
            fault_stop,
            storm_s=min(10.0, max(3.0, duration / 40)),
            dest_down_s=30.0 if duration >= 300 else 8.0,
        )
        planned = plan(kinds, options.fault_repeat, duration, options.seed)
        sampler = Sampler(
            clock,
            lambda: load.changes if load else 0,
            lambda: supervisor.pid("capture") if supervisor else None,
            tail,
            positions,
            [topic_of(SALESFORCE_TABLE)],
        )
        load_began.append(time.monotonic())
        load_wall = time.time()
        load.start()
        sampler.start()
        fault_thread = threading.Thread(
            target=_run_faults,
            args=(injector, planned, clock, fault_stop, progress),
            name="soak-faults",
            daemon=True,
        )
        fault_thread.start()
        progress.phase = "load"
        _watch(
            lambda: clock() >= duration,
            lambda: _view(progress, options, load, sampler, supervisor, clock()),
            lambda: _line(progress, load, sampler, clock()),
            console,
            stop,
        )
        load.stop()
        load_s = clock()
        progress.phase = "finishing the fault in progress"
        if stop.is_set():
            fault_stop.set()
        fault_thread.join()
        progress.phase = "draining"
        drain_began = time.monotonic()
        drained = [False]

        def drain_done() -> bool:
            if time.monotonic() - drain_began > options.drain_timeout_s:
                return True
            drained[0] = _drained(supervisor, tail, positions, emulator, endpoints)
            return drained[0]

        _watch(
            drain_done,
            lambda: _view(progress, options, load, sampler, supervisor, clock()),
            lambda: _line(progress, load, sampler, clock()),
            console,
            stop,
        )
        drain_s = time.monotonic() - drain_began
        sampler.stop()
        progress.phase = "checking"
        console.print(
            f"soak: drained={drained[0]} in {drain_s:.0f}s; checking the end state", highlight=False
        )
        report = _check(
            options, endpoints, supervisor, emulator, injector, load, drained[0], drain_s, load_wall
        )
        report.update(
            load_s=round(load_s, 1),
            achieved_rate=round(load.changes / max(load_s, 1), 1),
            skipped_fault_kinds=skipped,
            started_at=started_wall,
            run_dir=run_dir.name,  # beside the JSON file (logs, config, databases)
        )
        report["faults"] = progress.faults
        report["fault_counts"] = {k: sum(1 for f in progress.faults if f["kind"] == k) for k in kinds}
        missing_kinds = [k for k in kinds if report["fault_counts"][k] < options.fault_repeat]
        report["checks"]["faults_injected"] = {
            "ok": not missing_kinds and not any("FAILED" in f["detail"] for f in progress.faults),
            "detail": f"{len(progress.faults)} faults of {len(kinds)} kinds"
            + (f"; fewer than {options.fault_repeat}: {missing_kinds}" if missing_kinds else ""),
        }
        exit_codes = supervisor.stop_all()
        unclean = {n: c for n, c in exit_codes.items() if c != 0}
        processes = report["checks"]["processes"]
        if unclean:
            processes["ok"] = False
            processes["detail"] += f"; final SIGTERM exit codes {unclean}"
        report["ok"] = all(c["ok"] for c in report["checks"].values())
        relative = [(at - load_wall, ms) for at, ms in report.pop("_latency")]
        report["plots"] = write_plots(options.out, options.mode, sampler.samples, relative, progress.faults)
        report["samples"] = [vars(s) for s in sampler.samples]
        write_json(options.out, report)
        return report
    finally:
        fault_stop.set()
        if load is not None:
            load.stop()
        for closer in (
            sampler.stop if sampler else None,
            tail.stop if tail else None,
            positions.close if positions else None,
        ):
            if closer is not None:
                closer()
        if supervisor is not None:
            supervisor.stop_all(20)
        emulator.stop()
        if stack is not None:
            stack.stop()


def _check(
    options: SoakOptions,
    endpoints: Endpoints,
    supervisor: Supervisor,
    emulator: Any,
    injector: Injector,
    load: Load,
    drained: bool,
    drain_s: float,
    load_wall: float,
) -> dict[str, Any]:
    result: dict[str, dict[str, Any]] = {}

    def put(name: str, ok: bool, detail: str) -> None:
        result[name] = {"ok": bool(ok), "detail": detail}

    put(
        "drained",
        drained,
        f"pipeline drained in {drain_s:.0f}s"
        if drained
        else f"not drained within {options.drain_timeout_s:.0f}s",
    )
    tables = checks.compare_tables(endpoints.source_dsn, endpoints.dest_dsn)
    rows = ", ".join(f"{t} {s}/{d}" for t, (s, d) in tables.rows.items())
    put(
        "destination_equals_source",
        tables.equal,
        f"rows source/destination: {rows}"
        + ("; " + "; ".join(tables.examples[:6]) if tables.examples else ""),
    )
    code, output = supervisor.cli("verify")
    put(
        "walbridge_verify",
        code == 0,
        f"exit {code}: {output.strip().splitlines()[-1] if output.strip() else ''}"[:400],
    )
    events = checks.fetch_events(emulator.url)
    found = checks.emulator_events(events, SALESFORCE_TABLE, load.customer_log)
    put(
        "emulator_every_change",
        found.missing == 0,
        f"{found.logged} changes of {SALESFORCE_TABLE} logged, {found.missing} missing, "
        f"{found.duplicates} duplicate events of {found.events}"
        + ("; " + "; ".join(found.examples) if found.examples else ""),
    )
    accounts = checks.compare_accounts(emulator.url, endpoints.source_dsn)
    put("emulator_accounts", accounts.ok, accounts.detail)
    dlq_topics = [t + ".dlq" for t in supervisor.topics]
    dlq = checks.dead_letters(endpoints.bootstrap, endpoints.kafka_options, dlq_topics, injector.poison)
    put(
        "dlq_poison_only",
        dlq.ok,
        f"{dlq.sent} poison sent, {dlq.found} found "
        f"({dlq.poison_entries}/{dlq.expected_entries} sink entries), "
        f"{dlq.unexpected} other dead letters" + ("; " + "; ".join(dlq.examples) if dlq.examples else ""),
    )
    unexpected = [vars(e) for e in supervisor.unexpected]
    unclean = [(n, c) for n, c in supervisor.graceful_exits if c != 0]
    put(
        "processes",
        not unexpected and not unclean,
        f"{len(unexpected)} unexpected exits, {len(unclean)} unclean graceful stops"
        + (f"; first: {unexpected[0]}" if unexpected else "")
        + (f"; {unclean}" if unclean else ""),
    )
    latency = checks.latencies(endpoints.dest_dsn, load_wall)
    return {
        "mode": options.mode,
        "seed": options.seed,
        "minutes": options.minutes,
        "rate": options.rate,
        "ok": False,
        "checks": result,
        "lost_rows": tables.lost_rows,
        "duplicated_rows": tables.extra_rows,
        "table_rows": {t: {"source": s, "destination": d} for t, (s, d) in tables.rows.items()},
        "emulator_missing": found.missing,
        "emulator_duplicates": found.duplicates,
        "emulator_events": len(events),
        "dlq": {"poison_sent": dlq.sent, "poison_found": dlq.found, "unexpected": dlq.unexpected},
        "latency_ms": checks.percentiles([ms for _, ms in latency]),
        "changes_written": load.changes,
        "transactions": load.transactions,
        "rolled_back": load.failures,
        "rolled_back_by_error": dict(load.failure_kinds),
        "truncates": load.truncates,
        "added_columns": injector.added_columns,
        "unexpected_exits": unexpected,
        "drain_s": round(drain_s, 1),
        "_latency": latency,
        "fault_counts": {},
        "faults": [],
        "plots": [],
    }
