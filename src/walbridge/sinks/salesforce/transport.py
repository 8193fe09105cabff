"""HTTP plumbing of the Salesforce sink: one ``httpx.Client`` on a swappable transport.

Contract: :func:`make_client` builds the client every Salesforce call goes through; pass
``transport`` to swap the network for an ``httpx.MockTransport`` handler (unit tests) or anything
else implementing ``httpx.BaseTransport``. :func:`http_errors` is the one place where httpx's
network exceptions become walbridge's (``ConnectionLost``, ``OperationTimeout``), keeping the
original as ``__cause__``. :func:`salesforce_error` reads Salesforce's error bodies (a JSON array
of ``{errorCode, message}``, or the OAuth ``{error, error_description}`` object) into
``(code, message)``. :func:`parse_limit_info` reads the ``Sforce-Limit-Info`` header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from walbridge.errors import ConnectionLost, OperationTimeout

__all__ = ["http_errors", "make_client", "parse_limit_info", "salesforce_error"]

_LIMIT_ITEM = re.compile(r"(?P<kind>[a-z-]+)=(?P<used>\d+)/(?P<limit>\d+)")
_BODY_ECHO = 200


def make_client(
    auth: httpx.Auth | None,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout_s: float = 60.0,
    connections: int = 8,
) -> httpx.Client:
    """A client with keep-alive connections for ``connections`` calls in flight."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.Client(
        auth=auth,
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        limits=limits,
        headers={"Accept": "application/json", "User-Agent": "walbridge-salesforce-sink"},
    )


@contextmanager
def http_errors(what: str) -> Iterator[None]:
    """Translate httpx network failures raised inside the block."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise OperationTimeout(f"{what}: timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise ConnectionLost(f"{what}: {type(exc).__name__}: {exc}") from exc


def salesforce_error(response: httpx.Response) -> tuple[str, str]:
    """``(errorCode, message)`` of an error response; HTTP status and body text when not JSON."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip().replace("\n", " ")[:_BODY_ECHO]
        return f"HTTP_{response.status_code}", text or response.reason_phrase
    if isinstance(body, list) and body and isinstance(body[0], dict):
        first = body[0]
        return str(first.get("errorCode") or first.get("statusCode") or "UNKNOWN"), str(
            first.get("message", "")
        )
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("error_description", ""))
    return f"HTTP_{response.status_code}", str(body)[:_BODY_ECHO]


def parse_limit_info(header: str | None) -> dict[str, tuple[int, int]]:
    """``"api-usage=10018/100000; per-app-api-usage=17/250(appName=x)"`` → ``{kind: (used, limit)}``."""
    if not header:
        return {}
    return {m["kind"]: (int(m["used"]), int(m["limit"])) for m in _LIMIT_ITEM.finditer(header)}
