"""Trigger-mode capture benchmark (issue 4), beside logical mode in the same run.

Run: ``python bench/capture_trigger.py`` (200,000-row workloads; ~3 min) or ``--rows 20000`` for a
quick run. Starts its own PostgreSQL and Kafka-protocol broker unless ``--pg-dsn``/``--bootstrap``.

Figures:
1. live: ``--rows`` inserts in transactions of 1,000 rows while the capture runs (same table and
   workload as ``bench/capture.py``); events/s from the first commit to the last Kafka ack, and p50/p99
   of per-event commit → ack latency. Trigger mode with ``poll_interval_ms`` = ``--poll-ms``; logical
   mode through ``bench/capture.py``'s own worker.
2. backlog (trigger mode): ``--rows`` inserts logged while the capture is stopped, then events/s from
   its start until the last ack.
3. write overhead of the triggers on the source: pgbench with single-row INSERT transactions
   (``--clients`` clients, ``--seconds`` each) and the bulk insert of ``--rows`` rows, on the same
   table without and with the triggers; reported as "with / without" ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

import capture as logical_bench  # bench/capture.py: workload, services, latency maths, worker protocol

console = Console(stderr=True)
PGBENCH_INSERT = (
    "\\set id random(1, 2000000000)\n"
    "INSERT INTO public.{name} (id, customer_id, amount, status, note) "
    "VALUES (:id, :id % 997, 12.34, 'pending', 'order note') ON CONFLICT DO NOTHING;\n"
)


# --------------------------------------------------------------------------- worker side


def _trigger_worker(job: dict[str, Any], samples: Any, done: threading.Event) -> float:
    from walbridge.capture.publisher import EventPublisher
    from walbridge.capture.trigger import TriggerCapture, TriggerPosition
    from walbridge.config import load_settings

    settings = load_settings(
        source={"mode": "trigger", "dsn": job["dsn"], "tables": [f"public.{job['table']}"],
                "slot": job["slot"], "snapshot": "never", "poll_interval_ms": job["poll_ms"]},
        events={"topic_prefix": job["prefix"]},
        kafka={"bootstrap_servers": job["bootstrap"], "partitions": 3},
        metrics={"enabled": False},
    )  # fmt: skip

    class CountingPublisher(EventPublisher[TriggerPosition]):
        def poll(self, timeout: float = 0.0) -> TriggerPosition | None:
            confirmed = super().poll(timeout)
            samples.record(self.published - len(self.producer))
            return confirmed

    capture = TriggerCapture(settings, CountingPublisher(settings))
    started = time.time()
    threading.Thread(
        target=logical_bench._announce_ready, args=(capture.ready.wait, job, done), daemon=True
    ).start()
    capture.run(done)
    return started


def run_worker(job: dict[str, Any]) -> None:
    done = threading.Event()
    samples = logical_bench._Samples(job["expected"], done)
    stop_reporting = threading.Event()
    threading.Thread(target=logical_bench._reporter, args=(samples, stop_reporting), daemon=True).start()
    started = _trigger_worker(job, samples, done)
    stop_reporting.set()
    result = {"started": started, "samples": samples.points, "peak_rss_mb": logical_bench._peak_rss_mb()}
    logical_bench._emit({"result": result})
    os._exit(0)


# --------------------------------------------------------------------------- parent side


class TriggerBench(logical_bench.Bench):
    """Reuses bench/capture.py's process handling; adds trigger-mode workloads."""

    def __init__(self, args: argparse.Namespace, dsn: str, bootstrap: str, work: Path) -> None:
        args.skip_debezium = True
        super().__init__(args, dsn, bootstrap, work)
        self.results = {"trigger": {}, "logical": {}}

    def trigger_job(self, kind: str, table: str, expected: int) -> dict[str, Any]:
        return {
            "kind": kind, "table": table, "expected": expected, "dsn": self.dsn, "bootstrap": self.bootstrap,
            "prefix": f"{self.prefix}trg", "slot": f"trg_{table}", "poll_ms": self.args.poll_ms,
        }  # fmt: skip

    def spawn(self, job: dict[str, Any], script: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, script, "--worker", json.dumps(job)], stdout=subprocess.PIPE, text=True,
            stderr=None if self.args.verbose else subprocess.DEVNULL,
        )  # fmt: skip

    def install(self, table: str) -> None:
        """Fresh trigger capture of ``table`` alone: an empty change log, so workloads do not mix."""
        from walbridge.capture.trigger import install_trigger_capture, uninstall_trigger_capture
        from walbridge.config import load_settings

        settings = load_settings(source={"mode": "trigger", "dsn": self.dsn, "tables": [f"public.{table}"]})
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            uninstall_trigger_capture(conn, settings)
            install_trigger_capture(conn, settings)

    def live(self, mode: str, job: dict[str, Any], script: str) -> None:
        rows = self.args.rows
        task = self.progress.add_task(f"{mode}: live capture", total=rows)
        proc = self.spawn(job, script)
        try:
            self.read_until(proc, task, want="READY")
            commits = self.write(logical_bench.INSERT_SQL, job["table"], 1, rows, f"{mode}: live inserts")
            result = self.read_until(proc, task)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        figures = logical_bench._latencies(commits, result["samples"])
        figures["live_rate"] = rows / (result["samples"][-1][0] - commits[0][0] + _first_txn_s(commits))
        figures["rss"] = result["peak_rss_mb"]
        self.results[mode].update(figures)

    def trigger_live(self) -> None:
        table = "bench_trg_live"
        self.sql(logical_bench.TABLE_DDL.format(name=table))
        self.install(table)
        self.live("trigger", self.trigger_job("live", table, self.args.rows), __file__)

    def logical_live(self) -> None:
        table = "bench_log_live"
        self.sql(logical_bench.TABLE_DDL.format(name=table))
        self.live("logical", self.job("walbridge", "live", table, self.args.rows), logical_bench.__file__)

    def trigger_backlog(self) -> None:
        rows, table = self.args.rows, "bench_trg_backlog"
        self.sql(logical_bench.TABLE_DDL.format(name=table))
        self.install(table)
        self.write(logical_bench.INSERT_SQL, table, 1, rows, "trigger: backlog inserts")
        task = self.progress.add_task("trigger: backlog capture", total=rows)
        proc = self.spawn(self.trigger_job("backlog", table, rows), __file__)
        try:
            result = self.read_until(proc, task)
        finally:
            proc.wait()
        last, events = result["samples"][-1]
        self.results["trigger"]["backlog"] = events / (last - result["started"])

    def overhead(self) -> None:
        plain, logged = "bench_ovh_plain", "bench_ovh_trg"
        for table in (plain, logged):
            self.sql(logical_bench.TABLE_DDL.format(name=table))
        self.install(logged)
        figures = self.results["trigger"]
        figures["tps_plain"] = self.pgbench(plain)
        figures["tps_trigger"] = self.pgbench(logged)
        figures["bulk_plain"] = self.bulk(plain)
        figures["bulk_trigger"] = self.bulk(logged)

    def pgbench(self, table: str) -> float:
        from walbridge.dev.devstack import find_pg_binaries

        script = self.work / f"{table}.sql"
        script.write_text(PGBENCH_INSERT.format(name=table))
        task = self.progress.add_task(f"pgbench inserts: {table}", total=self.args.seconds)
        argv = [find_pg_binaries().program("pgbench"), "-n", "-f", str(script), "-c", str(self.args.clients),
                "-j", str(self.args.clients), "-T", str(self.args.seconds), self.dsn]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        began = time.monotonic()
        while proc.poll() is None:
            self.progress.update(task, completed=min(time.monotonic() - began, self.args.seconds))
            time.sleep(0.2)
        output = proc.stdout.read() if proc.stdout else ""
        match = re.search(r"tps = ([\d.]+)", output)
        if not match:
            raise RuntimeError(f"pgbench failed: {output[-500:]}")
        return float(match.group(1))

    def bulk(self, table: str) -> float:
        self.sql(f"TRUNCATE public.{table}")
        began = time.monotonic()
        self.write(logical_bench.INSERT_SQL, table, 1, self.args.rows, f"bulk inserts: {table}")
        return self.args.rows / (time.monotonic() - began)

    def run(self) -> None:
        with self.progress:
            try:
                self.overhead()
                self.trigger_backlog()
                self.trigger_live()
                if not self.args.skip_logical:
                    self.logical_live()
            finally:
                self.drop_slots()
        print_table(self.results, self.args)
        logical_bench.write_json(self.args, self.results, rows=self.args.rows, clients=self.args.clients,
                                 seconds=self.args.seconds, poll_ms=self.args.poll_ms)  # fmt: skip


def _first_txn_s(commits: list[tuple[float, int]]) -> float:
    """The first commit's own duration (rows ÷ rate of the run), so rates count from its start."""
    if len(commits) < 2:
        return 0.0
    return (commits[-1][0] - commits[0][0]) / (len(commits) - 1)


def print_table(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    trg, log = results["trigger"], results["logical"]
    table = Table(title=f"trigger vs logical capture: {args.rows:,} inserts (transactions of 1,000)")
    for column in ("figure", "trigger mode", "logical mode"):
        table.add_column(column, justify="right" if column != "figure" else "left")
    rows = [
        ("live events/s (first commit → last ack)", "live_rate", "{:,.0f}"),
        ("live p50 commit → ack (s)", "p50", "{:.3f}"),
        ("live p99 commit → ack (s)", "p99", "{:.3f}"),
        ("live last commit → last ack (s)", "live_last", "{:.3f}"),
        ("backlog events/s (from start)", "backlog", "{:,.0f}"),
        ("peak RSS (MB)", "rss", "{:,.0f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(side[key]) if key in side else "-" for side in (trg, log)]
        table.add_row(label, *cells)
    Console(width=120).print(table)
    overhead = Table(title="write overhead of the triggers on the source (with / without)")
    for column in ("workload", "without triggers", "with triggers", "ratio"):
        overhead.add_column(column, justify="right" if column != "workload" else "left")
    for label, plain, logged in (
        (f"pgbench single-row INSERT tx/s ({args.clients} clients)", "tps_plain", "tps_trigger"),
        ("bulk INSERT rows/s (1,000-row transactions)", "bulk_plain", "bulk_trigger"),
    ):
        if plain in trg and logged in trg:
            ratio = trg[logged] / trg[plain]
            overhead.add_row(label, f"{trg[plain]:,.0f}", f"{trg[logged]:,.0f}", f"{ratio:.2f}")
    Console(width=120).print(overhead)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="inserts per workload")
    parser.add_argument("--poll-ms", type=int, default=200, help="trigger mode's poll_interval_ms")
    parser.add_argument("--clients", type=int, default=2, help="pgbench clients for the overhead figure")
    parser.add_argument("--seconds", type=int, default=10, help="pgbench duration per table")
    parser.add_argument("--skip-logical", action="store_true")
    logical_bench.add_service_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    work = Path(tempfile.mkdtemp(prefix="walbridge-bench-trigger-"))
    try:
        with logical_bench.services(args, work) as (dsn, bootstrap):
            TriggerBench(args, dsn, bootstrap, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
