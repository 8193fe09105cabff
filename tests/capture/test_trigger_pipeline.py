"""The seed's employees pipeline end to end: trigger capture → Kafka → PostgreSQL sink → verify clean."""

from __future__ import annotations

import random
import threading

import psycopg
import pytest
from test_trigger import make_settings, running

from helpers import wait_until
from walbridge.capture.trigger import install_trigger_capture
from walbridge.config import DlqSettings, KafkaSettings, PostgresSinkSettings, Settings
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.verify import verify_tables

EMPLOYEES_DDL = """
CREATE TABLE public.employees (
    emp_id integer PRIMARY KEY, first_name varchar(100), last_name varchar(100),
    dob date, city varchar(100), salary integer
)
"""


@pytest.fixture
def destination_dsn(dest_dsn: str) -> str:
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
    return dest_dsn


def run_sink(
    bootstrap: str, topic: str, dsn: str, stop: threading.Event
) -> tuple[threading.Thread, SinkRunner]:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, partitions=3, session_timeout_ms=6000),
        dlq=DlqSettings(max_attempts=3, backoff_initial_s=0.2, backoff_max_s=1.0),
        sinks=[PostgresSinkSettings(dsn=dsn, topics=[topic], group_id=f"{topic}-g", linger_ms=50)],
    )
    sink_settings = settings.sinks[0]
    assert isinstance(sink_settings, PostgresSinkSettings)
    runner = SinkRunner(PostgresSink(sink_settings), settings, sink_settings)
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    return thread, runner


def workload(dsn: str, seed: int, count: int) -> None:
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            emp = rng.randint(1, 300)
            action = rng.random()
            if action < 0.5:
                conn.execute(
                    "INSERT INTO employees VALUES (%s, 'F', 'L', '1990-01-01', 'Paris', %s) "
                    "ON CONFLICT (emp_id) DO UPDATE SET salary = EXCLUDED.salary",
                    (emp, rng.randint(30_000, 99_000)),
                )
            elif action < 0.8:
                conn.execute(
                    "UPDATE employees SET city = 'Boston', salary = salary + 1 WHERE emp_id = %s", (emp,)
                )
            else:
                conn.execute("DELETE FROM employees WHERE emp_id = %s", (emp,))


def test_employees_pipeline_end_to_end_verifies_clean(
    pg_dsn: str, destination_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
        conn.execute(
            "INSERT INTO employees SELECT g, 'First' || g, 'Last', '1980-01-01'::date + g, 'NYC', 1000 * g "
            "FROM generate_series(1, 100) g"
        )
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, ["public.employees"])
    settings.kafka.partitions = 3
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        install_trigger_capture(conn, settings)
    stop_sink = threading.Event()
    sink, runner = run_sink(kafka_bootstrap, f"{topic_prefix}.public.employees", destination_dsn, stop_sink)
    try:
        with running(settings) as capture:
            writers = [threading.Thread(target=workload, args=(pg_dsn, n, 300)) for n in range(4)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(120)

            last: list[object] = []

            def clean() -> bool:
                diffs = verify_tables(pg_dsn, destination_dsn, [("public.employees", "public.employees")])
                last[:] = [diffs, runner.status(), {"capture_ready": capture.ready.is_set()}]
                return all(diff.clean for diff in diffs)

            try:
                wait_until(clean, timeout_s=60, interval_s=1)
            except AssertionError as exc:
                raise AssertionError(f"source and destination still differ: {last}") from exc
    finally:
        stop_sink.set()
        sink.join(30)
