"""The pipeline under test: its services (embedded or the user's), its config, its CLI processes.

Contract: :class:`EmbeddedStack` starts a source and a destination PostgreSQL (two servers, so either can
be restarted or stopped alone), the Kafka-protocol broker behind a :class:`TcpProxy` (the broker advertises
the proxy's port, so every client's connection can be cut); :func:`start_emulator` the Salesforce emulator
with the handler emulation. :class:`Endpoints` is where things are (embedded, or taken from a user's config).
:class:`Supervisor` writes the walbridge config the processes read and runs ``walbridge capture``,
``walbridge sink postgres --workers 2`` and ``walbridge sink salesforce`` as real subprocesses (so signals
are real), each logging to ``logs/<name>.log``; a process that exits while no fault holds it is recorded
as an unexpected exit and started again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from walbridge.dev.processes import child_pids, free_port
from walbridge.emulator.server import DEFAULT_APP, EmulatorConfig, EmulatorServer
from walbridge.events import EncodingOptions, EnvelopeEncoder
from walbridge.soak.schema import SALESFORCE_TABLE, table_names
from walbridge.soak.tcp_proxy import TcpProxy

__all__ = ["PROCESSES", "EmbeddedStack", "Endpoints", "Supervisor", "start_emulator", "topic_of"]

log = logging.getLogger(__name__)

PREFIX = "soak"
SLOT = "walbridge_soak"
SINK_WORKERS = 2
PG_GROUP = "soak-replica"
SF_GROUP = "soak-salesforce"
PROCESSES: dict[str, list[str]] = {
    "capture": ["capture"],
    "sink-postgres": ["sink", "postgres", "--workers", str(SINK_WORKERS)],
    "sink-salesforce": ["sink", "salesforce"],
}
_ENV_SOURCE, _ENV_DEST, _ENV_SECRET = "SOAK_SOURCE_DSN", "SOAK_DEST_DSN", "SOAK_SF_CLIENT_SECRET"


def topic_of(table: str) -> str:
    schema, _, name = table.rpartition(".")
    return EnvelopeEncoder(EncodingOptions(topic_prefix=PREFIX)).topic(schema, name)


@dataclass
class Endpoints:
    source_dsn: str
    dest_dsn: str
    bootstrap: str
    kafka_options: dict[str, Any] = field(default_factory=dict)
    emulator_url: str = ""


def start_emulator(seed: int) -> EmulatorServer:
    """The Salesforce emulator with the handler emulation. Its allocations are raised far above the
    soak's use (a 10-minute soak publishes more than an hourly allocation): faults come from the plan."""
    config = EmulatorConfig(handler=True, seed=seed, hourly_publish_limit=10**9, daily_api_limit=10**9)
    return EmulatorServer(config).start()


class EmbeddedStack:
    """Source and destination PostgreSQL and the broker behind a proxy, under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        from walbridge.dev.devstack import KafkaBroker, PostgresServer

        self.source = PostgresServer(state_dir / "source", fsync=False, full_page_writes=False)
        self.dest = PostgresServer(state_dir / "dest", fsync=False, full_page_writes=False)
        broker_port = free_port()
        self.proxy = TcpProxy(broker_port)
        self.broker = KafkaBroker(state_dir / "kafka", port=broker_port, advertised_port=self.proxy.port)

    def start(self) -> Endpoints:
        self.source.start()
        self.dest.start()
        self.broker.start()
        for server in (self.source, self.dest):
            server.create_database("soak")
        return Endpoints(
            self.source.dsn("soak"),
            self.dest.dsn("soak"),
            f"127.0.0.1:{self.proxy.port}",
        )

    def stop(self) -> None:
        for stop in (self.broker.stop, self.proxy.close, self.dest.stop, self.source.stop):
            try:
                stop()
            except Exception:
                log.exception("stopping a soak service failed")


@dataclass
class ProcessExit:
    t_s: float
    name: str
    code: int | None
    detail: str


class Supervisor:
    """Runs the pipeline's CLI processes from one config under ``run_dir``."""

    def __init__(self, run_dir: Path, endpoints: Endpoints, mode: str, clock: Any) -> None:
        self.run_dir = run_dir
        self.log_dir = run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.endpoints = endpoints
        self.mode = mode
        self.clock = clock
        self.capture_port = free_port()
        self.env = {
            **os.environ,
            _ENV_SOURCE: endpoints.source_dsn,
            _ENV_DEST: endpoints.dest_dsn,
            _ENV_SECRET: DEFAULT_APP.client_secret,
            "WALBRIDGE_METRICS__ENABLED": "false",
            "COLUMNS": "200",
        }
        self.config = self._write_config()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.held: set[str] = set()
        self.unexpected: list[ProcessExit] = []
        self.graceful_exits: list[tuple[str, int | None]] = []
        self.starts: dict[str, int] = dict.fromkeys(PROCESSES, 0)
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._monitor: threading.Thread | None = None

    # ------------------------------------------------------------------ config

    @property
    def topics(self) -> list[str]:
        return [topic_of(t) for t in table_names()]

    def _write_config(self) -> Path:
        tables = table_names()
        options = self.endpoints.kafka_options
        doc: dict[str, Any] = {
            "source": {
                "mode": self.mode,
                "dsn": f"env:{_ENV_SOURCE}",
                "tables": tables,
                "slot": SLOT,
                "publication": SLOT,
                "poll_interval_ms": 50,
                "heartbeat_ms": 1000,
            },
            "events": {"topic_prefix": PREFIX},
            "kafka": {
                "bootstrap_servers": self.endpoints.bootstrap,
                "partitions": 3,
                "session_timeout_ms": 6000,
                **({"options": options} if options else {}),
            },
            "sinks": [
                {
                    "type": "postgres",
                    "name": "replica",
                    "dsn": f"env:{_ENV_DEST}",
                    "topics": [topic_of(t) for t in tables],
                    "group_id": PG_GROUP,
                    "linger_ms": 50,
                    "batch_size": 1000,
                },
                {
                    "type": "salesforce",
                    "name": "salesforce",
                    "instance_url": self.endpoints.emulator_url,
                    "client_id": DEFAULT_APP.client_id,
                    "client_secret": f"env:{_ENV_SECRET}",
                    "topics": [topic_of(SALESFORCE_TABLE)],
                    "group_id": SF_GROUP,
                    "linger_ms": 50,
                },
            ],
            "dlq": {"max_attempts": 3, "backoff_initial_s": 0.2, "backoff_max_s": 5.0},
            "metrics": {"enabled": False},
            "state_dir": str(self.run_dir / "state"),
        }
        path = self.run_dir / "walbridge.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    # ------------------------------------------------------------------ commands

    def _argv(self, args: list[str] | tuple[str, ...]) -> list[str]:
        """``walbridge --log-format plain ARGS --config <config>`` as this interpreter runs it."""
        return [
            sys.executable,
            "-m",
            "walbridge.cli",
            "--log-format",
            "plain",
            *args,
            "--config",
            str(self.config),
        ]

    def cli(self, *args: str, timeout: float = 300) -> tuple[int, str]:
        """``walbridge ARGS --config <config>`` to completion: exit code and output."""
        try:
            done = subprocess.run(
                self._argv(args),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self.env,
                cwd=self.run_dir,
            )
        except subprocess.TimeoutExpired:
            return 124, f"walbridge {' '.join(args)} did not finish within {timeout:.0f}s"
        return done.returncode, done.stdout + done.stderr

    def start(self, name: str) -> None:
        env = self.env
        if name == "capture":
            env = {
                **env,
                "WALBRIDGE_METRICS__ENABLED": "true",
                "WALBRIDGE_METRICS__PORT": str(self.capture_port),
            }
        with (self.log_dir / f"{name}.log").open("ab") as out:
            out.write(f"--- soak t={self.clock():.1f}s: walbridge {' '.join(PROCESSES[name])}\n".encode())
            out.flush()
            # A session of its own: Ctrl-C reaches the soak, which stops the pipeline itself.
            proc = subprocess.Popen(
                self._argv(PROCESSES[name]),
                env=env,
                cwd=self.run_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        with self._lock:
            self.procs[name] = proc
            self.starts[name] += 1

    def start_all(self) -> None:
        """Sinks first (they wait for the topics), ``setup``, capture until it streams; then the monitor."""
        self.start("sink-postgres")
        self.start("sink-salesforce")
        code, output = self.cli("setup")
        if code != 0:
            raise RuntimeError(f"walbridge setup failed ({code}):\n{output}")
        self.start("capture")
        self.wait_streaming(120)
        self._monitor = threading.Thread(target=self._watch, name="soak-supervisor", daemon=True)
        self._monitor.start()

    def wait_streaming(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"http://127.0.0.1:{self.capture_port}/status", timeout=2).json()
                if status.get("streaming"):
                    return True
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        return False

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def worker_pids(self) -> list[int]:
        """The sink workers (``multiprocessing`` children of ``sink postgres``, not its resource tracker)."""
        parent = self.pid("sink-postgres")
        found = []
        for pid in child_pids(parent) if parent else []:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                found.append(pid)
        return found

    def signal(self, name: str, sig: signal.Signals) -> int | None:
        """Send ``sig`` to ``name``; the pid signalled (None if it was not running)."""
        pid = self.pid(name)
        if pid is not None:
            os.kill(pid, sig)
        return pid

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        """The exit code of ``name``; None if it did not exit within ``timeout_s`` (then it is killed)."""
        proc = self.procs[name]
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            return None

    # ------------------------------------------------------------------ monitor

    def hold(self, name: str) -> None:
        with self._lock:
            self.held.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self.held.discard(name)

    def _watch(self) -> None:
        while not self._closing.wait(0.5):
            with self._lock:
                exited = [n for n, p in self.procs.items() if n not in self.held and p.poll() is not None]
                for name in exited:
                    code = self.procs[name].returncode
                    detail = _last_line(self.log_dir / f"{name}.log")
                    self.unexpected.append(ProcessExit(round(self.clock(), 1), name, code, detail))
                    log.warning(
                        "soak: %s exited unexpectedly (%s): %s; starting it again", name, code, detail
                    )
                    self.start(name)

    def stop_all(self, timeout_s: float = 60) -> dict[str, int | None]:
        """SIGTERM every process at once, then their exit codes (None: killed after ``timeout_s``)."""
        self._closing.set()
        if self._monitor is not None:
            self._monitor.join(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {name: self.wait_exit(name, timeout_s) for name in list(self.procs)}


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
