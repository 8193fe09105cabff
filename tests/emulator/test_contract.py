"""Contract checks 1-25 of the Salesforce reference (section 10) against the emulator, plus issue 6's
metadata-rename check. Status codes and JSON bodies are asserted exactly where the reference gives them."""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from walbridge.emulator import ConnectedApp, EmulatorConfig, EmulatorServer
from walbridge.emulator.metadata import default_metadata_dir
from walbridge.errors import ConfigError

EVENT = "PostgreSQL_Data__e"
V = "/services/data/v62.0"
SESSION_INVALID = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def _key_and_cert() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "walbridge-test")])
    now = time.time()
    import datetime as dt

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.fromtimestamp(now - 60, dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(now + 86400, dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


KEY, CERT = _key_and_cert()
APP = ConnectedApp("cc-app", "cc-secret", run_as="integration@example.com", certificate=CERT)
NO_RUN_AS = ConnectedApp("no-user-app", "nu-secret")


def _start(**overrides: Any) -> EmulatorServer:
    config = EmulatorConfig(apps=[APP, NO_RUN_AS], **overrides)
    return EmulatorServer(config).start()


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    emulator = _start()
    yield emulator
    emulator.stop()


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/emulator/reset")
        yield http


def token(http: httpx.Client) -> str:
    answer = http.post(
        "/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": "cc-app", "client_secret": "cc-secret"},
    )
    assert answer.status_code == 200
    return str(answer.json()["access_token"])


def auth(http: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(http)}"}


def record(**fields: Any) -> dict[str, Any]:
    base = {
        "Source_Table__c": "inventory.customers",
        "Operation__c": "INSERT",
        "Record_Id__c": "1",
        "Payload__c": '{"id": 1}',
        "Timestamp__c": "2024-05-01T12:00:00.000Z",
        "Kafka_Partition__c": 0,
        "Kafka_Offset__c": 7,
        "Event_Key__c": f"topic-0-{uuid.uuid4()}",
    }
    base.update(fields)
    return base


def collection(records: list[dict[str, Any]], all_or_none: bool = False) -> dict[str, Any]:
    return {"allOrNone": all_or_none, "records": [{"attributes": {"type": EVENT}, **r} for r in records]}


def events(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/emulator/events", params={"after": 0, "limit": 10000}).json()["events"])


def jwt_assertion(**claims: Any) -> str:
    body = {"iss": "cc-app", "sub": "integration@example.com", "aud": "https://login.salesforce.com"}
    body["exp"] = int(time.time()) + 180
    body.update(claims)
    return jwt.encode(body, KEY, algorithm="RS256")


# 1
@pytest.mark.parametrize("basic", [False, True])
def test_client_credentials_success(client: httpx.Client, server: EmulatorServer, basic: bool) -> None:
    if basic:
        credentials = base64.b64encode(b"cc-app:cc-secret").decode()
        answer = client.post(
            "/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {credentials}"},
        )
    else:
        answer = client.post(
            "/services/oauth2/token",
            data={"grant_type": "client_credentials", "client_id": "cc-app", "client_secret": "cc-secret"},
        )
    assert answer.status_code == 200
    body = answer.json()
    assert {"access_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at"} <= set(
        body
    )
    assert "expires_in" not in body and "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == server.url
    assert body["issued_at"].isdigit() and abs(int(body["issued_at"]) - time.time() * 1000) < 60_000
    assert body["id"].startswith("https://login.salesforce.com/id/00D")


# 2, 3, 4, 5
@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"grant_type": "client_credentials", "client_id": "cc-app", "client_secret": "wrong"},
            {"error": "invalid_client", "error_description": "invalid client credentials"},
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
            {"error": "invalid_client_id", "error_description": "client identifier invalid"},
        ),
        (
            {"grant_type": "client_credentials", "client_id": "no-user-app", "client_secret": "nu-secret"},
            {"error": "invalid_grant", "error_description": "no client credentials user enabled"},
        ),
        (
            {"grant_type": "magic", "client_id": "cc-app", "client_secret": "cc-secret"},
            {"error": "unsupported_grant_type", "error_description": "grant type not supported"},
        ),
    ],
)
def test_token_errors(client: httpx.Client, form: dict[str, str], expected: dict[str, str]) -> None:
    answer = client.post("/services/oauth2/token", data=form)
    assert answer.status_code == 400
    assert answer.json() == expected


def test_jwt_bearer_success(client: httpx.Client) -> None:
    answer = client.post(
        "/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt_assertion()},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert "refresh_token" not in body and "expires_in" not in body
    published = client.post(
        f"{V}/sobjects/{EVENT}/", json=record(), headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert published.status_code == 201


# 6
@pytest.mark.parametrize(
    ("assertion", "description"),
    [
        (lambda: jwt_assertion(exp=int(time.time()) - 600), "expired authorization code"),
        (lambda: jwt_assertion(aud="https://evil.example.com"), "audience is invalid"),
        (
            lambda: jwt.encode(
                {
                    "iss": "cc-app",
                    "sub": "integration@example.com",
                    "aud": "https://login.salesforce.com",
                    "exp": int(time.time()) + 180,
                },
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
                algorithm="RS256",
            ),
            "invalid assertion",
        ),
        (lambda: jwt_assertion(sub="someone@else.com"), "user hasn't approved this consumer"),
    ],
)
def test_jwt_bearer_errors(client: httpx.Client, assertion: Any, description: str) -> None:
    answer = client.post(
        "/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion()},
    )
    assert answer.status_code == 400
    assert answer.json() == {"error": "invalid_grant", "error_description": description}


# 7
@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc"])
def test_missing_or_bad_session(client: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for answer in (
        client.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers),
        client.get(f"{V}/limits", headers=headers),
        client.post(f"{V}/composite/sobjects", json=collection([record()]), headers=headers),
    ):
        assert answer.status_code == 401
        assert answer.json() == SESSION_INVALID


def test_expired_session() -> None:
    emulator = _start(token_lifetime=0.3)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
            assert http.get(f"{V}/limits", headers=headers).status_code == 200
            time.sleep(0.4)
            answer = http.get(f"{V}/limits", headers=headers)
            assert answer.status_code == 401
            assert answer.json() == SESSION_INVALID
    finally:
        emulator.stop()


# 8
def test_revoke(client: httpx.Client) -> None:
    access = token(client)
    assert client.post("/services/oauth2/revoke", data={"token": access}).status_code == 200
    answer = client.get(f"{V}/limits", headers={"Authorization": f"Bearer {access}"})
    assert answer.status_code == 401
    assert answer.json() == SESSION_INVALID
    again = client.post("/services/oauth2/revoke", data={"token": access})
    assert again.status_code == 400
    assert again.json()["error"] == "unsupported_token_type"


# 9, 10
def test_single_publish(client: httpx.Client) -> None:
    headers = auth(client)
    answers = [client.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 201
        body = answer.json()
        assert set(body) == {"id", "success", "errors"}
        assert body["success"] is True
        assert len(body["id"]) == 18 and body["id"].startswith("e0")
        [info] = body["errors"]
        assert info["statusCode"] == "OPERATION_ENQUEUED" and info["fields"] == []
        uuid.UUID(info["message"])
    stored = events(client)
    assert [e["EventUuid"] for e in stored] == [a.json()["errors"][0]["message"] for a in answers]
    assert int(stored[0]["ReplayId"]) < int(stored[1]["ReplayId"])


def test_publish_ids_repeat() -> None:
    emulator = _start()
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
            ids: list[str] = []
            for _ in range(25):
                answer = http.post(
                    f"{V}/composite/sobjects", json=collection([record()] * 200), headers=headers
                )
                ids += [r["id"] for r in answer.json()]
            assert len(set(ids)) < len(ids)
    finally:
        emulator.stop()


def test_single_publish_without_enqueued_info() -> None:
    emulator = _start(enqueued_info=False)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            answer = http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=auth(http))
            assert answer.status_code == 201
            assert answer.json()["errors"] == []
    finally:
        emulator.stop()


# 11
def test_unknown_event(client: httpx.Client) -> None:
    answer = client.post(f"{V}/sobjects/Nope__e/", json=record(), headers=auth(client))
    assert answer.status_code == 404
    assert answer.json() == [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]


# 12
def test_unknown_field(client: httpx.Client) -> None:
    answer = client.post(f"{V}/sobjects/{EVENT}/", json=record(Foo__c="x"), headers=auth(client))
    assert answer.status_code == 400
    assert answer.json() == [
        {"message": f"No such column 'Foo__c' on sobject of type {EVENT}", "errorCode": "INVALID_FIELD"}
    ]
    assert events(client) == []


# 13
def test_malformed_json(client: httpx.Client) -> None:
    headers = {**auth(client), "Content-Type": "application/json"}
    answer = client.post(f"{V}/sobjects/{EVENT}/", content=b"{}}", headers=headers)
    assert answer.status_code == 400
    [error] = answer.json()
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    answer = client.post(f"{V}/sobjects/{EVENT}/", content=b'{"a"', headers=headers)
    assert answer.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


# 14
def test_string_too_long(client: httpx.Client) -> None:
    answer = client.post(f"{V}/sobjects/{EVENT}/", json=record(Operation__c="X" * 21), headers=auth(client))
    assert answer.status_code == 400
    assert answer.json() == [
        {
            "message": f"Operation: data value too large: {'X' * 21} (max length=20)",
            "errorCode": "STRING_TOO_LONG",
            "fields": ["Operation__c"],
        }
    ]
    payload = client.post(
        f"{V}/sobjects/{EVENT}/", json=record(Payload__c="p" * 131_073), headers=auth(client)
    )
    assert payload.json()[0]["errorCode"] == "STRING_TOO_LONG"
    assert payload.json()[0]["fields"] == ["Payload__c"]
    fits = client.post(f"{V}/sobjects/{EVENT}/", json=record(Payload__c="p" * 131_072), headers=auth(client))
    assert fits.status_code == 201


# 15
def test_required_field_missing(client: httpx.Client) -> None:
    body = record()
    del body["Event_Key__c"]
    answer = client.post(f"{V}/sobjects/{EVENT}/", json=body, headers=auth(client))
    assert answer.status_code == 400
    assert answer.json() == [
        {
            "message": "Required fields are missing: [Event_Key__c]",
            "errorCode": "REQUIRED_FIELD_MISSING",
            "fields": ["Event_Key__c"],
        }
    ]


# 16
@pytest.mark.parametrize(
    ("field", "value", "target"),
    [
        ("Kafka_Offset__c", "abc", "double"),
        ("Kafka_Partition__c", True, "double"),
        ("Timestamp__c", "yesterday", "datetime"),
        ("Payload__c", {"a": 1}, "string"),
    ],
)
def test_type_mismatch(client: httpx.Client, field: str, value: Any, target: str) -> None:
    answer = client.post(f"{V}/sobjects/{EVENT}/", json=record(**{field: value}), headers=auth(client))
    assert answer.status_code == 400
    [error] = answer.json()
    assert error["errorCode"] == "JSON_PARSER_ERROR"
    assert error["message"].startswith(f"Cannot deserialize instance of {target} from ")


# 17
def test_limit_info_header(client: httpx.Client) -> None:
    headers = auth(client)
    assert "Sforce-Limit-Info" not in client.get("/services/data/").headers
    first = client.get(f"{V}/limits", headers=headers).headers["Sforce-Limit-Info"]
    client.post(f"{V}/composite/sobjects", json=collection([record()] * 200), headers=headers)
    second = client.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers).headers[
        "Sforce-Limit-Info"
    ]
    used_first = int(first.split("=")[1].split("/")[0])
    assert first == f"api-usage={used_first}/100000"
    assert second == f"api-usage={used_first + 2}/100000"


def test_versions_and_limits(client: httpx.Client) -> None:
    versions = client.get("/services/data/").json()
    assert {"label": "Winter '25", "url": "/services/data/v62.0", "version": "62.0"} in versions
    limits = client.get(f"{V}/limits", headers=auth(client)).json()
    assert limits["HourlyPublishedPlatformEvents"] == {"Max": 250000, "Remaining": 250000}
    assert limits["DailyApiRequests"]["Max"] == 100000


# 18
def test_daily_api_allocation() -> None:
    emulator = _start(daily_api_limit=2)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
            assert http.get(f"{V}/limits", headers=headers).status_code == 200
            assert http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers).status_code == 201
            answer = http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers)
            assert answer.status_code == 403
            assert answer.json() == [
                {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
            ]
            assert answer.headers["Sforce-Limit-Info"] == "api-usage=2/2"
    finally:
        emulator.stop()


# 19
def test_collection_over_200(client: httpx.Client) -> None:
    answer = client.post(f"{V}/composite/sobjects", json=collection([record()] * 201), headers=auth(client))
    assert answer.status_code == 400
    assert answer.json() == [
        {
            "message": "record limit reached. cannot submit more than 200 records into this call",
            "errorCode": "EXCEEDED_ID_LIMIT",
        }
    ]
    assert events(client) == []


# 20
def test_collection_partial_success(client: httpx.Client) -> None:
    records = [record(Record_Id__c=str(i)) for i in range(200)]
    records[57]["Schema_Version__c"] = "v" * 11
    answer = client.post(f"{V}/composite/sobjects", json=collection(records), headers=auth(client))
    assert answer.status_code == 200
    results = answer.json()
    assert len(results) == 200
    assert results[57] == {
        "success": False,
        "errors": [
            {
                "statusCode": "STRING_TOO_LONG",
                "message": f"Schema Version: data value too large: {'v' * 11} (max length=10)",
                "fields": ["Schema_Version__c"],
            }
        ],
    }
    assert all(r["success"] for i, r in enumerate(results) if i != 57)
    stored = events(client)
    assert [e["fields"]["Record_Id__c"] for e in stored] == [str(i) for i in range(200) if i != 57]
    assert [e["EventUuid"] for e in stored] == [
        r["errors"][0]["message"] for i, r in enumerate(results) if i != 57
    ]


# 21
def test_collection_all_or_none(client: httpx.Client) -> None:
    records = [record(), record(Event_Key__c=None), record()]
    answer = client.post(f"{V}/composite/sobjects", json=collection(records, True), headers=auth(client))
    assert answer.status_code == 200
    rolled_back = {
        "success": False,
        "errors": [
            {
                "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                "message": "Record rolled back because not all records were valid and the request was using "
                "AllOrNone header",
                "fields": [],
            }
        ],
    }
    results = answer.json()
    assert results[0] == rolled_back and results[2] == rolled_back
    assert results[1]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
    assert events(client) == []


# 22
@pytest.mark.parametrize("attributes", [None, {}, {"type": ""}])
def test_collection_needs_type(client: httpx.Client, attributes: Any) -> None:
    bad = record() if attributes is None else {"attributes": attributes, **record()}
    body = {"allOrNone": False, "records": [{"attributes": {"type": EVENT}, **record()}, bad]}
    answer = client.post(f"{V}/composite/sobjects", json=body, headers=auth(client))
    assert answer.status_code == 400
    assert answer.json()[0]["errorCode"] == "JSON_PARSER_ERROR"
    assert events(client) == []


def test_collection_unknown_field_fails_request(client: httpx.Client) -> None:
    records = [record(), record(Nope__c=1)]
    answer = client.post(f"{V}/composite/sobjects", json=collection(records), headers=auth(client))
    assert answer.status_code == 400
    assert answer.json()[0]["errorCode"] == "INVALID_FIELD"
    assert events(client) == []


# 23
def test_hourly_publish_allocation() -> None:
    emulator = _start(hourly_publish_limit=3)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
            answer = http.post(f"{V}/composite/sobjects", json=collection([record()] * 5), headers=headers)
            results = answer.json()
            assert [r["success"] for r in results] == [True, True, True, False, False]
            assert results[3]["errors"][0]["statusCode"] == "LIMIT_EXCEEDED"
            single = http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers)
            assert single.status_code == 400
            assert single.json()[0]["errorCode"] == "LIMIT_EXCEEDED"
            assert len(events(http)) == 3
    finally:
        emulator.stop()


# 24
def test_injected_unavailability_is_deterministic_and_not_counted() -> None:
    outcomes = []
    for _ in range(2):
        emulator = _start(unavailable_rate=0.3, request_limit_rate=0.2, seed=7)
        try:
            with httpx.Client(base_url=emulator.url) as http:
                headers = auth(http)
                statuses = []
                for _ in range(40):
                    answer = http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers)
                    statuses.append(answer.status_code)
                    if answer.status_code == 503:
                        assert answer.json()[0]["errorCode"] == "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE"
                    if answer.status_code == 403:
                        assert answer.json()[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
                assert {201, 403, 503} <= set(statuses)
                assert len(events(http)) == statuses.count(201)
                assert http.get("/emulator/stats").json()["api_usage"] == statuses.count(201)
                outcomes.append(statuses)
        finally:
            emulator.stop()
    assert outcomes[0] == outcomes[1]


def test_latency_does_not_block_other_requests() -> None:
    import concurrent.futures

    emulator = _start(latency_ms=200)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
        started = time.monotonic()

        def call(_: int) -> int:
            with httpx.Client(base_url=emulator.url) as own:
                return own.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(call, range(8))) == [201] * 8
        assert time.monotonic() - started < 1.0
    finally:
        emulator.stop()


def test_describe(client: httpx.Client) -> None:
    answer = client.get(f"{V}/sobjects/{EVENT}/describe", headers=auth(client))
    assert answer.status_code == 200
    body = answer.json()
    assert body["name"] == EVENT and body["createable"] is True and body["queryable"] is False
    fields = {f["name"]: f for f in body["fields"]}
    assert fields["Payload__c"]["type"] == "textarea" and fields["Payload__c"]["length"] == 131072
    assert fields["Kafka_Offset__c"]["type"] == "double" and fields["Kafka_Offset__c"]["precision"] == 18
    assert fields["Event_Key__c"]["nillable"] is False
    assert "ReplayId" in fields and "EventUuid" in fields


def test_method_not_allowed(client: httpx.Client) -> None:
    answer = client.put(f"{V}/sobjects/{EVENT}/", json=record(), headers=auth(client))
    assert answer.status_code == 405
    assert answer.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"


def test_events_endpoint_pages_in_order(client: httpx.Client) -> None:
    headers = auth(client)
    client.post(
        f"{V}/composite/sobjects",
        json=collection([record(Record_Id__c=str(i)) for i in range(10)]),
        headers=headers,
    )
    first = client.get("/emulator/events", params={"after": 0, "limit": 4}).json()["events"]
    rest = client.get("/emulator/events", params={"after": first[-1]["ReplayId"], "limit": 100}).json()
    assert [e["fields"]["Record_Id__c"] for e in first + rest["events"]] == [str(i) for i in range(10)]


# issue 6: the emulator reads the deployed metadata; a renamed field rejects the old name
def test_renamed_field_in_metadata_is_rejected(tmp_path: Path) -> None:
    copy = tmp_path / "force-app"
    shutil.copytree(default_metadata_dir(), copy)
    fields_dir = copy / "main" / "default" / "objects" / EVENT / "fields"
    old = fields_dir / "Schema_Version__c.field-meta.xml"
    text = old.read_text().replace(
        "<fullName>Schema_Version__c</fullName>", "<fullName>Data_Version__c</fullName>"
    )
    (fields_dir / "Data_Version__c.field-meta.xml").write_text(text)
    old.unlink()
    emulator = _start(metadata_dir=copy)
    try:
        with httpx.Client(base_url=emulator.url) as http:
            headers = auth(http)
            answer = http.post(f"{V}/sobjects/{EVENT}/", json=record(Schema_Version__c="1"), headers=headers)
            assert answer.status_code == 400
            assert answer.json() == [
                {
                    "message": f"No such column 'Schema_Version__c' on sobject of type {EVENT}",
                    "errorCode": "INVALID_FIELD",
                }
            ]
            renamed = http.post(f"{V}/sobjects/{EVENT}/", json=record(Data_Version__c="1"), headers=headers)
            assert renamed.status_code == 201
    finally:
        emulator.stop()


def test_describe_reports_checkbox_as_defaulted_on_create_not_nillable(tmp_path: Path) -> None:
    """Salesforce's describe: a Checkbox is ``nillable: false`` and ``defaultedOnCreate: true``."""
    from walbridge.emulator.describe import describe_event
    from walbridge.emulator.metadata import EventDefinition, FieldDefinition

    definition = EventDefinition(
        "Flagged__e",
        "Flagged",
        "Flagged",
        "HighVolume",
        "PublishImmediately",
        (
            FieldDefinition("Flag__c", "Flag", "Checkbox"),
            FieldDefinition("Name__c", "Name", "Text", True, 10),
        ),
    )
    fields = {f["name"]: f for f in describe_event(definition)["fields"]}
    assert fields["Flag__c"]["nillable"] is False and fields["Flag__c"]["defaultedOnCreate"] is True
    assert fields["Name__c"]["nillable"] is False and fields["Name__c"]["defaultedOnCreate"] is False


def test_gzip_request_bodies_are_accepted(client: httpx.Client) -> None:
    import gzip

    import orjson

    body = gzip.compress(orjson.dumps(collection([record(Record_Id__c=str(i)) for i in range(3)])))
    headers = {**auth(client), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    answer = client.post(f"{V}/composite/sobjects", content=body, headers=headers)
    assert answer.status_code == 200 and all(r["success"] for r in answer.json())
    assert sorted(e["fields"]["Record_Id__c"] for e in events(client)) == ["0", "1", "2"]


def _two_events(tmp_path: Path) -> Path:
    """The project's metadata plus a second event, Other_Data__e, with the same fields."""
    from walbridge.emulator.metadata import default_metadata_dir

    root = tmp_path / "metadata"
    shutil.copytree(default_metadata_dir(), root)
    [source] = root.rglob(f"objects/{EVENT}")
    other = source.parent / "Other_Data__e"
    shutil.copytree(source, other)
    (other / f"{EVENT}.object-meta.xml").rename(other / "Other_Data__e.object-meta.xml")
    [permissions] = root.rglob("permissionsets/*.permissionset-meta.xml")
    text = permissions.read_text()
    grant = text[text.index("<objectPermissions>") : text.index("</objectPermissions>") + 20]
    permissions.write_text(text.replace(grant, grant + grant.replace(EVENT, "Other_Data__e")))
    return root


def test_a_collection_of_more_than_ten_type_chunks_is_refused(tmp_path: Path) -> None:
    emulator = _start(metadata_dir=_two_events(tmp_path))
    try:
        with httpx.Client(base_url=emulator.url, timeout=10) as http:
            headers = auth(http)
            alternating = [
                {"attributes": {"type": EVENT if i % 2 else "Other_Data__e"}, **record(Record_Id__c=str(i))}
                for i in range(11)
            ]
            answer = http.post(f"{V}/composite/sobjects", json={"records": alternating}, headers=headers)
            assert answer.status_code == 200
            assert {r["errors"][0]["statusCode"] for r in answer.json()} == {"EXCEEDED_MAX_TYPES_LIMIT"}
            assert events(http) == []
            grouped = sorted(alternating, key=lambda r: r["attributes"]["type"])  # two chunks
            answer = http.post(f"{V}/composite/sobjects", json={"records": grouped}, headers=headers)
            assert all(r["success"] for r in answer.json()) and len(events(http)) == 11
    finally:
        emulator.stop()


def test_record_faults_fail_chosen_positions_and_publish_the_rest(client: httpx.Client) -> None:
    client.post("/emulator/record-faults", params={"positions": "1,3", "calls": 1}).raise_for_status()
    body = collection([record(Record_Id__c=str(i)) for i in range(5)])
    first = client.post(f"{V}/composite/sobjects", json=body, headers=auth(client)).json()
    assert [r["success"] for r in first] == [True, False, True, False, True]
    assert first[1]["errors"][0]["statusCode"] == "PLATFORM_EVENT_PUBLISHING_UNAVAILABLE"
    second = client.post(f"{V}/composite/sobjects", json=body, headers=auth(client)).json()
    assert all(r["success"] for r in second)  # only the next call was affected
    assert len(events(client)) == 8


def test_metadata_with_a_text_field_over_255_is_refused(tmp_path: Path) -> None:
    from walbridge.emulator.metadata import default_metadata_dir, load_definitions

    root = tmp_path / "metadata"
    shutil.copytree(default_metadata_dir(), root)
    [field] = root.rglob(f"objects/{EVENT}/fields/Record_Id__c.field-meta.xml")
    field.write_text(field.read_text().replace("<length>255</length>", "<length>300</length>"))
    with pytest.raises(ConfigError, match="a Text field's length must be 1 to 255 \\(found 300\\)"):
        load_definitions(root)


def _with_permissions(tmp_path: Path, read: bool, create: bool) -> Path:
    """The project's metadata with the publisher permission set changed to these grants."""
    root = tmp_path / "metadata"
    shutil.copytree(default_metadata_dir(), root)
    [permissions] = root.rglob("permissionsets/*.permissionset-meta.xml")
    text = permissions.read_text()
    text = text.replace(
        "<allowCreate>true</allowCreate>", f"<allowCreate>{str(create).lower()}</allowCreate>"
    )
    text = text.replace("<allowRead>true</allowRead>", f"<allowRead>{str(read).lower()}</allowRead>")
    permissions.write_text(text)
    return root


def test_a_user_without_create_cannot_publish(tmp_path: Path) -> None:
    emulator = _start(metadata_dir=_with_permissions(tmp_path, read=True, create=False))
    try:
        with httpx.Client(base_url=emulator.url, timeout=10) as http:
            headers = auth(http)
            assert http.get(f"{V}/sobjects/{EVENT}/describe", headers=headers).status_code == 200
            single = http.post(f"{V}/sobjects/{EVENT}/", json=record(), headers=headers)
            assert single.status_code == 400
            assert single.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"
            many = http.post(f"{V}/composite/sobjects", json=collection([record()] * 3), headers=headers)
            assert (
                many.status_code == 400 and many.json()[0]["errorCode"] == "INSUFFICIENT_ACCESS_OR_READONLY"
            )
            assert events(http) == []
    finally:
        emulator.stop()


def test_a_user_without_read_does_not_see_the_event(tmp_path: Path) -> None:
    emulator = _start(metadata_dir=_with_permissions(tmp_path, read=False, create=True))
    try:
        with httpx.Client(base_url=emulator.url, timeout=10) as http:
            answer = http.get(f"{V}/sobjects/{EVENT}/describe", headers=auth(http))
            assert answer.status_code == 404 and answer.json()[0]["errorCode"] == "NOT_FOUND"
    finally:
        emulator.stop()
