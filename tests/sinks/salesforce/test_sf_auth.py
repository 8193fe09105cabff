"""OAuth flows of the Salesforce sink against httpx.MockTransport handlers (no network)."""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Callable

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from walbridge.errors import ConfigError, ServerBusy
from walbridge.sinks.salesforce.auth import (
    JWT_BEARER_GRANT,
    ClientCredentials,
    JwtBearer,
    LoginFailed,
    SalesforceAuth,
)

BASE = "https://acme.my.salesforce.com"
SECRET = "s3cr3t-value"
EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def _token_body(token: str) -> dict[str, str]:
    return {
        "access_token": token,
        "instance_url": BASE,
        "id": "https://login.salesforce.com/id/00D/005",
        "token_type": "Bearer",
        "issued_at": "1700000000000",
        "signature": "x",
        "scope": "api",
    }


class FakeOrg:
    """A handler issuing tokens t1, t2, ... and accepting only the newest one."""

    def __init__(self) -> None:
        self.logins: list[httpx.Request] = []
        self.valid: str | None = None
        self.data_calls = 0
        self.lock = threading.Lock()

    def expire(self) -> None:
        self.valid = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/services/oauth2/token":
            with self.lock:
                self.logins.append(request)
                self.valid = f"t{len(self.logins)}"
            return httpx.Response(200, json=_token_body(self.valid))
        with self.lock:
            self.data_calls += 1
        if request.headers.get("Authorization") != f"Bearer {self.valid}":
            return httpx.Response(401, json=EXPIRED)
        return httpx.Response(200, json={"ok": True})


def _client(
    grant: object, handler: Callable[[httpx.Request], httpx.Response]
) -> tuple[httpx.Client, SalesforceAuth]:
    auth = SalesforceAuth(grant)  # type: ignore[arg-type]
    return httpx.Client(auth=auth, transport=httpx.MockTransport(handler)), auth


def _form(request: httpx.Request) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(request.content.decode()))


def test_client_credentials_in_body_token_cached() -> None:
    org = FakeOrg()
    client, auth = _client(ClientCredentials(BASE, "cid", SECRET), org)
    for _ in range(5):
        assert client.get(f"{BASE}/services/data/v62.0/limits").status_code == 200
    assert len(org.logins) == 1 and auth.logins == 1
    form = _form(org.logins[0])
    assert form == {"grant_type": "client_credentials", "client_id": "cid", "client_secret": SECRET}
    assert org.logins[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_client_credentials_basic() -> None:
    org = FakeOrg()
    client, _ = _client(ClientCredentials(BASE, "cid", SECRET, basic=True), org)
    client.get(f"{BASE}/services/data/v62.0/limits")
    request = org.logins[0]
    assert _form(request) == {"grant_type": "client_credentials"}
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(f"cid:{SECRET}".encode()).decode()


def test_expired_session_relogs_once_and_retries() -> None:
    org = FakeOrg()
    client, auth = _client(ClientCredentials(BASE, "cid", SECRET), org)
    client.get(f"{BASE}/x")
    org.expire()
    response = client.get(f"{BASE}/x")
    assert response.status_code == 200
    assert auth.logins == 2 and org.data_calls == 3


def test_second_401_is_returned_not_looped() -> None:
    calls = {"token": 0, "data": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            calls["token"] += 1
            return httpx.Response(200, json=_token_body("t"))
        calls["data"] += 1
        return httpx.Response(401, json=EXPIRED)

    client, _ = _client(ClientCredentials(BASE, "cid", SECRET), handler)
    assert client.get(f"{BASE}/x").status_code == 401
    assert calls == {"token": 2, "data": 2}


def test_concurrent_expiry_uses_the_newer_token() -> None:
    org = FakeOrg()
    grant = ClientCredentials(BASE, "cid", SECRET)
    auth = SalesforceAuth(grant)
    client = httpx.Client(auth=auth, transport=httpx.MockTransport(org))
    client.get(f"{BASE}/x")
    old = auth.token
    org.expire()
    client.get(f"{BASE}/x")  # logs in again: token t2
    # A call that was refused with the old token finds the newer one cached and does not log in again.
    flow = auth.auth_flow(httpx.Request("GET", f"{BASE}/x"))
    request = next(flow)
    assert request.headers["Authorization"] == "Bearer t2"
    assert auth._replace(old) is auth.token  # type: ignore[arg-type]
    assert auth.logins == 2


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"error": "invalid_client", "error_description": "invalid client credentials"},
            "invalid_client",
        ),
        (
            400,
            {"error": "invalid_client_id", "error_description": "client identifier invalid"},
            "invalid_client_id",
        ),
        (
            400,
            {"error": "invalid_grant", "error_description": "no client credentials user enabled"},
            "invalid_grant",
        ),
        (
            404,
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
            "not a Salesforce",
        ),
    ],
)
def test_login_errors_are_config_errors_without_secrets(status: int, body: object, expected: str) -> None:
    client, _ = _client(ClientCredentials(BASE, "cid", SECRET), lambda r: httpx.Response(status, json=body))
    with pytest.raises(LoginFailed) as info:
        client.get(f"{BASE}/x")
    assert isinstance(info.value, ConfigError)
    assert expected in str(info.value) and SECRET not in str(info.value)
    assert "\n" not in str(info.value)


def test_html_answer_names_the_url() -> None:
    client, _ = _client(
        ClientCredentials(BASE, "cid", SECRET), lambda r: httpx.Response(200, text="<html>hi</html>")
    )
    with pytest.raises(LoginFailed, match="not a Salesforce token endpoint"):
        client.get(f"{BASE}/x")


def test_token_endpoint_5xx_is_transient() -> None:
    client, _ = _client(ClientCredentials(BASE, "cid", SECRET), lambda r: httpx.Response(503, text="down"))
    with pytest.raises(ServerBusy):
        client.get(f"{BASE}/x")


def _rsa_pair() -> tuple[str, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return pem, key.public_key()


def test_jwt_bearer_assertion() -> None:
    pem, public = _rsa_pair()
    org = FakeOrg()
    grant = JwtBearer(BASE, "cid", "user@example.com", pem, "https://login.salesforce.com")
    client, _ = _client(grant, org)
    client.get(f"{BASE}/x")
    form = _form(org.logins[0])
    assert form["grant_type"] == JWT_BEARER_GRANT
    claims = jwt.decode(
        form["assertion"], public, algorithms=["RS256"], audience="https://login.salesforce.com"
    )
    assert claims["iss"] == "cid" and claims["sub"] == "user@example.com"
    assert jwt.get_unverified_header(form["assertion"])["alg"] == "RS256"
    assert "user@example.com" in repr(grant) and "PRIVATE" not in repr(grant)


def test_jwt_bad_key_is_config_error_without_key() -> None:
    grant = JwtBearer(
        BASE, "cid", "u", "-----BEGIN PRIVATE KEY-----\nnot-a-key\n", "https://login.salesforce.com"
    )
    with pytest.raises(ConfigError) as info:
        grant.assertion()
    assert "not-a-key" not in str(info.value)


def test_data_calls_go_to_the_instance_the_token_names() -> None:
    moved = "https://acme--moved.my.salesforce.com"
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host} {request.headers['Host']} {request.url.path}")
        if request.url.path == "/services/oauth2/token":
            return httpx.Response(200, json={**_token_body("t1"), "instance_url": moved})
        return httpx.Response(200, json={"ok": True})

    client, _ = _client(ClientCredentials("https://login.salesforce.com", "cid", SECRET), handler)
    client.get(f"{BASE}/services/data/v62.0/limits")
    assert seen == [
        "login.salesforce.com login.salesforce.com /services/oauth2/token",
        "acme--moved.my.salesforce.com acme--moved.my.salesforce.com /services/data/v62.0/limits",
    ]


def test_a_token_naming_a_plain_http_instance_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**_token_body("t1"), "instance_url": "http://acme.example.com"})

    client, _ = _client(ClientCredentials(BASE, "cid", SECRET), handler)
    with pytest.raises(LoginFailed, match=r"instance_url http://acme\.example\.com, which is not https"):
        client.get(f"{BASE}/services/data/v62.0/limits")


def test_instance_and_login_urls_must_be_https_unless_loopback() -> None:
    from pydantic import ValidationError

    from walbridge.config import SalesforceSinkSettings

    assert SalesforceSinkSettings(instance_url="http://127.0.0.1:8300").instance_url
    assert SalesforceSinkSettings(login_url="http://localhost:8300").login_url
    for field in ("instance_url", "login_url"):
        with pytest.raises(ValidationError, match="must be an https:// URL"):
            SalesforceSinkSettings(**{field: "http://acme.my.salesforce.com"})


def test_jwt_audience_is_its_own_setting() -> None:
    from walbridge.config import SalesforceSinkSettings
    from walbridge.sinks.salesforce.sink import build_grant

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    options = {"auth": "jwt_bearer", "client_id": "cid", "username": "u@x", "private_key": pem}
    sandbox = build_grant(
        SalesforceSinkSettings(
            login_url="https://acme--uat.sandbox.my.salesforce.com",
            audience="https://test.salesforce.com",
            **options,
        )
    )
    default = build_grant(SalesforceSinkSettings(login_url="https://acme.my.salesforce.com", **options))
    for grant, audience in ((sandbox, "https://test.salesforce.com"), (default, "https://login.salesforce.com")):
        assert isinstance(grant, JwtBearer)
        assert jwt.decode(grant.assertion(), options={"verify_signature": False})["aud"] == audience
