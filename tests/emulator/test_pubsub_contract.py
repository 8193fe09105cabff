"""The emulator's Pub/Sub API (gRPC) against the reference's contract checks 26-32 and issue 15's rules:
auth metadata, GetTopic/GetSchema, per-event and per-request limits, schema mismatch, PublishStream,
Subscribe (presets, flow control, keepalive) and one replay-id sequence shared with the REST API."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from walbridge.emulator import DEFAULT_APP, EmulatorConfig, EmulatorServer
from walbridge.emulator.cli import emulator_app
from walbridge.emulator.metadata import default_metadata_dir, load_definitions
from walbridge.pubsub_api import (
    AUTH_ERROR,
    MAX_NUM_REQUESTED,
    REPLAY_ID_CORRUPTED,
    pb2,
    pb2_grpc,
    replay_bytes,
    replay_number,
    topic_name,
)
from walbridge.pubsub_api.avro import AvroCodec, schema_id

EVENT = "PostgreSQL_Data__e"
TOPIC = topic_name(EVENT)
REQUIRED = {"Operation__c": "INSERT", "Event_Key__c": "rest-1", "Timestamp__c": "2024-01-01T00:00:00.000Z"}


class Org:
    """A started emulator with a session and a Pub/Sub stub."""

    def __init__(self, **config: Any) -> None:
        self.server = EmulatorServer(EmulatorConfig(pubsub_port=0, **config)).start()
        assert self.server.pubsub_url is not None
        self.channel = grpc.insecure_channel(self.server.pubsub_url.removeprefix("http://"))
        self.stub = pb2_grpc.PubSubStub(self.channel)
        self.login()

    def login(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": DEFAULT_APP.client_id,
            "client_secret": DEFAULT_APP.client_secret,
        }
        token = httpx.post(f"{self.server.url}/services/oauth2/token", data=form).json()
        self.token = token
        self.metadata = (
            ("accesstoken", token["access_token"]),
            ("instanceurl", token["instance_url"]),
            ("tenantid", token["id"].split("/")[-2]),
        )
        self.user_id = token["id"].split("/")[-1]

    def codec(self) -> AvroCodec:
        info = self.stub.GetTopic(pb2.TopicRequest(topic_name=TOPIC), metadata=self.metadata)
        schema = self.stub.GetSchema(pb2.SchemaRequest(schema_id=info.schema_id), metadata=self.metadata)
        return AvroCodec(schema.schema_json)

    def event(self, codec: AvroCodec, n: int, **values: Any) -> pb2.ProducerEvent:
        fields = {"Source_Table__c": "inventory.customers", "Record_Id__c": str(n), "Event_Key__c": f"k{n}"}
        payload = codec.encode({**fields, **values}, int(time.time() * 1000), self.user_id)
        return pb2.ProducerEvent(id=f"ev-{n}", schema_id=codec.id, payload=payload)

    def publish(self, *events: pb2.ProducerEvent) -> pb2.PublishResponse:
        request = pb2.PublishRequest(topic_name=TOPIC, events=list(events))
        return self.stub.Publish(request, metadata=self.metadata)

    def stored(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.server.url}/emulator/events").json()["events"]

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


@pytest.fixture
def org() -> Iterator[Org]:
    started = Org(pubsub_keepalive_s=0.3)
    yield started
    started.close()


def _rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _trailer(error: Any) -> str | None:
    return dict(error.trailing_metadata() or ()).get("error-code")


def test_missing_or_expired_auth_metadata_gets_the_auth_error_trailer(org: Org) -> None:
    """Check 26: every RPC without valid accesstoken/instanceurl/tenantid."""
    request = pb2.TopicRequest(topic_name=TOPIC)
    for metadata in ((), org.metadata[:2], (("accesstoken", "bogus"), *org.metadata[1:])):
        error = _rpc_error(lambda md=metadata: org.stub.GetTopic(request, metadata=md))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert _trailer(error) == AUTH_ERROR
    codec = org.codec()
    httpx.post(f"{org.server.url}/emulator/expire-sessions").raise_for_status()
    error = _rpc_error(lambda: org.publish(org.event(codec, 1)))
    assert _trailer(error) == AUTH_ERROR
    stream = org.stub.PublishStream(iter([pb2.PublishRequest(topic_name=TOPIC)]), metadata=org.metadata)
    error = _rpc_error(lambda: list(stream))
    assert _trailer(error) == AUTH_ERROR
    assert org.stored() == []


def test_topic_and_schema_generated_from_the_sfdx_metadata(org: Org) -> None:
    """Check 27: GetTopic → can_publish and schema_id; GetSchema → the schema whose fingerprint it is."""
    info = org.stub.GetTopic(pb2.TopicRequest(topic_name=TOPIC), metadata=org.metadata)
    assert info.can_publish and info.topic_name == TOPIC
    schema = org.stub.GetSchema(pb2.SchemaRequest(schema_id=info.schema_id), metadata=org.metadata)
    raw = orjson.loads(schema.schema_json)
    assert schema.schema_id == info.schema_id == schema_id(raw)
    fields = {f["name"]: f for f in raw["fields"]}
    assert fields["CreatedDate"]["type"] == "long" and fields["CreatedById"]["type"] == "string"
    definition = load_definitions()[EVENT]
    assert set(fields) == {"CreatedDate", "CreatedById", *(f.name for f in definition.fields)}
    assert fields["Payload__c"]["type"] == ["null", "string"]
    assert fields["Kafka_Offset__c"]["type"] == ["null", "double"]
    unknown = _rpc_error(
        lambda: org.stub.GetTopic(pb2.TopicRequest(topic_name="/event/Nope__e"), metadata=org.metadata)
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND


def test_an_event_over_1_mb_fails_alone(org: Org) -> None:
    """Check 28: three results in request order; the big one has error PUBLISH, the others replay ids."""
    codec = org.codec()
    big = pb2.ProducerEvent(id="ev-big", schema_id=codec.id, payload=b"\x00" * (1_048_576 + 1))
    response = org.publish(org.event(codec, 1), big, org.event(codec, 3))
    assert [r.correlation_key for r in response.results] == ["ev-1", "ev-big", "ev-3"]
    first, failed, last = response.results
    assert failed.error.code == pb2.ErrorCode.PUBLISH and "1 MB" in failed.error.msg
    assert replay_number(first.replay_id) == 1 and replay_number(last.replay_id) == 2
    assert [e["fields"]["Record_Id__c"] for e in org.stored()] == ["1", "3"]


def test_a_request_over_4_mb_is_unavailable_and_stores_nothing(org: Org) -> None:
    """Check 29."""
    codec = org.codec()
    text = "x" * 131_000
    events = [org.event(codec, n, Payload__c=text) for n in range(40)]  # ~5.2 MB
    error = _rpc_error(lambda: org.publish(*events))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert org.stored() == []


def test_system_fields_are_required_custom_fields_are_not(org: Org) -> None:
    """Check 30: no CreatedById → failure; a required custom field left out → published with null."""
    codec = org.codec()
    anonymous = pb2.ProducerEvent(
        id="anon", schema_id=codec.id, payload=codec.encode({"Record_Id__c": "1"}, 1, "")
    )
    bare = pb2.ProducerEvent(id="bare", schema_id=codec.id, payload=codec.encode({}, 1, org.user_id))
    too_long = org.event(codec, 3, Source_Table__c="t" * 300)
    response = org.publish(anonymous, bare, too_long)
    assert response.results[0].error.code == pb2.ErrorCode.PUBLISH
    assert not response.results[1].HasField("error")
    assert response.results[2].error.msg.startswith("STRING_TOO_LONG")
    assert len(org.stored()) == 1


def test_a_stale_schema_id_is_refused_and_a_deploy_changes_the_id(tmp_path: Path) -> None:
    metadata = tmp_path / "force-app"
    shutil.copytree(default_metadata_dir(), metadata)
    org = Org(metadata_dir=metadata)
    try:
        codec = org.codec()
        fields = metadata / "main" / "default" / "objects" / EVENT / "fields"
        (fields / "Extra__c.field-meta.xml").write_text(
            '<CustomField xmlns="http://soap.sforce.com/2006/04/metadata"><fullName>Extra__c</fullName>'
            "<label>Extra</label><length>20</length><type>Text</type></CustomField>"
        )
        httpx.post(f"{org.server.url}/emulator/reload-metadata").raise_for_status()
        error = _rpc_error(lambda: org.publish(org.event(codec, 1)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "schema" in error.details()
        assert org.stored() == []
        fresh = org.codec()
        assert fresh.id != codec.id and fresh.field_name("extra__c") == "Extra__c"
        old = org.stub.GetSchema(pb2.SchemaRequest(schema_id=codec.id), metadata=org.metadata)
        assert old.schema_id == codec.id  # an old schema stays readable
        assert not org.publish(org.event(fresh, 1, Extra__c="x")).results[0].HasField("error")
    finally:
        org.close()


def test_publish_stream_pipelines_requests_and_refuses_a_second_topic(org: Org) -> None:
    """Check 31: one response per request, matched by correlation key; another topic → INVALID_ARGUMENT."""
    codec = org.codec()
    requests = [
        pb2.PublishRequest(topic_name=TOPIC, events=[org.event(codec, 10 * r + i) for i in range(3)])
        for r in range(5)
    ]
    responses = list(org.stub.PublishStream(iter(requests), metadata=org.metadata))
    keys = sorted(r.correlation_key for response in responses for r in response.results)
    assert len(responses) == 5 and keys == sorted(e.id for q in requests for e in q.events)
    assert len(org.stored()) == 15
    mixed = [requests[0], pb2.PublishRequest(topic_name="/event/Other__e", events=requests[1].events)]
    error = _rpc_error(lambda: list(org.stub.PublishStream(iter(mixed), metadata=org.metadata)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_rest_and_grpc_events_share_one_replay_sequence_visible_to_the_cli(org: Org) -> None:
    codec = org.codec()
    rest = httpx.post(
        f"{org.server.url}/services/data/v62.0/sobjects/{EVENT}/",
        json={"Record_Id__c": "rest-1", "Source_Table__c": "inventory.customers", **REQUIRED},
        headers={"Authorization": f"Bearer {org.token['access_token']}"},
    )
    assert rest.status_code == 201
    assert replay_number(org.publish(org.event(codec, 2)).results[0].replay_id) == 2
    result = CliRunner().invoke(emulator_app, ["events", "--url", org.server.url])
    lines = [orjson.loads(line) for line in result.output.splitlines()]
    assert [(e["ReplayId"], e["fields"]["Record_Id__c"]) for e in lines] == [("1", "rest-1"), ("2", "2")]
    stream = org.stub.Subscribe(
        iter([pb2.FetchRequest(topic_name=TOPIC, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=5)]),
        metadata=org.metadata,
    )
    first = next(stream)
    stream.cancel()
    decoded = [codec.decode(e.event.payload)["Record_Id__c"] for e in first.events]
    assert decoded == ["rest-1", "2"] and [replay_number(e.replay_id) for e in first.events] == [1, 2]


def _subscribe(org: Org, *requests: pb2.FetchRequest) -> tuple[Any, threading.Event]:
    """A Subscribe stream whose request side stays open until the returned event is set."""
    done = threading.Event()

    def feed() -> Iterator[pb2.FetchRequest]:
        yield from requests
        done.wait(10)

    return org.stub.Subscribe(feed(), metadata=org.metadata), done


def test_subscribe_presets_flow_control_and_keepalive(org: Org) -> None:
    """Check 32: num_requested over 100 counts as 100; LATEST starts at the tip; CUSTOM after a replay id;
    an idle stream gets an empty FetchResponse with latest_replay_id."""
    codec = org.codec()
    for start in range(0, 150, 50):
        org.publish(*(org.event(codec, n) for n in range(start, start + 50)))
    stream, done = _subscribe(
        org, pb2.FetchRequest(topic_name=TOPIC, replay_preset=pb2.ReplayPreset.EARLIEST, num_requested=150)
    )
    try:
        delivered: list[pb2.ConsumerEvent] = []
        for response in stream:
            delivered += response.events
            if not response.events:  # the keepalive: nothing more is delivered without a new request
                assert replay_number(response.latest_replay_id) == 150
                break
        assert len(delivered) == MAX_NUM_REQUESTED
    finally:
        done.set()
        stream.cancel()
    custom, done = _subscribe(
        org,
        pb2.FetchRequest(
            topic_name=TOPIC,
            replay_preset=pb2.ReplayPreset.CUSTOM,
            replay_id=replay_bytes(148),
            num_requested=10,
        ),
    )
    try:
        assert [replay_number(e.replay_id) for e in next(custom).events] == [149, 150]
    finally:
        done.set()
        custom.cancel()
    latest, done = _subscribe(org, pb2.FetchRequest(topic_name=TOPIC, num_requested=10))
    try:
        assert next(latest).events == []  # keepalive first: LATEST delivers only what comes after
        org.publish(org.event(codec, 999))
        response = next(response for response in latest if response.events)
        assert [codec.decode(e.event.payload)["Record_Id__c"] for e in response.events] == ["999"]
    finally:
        done.set()
        latest.cancel()


def test_a_corrupted_custom_replay_id_is_invalid_argument(org: Org) -> None:
    for replay in (b"\x01", replay_bytes(10_000)):
        stream, done = _subscribe(
            org,
            pb2.FetchRequest(
                topic_name=TOPIC, replay_preset=pb2.ReplayPreset.CUSTOM, replay_id=replay, num_requested=1
            ),
        )
        error = _rpc_error(lambda s=stream: next(s))
        done.set()
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _trailer(error) == REPLAY_ID_CORRUPTED


def test_a_taken_pubsub_port_is_one_clear_error(org: Org) -> None:
    from walbridge.errors import ConfigError

    assert org.server.pubsub_url is not None
    port = int(org.server.pubsub_url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match="choose another --pubsub-port"):
        EmulatorServer(EmulatorConfig(pubsub_port=port))
