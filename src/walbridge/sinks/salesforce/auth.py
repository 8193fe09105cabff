"""OAuth 2.0 for the Salesforce sink: client credentials and JWT bearer, a token cache, one re-login.

Contract: a *grant* (:class:`ClientCredentials`, :class:`JwtBearer`) only builds the token request;
:class:`SalesforceAuth` is an ``httpx.Auth`` whose :meth:`~SalesforceAuth.auth_flow` is a small
generator, testable without a network: it logs in when no token is cached, sends the request with
``Authorization: Bearer``, and on ``401 INVALID_SESSION_ID`` logs in again (unless another thread
already replaced the token) and sends the request once more. A second 401 is returned to the
caller (the publisher maps it to :class:`~walbridge.errors.AuthExpired`).

Salesforce never says when a token expires (no ``expires_in``), so the token is kept until a call
is refused. Token endpoint answers: ``400 {error, error_description}`` (bad client id, secret,
assertion, user) and any other 4xx or a non-JSON body (wrong URL) raise :class:`LoginFailed`, a
:class:`~walbridge.errors.ConfigError` naming Salesforce's error; 5xx raises ``ServerBusy``.
Secrets (client secret, private key, assertion, access token) never appear in messages.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import jwt

from walbridge.errors import ConfigError, ServerBusy
from walbridge.sinks.salesforce.transport import http_errors, salesforce_error
from walbridge.urls import insecure_url

__all__ = [
    "JWT_BEARER_GRANT",
    "AccessToken",
    "ClientCredentials",
    "Grant",
    "JwtBearer",
    "LoginFailed",
    "SalesforceAuth",
    "session_invalid",
]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/services/oauth2/token"
_JWT_LIFETIME_S = 180  # Salesforce accepts exp at most ~3 minutes ahead


class LoginFailed(ConfigError):
    """The token endpoint refused to log in (or is not a Salesforce token endpoint)."""


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    instance_url: str
    issued_at_ms: int
    identity_url: str = ""
    """``https://login.salesforce.com/id/<org id>/<user id>``: the Pub/Sub API's tenant and user."""

    @property
    def org_id(self) -> str:
        return self.identity_url.rstrip("/").split("/")[-2] if self.identity_url.count("/") >= 2 else ""

    @property
    def user_id(self) -> str:
        return self.identity_url.rstrip("/").split("/")[-1] if self.identity_url else ""

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"AccessToken(instance_url={self.instance_url!r}, issued_at_ms={self.issued_at_ms})"


class Grant(Protocol):
    name: str
    token_url: str

    def token_request(self) -> httpx.Request: ...


def _form_request(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> httpx.Request:
    return httpx.Request(
        "POST",
        url,
        content=urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            **(headers or {}),
        },
    )


class ClientCredentials:
    """``grant_type=client_credentials``; client authentication in the body or as HTTP Basic."""

    name = "client credentials"

    def __init__(self, base_url: str, client_id: str, client_secret: str, *, basic: bool = False) -> None:
        self.token_url = base_url.rstrip("/") + TOKEN_PATH
        self._client_id = client_id
        self._client_secret = client_secret
        self._basic = basic

    def token_request(self) -> httpx.Request:
        if self._basic:
            pair = f"{self._client_id}:{self._client_secret}".encode()
            basic = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
            return _form_request(self.token_url, {"grant_type": "client_credentials"}, basic)
        form = {
            "grant_type": "client_credentials",
            "client_id": self._client_id,
            "client_secret": self._client_secret,
        }
        return _form_request(self.token_url, form)

    def __repr__(self) -> str:
        return f"ClientCredentials(token_url={self.token_url!r}, client_id={self._client_id!r})"


class JwtBearer:
    """JWT bearer: an RS256 assertion ``{iss: client_id, sub: username, aud, exp: now + 3 min}``."""

    name = "JWT bearer"

    def __init__(self, base_url: str, client_id: str, username: str, private_key: str, audience: str) -> None:
        self.token_url = base_url.rstrip("/") + TOKEN_PATH
        self._client_id = client_id
        self._username = username
        self._private_key = private_key
        self._audience = audience

    def assertion(self, now: float | None = None) -> str:
        claims = {
            "iss": self._client_id,
            "sub": self._username,
            "aud": self._audience,
            "exp": int(now if now is not None else time.time()) + _JWT_LIFETIME_S,
        }
        try:
            return jwt.encode(claims, self._private_key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # The library's message may quote the key material: do not chain it.
            raise ConfigError(
                f"the JWT private key cannot sign RS256 assertions ({type(exc).__name__})"
            ) from None

    def token_request(self) -> httpx.Request:
        return _form_request(self.token_url, {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion()})

    def __repr__(self) -> str:
        return (
            f"JwtBearer(token_url={self.token_url!r}, client_id={self._client_id!r}, user={self._username!r})"
        )


def session_invalid(response: httpx.Response) -> bool:
    """True for Salesforce's ``401 [{"errorCode": "INVALID_SESSION_ID", ...}]``."""
    if response.status_code != 401:
        return False
    code, _ = salesforce_error(response)
    return code in ("INVALID_SESSION_ID", "HTTP_401")


def parse_token_response(grant: Grant, response: httpx.Response) -> AccessToken:
    """The token of a 200 answer; LoginFailed / ServerBusy otherwise."""
    status = response.status_code
    if status >= 500:
        code, message = salesforce_error(response)
        raise ServerBusy(
            f"Salesforce token endpoint answered HTTP {status} ({code}: {message})", status=status
        )
    body: Any = None
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("access_token"), str):
            instance_url = str(body.get("instance_url") or "")
            if instance_url and insecure_url(instance_url):
                raise LoginFailed(
                    f"the {grant.name} login answered instance_url {instance_url}, which is not https: "
                    "refusing to send data there"
                )
            return AccessToken(
                body["access_token"], instance_url, int(body.get("issued_at") or 0), str(body.get("id") or "")
            )
    code, message = salesforce_error(response)
    if status == 400 and code != "HTTP_400":
        raise LoginFailed(f"Salesforce refused the {grant.name} login: {code}: {message}", error=code)
    raise LoginFailed(
        f"{grant.token_url} is not a Salesforce token endpoint (HTTP {status} {code}: {message}); "
        "check instance_url / login_url",
        error=code,
    )


def _authorize(request: httpx.Request, token: AccessToken) -> None:
    """The bearer header, and the request sent to the instance the token belongs to: the token
    response's ``instance_url`` wins over the configured one (My Domain moves, sandbox refreshes)."""
    request.headers["Authorization"] = f"Bearer {token.value}"
    if token.instance_url:
        instance = httpx.URL(token.instance_url)
        target = request.url.copy_with(scheme=instance.scheme, host=instance.host, port=instance.port)
        if target != request.url:
            request.url = target
            request.headers["Host"] = instance.netloc.decode("ascii")


class SalesforceAuth(httpx.Auth):
    """Bearer auth with a cached token, logging in lazily and once more after INVALID_SESSION_ID."""

    requires_response_body = True

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self._token: AccessToken | None = None
        self._lock = threading.Lock()
        self.logins = 0
        """Successful logins so far (the first one included)."""

    @property
    def token(self) -> AccessToken | None:
        return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token
        if token is None:
            token = yield from self._login()
        _authorize(request, token)
        response = yield request
        if not session_invalid(response):
            return
        token = self._replace(token)
        if token is None:
            token = yield from self._login()
        _authorize(request, token)
        yield request

    def current(self, client: httpx.Client) -> AccessToken:
        """The cached token, logging in through ``client`` first when there is none (for callers that
        are not httpx requests: the Pub/Sub API's metadata)."""
        token = self._token
        if token is not None:
            return token
        flow = self._login()
        request = next(flow)
        with http_errors("logging in to Salesforce"):
            response = client.send(request, auth=None)
        try:
            flow.send(response)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        raise AssertionError("the login flow sends one request")

    def refuse(self, refused: AccessToken) -> None:
        """``refused`` was rejected: the next :meth:`current` logs in again (unless another caller did)."""
        self._replace(refused)

    def _replace(self, refused: AccessToken) -> AccessToken | None:
        """Forget ``refused``; return a newer token another call already obtained, if any."""
        with self._lock:
            if self._token is refused:
                self._token = None
            return self._token

    def _login(self) -> Generator[httpx.Request, httpx.Response, AccessToken]:
        response = yield self.grant.token_request()
        token = parse_token_response(self.grant, response)
        with self._lock:
            self._token = token
            self.logins += 1
        return token
