"""Benchmark: the PostgreSQL sink versus the seed's one-statement-one-commit consumer.

200,000 change events (70 % inserts, 25 % updates, 5 % deletes) are pre-loaded in Kafka; then
walbridge's sink applies them (consume, decode, apply, store offsets) until the destination
equals the expected state, and, in the same run, the seed's approach (one statement and one
commit per message, persistent connection) applies the same events to a second table.

    python bench/sink_postgres.py [--events N] [--method copy|executemany]

Starts a throw-away PostgreSQL and Kafka-protocol broker (walbridge.devstack) unless
``WALBRIDGE_BENCH_PG_DSN`` / ``WALBRIDGE_BENCH_KAFKA`` name running ones.
"""

from __future__ import annotations

import argparse
import os
import random
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

from walbridge.config import DlqSettings, KafkaSettings, PostgresSinkSettings, Settings
from walbridge.devstack import KafkaBroker, PostgresServer
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source, decode_record
from walbridge.kafka import ensure_topics, make_admin, make_consumer, make_producer
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner

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


def preload(settings: Settings, events: list[ChangeEvent], prefix: str) -> tuple[str, int]:
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
    topic = encoder.topic("public", "employees")
    ensure_topics(make_admin(settings.kafka), [topic], 3, 1)
    producer = make_producer(settings.kafka)
    count = 0
    for event in events:
        for rec in encoder.encode(event):
            while True:
                try:
                    producer.produce(rec.topic, key=rec.key, value=rec.value)
                    break
                except BufferError:
                    producer.poll(0.05)
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
    state: dict[int, int],
    total: int,
    progress: Progress,
) -> float:
    stop = threading.Event()
    runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    task = progress.add_task("walbridge sink", total=len(state))
    started = time.monotonic()
    thread.start()
    with psycopg.connect(sink_settings.dsn, autocommit=True) as conn:
        while not matches(sink_settings.dsn, "employees", state):
            done = conn.execute("SELECT count(*) FROM employees").fetchone()[0]  # type: ignore[index]
            progress.update(task, completed=done)
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    progress.update(task, completed=len(state))
    stop.set()
    thread.join(30)
    return elapsed


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
    parser.add_argument("--method", choices=["copy", "executemany"], default="copy")
    parser.add_argument("--batch-size", type=int, default=5_000)
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
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in ("employees", "seed_employees"):
            conn.execute(f"DROP TABLE IF EXISTS {name}")
            conn.execute(DDL.format(name=name))
        conn.execute("DROP SCHEMA IF EXISTS walbridge CASCADE")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000), dlq=DlqSettings()
    )
    events, state = make_events(args.events)
    console.print(f"pre-loading {len(events):,} events ...")
    topic, total = preload(settings, events, prefix)
    sink_settings = PostgresSinkSettings(
        dsn=dsn,
        topics=[topic],
        group_id=f"{prefix}-wb",
        batch_size=args.batch_size,
        linger_ms=50,
        apply_method=args.method,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        wb = run_walbridge(settings, sink_settings, state, total, progress)
        seed = run_seed(settings, topic, dsn, total, progress)
    assert matches(dsn, "seed_employees", state), "the seed approach did not reach the expected state"
    wb_rate, seed_rate = total / wb, total / seed
    console.print(f"records in Kafka: {total:,} ({len(events):,} events + tombstones); method {args.method}")
    console.print(f"walbridge sink : {wb:7.2f} s  {wb_rate:10,.0f} records/s (until the destination matched)")
    console.print(f"seed approach  : {seed:7.2f} s  {seed_rate:10,.0f} records/s")
    console.print(f"ratio          : {wb_rate / seed_rate:.1f}x")


if __name__ == "__main__":
    main()
