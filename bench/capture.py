"""Capture benchmark (issue 2): walbridge (including Kafka delivery) against real Debezium, same workloads.

Run: ``python bench/capture.py`` (full sizes: 200,000-row backlog, 500,000-row snapshot; ~5 min) or
``python bench/capture.py --rows 20000 --snapshot-rows 50000`` for a quick run. Starts its own
PostgreSQL and Kafka-protocol broker (``walbridge.dev.devstack``) unless ``--pg-dsn``/``--bootstrap`` are
given.
``--json PATH`` also writes the figures (per tool, and the run's sizes) for ``bench/report.py``.

Workloads, each measured for both tools in a fresh subprocess (so peak RSS is the tool's own):
1. backlog: ``--rows`` inserts in transactions of 1,000 rows, then as many updates (REPLICA IDENTITY
   FULL), written while the tool is stopped (it ran once before, so its slot and offsets exist);
   events/s from the tool's start until its last event is handled (Debezium: a handler that only
   counts, no Kafka) or acknowledged by Kafka (walbridge). Also the raw ``pg_recvlogical`` rate.
2. live: the same number of inserts while the tool runs: last commit → last ack, and p50/p99 of
   per-event commit → ack latency; and the same inserts read by ``pg_recvlogical`` alone
   (``test_decoding``, no processing): last commit → last message, the floor logical decoding sets.
3. snapshot: ``--snapshot-rows`` rows, ``snapshot.mode=initial``: rows/s from the tool's start.
4. peak RSS (``VmHWM``) of each tool's process, maximum over its workloads.
5. process CPU (all threads, user + system) per backlog event and per snapshot row: steadier than the
   rates on a shared, loaded machine, so compare it when measuring a change.
6. incremental: the snapshot table read by an incremental snapshot (watermark chunks beside the
   stream; walbridge ``source.snapshot: incremental``, Debezium an ``execute-snapshot`` signal after it
   streams): rows/s from the start (Debezium: from the signal), beside the blocking snapshot. Then
   walbridge again with ``--live-rate`` (default 500/s) single-row inserts into another table while the
   incremental snapshot runs: p50/p99 commit → record visible to a Kafka consumer (an upper bound of
   commit → ack).

``--workloads backlog,snapshot,incremental`` runs a subset; ``--producer-option KEY=VALUE``
(repeatable) passes a librdkafka property to walbridge's producer, for tuning experiments.

Internals: the parent runs ``python bench/capture.py --worker JSON`` per measurement; a worker prints
``{"progress": n}`` lines, ``READY`` once streaming (live), and a final ``{"result": ...}`` line with
its (time, count) samples.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

TXN_ROWS = 1_000
TABLE_DDL = """
CREATE TABLE IF NOT EXISTS public.{name} (
    id bigint PRIMARY KEY,
    customer_id integer NOT NULL,
    amount numeric(10, 2) NOT NULL,
    status varchar(20) NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.{name} REPLICA IDENTITY FULL;
"""
INSERT_SQL = (
    "INSERT INTO public.{name} (id, customer_id, amount, status, note) "
    "SELECT g, g %% 997, (g %% 100000) / 100.0, 'pending', 'order note number ' || g "
    "FROM generate_series(%s::bigint, %s::bigint) g"
)
UPDATE_SQL = "UPDATE public.{name} SET status = 'shipped', amount = amount + 1 WHERE id BETWEEN %s AND %s"
DEBEZIUM_REFERENCE = {"backlog": 39_000.0, "snapshot": 39_000.0}
SIGNAL_TABLE = "bench_signal"

console = Console(stderr=True)


# --------------------------------------------------------------------------- worker side


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_s() -> float:
    """CPU seconds of this process, every thread (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(doc: Any) -> None:
    sys.stdout.write((doc if isinstance(doc, str) else json.dumps(doc)) + "\n")
    sys.stdout.flush()


class _Samples:
    """(wall time, events done) each time the count moves; stops the run at ``expected``."""

    def __init__(self, expected: int, done: threading.Event) -> None:
        self.expected = expected
        self.done = done
        self.points: list[tuple[float, int]] = []
        self.offset = 0

    def record(self, count: int) -> None:
        count -= self.offset
        if count > 0 and (not self.points or count != self.points[-1][1]):
            self.points.append((time.time(), count))
            if count >= self.expected > 0:
                self.done.set()

    def reset(self, count: int) -> None:
        self.offset, self.points = count, []


def _reporter(samples: _Samples, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if samples.points:
            _emit({"progress": samples.points[-1][1]})


def _walbridge_worker(job: dict[str, Any], samples: _Samples, done: threading.Event) -> float:
    from walbridge.capture.logical import LogicalCapture
    from walbridge.capture.publisher import EventPublisher
    from walbridge.config import load_settings

    incremental = {"snapshot": "incremental", "signal_table": f"public.{SIGNAL_TABLE}"}
    settings = load_settings(
        source={"dsn": job["dsn"], "tables": job.get("tables") or [f"public.{job['table']}"],
                "slot": job["slot"], "publication": job["slot"],
                "snapshot": "initial" if job["snapshot"] else "never",
                **(incremental if job["snapshot"] == "incremental" else {})},
        events={"topic_prefix": job["prefix"]},
        kafka={"bootstrap_servers": job["bootstrap"], "partitions": 3, "options": job["producer_options"]},
        metrics={"enabled": False},
        state_dir=job["state_dir"],
    )  # fmt: skip

    class CountingPublisher(EventPublisher[int]):
        def poll(self, timeout: float = 0.0) -> int | None:
            confirmed = super().poll(timeout)
            samples.record(self.published - len(self.producer))
            return confirmed

    capture = LogicalCapture(settings, publisher_factory=lambda: CountingPublisher(settings))
    started = time.time()
    threading.Thread(target=_announce_ready, args=(capture.ready.wait, job, done), daemon=True).start()
    if job["kind"] == "incremental_live":
        threading.Thread(target=_until_incremental_done, args=(capture, done), daemon=True).start()
    capture.run(done)
    return started


def _announce_ready(wait: Callable[[], Any], job: dict[str, Any], done: threading.Event) -> None:
    wait()
    if job["kind"] == "prime":
        done.set()
    elif job["kind"] in ("live", "incremental_live"):
        _emit("READY")


def _until_incremental_done(capture: Any, done: threading.Event) -> None:
    """The live run ends once the incremental snapshot is read and acknowledged: the position received
    when its last chunk was read is confirmed (live writes go on meanwhile, so "confirmed everything
    received" may never hold)."""
    target = None
    while not done.wait(0.2):
        inc = capture.incremental
        if target is None and inc is not None and inc.progress.chunks and not inc.active:
            target = capture.received
        if target is not None and capture.confirmed >= target:
            done.set()


def _debezium_worker(job: dict[str, Any], samples: _Samples, done: threading.Event) -> float:
    from walbridge.dev.debezium import EmbeddedDebezium, postgres_properties, start_jvm

    start_jvm()
    props = postgres_properties(
        job["dsn"], name=job["prefix"], slot=job["slot"], tables=[f"public.{job['table']}"],
        offsets_file=job["offsets"], snapshot_mode="initial" if job["snapshot"] is True else "no_data",
        decimal_handling_mode="string",
    )  # fmt: skip
    if job["snapshot"] == "incremental":
        props.update({"signal.data.collection": f"public.{SIGNAL_TABLE}", "signal.enabled.channels": "source",
                      "publication.autocreate.mode": "disabled"})  # fmt: skip
    counter = [0]

    def count(records: Any) -> None:
        counter[0] += len(records)
        samples.record(counter[0])

    started = time.time()
    engine = EmbeddedDebezium(props, count).start()
    if job["kind"] in ("prime", "live", "incremental"):
        _await_first_event(job, counter, engine)
        if job["kind"] == "prime":
            done.set()
        else:
            samples.reset(counter[0])
            _emit("READY")
        if job["kind"] == "incremental":
            started = time.time()
            _send_execute_snapshot(job)
    while not done.wait(0.05):
        if engine.error is not None:
            raise engine.error
    engine.stop()
    return started


def _send_execute_snapshot(job: dict[str, Any]) -> None:
    from walbridge.capture.signals import EXECUTE, send_signal

    with psycopg.connect(job["dsn"], autocommit=True) as conn:
        send_signal(conn, f"public.{SIGNAL_TABLE}", EXECUTE, {"data-collections": [f"public.{job['table']}"]})


def _await_first_event(job: dict[str, Any], counter: list[int], engine: Any) -> None:
    """Debezium has no 'streaming' signal: write marker rows (negative ids) until one arrives."""
    marker = -int(time.time() * 1000)
    with psycopg.connect(job["dsn"], autocommit=True) as conn:
        while counter[0] == 0:
            if engine.error is not None:
                raise engine.error
            conn.execute(INSERT_SQL.format(name=job["table"]), (marker, marker))  # type: ignore[arg-type]
            marker -= 1
            deadline = time.monotonic() + 1.0
            while counter[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
    time.sleep(0.5)  # a marker still in flight arrives before the count is reset


def run_worker(job: dict[str, Any]) -> None:
    done = threading.Event()
    samples = _Samples(job["expected"], done)
    stop_reporting = threading.Event()
    threading.Thread(target=_reporter, args=(samples, stop_reporting), daemon=True).start()
    worker = _walbridge_worker if job["tool"] == "walbridge" else _debezium_worker
    if job["tool"] == "walbridge":
        import walbridge.capture.logical  # noqa: F401  (imports are not part of the measured CPU)
    cpu_before = _cpu_s()
    profile_dir = os.environ.get("WALBRIDGE_BENCH_PROFILE")
    if profile_dir and job["tool"] == "walbridge" and job["kind"] != "prime":
        import cProfile

        with cProfile.Profile() as profiler:
            started = worker(job, samples, done)
        profiler.dump_stats(Path(profile_dir) / f"{job['kind']}.prof")
    else:
        started = worker(job, samples, done)
    stop_reporting.set()
    result = {"started": started, "samples": samples.points, "peak_rss_mb": _peak_rss_mb()}
    _emit({"result": {**result, "cpu_s": _cpu_s() - cpu_before}})
    os._exit(0)  # the JVM's non-daemon threads would otherwise hold the process


# --------------------------------------------------------------------------- parent side


class Bench:
    def __init__(self, args: argparse.Namespace, dsn: str, bootstrap: str, work: Path) -> None:
        self.args = args
        self.dsn = dsn
        self.bootstrap = bootstrap
        self.work = work
        self.prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.results: dict[str, dict[str, float]] = {"walbridge": {}, "debezium": {}}
        self.tools = ["walbridge"] if args.skip_debezium else ["walbridge", "debezium"]
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"), TimeElapsedColumn(), console=console,
        )  # fmt: skip

    def sql(self, statement: str) -> Any:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return cur.fetchall() if statement.startswith("SELECT") else None

    def job(
        self, tool: str, kind: str, table: str, expected: int, snapshot: bool | str = False
    ) -> dict[str, Any]:
        slot = f"{tool[:3]}_{table}"
        return {
            "tool": tool, "kind": kind, "table": table, "expected": expected, "snapshot": snapshot,
            "dsn": self.dsn, "bootstrap": self.bootstrap, "prefix": f"{self.prefix}{tool[:3]}", "slot": slot,
            "offsets": str(self.work / f"{slot}.offsets"), "state_dir": str(self.work / f"state-{slot}"),
            "producer_options": dict(opt.split("=", 1) for opt in self.args.producer_option),
        }  # fmt: skip

    @contextmanager
    def worker(self, job: dict[str, Any], label: str) -> Iterator[subprocess.Popen[str]]:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE, text=True,
            stderr=subprocess.DEVNULL if not self.args.verbose else None,
        )  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def read_until(self, proc: subprocess.Popen[str], task: Any, want: str = "result") -> Any:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("READY") and want == "READY":
                return None
            doc = json.loads(line) if line.startswith("{") else {}
            if "progress" in doc:
                self.progress.update(task, completed=doc["progress"])
            elif "result" in doc:
                samples = doc["result"]["samples"]
                self.progress.update(task, completed=samples[-1][1] if samples else 0)
                return doc["result"]
        raise RuntimeError(f"worker {proc.args[-1][:80]} exited with {proc.wait()} (rerun with --verbose)")

    def measure(self, job: dict[str, Any], label: str) -> dict[str, Any]:
        task = self.progress.add_task(label, total=max(job["expected"], 1))
        with self.worker(job, label) as proc:
            result: dict[str, Any] = self.read_until(proc, task)
        self.note_rss(job["tool"], result)
        return result

    def note_rss(self, tool: str, result: dict[str, Any]) -> None:
        self.results[tool]["rss"] = max(self.results[tool].get("rss", 0.0), result["peak_rss_mb"])

    # ------------------------------------------------------------------ workloads

    def write(
        self, sql: str, table: str, first: int, count: int, label: str, rate: int = 0
    ) -> list[tuple[float, int]]:
        """Transactions of TXN_ROWS rows (``rate`` rows/s at most); returns (commit time, rows so far)."""
        task = self.progress.add_task(label, total=count)
        commits = []
        began = time.monotonic()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for start in range(first, first + count, TXN_ROWS):
                if rate:
                    time.sleep(max(0.0, began + (start - first) / rate - time.monotonic()))
                end = min(start + TXN_ROWS, first + count) - 1
                conn.execute(sql.format(name=table), (start, end))  # type: ignore[arg-type]
                commits.append((time.time(), end - first + 1))
                self.progress.update(task, completed=end - first + 1)
        return commits

    def backlog(self) -> None:
        rows, table = self.args.rows, "bench_stream"
        self.sql(TABLE_DDL.format(name=table))
        self.sql(f"CREATE PUBLICATION bench_recv FOR TABLE public.{table}")
        # Debezium first: its marker rows must not land in walbridge's slot.
        for tool in reversed(self.tools):
            self.measure(self.job(tool, "prime", table, 0), f"{tool}: first start (slot, offsets)")
        self.sql("SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        self.write(INSERT_SQL, table, 1, rows, "backlog: inserts")
        self.write(UPDATE_SQL, table, 1, rows, "backlog: updates")
        end_lsn = self.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        for tool in self.tools:
            result = self.measure(self.job(tool, "backlog", table, 2 * rows), f"{tool}: backlog")
            last, events = result["samples"][-1]
            self.results[tool]["backlog"] = events / (last - result["started"])
            self.results[tool]["backlog_cpu"] = result["cpu_s"] / events * 1e6
        self.results["pg_recvlogical"] = {"backlog": 2 * rows / self.recvlogical(end_lsn)}

    def recvlogical(self, end_lsn: str) -> float:
        binary = shutil.which("pg_recvlogical")
        if binary is None:
            console.print("[yellow]pg_recvlogical not found: no raw ceiling")
            return float("inf")
        started = time.monotonic()
        subprocess.run(
            [binary, "-d", self.dsn, "--slot", "bench_recv", "--start", "--endpos", end_lsn, "--no-loop",
             "-o", "proto_version=1", "-o", "publication_names=bench_recv", "-f", os.devnull],
            check=True, timeout=600,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        self.sql("SELECT pg_drop_replication_slot('bench_recv')")
        return elapsed

    def live(self) -> None:
        """Each tool on its own table and fresh slot: no backlog of the other tool's inserts."""
        rows = self.args.rows
        for tool in self.tools:
            table = f"bench_live_{tool[:3]}"
            self.sql(TABLE_DDL.format(name=table))
            task = self.progress.add_task(f"{tool}: live", total=rows)
            with self.worker(self.job(tool, "live", table, rows), "live") as proc:
                self.read_until(proc, task, want="READY")
                commits = self.write(INSERT_SQL, table, 1, rows, f"{tool}: live inserts", self.args.live_rate)
                result = self.read_until(proc, task)
            self.note_rss(tool, result)
            self.results[tool].update(_latencies(commits, result["samples"]))
        self.live_floor()

    def live_floor(self) -> None:
        """The same live inserts read by ``pg_recvlogical`` alone (no processing, no Kafka): the
        last-commit → last-message delay that logical decoding itself imposes on this machine."""
        binary = shutil.which("pg_recvlogical")
        if binary is None:
            return
        rows, table = self.args.rows, "bench_live_raw"
        self.sql(TABLE_DDL.format(name=table))
        self.sql("SELECT pg_create_logical_replication_slot('bench_raw', 'test_decoding')")
        proc = subprocess.Popen(
            [binary, "-d", self.dsn, "--slot", "bench_raw", "--start", "--no-loop", "-f", "-"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        stream = proc.stdout
        commit_times: list[float] = []
        transactions = -(-rows // TXN_ROWS)

        def read() -> None:
            for line in stream:
                if line.startswith("COMMIT"):
                    commit_times.append(time.time())
                    if len(commit_times) >= transactions:
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            time.sleep(1.0)  # streaming has started
            commits = self.write(
                INSERT_SQL, table, 1, rows, "pg_recvlogical: live inserts", self.args.live_rate
            )
            reader.join(300)
        finally:
            proc.terminate()
            proc.wait(10)
            self.sql("SELECT pg_drop_replication_slot('bench_raw')")
        if len(commit_times) >= transactions:
            self.results.setdefault("pg_recvlogical", {})["live_last"] = commit_times[-1] - commits[-1][0]

    def snapshot(self) -> None:
        rows, table = self.args.snapshot_rows, "bench_snap"
        self.sql(TABLE_DDL.format(name=table))
        self.write(INSERT_SQL, table, 1, rows, "snapshot table: inserts")
        self.sql(f"VACUUM ANALYZE public.{table}")
        for tool in self.tools:
            result = self.measure(self.job(tool, "snapshot", table, rows, snapshot=True), f"{tool}: snapshot")
            last, events = result["samples"][-1]
            self.results[tool]["snapshot"] = events / (last - result["started"])
            self.results[tool]["snapshot_cpu"] = result["cpu_s"] / events * 1e6

    def incremental(self) -> None:
        """Incremental snapshot of the snapshot table (both tools), then walbridge's under live inserts."""
        rows, table = self.args.snapshot_rows, "bench_snap"
        if not self.sql(f"SELECT 1 FROM pg_class WHERE relname = '{table}'"):
            self.sql(TABLE_DDL.format(name=table))
            self.write(INSERT_SQL, table, 1, rows, "snapshot table: inserts")
            self.sql(f"VACUUM ANALYZE public.{table}")
        self.sql(f"CREATE TABLE IF NOT EXISTS public.{SIGNAL_TABLE} "
                 "(id varchar(42) PRIMARY KEY, type varchar(32) NOT NULL, data text)")  # fmt: skip
        for tool in self.tools:
            job = self._own_slot(self.job(tool, "incremental", table, rows, snapshot="incremental"), "inc")
            if tool == "debezium":
                self.sql(f"CREATE PUBLICATION {job['slot']} FOR TABLE public.{table}, public.{SIGNAL_TABLE}")
            result = self.measure(job, f"{tool}: incremental snapshot")
            last, events = result["samples"][-1]
            self.results[tool]["incremental"] = events / (last - result["started"])
        self.incremental_live(table)

    def _own_slot(self, job: dict[str, Any], name: str) -> dict[str, Any]:
        """The job with a slot (and offsets, state) of its own, beside the table's other runs."""
        slot = f"{job['tool'][:3]}_{name}"
        return {**job, "slot": slot, "offsets": str(self.work / f"{slot}.offsets"),
                "state_dir": str(self.work / f"state-{slot}")}  # fmt: skip

    def incremental_live(self, table: str) -> None:
        """Single-row inserts at ``--live-rate`` into another table during walbridge's incremental
        snapshot; latency = commit → the record read by a consumer of its topic."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        live, rate = "bench_inc_live", self.args.live_rate or 500
        self.sql(TABLE_DDL.format(name=live))
        job = self.job("walbridge", "incremental_live", table, 0, snapshot="incremental")
        job = self._own_slot(job, "live")
        job["tables"] = [f"public.{table}", f"public.{live}"]
        topic = f"{job['prefix']}.public.{live}"
        commits: dict[int, float] = {}
        seen: dict[int, float] = {}
        stop = threading.Event()

        def consume() -> None:
            consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"l{uuid.uuid4().hex[:6]}",
                                 "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})  # fmt: skip
            # Assigned, not subscribed: a group join would add seconds to the first latencies.
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
            while not stop.is_set() or len(seen) < len(commits):
                for message in consumer.consume(500, timeout=0.1):
                    if message.error() is None and message.value():
                        seen.setdefault(json.loads(message.key())["id"], time.time())
                if stop.is_set() and time.time() > stop_at[0] + 30:
                    break
            consumer.close()

        stop_at = [0.0]
        reader = threading.Thread(target=consume, daemon=True)
        task = self.progress.add_task("walbridge: incremental + live", total=self.args.snapshot_rows)
        with self.worker(job, "incremental live") as proc:
            self.read_until(proc, task, want="READY")
            reader.start()
            writer_done = threading.Event()

            def write() -> None:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    n = 0
                    began = time.monotonic()
                    while not writer_done.is_set():
                        n += 1
                        time.sleep(max(0.0, began + n / rate - time.monotonic()))
                        conn.execute(INSERT_SQL.format(name=live), (n, n))  # type: ignore[arg-type]
                        commits[n] = time.time()

            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            result = self.read_until(proc, task)
            writer_done.set()
            writer.join(10)
        stop_at[0] = time.time()
        stop.set()
        reader.join(60)
        latencies = sorted(seen[k] - commits[k] for k in commits if k in seen)
        if len(latencies) >= 100:
            quantiles = statistics.quantiles(latencies, n=100)
            self.results["walbridge"].update(inc_live_p50=quantiles[49], inc_live_p99=quantiles[98])
        self.note_rss("walbridge", result)

    def drop_slots(self) -> None:
        self.sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")

    def run(self) -> None:
        with self.progress:
            try:
                for workload in self.args.workloads.split(","):
                    getattr(self, workload)()
            finally:
                self.drop_slots()
        print_table(self.results, self.args)
        write_json(self.args, self.results, rows=self.args.rows, snapshot_rows=self.args.snapshot_rows,
                   live_rate=self.args.live_rate, workloads=self.args.workloads.split(","))  # fmt: skip


def write_json(args: argparse.Namespace, results: dict[str, dict[str, float]], **sizes: Any) -> None:
    """``--json PATH``: the figures of the run, for ``bench/report.py``."""
    if args.json:
        doc = {**sizes, "results": results}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def _latencies(commits: list[tuple[float, int]], samples: list[list[float]]) -> dict[str, float]:
    """Per-event commit → ack latency: event k is acked at the first sample whose count reaches k."""
    times = [t for t, _ in samples]
    counts = [int(c) for _, c in samples]
    latencies: list[float] = []
    previous = 0
    for commit_time, upto in commits:
        for k in range(previous + 1, upto + 1, 10):  # every 10th event: plenty for percentiles
            index = bisect.bisect_left(counts, k)
            latencies.append(times[min(index, len(times) - 1)] - commit_time)
        previous = upto
    quantiles = statistics.quantiles(latencies, n=100)
    return {"live_last": times[-1] - commits[-1][0], "p50": quantiles[49], "p99": quantiles[98]}


def print_table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    wb, dbz, raw = results["walbridge"], results["debezium"], results.get("pg_recvlogical", {})
    pace = f" at {args.live_rate:,}/s" if args.live_rate else " unpaced"
    title = (
        f"capture: backlog {args.rows:,} inserts + {args.rows:,} updates, live {args.rows:,} inserts{pace}"
    )
    from walbridge import accel

    hot_path = f"walbridge hot path: {accel.describe()}"
    table = Table(title=f"{title}, snapshot {args.snapshot_rows:,} rows; {hot_path}")
    columns = (
        "figure",
        "walbridge (incl. Kafka)",
        "Debezium (count only)",
        "ratio",
        "raw pg_recvlogical",
        "target",
    )
    for column in columns:
        table.add_column(column, justify="right" if column != "figure" else "left")
    rows: list[tuple[str, str, str, bool, str]] = [
        ("backlog events/s (from start)", "backlog", "{:,.0f}", True, "≥1.5x"),
        ("live: last commit → last ack (s)", "live_last", "{:.3f}", False, "<0.250"),
        ("live: p50 commit → ack (s)", "p50", "{:.3f}", False, ""),
        ("live: p99 commit → ack (s)", "p99", "{:.3f}", False, ""),
        ("snapshot rows/s (from start)", "snapshot", "{:,.0f}", True, "≥1.5x"),
        ("incremental snapshot rows/s", "incremental", "{:,.0f}", True, "≥0.8x blocking"),
        ("incremental: live p50 commit → consumer (s)", "inc_live_p50", "{:.3f}", False, ""),
        ("incremental: live p99 commit → consumer (s)", "inc_live_p99", "{:.3f}", False, "<1"),
        ("peak RSS (MB)", "rss", "{:,.0f}", False, "<150"),
        ("backlog: process CPU µs/event", "backlog_cpu", "{:.1f}", False, ""),
        ("snapshot: process CPU µs/row", "snapshot_cpu", "{:.1f}", False, ""),
    ]
    for label, key, fmt, higher_is_better, target in rows:
        mine, theirs = wb.get(key), dbz.get(key)
        ratio = f"{mine / theirs:.2f}x" if mine and theirs else "-"
        if not higher_is_better and mine and theirs:
            ratio = f"{theirs / mine:.2f}x better" if mine < theirs else f"{mine / theirs:.2f}x worse"
        floor = raw.get(key)
        table.add_row(label, fmt.format(mine) if mine is not None else "-",
                      fmt.format(theirs) if theirs is not None else "-", ratio,
                      fmt.format(floor) if floor is not None else "", target)  # fmt: skip
    Console(width=120).print(table)


@contextmanager
def services(args: argparse.Namespace, work: Path) -> Iterator[tuple[str, str]]:
    from walbridge.dev.devstack import KafkaBroker, PostgresServer, create_database

    pg = broker = None
    try:
        if args.pg_dsn:
            admin = args.pg_dsn
        else:
            pg = PostgresServer(work / "pg", fsync=False, settings={"max_wal_size": "4GB"})
            pg.start()
            admin = pg.dsn()
        if args.bootstrap:
            bootstrap = args.bootstrap
        else:
            broker = KafkaBroker(work / "kafka")
            broker.start()
            bootstrap = broker.bootstrap
        name = f"bench_{uuid.uuid4().hex[:8]}"
        create_database(admin, name)
        yield make_conninfo(admin, dbname=name), bootstrap
    finally:
        if broker is not None:
            broker.stop()
        if pg is not None:
            pg.stop("immediate")


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every capture benchmark shares: services to reuse, logs, producer tuning, worker mode."""
    parser.add_argument("--pg-dsn", help="superuser DSN of a running server (wal_level=logical)")
    parser.add_argument("--bootstrap", help="a running Kafka broker")
    parser.add_argument("--verbose", action="store_true", help="show the workers' logs")
    parser.add_argument(
        "--producer-option", action="append", default=[], metavar="KEY=VALUE",
        help="librdkafka property for walbridge's producer (repeatable), e.g. compression.type=none",
    )  # fmt: skip
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH (for bench/report.py)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="backlog inserts and updates; live inserts")
    parser.add_argument(
        "--live-rate", type=int, default=0, help="live inserts per second (0: as fast as possible)"
    )
    parser.add_argument("--snapshot-rows", type=int, default=500_000)
    parser.add_argument("--skip-debezium", action="store_true")
    parser.add_argument(
        "--workloads",
        default="backlog,live,snapshot,incremental",
        help="comma-separated subset of backlog,live,snapshot,incremental",
    )
    add_service_arguments(parser)
    args = parser.parse_args()
    unknown = set(args.workloads.split(",")) - {"backlog", "live", "snapshot", "incremental"}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    work = Path(tempfile.mkdtemp(prefix="walbridge-bench-"))
    try:
        with services(args, work) as (dsn, bootstrap):
            Bench(args, dsn, bootstrap, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
