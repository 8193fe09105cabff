"""Harness of the Salesforce sink integration tests: the real emulator, broker and runner.

- ``emulator(**config)`` (fixture factory): a started ``EmulatorServer``; stopped after the test.
- :class:`SfPipeline`: settings for one test topic, Debezium-format records produced with
  ``EnvelopeEncoder``, the shared ``SinkRunner`` with a ``SalesforceSink`` in a thread.
- :func:`stored_events`: every event the emulator stored, read through ``GET /emulator/events``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from walbridge import metrics as walbridge_metrics
from walbridge.config import DlqSettings, KafkaSettings, MetricsSettings, SalesforceSinkSettings, Settings
from walbridge.emulator import DEFAULT_APP, EmulatorConfig, EmulatorServer
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source
from walbridge.kafka import ensure_topics, make_admin, make_producer
from walbridge.sinks.runner import SinkRunner
from walbridge.sinks.salesforce.sink import SalesforceSink

CLIENT_ID = DEFAULT_APP.client_id
CLIENT_SECRET = DEFAULT_APP.client_secret


@pytest.fixture
def emulator() -> Iterator[Callable[..., EmulatorServer]]:
    started: list[EmulatorServer] = []

    def start(**config: Any) -> EmulatorServer:
        server = EmulatorServer(EmulatorConfig(**config)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def customer(cid: int, version: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "email": f"c{cid}@example.com", "version": version, **extra}


def change(
    op: str,
    row: dict[str, Any] | None,
    *,
    before: dict[str, Any] | None = None,
    ts_ms: int = 1_700_000_000_000,
    lsn: int | None = None,
) -> ChangeEvent:
    source = Source("postgresql", "shop", "shop", "inventory", "customers", ts_ms, lsn=lsn)
    keyed = row if row is not None else before
    key = {"id": keyed["id"]} if keyed is not None else None
    after = None if op == "d" else row
    return ChangeEvent(op, source, key, before if op != "c" else None, after, ts_ms=ts_ms + 5)


def stored_events(server: EmulatorServer, event_type: str | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    with httpx.Client(base_url=server.url) as client:
        while True:
            params: dict[str, Any] = {"after": after, "limit": 10_000}
            if event_type:
                params["type"] = event_type
            page = client.get("/emulator/events", params=params).json()["events"]
            if not page:
                return events
            events += page
            after = int(page[-1]["ReplayId"])


def emulator_stats(server: EmulatorServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/emulator/stats").json()


class SfPipeline:
    """One test topic (3 partitions), a producer of Debezium records, the sink run in threads."""

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        server: EmulatorServer,
        *,
        max_attempts: int = 3,
        **sink_options: Any,
    ) -> None:
        self.encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix))
        self.topic = self.encoder.topic("inventory", "customers")
        options: dict[str, Any] = {"batch_size": 1000, "linger_ms": 50, "max_in_flight": 4, **sink_options}
        self.sink_settings = SalesforceSinkSettings(
            instance_url=server.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            topics=[self.topic],
            group_id=f"{prefix}-sf",
            **options,
        )
        self.settings = Settings(
            kafka=KafkaSettings(bootstrap_servers=bootstrap, partitions=3, session_timeout_ms=6000),
            dlq=DlqSettings(max_attempts=max_attempts, backoff_initial_s=0.05, backoff_max_s=0.5),
            metrics=MetricsSettings(enabled=False),  # processes of one test would share a port
            sinks=[self.sink_settings],
        )
        ensure_topics(make_admin(self.settings.kafka), [self.topic], 3, 1)
        self.producer = make_producer(self.settings.kafka)
        self.sinks: list[SalesforceSink] = []
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self.errors: list[BaseException] = []

    def send(self, *events: ChangeEvent) -> None:
        for event in events:
            for record in self.encoder.encode(event):
                self.producer.produce(record.topic, key=record.key, value=record.value)
            self.producer.poll(0)
        self.producer.flush(30)

    def start(self, metrics: Any = None) -> SalesforceSink:
        sf_metrics = None if metrics is None else walbridge_metrics.salesforce
        sink = SalesforceSink(self.sink_settings, metrics=sf_metrics)
        runner = SinkRunner(sink, self.settings, self.sink_settings, metrics=metrics)
        stop = threading.Event()

        def run() -> None:
            try:
                runner.run(stop)
            except BaseException as exc:  # surfaced by stop_all
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.sinks.append(sink)
        self._threads.append((thread, stop))
        return sink

    def stop_all(self) -> None:
        for _, stop in self._threads:
            stop.set()
        for thread, _ in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self.errors:
            raise self.errors[0]
