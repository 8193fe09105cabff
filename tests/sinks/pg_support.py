"""Helpers for the sink tests: employees schema, event records, a sink running in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from walbridge.config import DlqSettings, KafkaSettings, MetricsSettings, PostgresSinkSettings, Settings
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, KafkaRecord, Source
from walbridge.kafka import ensure_topics, make_admin, make_producer
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner

EMPLOYEES_DDL = """
CREATE TABLE public.employees (
    emp_id integer PRIMARY KEY,
    first_name varchar(100),
    last_name varchar(100),
    dob date,
    city varchar(100),
    salary integer
)
"""


def employee(
    emp_id: int, first: str = "F", last: str = "L", dob: int = 7305, city: str = "C", salary: int = 50_000
) -> dict[str, Any]:
    return {
        "emp_id": emp_id,
        "first_name": first,
        "last_name": last,
        "dob": dob,
        "city": city,
        "salary": salary,
    }


def change(
    op: str, before: dict[str, Any] | None, after: dict[str, Any] | None, table: str = "employees"
) -> ChangeEvent:
    row = after if after is not None else before
    key = {"emp_id": row["emp_id"]} if row is not None else None
    source = Source(connector="postgresql", name="test", db="src", schema="public", table=table, ts_ms=1)
    return ChangeEvent(op, source, key, before, after, ts_ms=1)


class Pipeline:
    """Produces events to Kafka and runs a PostgresSink in a background thread."""

    def __init__(self, bootstrap: str, prefix: str, dsn: str, **sink_options: Any) -> None:
        self.prefix = prefix
        self.encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
        self.topic = self.encoder.topic("public", "employees")
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, partitions=3, session_timeout_ms=6000),
            dlq=DlqSettings(max_attempts=3, backoff_initial_s=0.2, backoff_max_s=1.0),
            metrics=MetricsSettings(enabled=False),  # processes of one test would share a port
            sinks=[
                PostgresSinkSettings(
                    dsn=dsn, topics=[self.topic], group_id=f"{prefix}-g", linger_ms=50, **sink_options
                )
            ],
        )
        ensure_topics(make_admin(self.settings.kafka), [self.topic], 3, 1)
        self.producer = make_producer(self.settings.kafka)
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    @property
    def sink_settings(self) -> PostgresSinkSettings:
        sink = self.settings.sinks[0]
        assert isinstance(sink, PostgresSinkSettings)
        return sink

    def send(self, *events: ChangeEvent) -> None:
        for event in events:
            for record in self.encoder.encode(event):
                self.send_raw(record)
        self.producer.flush(10)

    def send_raw(self, record: KafkaRecord) -> None:
        self.producer.produce(record.topic, key=record.key, value=record.value, headers=record.headers)

    def start(self) -> threading.Event:
        stop = threading.Event()
        sink = PostgresSink(self.sink_settings)
        runner = SinkRunner(sink, self.settings, self.sink_settings)
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        self._threads.append((thread, stop))
        return stop

    def stop(self) -> None:
        for _thread, stop in self._threads:
            stop.set()
        for thread, _ in self._threads:
            thread.join(30)
        self._threads.clear()


@pytest.fixture
def employees_db(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
    return pg_dsn


@pytest.fixture
def pipeline(kafka_bootstrap: str, topic_prefix: str, employees_db: str) -> Iterator[Pipeline]:
    pipe = Pipeline(kafka_bootstrap, topic_prefix, employees_db)
    try:
        yield pipe
    finally:
        pipe.stop()


def rows(dsn: str, query: str = "SELECT * FROM employees ORDER BY emp_id") -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()
