"""The Salesforce sink over the Pub/Sub API (``transport: pubsub``), mirroring the REST tests: Kafka (real
broker) → SinkRunner → SalesforceSink → the emulator's gRPC side; each test ends by comparing what the
emulator stored with what was sent, event for event."""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from conftest import SfPipeline, change, customer, emulator_stats, stored_events
from helpers import consume_all, wait_until
from walbridge.errors import ConfigError
from walbridge.sinks.salesforce.mapping import EventRecord
from walbridge.sinks.salesforce.pubsub import PubSubPublisher

EVENT = "PostgreSQL_Data__e"


def _pipe(bootstrap: str, prefix: str, server: Any, **options: Any) -> SfPipeline:
    return SfPipeline(bootstrap, prefix, server, transport="pubsub", pubsub_url=server.pubsub_url, **options)


def _versions(stored: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each row's versions in replay-id order (the order Salesforce accepted them)."""
    versions: dict[str, list[int]] = defaultdict(list)
    for event in stored:
        fields = event["fields"]
        versions[fields["Record_Id__c"]].append(orjson.loads(fields["Payload__c"])["version"])
    return versions


def _wait_stored(server: Any, count: int, timeout_s: float) -> list[dict[str, Any]]:
    wait_until(lambda: emulator_stats(server)["events"] >= count, timeout_s)
    return stored_events(server)


def test_end_to_end_over_a_publish_stream(kafka_bootstrap: str, topic_prefix: str, emulator: Any) -> None:
    server = emulator(pubsub_port=0)
    pipe = _pipe(kafka_bootstrap, topic_prefix, server)
    events = [change("c", customer(cid), ts_ms=1_700_000_000_000 + cid) for cid in range(1, 41)]
    events += [change("u", customer(cid, 1), before=customer(cid)) for cid in range(1, 41)]
    events += [change("d", None, before=customer(cid, 1)) for cid in range(1, 11)]
    pipe.send(*events)
    sink = pipe.start()
    try:
        stored = _wait_stored(server, len(events), 60)
    finally:
        pipe.stop_all()
    assert len(stored) == len(events)
    keys = Counter(e["fields"]["Event_Key__c"] for e in stored)
    assert len(keys) == len(events)
    history: dict[str, list[str]] = defaultdict(list)
    for event in stored:
        history[event["fields"]["Record_Id__c"]].append(event["fields"]["Operation__c"])
    for record, ops in history.items():
        assert ops == ["INSERT", "UPDATE"] + (["DELETE"] if int(record) <= 10 else [])
    first = next(e["fields"] for e in stored if e["fields"]["Record_Id__c"] == "7")
    assert first["Timestamp__c"] == "2023-11-14T22:13:20.007Z"
    assert orjson.loads(first["Payload__c"]) == customer(7)
    assert first["Event_Key__c"] == f"{pipe.topic}-{first['Kafka_Partition__c']}-{first['Kafka_Offset__c']}"
    assert isinstance(first["Kafka_Offset__c"], int)
    stats = emulator_stats(server)
    assert stats["by_status"].get("200", 0) <= 3  # the describe at start: no REST publishing
    assert sink.publisher is not None and 0 < sink.publisher.stats.calls <= stats["pubsub_requests"]


def test_token_expiring_every_5s_under_load(kafka_bootstrap: str, topic_prefix: str, emulator: Any) -> None:
    server = emulator(pubsub_port=0, token_lifetime=5.0, latency_ms=20)
    pipe = _pipe(kafka_bootstrap, topic_prefix, server, batch_size=400, pubsub_in_flight=2)
    sink = pipe.start()
    total, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < 12:
            pipe.send(*(change("c", customer(total + i)) for i in range(40)))
            total += 40
            time.sleep(0.1)
        _wait_stored(server, total, 60)
        time.sleep(1)
        stored = stored_events(server)
    finally:
        pipe.stop_all()
    keys = Counter(e["fields"]["Event_Key__c"] for e in stored)
    assert len(keys) == total, "events lost"
    assert len(stored) == total, f"{len(stored) - total} events sent twice"
    assert sink.auth is not None and sink.auth.logins >= 3


def test_unavailable_requests_are_retried_and_deliver_everything_once(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator(pubsub_port=0, unavailable_rate=0.2, request_limit_rate=0.05, seed=7)
    pipe = _pipe(kafka_bootstrap, topic_prefix, server, batch_size=600)
    for version in range(3):
        pipe.send(*(change("c" if version == 0 else "u", customer(i, version)) for i in range(600)))
    sink = pipe.start()
    try:
        stored = _wait_stored(server, 1800, 90)
    finally:
        pipe.stop_all()
    assert len(stored) == 1800 and len({e["fields"]["Event_Key__c"] for e in stored}) == 1800
    assert all(v == [0, 1, 2] for v in _versions(stored).values())
    assert sink.skipped_resends > 0  # what a failed batch had already published was not sent again


def test_oversized_and_invalid_records_go_to_the_dlq_the_rest_in_one_request(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator(pubsub_port=0)
    overrides = {"inventory.customers": {"columns": {"Schema_Version__c": "schema_version"}}}
    pipe = _pipe(kafka_bootstrap, topic_prefix, server, batch_size=200, linger_ms=3000, tables=overrides)
    rows = [customer(i, schema_version="1.0") for i in range(200)]
    rows[50]["notes"] = "x" * 140_000
    rows[120]["schema_version"] = {"major": 1}
    pipe.send(*(change("c", row) for row in rows))
    sink = pipe.start()
    try:
        dlq = consume_all(kafka_bootstrap, [pipe.topic + ".dlq"], min_count=2, idle_s=1.0, timeout_s=60)
        wait_until(lambda: len(stored_events(server)) >= 198, 30)
    finally:
        pipe.stop_all()
    errors = sorted(dict(m.headers())["__connect.errors.exception.message"].decode() for m in dlq)
    assert errors[0].startswith("JSON_PARSER_ERROR") and errors[1].startswith("STRING_TOO_LONG")
    assert sorted(orjson.loads(m.value())["after"]["id"] for m in dlq) == [50, 120]
    stored = stored_events(server)
    published = sorted(int(e["fields"]["Record_Id__c"]) for e in stored)
    assert published == [i for i in range(200) if i not in (50, 120)]
    assert sink.publisher is not None and sink.publisher.stats.calls == 1


def _publisher(server: Any) -> tuple[Any, PubSubPublisher]:
    """An opened pubsub sink on ``server`` and its publisher (close the sink after use)."""
    from walbridge.config import SalesforceSinkSettings
    from walbridge.sinks.salesforce.sink import SalesforceSink

    settings = SalesforceSinkSettings(
        instance_url=server.url,
        client_id="walbridge-emulator",
        client_secret="walbridge-emulator-secret",
        transport="pubsub",
        pubsub_url=server.pubsub_url,
        topics=["t"],
    )
    sink = SalesforceSink(settings)
    sink.open()
    assert isinstance(sink.publisher, PubSubPublisher)
    return sink, sink.publisher


def _records(payloads: list[str]) -> list[EventRecord]:
    base = {"Source_Table__c": "a.b", "Operation__c": "INSERT"}
    return [
        EventRecord(EVENT, {**base, "Event_Key__c": f"k{i}", "Payload__c": text}, i)
        for i, text in enumerate(payloads)
    ]


def test_an_event_over_1_mb_is_rejected_without_being_sent(emulator: Any) -> None:
    """Mapped records respect the field lengths; the publisher still refuses what Salesforce would."""
    server = emulator(pubsub_port=0)
    sink, publisher = _publisher(server)
    try:
        outcome = publisher.publish(_records(["small", "y" * 1_100_000, "small too"]))
    finally:
        sink.close()
    assert sorted(outcome.accepted) == [0, 2]
    assert [(i, e.status_code) for i, e in outcome.rejected] == [(1, "EVENT_TOO_LARGE")]
    assert len(stored_events(server)) == 2


def test_requests_stay_under_3_mb(emulator: Any) -> None:
    """60 events of ~130 KB (7.8 MB, one chunk of the plan) go in three requests, none refused as > 4 MB."""
    server = emulator(pubsub_port=0)
    sink, publisher = _publisher(server)
    try:
        outcome = publisher.publish(_records(["z" * 130_000] * 60))
    finally:
        sink.close()
    assert sorted(outcome.accepted) == list(range(60)) and outcome.transient is None
    assert publisher.stats.calls == 3
    assert len(stored_events(server)) == 60


def test_payloads_encoded_ahead_serve_only_the_records_they_were_made_for(
    emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink's prepare Avro-encodes the next batch ahead; publishing uses those payloads for those
    records once, and encodes anything else when it is sent."""
    server = emulator(pubsub_port=0)
    sink, publisher = _publisher(server)
    try:
        ahead = _records(["a", "b", "c"])
        publisher.prepare(ahead)
        codec = publisher.topic(EVENT).codec
        encode = codec.encode
        encoded: list[str] = []

        def counting(values: dict[str, Any], *args: Any) -> bytes:
            encoded.append(values["Payload__c"])
            return encode(values, *args)

        monkeypatch.setattr(codec, "encode", counting)
        first = publisher.publish([*ahead[:2], *_records(["d"])])
        second = publisher.publish(ahead[2:])  # prepared for the publish before: encoded now
    finally:
        sink.close()
    assert sorted(first.accepted) == [0, 1, 2] and second.accepted == [0]
    assert encoded == ["d", "c"]
    assert sorted(e["fields"]["Payload__c"] for e in stored_events(server)) == ["a", "b", "c", "d"]


def test_transient_record_failures_never_reorder_a_row(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    server = emulator(pubsub_port=0)
    httpx.post(
        f"{server.url}/emulator/record-faults", params={"positions": "0,1,57,100,198,199", "calls": 4}
    ).raise_for_status()
    pipe = _pipe(kafka_bootstrap, topic_prefix, server, batch_size=1200, linger_ms=500)
    for version in range(6):
        pipe.send(*(change("c" if version == 0 else "u", customer(i, version)) for i in range(200)))
    pipe.start()
    try:
        stored = _wait_stored(server, 1200, 90)
    finally:
        pipe.stop_all()
    versions = _versions(stored)
    assert len(versions) == 200 and len(stored) == 1200
    assert all(v == [0, 1, 2, 3, 4, 5] for v in versions.values()), versions
    assert emulator_stats(server)["pubsub_requests"] > 6  # the failed events' requests were sent again


def test_failures_while_the_next_batch_is_in_flight_keep_each_row_in_order_and_the_dlq_exact(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any
) -> None:
    """Small batches over a slow stream: each batch is published while the one before waits for its
    answers. Transient record failures (retried) and two invalid events (the DLQ) land in batches whose
    successor is already in flight: every row keeps its order, the DLQ holds exactly the two, Salesforce
    everything else once."""
    server = emulator(pubsub_port=0, latency_ms=30)
    httpx.post(
        f"{server.url}/emulator/record-faults", params={"positions": "0,7,19", "calls": 6}
    ).raise_for_status()
    overrides = {"inventory.customers": {"columns": {"Schema_Version__c": "schema_version"}}}
    pipe = _pipe(
        kafka_bootstrap,
        topic_prefix,
        server,
        batch_size=100,
        pubsub_in_flight=2,
        pubsub_events_per_request=25,
        tables=overrides,
    )
    invalid = {(10, 3), (60, 5)}
    for version in range(8):
        rows = [customer(i, version, schema_version="1.0") for i in range(100)]
        for cid, bad in invalid:
            if bad == version:
                rows[cid]["schema_version"] = {"major": 1}
        pipe.send(*(change("c" if version == 0 else "u", row) for row in rows))
    sink = pipe.start()
    try:
        dlq = consume_all(kafka_bootstrap, [pipe.topic + ".dlq"], min_count=2, idle_s=1.0, timeout_s=90)
        stored = _wait_stored(server, 800 - len(invalid), 90)
    finally:
        pipe.stop_all()
    assert sorted(
        (v["after"]["id"], v["after"]["version"]) for v in map(orjson.loads, (m.value() for m in dlq))
    ) == sorted(invalid)
    assert len(stored) == 798 and len({e["fields"]["Event_Key__c"] for e in stored}) == 798
    versions = _versions(stored)
    for cid in range(100):
        expected = [v for v in range(8) if (cid, v) not in invalid]
        assert versions[str(cid)] == expected, (cid, versions[str(cid)])
    assert sink.batches_ahead > 0
    assert emulator_stats(server)["pubsub_requests"] > 32  # the failed events' requests were sent again


def test_a_deploy_that_adds_a_field_is_followed_and_one_that_deletes_a_mapped_field_stops(
    kafka_bootstrap: str, topic_prefix: str, emulator: Any, tmp_path: Path
) -> None:
    from walbridge.emulator.metadata import default_metadata_dir

    metadata = tmp_path / "force-app"
    shutil.copytree(default_metadata_dir(), metadata)
    server = emulator(pubsub_port=0, metadata_dir=metadata)
    fields = metadata / "main" / "default" / "objects" / EVENT / "fields"
    pipe = _pipe(kafka_bootstrap, topic_prefix, server, max_attempts=1)
    pipe.send(*(change("c", customer(i)) for i in range(20)))
    pipe.start()
    _wait_stored(server, 20, 60)
    (fields / "Extra__c.field-meta.xml").write_text(
        '<CustomField xmlns="http://soap.sforce.com/2006/04/metadata"><fullName>Extra__c</fullName>'
        "<label>Extra</label><length>20</length><type>Text</type></CustomField>"
    )
    httpx.post(f"{server.url}/emulator/reload-metadata").raise_for_status()
    pipe.send(*(change("u", customer(i, 1)) for i in range(20)))
    _wait_stored(server, 40, 60)
    (fields / "Schema_Version__c.field-meta.xml").unlink()
    httpx.post(f"{server.url}/emulator/reload-metadata").raise_for_status()
    pipe.send(*(change("u", customer(i, 2)) for i in range(20)))
    wait_until(lambda: bool(pipe.errors), 60)
    with pytest.raises(ConfigError, match="Schema_Version__c"):
        pipe.stop_all()
    assert all(v == [0, 1] for v in _versions(stored_events(server)).values())
    assert consume_all(kafka_bootstrap, [pipe.topic + ".dlq"], idle_s=1.0, timeout_s=3) == []
