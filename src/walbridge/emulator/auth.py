"""OAuth 2.0 token endpoint and session store of the emulator.

Contract: ``Authenticator.token(form, authorization, host)`` implements ``POST /services/oauth2/token``
for the client-credentials flow (client auth in the body or as HTTP Basic) and the JWT bearer flow
(RS256, verified against the app's registered certificate or public key) and returns
``(status, json_body)`` exactly as Salesforce answers: the success body has no ``expires_in`` and no
``refresh_token``; errors are ``{"error", "error_description"}`` with HTTP 400. Access tokens are
random, checked on every call by ``session(token)`` and expire ``token_lifetime`` seconds after issue
(absolute, so tests can force expiry under load; Salesforce's own timeout counts inactivity).
``revoke(token)`` ends a session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["Authenticator", "ConnectedApp", "Session", "load_public_key"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
ORG_ID = "00D5g000004bXy2EAE"


@dataclass(frozen=True)
class ConnectedApp:
    """A registered connected app: its consumer key/secret, Run-As user and JWT certificate."""

    client_id: str
    client_secret: str
    run_as: str | None = None
    certificate: str | None = None
    # Usernames pre-authorized for the JWT bearer flow; the Run-As user always is.
    jwt_users: tuple[str, ...] = ()

    def allows_jwt_user(self, username: str) -> bool:
        return username == self.run_as or username in self.jwt_users


@dataclass(frozen=True)
class Session:
    """An issued access token."""

    token: str
    username: str
    user_id: str
    client_id: str
    issued_at: float
    expires_at: float


def load_public_key(pem: str) -> Any:
    """Public key from a PEM X.509 certificate (what Salesforce stores) or a PEM public key."""
    data = pem.encode()
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def _oauth_error(error: str, description: str) -> tuple[int, dict[str, Any]]:
    return 400, {"error": error, "error_description": description}


class Authenticator:
    """Token issuing and checking; thread-safe."""

    def __init__(
        self,
        apps: list[ConnectedApp],
        instance_url: str,
        token_lifetime: float = 7200.0,
        jwt_audiences: tuple[str, ...] = LOGIN_AUDIENCES,
    ) -> None:
        self._apps = {app.client_id: app for app in apps}
        self._keys = {app.client_id: load_public_key(app.certificate) for app in apps if app.certificate}
        self.instance_url = instance_url
        self.token_lifetime = token_lifetime
        self.jwt_audiences = jwt_audiences
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def token(self, form: dict[str, str], authorization: str | None, host: str) -> tuple[int, dict[str, Any]]:
        """Handle one ``POST /services/oauth2/token`` request (form already decoded)."""
        grant = form.get("grant_type")
        if not grant:
            return _oauth_error("invalid_request", "grant type is missing")
        if grant == "client_credentials":
            return self._client_credentials(form, authorization, host)
        if grant == JWT_BEARER:
            return self._jwt_bearer(form)
        return _oauth_error("unsupported_grant_type", "grant type not supported")

    def session(self, token: str | None) -> Session | None:
        """The live session of ``token``, or None when missing, unknown, revoked or expired."""
        if not token:
            return None
        with self._lock:
            found = self._sessions.get(token)
            if found is not None and found.expires_at <= time.time():
                del self._sessions[token]
                return None
        return found

    def revoke(self, token: str | None) -> bool:
        with self._lock:
            return self._sessions.pop(token or "", None) is not None

    def expire_all(self) -> None:
        """End every session (emulator control: simulates an org-wide session reset)."""
        with self._lock:
            self._sessions.clear()

    def _client_credentials(
        self, form: dict[str, str], authorization: str | None, host: str
    ) -> tuple[int, dict[str, Any]]:
        client_id, client_secret = _basic_credentials(authorization) or (
            form.get("client_id", ""),
            form.get("client_secret", ""),
        )
        app = self._apps.get(client_id)
        if app is None:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if not hmac.compare_digest(app.client_secret.encode(), client_secret.encode()):
            return _oauth_error("invalid_client", "invalid client credentials")
        if host.split(":")[0].lower() in ("login.salesforce.com", "test.salesforce.com"):
            return _oauth_error("invalid_grant", "request not supported on this domain")
        if not app.run_as:
            return _oauth_error("invalid_grant", "no client credentials user enabled")
        return 200, self._issue(app, app.run_as)

    def _jwt_bearer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        app = self._apps.get(str(claims.get("iss", "")))
        if app is None:
            return _oauth_error("invalid_client_id", "client identifier invalid")
        key = self._keys.get(app.client_id)
        if key is None:
            return _oauth_error("invalid_grant", "invalid assertion")
        audiences = [*self.jwt_audiences, self.instance_url]
        try:
            claims = jwt.decode(
                assertion, key, algorithms=["RS256"], audience=audiences, options={"require": ["exp", "sub"]}
            )
        except jwt.InvalidAudienceError:
            return _oauth_error("invalid_grant", "audience is invalid")
        except jwt.ExpiredSignatureError:
            return _oauth_error("invalid_grant", "expired authorization code")
        except jwt.PyJWTError:
            return _oauth_error("invalid_grant", "invalid assertion")
        username = str(claims["sub"])
        if not app.allows_jwt_user(username):
            return _oauth_error("invalid_grant", "user hasn't approved this consumer")
        return 200, self._issue(app, username)

    def _issue(self, app: ConnectedApp, username: str) -> dict[str, Any]:
        now = time.time()
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(72)}"
        user_id = _user_id(username)
        session = Session(token, username, user_id, app.client_id, now, now + self.token_lifetime)
        with self._lock:
            self._sessions[token] = session
        identity = f"https://login.salesforce.com/id/{ORG_ID}/{user_id}"
        issued_at = str(int(now * 1000))
        digest = hmac.new(
            app.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256
        ).digest()
        return {
            "access_token": token,
            "signature": base64.b64encode(digest).decode(),
            "scope": "api",
            "instance_url": self.instance_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "api_instance_url": self.instance_url,
        }


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, _, client_secret = decoded.partition(":")
    return client_id, client_secret


def _user_id(username: str) -> str:
    digest = hashlib.sha1(username.encode()).hexdigest()[:10]
    return f"005{int(digest, 16):012d}"[:15] + "AAS"
