"""Several PostgreSQL sink processes from one command: ``walbridge sink postgres --workers N``.

One sink process is bound by one CPU core (the GIL: consume, decode and plan run in Python at
about 20 µs per record), while the destination and Kafka have capacity to spare. Kafka's answer
is the consumer group: :func:`run_workers` starts N processes, each an ordinary member of the
sink's group (its own consumer, destination connection and :class:`SinkRunner`), so the
partitions, and the load, are shared. Every guarantee of a single sink holds unchanged: offsets
live in the destination transaction and the offset fence keeps a rebalance from applying a batch
twice. Use at least as many partitions as workers; extra workers sit idle.

The parent supervises: a worker killed or crashed is restarted (with a growing delay), a worker
that stops on a walbridge error (a configuration problem, Kafka refusing the client) stops them
all and the command exits 2, and SIGINT/SIGTERM stop every worker cleanly (the parent sends each
a SIGTERM in turn, a few seconds apart; each finishes its batch). A worker whose parent died stops
too. The parent serves ``/healthz`` and ``/status`` (the workers, their pids and restarts) on the
sink's metrics port; worker *i* (1-based) serves its own ``/metrics`` and ``/status`` on that port + *i*.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from walbridge.config import PostgresSinkSettings, Settings
from walbridge.logs import LogFormat
from walbridge.signals import stop_on_signals

__all__ = ["run_sink_process", "run_workers"]

log = logging.getLogger(__name__)

_MAX_RESTART_DELAY_S = 30.0
_STABLE_AFTER_S = 60.0
"""A worker that ran this long is restarted at once again the next time it dies."""
_LEAVE_GAP_S = 5.0
"""Pause between two workers leaving the group at shutdown: the remaining members rejoin meanwhile."""
_STOP_TIMEOUT_S = 60.0
ERROR_EXIT = 2


@dataclass(slots=True)
class _Worker:
    index: int
    process: Any = None
    started: float = 0.0
    restarts: int = 0
    delay_s: float = 1.0
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


def run_workers(
    settings: Settings, sink_settings: PostgresSinkSettings, count: int, stop: threading.Event
) -> int:
    """Run ``count`` sink processes until ``stop`` is set or one fails for good; the exit code."""
    if count < 1:
        from walbridge.errors import ConfigError

        raise ConfigError(f"--workers must be at least 1 (got {count})")
    context = multiprocessing.get_context("spawn")
    from walbridge.logs import current_setup

    log_setup = current_setup()
    workers = [_Worker(index) for index in range(1, count + 1)]

    def start(worker: _Worker) -> None:
        worker.process = context.Process(
            target=_worker_main,
            args=(settings, sink_settings, worker.index, log_setup),
            name=f"walbridge-sink-worker-{worker.index}",
        )
        worker.process.start()
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)

    ops = _start_parent_ops(settings, workers)
    exit_code = 0
    try:
        for worker in workers:
            start(worker)
        while not stop.is_set() and exit_code == 0:
            stop.wait(0.2)
            now = time.monotonic()
            for worker in workers:
                if worker.restart_at is not None:
                    if now >= worker.restart_at and not stop.is_set():
                        worker.restarts += 1
                        start(worker)
                    continue
                if worker.alive or stop.is_set():
                    continue
                code = worker.process.exitcode
                if code == ERROR_EXIT:
                    log.error("worker %d stopped on an error (see above); stopping all workers", worker.index)
                    exit_code = ERROR_EXIT
                    break
                if now - worker.started >= _STABLE_AFTER_S:
                    worker.delay_s = 1.0
                log.warning(
                    "worker %d (pid %d) exited with %s; restarting it in %.0fs",
                    worker.index,
                    worker.process.pid,
                    _describe_exit(code),
                    worker.delay_s,
                )
                worker.restart_at = now + worker.delay_s
                worker.delay_s = min(worker.delay_s * 2, _MAX_RESTART_DELAY_S)
    finally:
        _stop_all(workers)
        if ops is not None:
            ops.stop()
    return exit_code


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _stop_all(workers: list[_Worker]) -> None:
    """Stop the workers one after another, each finishing its batch and leaving the group, with a pause
    between: a member that leaves while the rebalance another's leave began is still running can stall
    the group on some brokers (the embedded test broker never assigns its partitions again)."""
    # SIGTERM, not a shared multiprocessing.Event: a worker SIGKILLed while waiting on such an
    # event leaves its lock held, and setting it then blocks forever.
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    running = [w for w in workers if w.alive]
    for number, worker in enumerate(running):
        assert worker.process is not None
        if number and worker.alive:
            time.sleep(min(_LEAVE_GAP_S, max(0.0, deadline - time.monotonic())))
        if worker.alive:
            worker.process.terminate()
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            log.warning("worker %d did not stop in %.0fs; killing it", worker.index, _STOP_TIMEOUT_S)
            worker.process.kill()
            worker.process.join(5)


def _start_parent_ops(settings: Settings, workers: list[_Worker]) -> Any:
    from walbridge.web import start_ops

    def status() -> dict[str, Any]:
        port = settings.metrics.port_for("sink-postgres")
        return {
            "workers": [
                {
                    "worker": w.index,
                    "pid": None if w.process is None else w.process.pid,
                    "alive": w.alive,
                    "restarts": w.restarts,
                    "ops_port": port + w.index if settings.metrics.enabled else None,
                }
                for w in workers
            ]
        }

    return start_ops(
        settings.metrics, "sink-postgres", status, lambda: all(w.alive for w in workers), exports=False
    )


def run_sink_process(
    settings: Settings, sink_settings: PostgresSinkSettings, stop: threading.Event, port_offset: int = 0
) -> None:
    """One PostgreSQL sink in this process until ``stop``: the command's single-process path and
    each worker's body. Its ops endpoint (when ``metrics.enabled``) is the sink's port + ``port_offset``."""
    from walbridge import metrics
    from walbridge.sinks.postgres import PostgresSink
    from walbridge.sinks.runner import SinkRunner
    from walbridge.web import start_ops

    source_dsn = settings.source.dsn if not settings.source.dsn.startswith("env:") else None
    sink = PostgresSink(sink_settings, source_dsn=source_dsn if sink_settings.auto_create else None)
    runner = SinkRunner(sink, settings, sink_settings, metrics=metrics.sink)
    log.info(
        "sink %s: group %s, topics %s",
        sink.name,
        runner.group_id,
        sink_settings.topics or sink_settings.topic_pattern,
    )
    ops = start_ops(
        settings.metrics, "sink-postgres", runner.status, runner.healthy, port_offset, ready=runner.ready
    )
    try:
        runner.run(stop)
    finally:
        if ops is not None:
            ops.stop()


def _worker_main(
    settings: Settings, sink_settings: PostgresSinkSettings, index: int, log_setup: tuple[bool, LogFormat]
) -> None:
    """One worker process: a sink until SIGTERM (sent by the parent) or the parent's death."""
    from walbridge.errors import WalbridgeError
    from walbridge.logs import configure_logging

    configure_logging(*log_setup)
    stop = stop_on_signals(interrupt=False)  # Ctrl-C reaches the parent, which stops everyone

    def follow_parent() -> None:
        parent = multiprocessing.parent_process()
        if parent is not None:
            multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
            stop.set()

    threading.Thread(target=follow_parent, name="follow-parent", daemon=True).start()
    try:
        run_sink_process(settings, sink_settings, stop, port_offset=index)
    except WalbridgeError as exc:
        print(f"error: worker {index}: {exc.message}", file=sys.stderr, flush=True)
        sys.exit(ERROR_EXIT)
