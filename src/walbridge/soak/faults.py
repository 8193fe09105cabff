"""The soak's faults: a seeded schedule, and one injector per kind.

Contract: :func:`plan` spreads ``repeat`` of each kind over the load's duration in a seeded random order
(evenly spaced, jittered). :class:`Injector` runs one fault at a time, to its end (a stopped destination
is started again, a storm is over, a cut connection restored) and returns a one-line detail; the runner
logs each with its time. Kinds in :data:`EMBEDDED_ONLY` need the services the soak started itself.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Producer

from walbridge.dev.processes import send_signal
from walbridge.emulator.server import EmulatorServer
from walbridge.soak.pipeline import EmbeddedStack, Endpoints, Supervisor, topic_of
from walbridge.soak.schema import SALESFORCE_TABLE, table_names

__all__ = ["EMBEDDED_ONLY", "KINDS", "POISON_PREFIX", "Injector", "PlannedFault", "plan"]

KINDS = (
    "capture_kill",
    "sink_worker_kill",
    "graceful_restart",
    "source_restart",
    "dest_stop",
    "broker_cut",
    "emulator_503",
    "token_expiry",
    "request_limit",
    "poison",
    "add_column",
)
EMBEDDED_ONLY = frozenset({"source_restart", "dest_stop", "broker_cut"})
POISON_PREFIX = b"soak-poison:"
"""Poison values start with this and are not JSON: every sink reading them must dead-letter them."""
_GRACEFUL_ORDER = ("capture", "sink-postgres", "sink-salesforce")
_ALTER_TABLES = (
    "soak.typed",
    "inventory.orders",
    "soak.events_part",
    "public.employees",
    "inventory.customers",
)


@dataclass(frozen=True)
class PlannedFault:
    t_s: float
    kind: str


def plan(kinds: list[str], repeat: int, duration_s: float, seed: int) -> list[PlannedFault]:
    """``repeat`` of each kind between 8% and 85% of ``duration_s``, shuffled by ``seed``."""
    rng = random.Random(f"faults:{seed}")
    order = [kind for kind in kinds for _ in range(repeat)]
    rng.shuffle(order)
    if not order:
        return []
    start, end = 0.08 * duration_s, 0.85 * duration_s
    step = (end - start) / len(order)
    return [
        PlannedFault(round(start + i * step + rng.uniform(0, 0.3) * step, 1), kind)
        for i, kind in enumerate(order)
    ]


@dataclass
class PoisonSent:
    number: int
    topic: str
    sinks: tuple[str, ...]


@dataclass
class Injector:
    supervisor: Supervisor
    endpoints: Endpoints
    stack: EmbeddedStack | None
    emulator: EmulatorServer
    seed: int
    stopping: threading.Event
    storm_s: float = 10.0
    dest_down_s: float = 30.0
    broker_cut_s: float = 5.0
    poison: list[PoisonSent] = field(default_factory=list)
    added_columns: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"inject:{self.seed}")

    def inject(self, kind: str) -> str:
        number = self.counts.get(kind, 0)
        self.counts[kind] = number + 1
        detail: str = getattr(self, f"_{kind}")(number)
        return detail

    # ------------------------------------------------------------------ processes

    def _restart_after(
        self, name: str, sig: signal.Signals, timeout_s: float
    ) -> tuple[int | None, int | None]:
        self.supervisor.hold(name)
        try:
            pid = self.supervisor.signal(name, sig)
            code = self.supervisor.wait_exit(name, timeout_s)
            self.supervisor.start(name)
        finally:
            self.supervisor.release(name)
        return pid, code

    def _capture_kill(self, number: int) -> str:
        pid, code = self._restart_after("capture", signal.SIGKILL, 30)
        return f"SIGKILL capture (pid {pid}, exit {code}); restarted"

    def _sink_worker_kill(self, number: int) -> str:
        workers = self.supervisor.worker_pids()
        if not workers:
            return "no sink worker running"
        pid = self.rng.choice(workers)
        send_signal(pid, signal.SIGKILL)
        return f"SIGKILL sink worker pid {pid} of {workers}; its parent restarts it"

    def _graceful_restart(self, number: int) -> str:
        name = _GRACEFUL_ORDER[number % len(_GRACEFUL_ORDER)]
        began = time.monotonic()
        pid, code = self._restart_after(name, signal.SIGTERM, 90)
        outcome = "clean" if code == 0 else f"NOT clean (exit {code})"
        self.supervisor.graceful_exits.append((name, code))
        return f"SIGTERM {name} (pid {pid}): stopped {outcome} in {time.monotonic() - began:.1f}s; restarted"

    # ------------------------------------------------------------------ services

    def _source_restart(self, number: int) -> str:
        assert self.stack is not None
        began = time.monotonic()
        self.stack.source.restart()
        slot = "-"
        if self.supervisor.mode == "logical":
            with psycopg.connect(self.endpoints.source_dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", ("walbridge_soak",)
                ).fetchone()
            slot = "slot survived" if row and row[0] else "SLOT LOST"
        return f"source PostgreSQL restarted in {time.monotonic() - began:.1f}s ({slot})"

    def _dest_stop(self, number: int) -> str:
        assert self.stack is not None
        self.stack.dest.stop("fast")
        self.stopping.wait(self.dest_down_s)
        self.stack.dest.start()
        return f"destination PostgreSQL stopped for {self.dest_down_s:.0f}s"

    def _broker_cut(self, number: int) -> str:
        assert self.stack is not None
        self.stack.proxy.cut()
        self.stopping.wait(self.broker_cut_s)
        self.stack.proxy.restore()
        return f"every broker connection cut, new ones refused for {self.broker_cut_s:.0f}s"

    # ------------------------------------------------------------------ emulator

    def _emulator_state(self) -> Any:
        return self.emulator.state

    def _emulator_503(self, number: int) -> str:
        faults = self._emulator_state().faults
        faults.unavailable_rate = 1.0
        self.stopping.wait(self.storm_s)
        faults.unavailable_rate = 0.0
        return f"every Salesforce call answered 503 for {self.storm_s:.0f}s"

    def _request_limit(self, number: int) -> str:
        faults = self._emulator_state().faults
        faults.request_limit_rate = 1.0
        self.stopping.wait(self.storm_s)
        faults.request_limit_rate = 0.0
        return f"every Salesforce call answered 403 REQUEST_LIMIT_EXCEEDED for {self.storm_s:.0f}s"

    def _token_expiry(self, number: int) -> str:
        self._emulator_state().auth.expire_all()
        return "every Salesforce session expired"

    # ------------------------------------------------------------------ data

    def _poison(self, number: int) -> str:
        tables = table_names()
        table = tables[number % len(tables)] if number else SALESFORCE_TABLE
        topic = topic_of(table)
        producer = Producer({"bootstrap.servers": self.endpoints.bootstrap, **self.endpoints.kafka_options})
        ident = len(self.poison) + 1
        producer.produce(topic, key=b'{"id": -%d}' % ident, value=POISON_PREFIX + b"%d {not json" % ident)
        left = producer.flush(30)
        if left:
            return f"poison #{ident} NOT delivered to {topic}"
        sinks = ("replica", "salesforce") if table == SALESFORCE_TABLE else ("replica",)
        self.poison.append(PoisonSent(ident, topic, sinks))
        return f"poison message #{ident} written into {topic}"

    def _add_column(self, number: int) -> str:
        table = _ALTER_TABLES[number % len(_ALTER_TABLES)]
        column = f"soak_extra_{number + 1}"
        statement = f"ALTER TABLE {table} ADD COLUMN {column} text DEFAULT 'added-{number + 1}'"
        # The destination first: the sink re-reads a table whose events carry a column it does not know.
        for dsn in (self.endpoints.dest_dsn, self.endpoints.source_dsn):
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(statement)
        self.added_columns.append(f"{table}.{column}")
        return f"{statement} (destination, then source)"
