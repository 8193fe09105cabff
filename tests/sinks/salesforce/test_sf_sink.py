"""The Salesforce sink end to end: Kafka (real broker) → SinkRunner → SalesforceSink → the emulator."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import CLIENT_SECRET, SfPipeline, change, customer, emulator_stats, stored_events
from helpers import consume_all, wait_until
from walbridge import metrics
from walbridge.errors import ConfigError
from walbridge.sinks.salesforce.sink import SalesforceSink


def _keys(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["fields"]["Event_Key__c"] for e in events)


def _wait_stored(server: Any, count: int, timeout_s: float) -> list[dict[str, Any]]:
    wait_until(lambda: emulator_stats(server)["events"] >= count, timeout_s)
    return stored_events(server)


def test_end_to_end_insert_update_delete(kafka_bootstrap: str, topic_prefix: str, emulator: Any) -> None:
    server = emulator()
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server)
    events = []
    for cid in range(1, 21):
        events.append(change("c", customer(cid), ts_ms=1_700_000_000_000 + cid))
    for version in (1, 2):
        for cid in range(1, 21):
            events.append(change("u", customer(cid, version), before=customer(cid, version - 1)))
    for cid in range(1, 6):
        events.append(change("d", None, before=customer(cid, 2), ts_ms=1_700_000_999_000))
    pipe.send(*events)
    pipe.start()
    try:
        stored = _wait_stored(server, len(events), 60)
    finally:
        pipe.stop_all()
    assert len(stored) == len(events) and len(_keys(stored)) == len(events)
    by_record: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in stored:
        assert event["type"] == "PostgreSQL_Data__e"
        by_record[event["fields"]["Record_Id__c"]].append(event["fields"])
    for cid in range(1, 21):
        history = by_record[str(cid)]
        ops = [f["Operation__c"] for f in history]
        assert ops == ["INSERT", "UPDATE", "UPDATE"] + (["DELETE"] if cid <= 5 else [])
        versions = [orjson.loads(f["Payload__c"])["version"] for f in history]
        assert versions == sorted(versions)
        first = history[0]
        assert first["Source_Table__c"] == "inventory.customers"
        assert first["Timestamp__c"] == f"2023-11-14T22:13:20.{cid:03d}Z"
        assert orjson.loads(first["Payload__c"]) == customer(cid)
        assert (
            first["Event_Key__c"] == f"{pipe.topic}-{first['Kafka_Partition__c']}-{first['Kafka_Offset__c']}"
        )
        offsets = [f["Kafka_Offset__c"] for f in history]
        assert offsets == sorted(offsets)
    delete = by_record["1"][-1]
    assert orjson.loads(delete["Payload__c"]) == customer(1, 2)
    assert delete["Timestamp__c"] == "2023-11-14T22:29:59.000Z"


def test_token_expiring_every_5s_under_load(kafka_bootstrap: str, topic_prefix: str, emulator: Any) -> None:
    server = emulator(token_lifetime=5.0, latency_ms=20)
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, batch_size=400, max_in_flight=2)
    sink = pipe.start()
    total, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < 12:  # ~400 events/s for 12 s, consumed while produced
            pipe.send(*(change("c", customer(total + i)) for i in range(40)))
            total += 40
            time.sleep(0.1)
        stored = _wait_stored(server, total, 60)
        time.sleep(1)
        stored = stored_events(server)
    finally:
        pipe.stop_all()
    keys = _keys(stored)
    assert len(keys) == total, "events lost"
    assert len(stored) == total, f"{len(stored) - total} events sent twice"
    assert sink.auth is not None and sink.auth.logins >= 3
    assert emulator_stats(server)["by_status"].get("401", 0) >= 2


def test_503_and_request_limit_faults_deliver_everything(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator(unavailable_rate=0.2, request_limit_rate=0.05, seed=7)
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, batch_size=600, max_in_flight=3)
    pipe.sink_settings.name = f"sf-{topic_prefix}"
    pipe.send(*(change("c", customer(i)) for i in range(3000)))
    sink = pipe.start(metrics=metrics.sink)
    try:
        stored = _wait_stored(server, 3000, 90)
    finally:
        pipe.stop_all()
    assert len(_keys(stored)) == 3000 and len(stored) == 3000
    stats = emulator_stats(server)["by_status"]
    assert stats.get("503", 0) > 0 and stats.get("403", 0) > 0
    publisher = sink.publisher
    assert publisher is not None
    # The emulator also counts the faults drawn by the sink's describe and /limits calls at start.
    for status in (503, 403):
        assert 0 <= stats[str(status)] - publisher.stats.by_status[status] <= 2
    assert publisher.stats.calls == sum(publisher.stats.by_status.values()) >= 15
    retries = sum(
        metrics.sink.retries.labels(sink=sink.name, error=e)._value.get()
        for e in ("ServerBusy", "RateLimited")
    )
    assert retries > 0  # the runner backed off and retried
    assert sink.skipped_resends > 0  # records accepted before a failure were not sent again
    api_used, api_max = publisher.stats.api_usage["api-usage"]
    assert api_max == 100_000 and api_used > 0


def test_one_oversized_one_invalid_in_a_batch_of_200(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator()
    overrides = {"inventory.customers": {"columns": {"Schema_Version__c": "schema_version"}}}
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, batch_size=200, linger_ms=3000, tables=overrides)
    rows = [customer(i, schema_version="1.0") for i in range(200)]
    rows[50]["notes"] = "x" * 140_000
    rows[120]["schema_version"] = {"major": 1}
    pipe.send(*(change("c", row) for row in rows))
    sink = pipe.start()
    try:
        dlq = consume_all(kafka_bootstrap, [pipe.topic + ".dlq"], min_count=2, idle_s=1.0, timeout_s=60)
        wait_until(lambda: len(stored_events(server)) >= 198, 30)
        time.sleep(0.5)
    finally:
        pipe.stop_all()
    assert len(dlq) == 2
    headers = [dict(m.headers()) for m in dlq]
    errors = sorted(h["__connect.errors.exception.message"].decode() for h in headers)
    assert errors[0].startswith("JSON_PARSER_ERROR: Schema Version") and "['Schema_Version__c']" in errors[0]
    assert errors[1].startswith("STRING_TOO_LONG: Payload") and "['Payload__c']" in errors[1]
    assert sorted(orjson.loads(m.value())["after"]["id"] for m in dlq) == [50, 120]
    stored = stored_events(server)
    assert len(stored) == 198
    assert sorted(int(e["fields"]["Record_Id__c"]) for e in stored) == [
        i for i in range(200) if i not in (50, 120)
    ]
    assert sink.publisher is not None and sink.publisher.stats.calls == 1  # 198 records, one call, no re-send


def _open(server_url: str, **overrides: Any) -> None:
    from walbridge.config import SalesforceSinkSettings

    options = {"instance_url": server_url, "client_id": "walbridge-emulator", "client_secret": CLIENT_SECRET}
    sink = SalesforceSink(SalesforceSinkSettings(**{**options, **overrides}))
    try:
        sink.open()
    finally:
        sink.close()


def test_clear_errors_at_start(emulator: Any) -> None:
    server = emulator()
    _open(server.url)  # the good configuration opens
    with pytest.raises(ConfigError) as info:
        _open(server.url, client_secret="wrong-secret-123")
    assert "invalid_client: invalid client credentials" in str(info.value)
    assert "wrong-secret-123" not in str(info.value)
    with pytest.raises(ConfigError, match="invalid_client_id"):
        _open(server.url, client_id="nobody")
    with pytest.raises(ConfigError, match="not a Salesforce token endpoint"):
        _open(server.url + "/not/here")
    with pytest.raises(ConfigError, match="cannot reach"):
        _open("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"event object 'Nope__e' not found.*NOT_FOUND"):
        _open(server.url, event="Nope__e")
    with pytest.raises(ConfigError, match=r"has no field\(s\) \['Missing__c'\]"):
        _open(server.url, tables={"t": {"static": {"Missing__c": 1}}})


def test_cli_wrong_secret_exits_with_one_line(emulator: Any, tmp_path: Any) -> None:
    from helpers import run_cli

    server = emulator()
    config = tmp_path / "sf.yaml"
    config.write_text(
        "kafka: {bootstrap_servers: '127.0.0.1:9'}\n"
        f"sinks:\n  - {{type: salesforce, instance_url: '{server.url}', client_id: walbridge-emulator,"
        " client_secret: 'env:SF_TEST_SECRET', topics: [x]}\n"
    )
    code, out, err = run_cli(
        "--config",
        str(config),
        env={"SF_TEST_SECRET": "bad-secret-xyz"},
        module="walbridge.sinks.salesforce.cli",
        timeout=60,
    )
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        "error: Salesforce refused the client credentials login: invalid_client: invalid client credentials"
    ]
    assert "bad-secret-xyz" not in out + err


def _sink_process(config: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "walbridge.sinks.salesforce.cli", "--config", str(config)],
        env={**os.environ, "SF_TEST_SECRET": CLIENT_SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(
    ("transport", "stop"),
    [("rest", signal.SIGKILL), ("pubsub", signal.SIGKILL), ("pubsub", signal.SIGTERM)],
)
def test_sigkill_mid_run_then_restart(
    kafka_bootstrap: str,
    topic_prefix: str,
    emulator: Any,
    tmp_path: Any,
    transport: str,
    stop: signal.Signals,
) -> None:
    """Stopped mid-stream (SIGKILL: nothing committed of the batches in flight; SIGTERM: what is known
    is committed), then restarted: every event arrives, duplicates at most the batches published but not
    committed (one; two over Pub/Sub, which publishes the next batch while the one before waits)."""
    server = emulator(latency_ms=30, pubsub_port=0)
    batch_size, total = 400, 4000
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, batch_size=batch_size)
    pipe.send(*(change("c", customer(i)) for i in range(total)))
    config = tmp_path / "sink.yaml"
    wire = (
        f" transport: pubsub, pubsub_url: '{server.pubsub_url}', pubsub_in_flight: 2,"
        " pubsub_events_per_request: 100"
        if transport == "pubsub"
        else " max_in_flight: 2"
    )
    config.write_text(
        f"kafka: {{bootstrap_servers: '{kafka_bootstrap}', session_timeout_ms: 6000}}\n"
        "dlq: {backoff_initial_s: 0.1, backoff_max_s: 1.0}\n"
        f"sinks:\n  - {{type: salesforce, instance_url: '{server.url}', client_id: walbridge-emulator,"
        f" client_secret: 'env:SF_TEST_SECRET', topics: ['{pipe.topic}'], group_id: '{topic_prefix}-kill',"
        f" batch_size: {batch_size}, linger_ms: 50,{wire}}}\n"
    )
    first = _sink_process(config)
    try:
        wait_until(lambda: emulator_stats(server)["events"] >= total // 4, 60, 0.05)
    finally:
        first.send_signal(stop)  # SIGKILL: no shutdown, offsets of the batches in flight not committed
        first.wait(30)
    at_kill = emulator_stats(server)["events"]
    second = _sink_process(config)
    try:
        wait_until(lambda: len(_keys(stored_events(server))) >= total, 90, 0.5)
        time.sleep(1.0)
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)
    assert second.returncode == 0, err.decode()[-2000:]
    stored = stored_events(server)
    keys = _keys(stored)
    duplicates = len(stored) - len(keys)
    print(
        f"{stop.name} after {at_kill} events: {len(keys)}/{total} present, {duplicates} duplicates "
        f"(bound: {'two batches' if transport == 'pubsub' else 'one batch'} of {batch_size})"
    )
    assert len(keys) == total
    if stop == signal.SIGTERM:
        assert first.returncode == 0
    assert duplicates <= batch_size * (2 if transport == "pubsub" else 1)


def test_field_deleted_in_the_org_stops_the_sink_without_dead_letters(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any, tmp_path: Path
) -> None:
    """A field the mapping writes is deleted by a deploy: every call would be refused. The sink makes
    one refused call, reads the definition again and stops with one line; no record is dead-lettered."""
    from walbridge.emulator.metadata import default_metadata_dir

    metadata = tmp_path / "metadata"
    shutil.copytree(default_metadata_dir(), metadata)
    server = emulator(metadata_dir=metadata)
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, linger_ms=200)
    pipe.send(*(change("c", customer(i)) for i in range(50)))
    pipe.start()
    try:
        wait_until(lambda: len(stored_events(server)) == 50, 60)
        [payload_field] = metadata.rglob("PostgreSQL_Data__e/fields/Payload__c.field-meta.xml")
        payload_field.unlink()
        httpx.post(f"{server.url}/emulator/reload-metadata").raise_for_status()
        calls_before = emulator_stats(server)["by_status"].get("400", 0)
        pipe.send(*(change("c", customer(i)) for i in range(50, 450)))
        wait_until(lambda: pipe.errors, 60)
    finally:
        with pytest.raises(ConfigError) as info:
            pipe.stop_all()
    message = str(info.value)
    assert "Salesforce refused a whole call" in message and "INVALID_FIELD" in message
    assert "PostgreSQL_Data__e has no field(s) ['Payload__c'] any more" in message
    refused = emulator_stats(server)["by_status"].get("400", 0) - calls_before
    assert 1 <= refused <= 2  # the two calls of the batch in flight together; bisecting would cost 399
    assert len(stored_events(server)) == 50
    assert consume_all(kafka_bootstrap, [pipe.topic + ".dlq"], idle_s=1.0, timeout_s=3) == []


def test_transient_record_failures_never_reorder_a_row_end_to_end(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    """200 rows changed six times each; the emulator fails records at positions across the first
    calls (Salesforce publishes the rest of each call). Every change arrives, in order per row."""
    server = emulator()
    httpx.post(
        f"{server.url}/emulator/record-faults", params={"positions": "0,1,57,100,198,199", "calls": 4}
    ).raise_for_status()
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, batch_size=1200, linger_ms=500, max_in_flight=4)
    for version in range(6):
        pipe.send(*(change("c" if version == 0 else "u", customer(i, version)) for i in range(200)))
    pipe.start()
    try:
        stored = _wait_stored(server, 1200, 90)
    finally:
        pipe.stop_all()
    versions: dict[str, list[int]] = defaultdict(list)
    for event in stored:  # in replay-id order: the order Salesforce accepted them
        versions[event["fields"]["Record_Id__c"]].append(
            orjson.loads(event["fields"]["Payload__c"])["version"]
        )
    assert len(versions) == 200
    assert all(v == [0, 1, 2, 3, 4, 5] for v in versions.values()), versions
    assert emulator_stats(server)["calls"] > 6


def test_a_truncate_is_published_once(kafka_bootstrap: str, topic_prefix: str, emulator: Any) -> None:
    """Capture writes a truncate to every partition (for the PostgreSQL sink's barrier); Salesforce
    receives it once, from partition 0's copy, among the row events."""
    from walbridge.capture.publisher import EventPublisher
    from walbridge.config import load_settings

    server = emulator()
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server)
    publisher: EventPublisher[int] = EventPublisher(
        load_settings(kafka={"bootstrap_servers": kafka_bootstrap}, events={"topic_prefix": topic_prefix})
    )
    events = [change("c", customer(cid)) for cid in range(1, 11)]
    events.append(change("t", None, lsn=99))
    events += [change("c", customer(cid)) for cid in range(11, 16)]
    for event in events:
        publisher.publish(event)
    publisher.close()
    copies = [m for m in consume_all(kafka_bootstrap, [pipe.topic], min_count=18) if m.key() is None]
    assert sorted(m.partition() for m in copies) == [0, 1, 2]
    pipe.start()
    try:
        stored = _wait_stored(server, len(events), 60)
    finally:
        pipe.stop_all()
    ops = Counter(e["fields"]["Operation__c"] for e in stored)
    assert ops == {"INSERT": 15, "TRUNCATE": 1}


def test_integration_user_without_create_stops_the_sink_with_one_line(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any, tmp_path: Path
) -> None:
    from walbridge.emulator.metadata import default_metadata_dir

    metadata = tmp_path / "metadata"
    shutil.copytree(default_metadata_dir(), metadata)
    [permissions] = metadata.rglob("permissionsets/*.permissionset-meta.xml")
    permissions.write_text(
        permissions.read_text().replace("<allowCreate>true</allowCreate>", "<allowCreate>false</allowCreate>")
    )
    server = emulator(metadata_dir=metadata)
    pipe = SfPipeline(kafka_bootstrap, topic_prefix, server, linger_ms=200)
    pipe.send(*(change("c", customer(i)) for i in range(20)))
    pipe.start()
    try:
        wait_until(lambda: pipe.errors, 60)
    finally:
        with pytest.raises(ConfigError) as info:
            pipe.stop_all()
    assert "INSUFFICIENT_ACCESS_OR_READONLY" in str(info.value)
    assert "check the integration user's access to PostgreSQL_Data__e" in str(info.value)
    assert stored_events(server) == []
