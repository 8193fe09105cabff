"""Benchmark: the Salesforce sink's two transports versus the seed's one-call-per-event consumer
(issues 5 and 15).

Produces N Debezium-format change events (default 100,000; 20,000 customers, each key updated in
order) to a 3-partition topic, then:

1. runs walbridge's ``SalesforceSink`` under the shared ``SinkRunner`` into the emulator (a separate
   process, 50 ms of latency per call or publish request on both transports) until all N are stored:
   events/s total (from the sink's start: log-in and consumer group join included) and steady (first
   to last event stored), the start-up, API calls (REST) or publish requests (Pub/Sub) per 1,000 events,
   events per call, the benchmark process's CPU per event (the sink's threads, librdkafka's, gRPC's;
   the progress polling is one keep-alive connection) and the emulator's CPU share (its CPU seconds /
   wall seconds, from /proc) — once with ``transport: rest`` (``walbridge``), once with
   ``transport: pubsub`` (``pubsub``) on the same events, each in its own consumer group, each with its
   transport's default settings unless the flags below set them (the settings are reported);
   ``--repeat N`` alternates the two N times and reports the run with the median steady rate;
2. runs the seed's consumer (``KafkaToSalesforceConsumer`` of the seed document: one
   ``POST sobjects/PostgreSQL_Data__e`` per event, offsets committed whatever happened) on the same
   topic for a bounded sample (default 30 s), and extrapolates its time for N events from the
   measured rate. The seed's transform is kept, plus ``Event_Key__c`` (required by the repository's
   event definition; without it every call would be refused with REQUIRED_FIELD_MISSING).

Usage: ``python bench/sink_salesforce.py [--events 100000] [--latency-ms 50] [--seed-seconds 30]
[--batch-size N] [--max-in-flight N] [--pubsub-in-flight N] [--pubsub-events-per-request N] [--repeat N]
[--bootstrap HOST:PORT] [--json PATH]`` (without ``--bootstrap`` an embedded broker is started;
``--seed-seconds 0`` skips the seed; ``--json`` also writes the figures printed last to PATH: ``walbridge``,
``pubsub``, ``seed``, ``ratio``, ``pubsub_vs_rest`` (total) and ``pubsub_vs_rest_steady``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Consumer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from walbridge.config import DlqSettings, KafkaSettings, SalesforceSinkSettings, Settings
from walbridge.dev.devstack import KafkaBroker, free_port
from walbridge.emulator import DEFAULT_APP
from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source, decode_record
from walbridge.kafka import ensure_topics, make_admin, make_producer, produce_waiting
from walbridge.sinks.runner import SinkRunner
from walbridge.sinks.salesforce.publisher import MAX_RECORDS_PER_CALL
from walbridge.sinks.salesforce.sink import SalesforceSink

console = Console()
_EMULATOR = """
import sys
from walbridge.emulator import EmulatorConfig, EmulatorServer
server = EmulatorServer(EmulatorConfig(latency_ms=float(sys.argv[2]), hourly_publish_limit=10_000_000,
                                       daily_api_limit=10_000_000, pubsub_port=0), port=int(sys.argv[1]))
print(server.url, server.pubsub_url, flush=True)
server.serve_forever()
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(client: httpx.Client, url: str) -> dict[str, Any]:
    return client.get(f"{url}/emulator/stats").json()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def produce(bootstrap: str, prefix: str, count: int) -> str:
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix=prefix, tombstones_on_delete=False))
    topic = encoder.topic("inventory", "customers")
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(make_admin(kafka), [topic], 3, 1)
    producer = make_producer(kafka)
    customers = max(1, count // 5)
    with _progress() as progress:
        task = progress.add_task("producing change events", total=count)
        for n in range(count):
            cid, version = n % customers, n // customers
            row = {"id": cid, "email": f"c{cid}@example.com", "first_name": "Ada", "version": version}
            source = Source(
                "postgresql", prefix, "shop", "inventory", "customers", 1_700_000_000_000 + n, lsn=n
            )
            event = ChangeEvent("c" if version == 0 else "u", source, {"id": cid}, None, row)
            for record in encoder.encode(event):
                produce_waiting(producer, record.topic, key=record.key, value=record.value)
            if n % 5000 == 0:
                producer.poll(0)
                progress.update(task, completed=n)
        producer.flush(60)
        progress.update(task, completed=count)
    return topic


def run_sink(
    bootstrap: str,
    topic: str,
    urls: tuple[str, str],
    pid: int,
    count: int,
    args: argparse.Namespace,
    transport: str = "rest",
    run: int = 0,
) -> dict[str, Any]:
    url, pubsub_url = urls
    overrides = {
        name: value
        for name, value in (
            ("batch_size", args.batch_size),
            ("max_in_flight", args.max_in_flight),
            ("pubsub_in_flight", args.pubsub_in_flight),
            ("pubsub_events_per_request", args.pubsub_events_per_request),
        )
        if value is not None
    }
    sink_settings = SalesforceSinkSettings(
        instance_url=url,
        client_id=DEFAULT_APP.client_id,
        client_secret=DEFAULT_APP.client_secret,
        topics=[topic],
        group_id=f"{topic}-walbridge-{transport}-{run}",
        linger_ms=100,
        transport=transport,  # type: ignore[arg-type]
        pubsub_url=pubsub_url,
        **overrides,
    )
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap, session_timeout_ms=6000),
        dlq=DlqSettings(backoff_initial_s=0.2, backoff_max_s=2.0),
        sinks=[sink_settings],
    )
    sink = SalesforceSink(sink_settings)
    runner = SinkRunner(sink, settings, sink_settings)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    poll = httpx.Client(timeout=10)  # one client: a new one per poll costs an SSL context (~30% of a core)
    base = _stats(poll, url)
    cpu0, own0, t0 = _cpu_seconds(pid), time.process_time(), time.monotonic()
    thread.start()
    first_at: float | None = None
    with _progress() as progress:
        task = progress.add_task(f"walbridge sink ({transport}) → emulator", total=count)
        while (stored := _stats(poll, url)["events"] - base["events"]) < count:
            if stored and first_at is None:
                first_at = time.monotonic()
            progress.update(task, completed=stored)
            time.sleep(0.2)
        progress.update(task, completed=count)
    done = time.monotonic()
    cpu1, own1 = _cpu_seconds(pid), time.process_time()
    poll.close()
    stop.set()
    thread.join(30)
    assert sink.publisher is not None
    calls = sink.publisher.stats.calls
    steady = done - (first_at or t0)
    pubsub = transport == "pubsub"
    return {
        "events": count,
        "settings": {
            "batch_size": sink_settings.batch_size,
            "in_flight": sink_settings.pubsub_in_flight if pubsub else sink_settings.max_in_flight,
            "events_per_request": sink_settings.pubsub_events_per_request if pubsub else MAX_RECORDS_PER_CALL,
        },
        "wall_s": round(done - t0, 2),
        "startup_s": round((first_at or done) - t0, 2),
        "steady_s": round(steady, 2),
        "events_per_s": round(count / (done - t0)),
        "events_per_s_steady": round(count / steady),
        "api_calls": calls,
        "calls_per_1000": round(calls * 1000 / count, 2),
        "events_per_call": round(count / calls, 1),
        "emulator_cpu_s": round(cpu1 - cpu0, 2),
        "emulator_cpu_share_of_core": round((cpu1 - cpu0) / (done - t0), 3),
        "sink_process_cpu_s": round(own1 - own0, 2),
        "sink_cpu_us_per_event": round((own1 - own0) * 1e6 / count, 1),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median steady rate, and every run's rates (``--repeat``)."""
    chosen = sorted(runs, key=lambda r: r["events_per_s_steady"])[len(runs) // 2]
    if len(runs) == 1:
        return chosen
    rates = [(r["events_per_s"], r["events_per_s_steady"]) for r in runs]
    return {**chosen, "runs": len(runs), "all_events_per_s_total_steady": rates}


def _seed_transform(topic: str, partition: int, offset: int, value: bytes) -> dict[str, Any]:
    """The seed's ``transform_message``, plus the Event_Key__c our event definition requires."""
    event = decode_record(topic, None, value)
    assert event is not None
    record = event.after if event.op != "d" else event.before
    return {
        "Source_Table__c": event.source.table,
        "Operation__c": {"c": "INSERT", "u": "UPDATE", "d": "DELETE"}.get(event.op, "UNKNOWN"),
        "Record_Id__c": str(record.get("id", "") if record else ""),
        "Payload__c": json.dumps(record or {}),
        "Timestamp__c": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "Schema_Version__c": "1.0",
        "Kafka_Partition__c": partition,
        "Kafka_Offset__c": offset,
        "Event_Key__c": f"{topic}-{partition}-{offset}",
    }


def run_seed(bootstrap: str, topic: str, url: str, count: int, seconds: float) -> dict[str, Any]:
    """The seed's consumer loop, bounded to ``seconds`` of publishing."""
    token = httpx.post(
        f"{url}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": DEFAULT_APP.client_id,
            "client_secret": DEFAULT_APP.client_secret,
        },
    ).json()["access_token"]
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-seed",
            "auto.offset.reset": "earliest",  # the seed says latest; the events are already there
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    publish_url = f"{url}/services/data/v59.0/sobjects/PostgreSQL_Data__e"
    ok = failed = 0
    started: float | None = None
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as client, _progress() as progress:
        task = progress.add_task(f"seed consumer (sample of {seconds:g}s)", total=None)
        while started is None or time.monotonic() - started < seconds:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            started = started or time.monotonic()
            body = _seed_transform(message.topic(), message.partition(), message.offset(), message.value())
            response = client.post(publish_url, json=body)
            if response.status_code == 201:
                ok += 1
            else:
                failed += 1
            consumer.commit(asynchronous=True)
            progress.update(task, completed=ok + failed)
        elapsed = time.monotonic() - (started or time.monotonic())
    consumer.close()
    rate = ok / elapsed if elapsed else 0.0
    return {
        "sample_s": round(elapsed, 2),
        "published": ok,
        "failed": failed,
        "api_calls": ok + failed,
        "calls_per_1000": 1000.0,
        "events_per_s": round(rate, 2),
        "extrapolated_s_for_all": round(count / rate) if rate else None,
    }


def _report(
    count: int,
    latency: float,
    ours: dict[str, Any],
    pubsub: dict[str, Any],
    seed: dict[str, Any] | None,
    args: argparse.Namespace,
) -> None:
    table = Table(title=f"{count:,} change events, emulator latency {latency:g} ms per call")
    table.add_column("")
    table.add_column("walbridge, REST", justify="right")
    table.add_column("walbridge, Pub/Sub", justify="right")
    table.add_column("seed consumer", justify="right")
    seed = seed or {}

    def row(label: str, key: str, fmt: str = "{:,}", seed_value: str = "") -> None:
        table.add_row(label, fmt.format(ours[key]), fmt.format(pubsub[key]), seed_value)

    def setting(run: dict[str, Any]) -> str:
        s = run["settings"]
        return f"{s['batch_size']:,} / {s['in_flight']} / {s['events_per_request']}"

    table.add_row(
        "settings: batch / in flight / events per request", setting(ours), setting(pubsub), "1 / 1 / 1"
    )
    row(
        "events/s, total (start → last event)",
        "events_per_s",
        seed_value=f"{seed['events_per_s']:,}" if seed else "",
    )
    row("events/s, steady (first → last event)", "events_per_s_steady")
    row("start-up before the first event (s)", "startup_s", "{}")
    row("API calls / publish requests per 1,000 events", "calls_per_1000", "{}", "1000" if seed else "")
    row("events per call / request", "events_per_call", "{}", "1")
    row("sink process CPU per event (µs)", "sink_cpu_us_per_event", "{}")
    table.add_row(
        "time for all events",
        f"{ours['wall_s']} s (measured)",
        f"{pubsub['wall_s']} s (measured)",
        f"~{seed['extrapolated_s_for_all']} s (extrapolated: {seed['published']} in {seed['sample_s']} s)"
        if seed
        else "",
    )
    row("emulator CPU (share of one core)", "emulator_cpu_share_of_core", "{:.1%}")
    console.print(table)
    ratio = ours["events_per_s"] / seed["events_per_s"] if seed.get("events_per_s") else None
    versus = pubsub["events_per_s"] / ours["events_per_s"]
    versus_steady = pubsub["events_per_s_steady"] / ours["events_per_s_steady"]
    console.print(
        f"REST vs seed: {ratio or float('nan'):,.0f}x; Pub/Sub vs REST: {versus:.2f}x total, "
        f"{versus_steady:.2f}x steady (same events, {latency:g} ms per request on both)"
    )
    doc = {
        "events": count,
        "latency_ms": latency,
        "batch_size": args.batch_size,
        "walbridge": ours,
        "pubsub": pubsub,
        "seed": seed or None,
        "ratio": round(ratio, 1) if ratio else None,
        "pubsub_vs_rest": round(versus, 2),
        "pubsub_vs_rest_steady": round(versus_steady, 2),
    }
    print(json.dumps(doc, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--seed-seconds", type=float, default=30.0)
    parser.add_argument("--batch-size", type=int, help="runner batch of both (default: each transport's)")
    parser.add_argument("--max-in-flight", type=int, help="REST calls in flight (default: the setting's)")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting an embedded broker")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    parser.add_argument(
        "--pubsub-in-flight", type=int, help="Pub/Sub requests in flight (default: the setting's)"
    )
    parser.add_argument("--pubsub-events-per-request", type=int, help="default: the setting's")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run both transports this many times, alternating; report the median",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a terminated run still stops its broker
    with tempfile.TemporaryDirectory(prefix="bench-sf-") as tmp:
        broker = None
        if args.bootstrap is None:
            broker = KafkaBroker(Path(tmp))
            broker.start()
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        emulator = subprocess.Popen(
            [sys.executable, "-c", _EMULATOR, str(free_port()), str(args.latency_ms)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url, pubsub_url = emulator.stdout.readline().split()  # type: ignore[union-attr]
            topic = produce(bootstrap, f"bench{int(time.time())}", args.events)
            urls = (url, pubsub_url)
            runs: dict[str, list[dict[str, Any]]] = {"rest": [], "pubsub": []}
            for run in range(args.repeat):  # alternating, so that a change of the machine's load hits both
                for transport in runs:
                    runs[transport].append(
                        run_sink(bootstrap, topic, urls, emulator.pid, args.events, args, transport, run)
                    )
            ours, pubsub = _median(runs["rest"]), _median(runs["pubsub"])
            seed = None
            if args.seed_seconds:
                seed = run_seed(bootstrap, topic, url, args.events, args.seed_seconds)
            _report(args.events, args.latency_ms, ours, pubsub, seed, args)
        finally:
            emulator.terminate()
            emulator.wait(10)
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
