"""Benchmark: the PostgreSQL sink versus the seed's one-statement-one-commit consumer.

200,000 change events (70 % inserts, 25 % updates, 5 % deletes) are pre-loaded in Kafka; then
walbridge's sink applies them (consume, decode, apply, store offsets) until the destination
equals the expected state, once per apply method (``copy``: COPY of JSON lines into a stage +
INSERT … ON CONFLICT / DELETE … USING; ``executemany``: typed rows, executemany in pipeline
mode), each into its own table with its own consumer group; ``copy`` also with ``--workers`` sink
processes sharing the topic's partitions (``walbridge sink postgres --workers N``); and, in the same
run, the seed's approach (one statement and one commit per message, persistent connection) on the
same events. The ceiling, also in the same run: the database's own COPY + upsert of the same rows
(each batch collapsed to the last change per key and rendered as COPY text beforehand, untimed;
timed: COPY into a stage, INSERT … ON CONFLICT DO UPDATE, DELETE … USING, commit), i.e. what the
sink would reach if consuming, decoding and converting cost nothing.

    python bench/sink_postgres.py [--events N] [--method copy|executemany|both] [--batch-size N]
                                  [--workers 2] [--partitions 4] [--json PATH] [--profile PATH]

A one-process run also reports its process CPU per event (consume, decode, convert, librdkafka's
threads; not the server's): steadier than the rate on a loaded machine, so compare it when measuring a
change. ``--json PATH`` writes the figures for ``bench/report.py``; ``--profile PATH`` writes a cProfile of
the one-process ``copy`` run's sink thread (``python -m pstats PATH``).

Starts a throw-away PostgreSQL and Kafka-protocol broker (walbridge.dev.devstack) unless
``WALBRIDGE_BENCH_PG_DSN`` / ``WALBRIDGE_BENCH_KAFKA`` name running ones.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import random
import resource
import tempfile
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from walbridge.config import DlqSettings, KafkaSettings, MetricsSettings, PostgresSinkSettings, Settings
from walbridge.dev.devstack import KafkaBroker, PostgresServer
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source, decode_record
from walbridge.kafka import ensure_topics, make_admin, make_consumer, make_producer, produce_waiting
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.sinks.workers import run_workers

console = Console()
_EPOCH = date(1970, 1, 1)
DDL = """CREATE TABLE IF NOT EXISTS public.{name} (emp_id integer PRIMARY KEY, first_name varchar(100),
 last_name varchar(100), dob date, city varchar(100), salary integer)"""


def make_events(n: int, seed: int = 1) -> tuple[list[ChangeEvent], dict[int, int]]:
    rng = random.Random(seed)
    live: list[int] = []
    state: dict[int, int] = {}
    events = []
    src = Source(connector="postgresql", name="bench", db="src", schema="public", table="employees", ts_ms=1)
    next_id = 0
    for i in range(n):
        roll = rng.random()
        row = {"emp_id": 0, "first_name": "F", "last_name": "L", "dob": 7305, "city": "C", "salary": i}
        if roll < 0.70 or len(live) < 10:
            row["emp_id"] = next_id
            live.append(next_id)
            next_id += 1
            events.append(ChangeEvent("c", src, {"emp_id": row["emp_id"]}, None, row, 1))
            state[row["emp_id"]] = i
        elif roll < 0.95:
            row["emp_id"] = rng.choice(live)
            events.append(ChangeEvent("u", src, {"emp_id": row["emp_id"]}, None, row, 1))
            state[row["emp_id"]] = i
        else:
            idx = rng.randrange(len(live))
            live[idx], live[-1] = live[-1], live[idx]
            key = live.pop()
            events.append(ChangeEvent("d", src, {"emp_id": key}, {"emp_id": key}, None, 1))
            del state[key]
    return events, state


def preload(settings: Settings, events: list[ChangeEvent], prefix: str, partitions: int) -> tuple[str, int]:
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
    topic = encoder.topic("public", "employees")
    ensure_topics(make_admin(settings.kafka), [topic], partitions, 1)
    producer = make_producer(settings.kafka)
    count = 0
    for event in events:
        for rec in encoder.encode(event):
            produce_waiting(producer, rec.topic, key=rec.key, value=rec.value)
            count += 1
    producer.flush(60)
    return topic, count


def matches(dsn: str, table: str, state: dict[int, int]) -> bool:
    with psycopg.connect(dsn) as conn:
        count, total = conn.execute(f"SELECT count(*), coalesce(sum(salary), 0) FROM {table}").fetchone()  # type: ignore[misc]
    return count == len(state) and total == sum(state.values())


def run_walbridge(
    settings: Settings,
    sink_settings: PostgresSinkSettings,
    table: str,
    state: dict[int, int],
    progress: Progress,
    label: str,
    profile: str | None = None,
    cpu: dict[str, float] | None = None,
) -> float:
    """Seconds from the first applied batch to the expected state; ``cpu["s"]``: process CPU seconds of a
    one-process run, from its start to its stop."""
    stop = threading.Event()
    cpu_before = _cpu_s()
    if sink_settings.workers > 1:
        args = (settings, sink_settings, sink_settings.workers, stop)
        thread = threading.Thread(target=run_workers, args=args, daemon=True)
    else:
        runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)
        run = runner.run if not profile else _profiled(runner.run, profile)
        thread = threading.Thread(target=run, args=(stop,), daemon=True)
    task = progress.add_task(label, total=len(state))
    thread.start()
    count = f"SELECT count(*) FROM {table}"
    with psycopg.connect(sink_settings.dsn, autocommit=True) as conn:
        # The clock starts at the first applied batch: the group join is start-up, not throughput.
        while not (done := conn.execute(count).fetchone()[0]):  # type: ignore[index]
            time.sleep(0.02)
        started = time.monotonic()
        while not matches(sink_settings.dsn, table, state):
            progress.update(task, completed=done)
            time.sleep(0.1)
            done = conn.execute(count).fetchone()[0]  # type: ignore[index]
    elapsed = time.monotonic() - started
    progress.update(task, completed=len(state))
    stop.set()
    thread.join(60)
    if cpu is not None and sink_settings.workers == 1:
        cpu["s"] = _cpu_s() - cpu_before
    return elapsed


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _profiled(run: Any, path: str) -> Any:
    def profiled(stop_event: threading.Event) -> None:
        with cProfile.Profile() as profiler:
            run(stop_event)
        profiler.dump_stats(path)

    return profiled


def run_ceiling(dsn: str, events: list[ChangeEvent], batch_size: int, progress: Progress) -> float:
    """The database's own COPY + upsert rate for the same rows: no Kafka, no decoding, no conversion."""
    batches = [_ceiling_batch(events[i : i + batch_size]) for i in range(0, len(events), batch_size)]
    task = progress.add_task("PostgreSQL COPY + upsert", total=len(events))
    upsert = (
        "INSERT INTO ceiling_employees SELECT * FROM _ceiling_u ON CONFLICT (emp_id) DO UPDATE SET "
        "first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, dob = EXCLUDED.dob, "
        "city = EXCLUDED.city, salary = EXCLUDED.salary"
    )
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TEMP TABLE _ceiling_u (LIKE ceiling_employees) ON COMMIT DELETE ROWS")
        conn.execute("CREATE TEMP TABLE _ceiling_d (emp_id integer) ON COMMIT DELETE ROWS")
        conn.commit()
        started = time.monotonic()
        done = 0
        for count, upserts, deletes in batches:
            with conn.cursor() as cur:
                if deletes:
                    with cur.copy("COPY _ceiling_d FROM STDIN") as copy:
                        copy.write(deletes)
                    cur.execute(
                        "DELETE FROM ceiling_employees d USING _ceiling_d s WHERE d.emp_id = s.emp_id"
                    )
                if upserts:
                    with cur.copy("COPY _ceiling_u FROM STDIN") as copy:
                        copy.write(upserts)
                    cur.execute(upsert)
            conn.commit()
            done += count
            progress.update(task, completed=done)
    return time.monotonic() - started


def _ceiling_batch(events: list[ChangeEvent]) -> tuple[int, bytes, bytes]:
    """One batch collapsed to the last change per key, as COPY text (upserts, deletes)."""
    last: dict[int, dict[str, Any] | None] = {}
    for event in events:
        if event.op == "d":
            last[event.key["emp_id"]] = None  # type: ignore[index]
        else:
            last[event.after["emp_id"]] = event.after  # type: ignore[index]
    upserts, deletes = [], []
    for key, row in last.items():
        if row is None:
            deletes.append(f"{key}\n")
        else:
            dob = _EPOCH + timedelta(days=row["dob"])
            fields = (row["emp_id"], row["first_name"], row["last_name"], dob, row["city"], row["salary"])
            upserts.append("\t".join(map(str, fields)) + "\n")
    return len(events), "".join(upserts).encode(), "".join(deletes).encode()


def run_seed(settings: Settings, topic: str, dsn: str, total: int, progress: Progress) -> float:
    """The seed's consumer: per message, one statement and one commit (persistent connection)."""
    consumer: Any = make_consumer(settings.kafka, f"seed-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([topic])
    task = progress.add_task("seed approach", total=total)
    done = 0
    started: float | None = None
    with psycopg.connect(dsn) as conn:
        while done < total:
            for msg in consumer.consume(500, 1.0):
                if msg.error():
                    continue
                started = started or time.monotonic()
                done += 1
                event = decode_record(msg.topic(), msg.key(), msg.value())
                if event is not None:
                    _seed_apply(conn, event)
                conn.commit()
            progress.update(task, completed=done)
    consumer.close()
    return time.monotonic() - (started or time.monotonic())


def _seed_apply(conn: psycopg.Connection[Any], event: ChangeEvent) -> None:
    if event.op == "d":
        conn.execute("DELETE FROM seed_employees WHERE emp_id = %s", (event.before["emp_id"],))  # type: ignore[index]
        return
    r = event.after or {}
    conn.execute(
        "INSERT INTO seed_employees VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (emp_id) DO UPDATE SET "
        "first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, dob = EXCLUDED.dob, "
        "city = EXCLUDED.city, salary = EXCLUDED.salary",
        (
            r["emp_id"],
            r["first_name"],
            r["last_name"],
            _EPOCH + timedelta(days=r["dob"]),
            r["city"],
            r["salary"],
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--method", choices=["copy", "executemany", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument(
        "--workers", type=int, default=2, help="sink processes for the extra copy run (1: none)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-seed", action="store_true", help="skip the seed approach")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH (for bench/report.py)")
    parser.add_argument("--profile", metavar="PATH", help="cProfile the one-process copy run's sink")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg_dsn, kafka = os.environ.get("WALBRIDGE_BENCH_PG_DSN"), os.environ.get("WALBRIDGE_BENCH_KAFKA")
        server = broker = None
        if not pg_dsn:
            server = PostgresServer(Path(tmp) / "pg", fsync=False, synchronous_commit=False)
            server.start()
            pg_dsn = server.dsn()
        if not kafka:
            broker = KafkaBroker(Path(tmp) / "kafka")
            broker.start()
            kafka = broker.bootstrap
        try:
            bench(pg_dsn, kafka, args)
        finally:
            if broker is not None:
                broker.stop()
            if server is not None:
                server.stop("immediate")


def bench(dsn: str, bootstrap: str, args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    methods = ["copy", "executemany"] if args.method == "both" else [args.method]
    runs = [(m, 1) for m in methods]
    if "copy" in methods and args.workers > 1:
        runs.append(("copy", args.workers))
    tables = {_run_name(m, w): f"employees_{_run_name(m, w)}" for m, w in runs}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in [*tables.values(), "seed_employees", "ceiling_employees"]:
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(DDL.format(name=name))
        conn.execute("DROP SCHEMA IF EXISTS walbridge CASCADE")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000),
        dlq=DlqSettings(),
        metrics=MetricsSettings(enabled=False),
    )
    events, state = make_events(args.events)
    console.print(f"pre-loading {len(events):,} events ...")
    topic, total = preload(settings, events, prefix, args.partitions)
    seconds: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for method, workers in runs:
            name = _run_name(method, workers)
            sink_settings = PostgresSinkSettings(
                dsn=dsn,
                topics=[topic],
                group_id=f"{prefix}-{name}",
                batch_size=args.batch_size,
                linger_ms=50,
                apply_method=method,
                workers=workers,
                table_map={"public.employees": f"public.{tables[name]}"},
            )
            label = f"walbridge {method}" + (f", {workers} workers" if workers > 1 else "")
            profile = args.profile if name == "copy" else None
            cpu: dict[str, float] = {}
            seconds[name] = run_walbridge(
                settings, sink_settings, tables[name], state, progress, label, profile, cpu
            )
            if "s" in cpu and not profile:
                cpu_us[name] = cpu["s"] / len(events) * 1e6
        seconds["ceiling"] = run_ceiling(dsn, events, args.batch_size, progress)
        assert matches(dsn, "ceiling_employees", state), "the ceiling run did not reach the expected state"
        if not args.no_seed:
            seconds["seed"] = run_seed(settings, topic, dsn, total, progress)
            assert matches(dsn, "seed_employees", state), "the seed approach did not reach the expected state"
    report(seconds, total, len(events), args)
    for name, micros in cpu_us.items():
        console.print(f"{name}, 1 process: {micros:.1f} µs of process CPU per event")
    if args.json:
        figures: dict[str, dict[str, float]] = {
            name: {"seconds": round(elapsed, 3), "events_per_s": round(len(events) / elapsed)}
            for name, elapsed in seconds.items()
        }
        for name, micros in cpu_us.items():
            figures[name]["cpu_us_per_event"] = round(micros, 2)
        doc = {"events": len(events), "records": total, "partitions": args.partitions,
               "batch_size": args.batch_size, "workers": args.workers, "runs": figures}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def _run_name(method: str, workers: int) -> str:
    return method if workers == 1 else f"{method}_{workers}w"


def report(seconds: dict[str, float], total: int, events: int, args: argparse.Namespace) -> None:
    table = Table(
        title=f"{total:,} records in Kafka ({events:,} events + tombstones), {args.partitions} partitions, "
        f"batch {args.batch_size:,}"
    )
    table.add_column("approach")
    table.add_column("seconds", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("vs seed", justify="right")
    table.add_column("of ceiling", justify="right")
    seed = seconds.get("seed")
    labels = {
        "copy": "walbridge, COPY JSON + INSERT ON CONFLICT, 1 process",
        "executemany": "walbridge, executemany (pipeline mode), 1 process",
        _run_name("copy", args.workers): f"walbridge, COPY JSON, --workers {args.workers}",
        "seed": "seed: one statement + one commit per message",
        "ceiling": "ceiling: PostgreSQL's own COPY + upsert of the same rows",
    }
    ceiling = seconds.get("ceiling")
    for name, elapsed in seconds.items():
        ratio = f"{seed / elapsed:.1f}x" if seed else "-"
        share = f"{ceiling / elapsed:.2f}" if ceiling and name != "ceiling" else "-"
        row = [
            labels[name],
            f"{elapsed:.2f}",
            f"{total / elapsed:,.0f}",
            f"{events / elapsed:,.0f}",
            ratio,
            share,
        ]
        table.add_row(*row)
    console.print(table)
    if "copy" in seconds and "executemany" in seconds:
        console.print(f"copy / executemany: {seconds['executemany'] / seconds['copy']:.2f}x")


if __name__ == "__main__":
    main()
