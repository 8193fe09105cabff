"""HTTP front of the Salesforce API emulator: routing, authentication, allocations, faults, latency.

Contract: ``EmulatorServer(...).start()`` serves on ``host:port`` (port 0 picks a free one; see ``url``)
from a background thread, one thread per connection (HTTP/1.1 keep-alive), so injected latency never
blocks other requests; ``stop()`` shuts it down. Salesforce endpoints:
``POST /services/oauth2/token``, ``POST /services/oauth2/revoke``, ``GET /services/data/``, and under
``/services/data/vXX.X/``: ``limits``, ``sobjects/<Event__e>/`` (POST publish, GET info), ``.../describe``,
``composite/sobjects`` (POST). Every ``vXX.X`` response carries ``Sforce-Limit-Info: api-usage=used/max``.
Order of checks on a data call: version → session (401 INVALID_SESSION_ID) → injected fault → daily API
allocation (403 REQUEST_LIMIT_EXCEEDED) → the call (counted once). Emulator-only endpoints (no auth, no
latency): ``GET /emulator/events?after=&limit=&type=``, ``POST /emulator/reset``, ``GET /emulator/stats``,
``POST /emulator/expire-sessions``, ``POST /emulator/reload-metadata`` (re-read the SFDX metadata: a deploy),
``POST /emulator/record-faults?positions=1,5&calls=N`` (the next N collection calls fail the records at those
positions with ``PLATFORM_EVENT_PUBLISHING_UNAVAILABLE`` and publish the rest, as Salesforce may).
With ``EmulatorConfig(pubsub_port=N)`` the Pub/Sub API (gRPC, ``pubsub.py``) is served on its own port from
the same process and org (``pubsub_url``); ``/emulator/stats`` counts its requests as ``pubsub_requests``.
With ``EmulatorConfig(handler=True)`` the deployed Apex handler's contract is emulated (``handler.py``):
``GET /emulator/records?sobject=Account|Contact|Integration_Log__c[&deleted=1]`` reads what it wrote.
"""

from __future__ import annotations

import collections
import gzip
import re
import sys
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import orjson

from walbridge.emulator.auth import Authenticator, ConnectedApp, Session
from walbridge.emulator.describe import describe_event, object_info
from walbridge.emulator.handler import HandlerEmulation, subscriber_batch_size
from walbridge.emulator.limits import FaultPlan, RollingCounter
from walbridge.emulator.metadata import default_metadata_dir, load_access, load_definitions
from walbridge.emulator.rest import DataApi, Reply, not_found, supported_version, versions
from walbridge.emulator.store import EventStore
from walbridge.errors import ConfigError

__all__ = ["DEFAULT_APP", "EmulatorConfig", "EmulatorServer"]

DEFAULT_PORT = 8443
"""Where ``walbridge sf-emulator run`` listens unless told otherwise."""
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_PUBSUB_PORT = 7443
"""Where ``walbridge sf-emulator run`` serves the Pub/Sub API (Salesforce's own port)."""
DEFAULT_APP = ConnectedApp(
    "walbridge-emulator", "walbridge-emulator-secret", run_as="integration@walbridge.example"
)
_DATA_PATH = re.compile(r"^/services/data/v(?P<version>[^/]+)(?P<rest>/.*)?$")
_SOBJECT_PATH = re.compile(r"^/sobjects/(?P<name>[^/]+)(?P<tail>/describe)?/?$")
_SESSION_INVALID = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
_LIMIT_EXCEEDED = [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]


@dataclass
class EmulatorConfig:
    """Everything configurable; the defaults model a healthy Enterprise org on a fast network."""

    metadata_dir: Path | str | None = None
    apps: list[ConnectedApp] = field(default_factory=lambda: [DEFAULT_APP])
    token_lifetime: float = 7200.0
    latency_ms: float = 0.0
    unavailable_rate: float = 0.0
    request_limit_rate: float = 0.0
    seed: int = 0
    hourly_publish_limit: int = 250_000
    daily_api_limit: int = 100_000
    enqueued_info: bool = True
    handler: bool = False
    enforce_permissions: bool = True
    """Grant the integration user only what the project's permission sets grant (Read, Create per event)."""
    handler_log_successes: bool = False
    pubsub_port: int | None = None
    """Serve the Pub/Sub API (gRPC) on this port too (0: a free one); None: REST only."""
    pubsub_keepalive_s: float = 270.0
    """Idle Subscribe streams get an empty FetchResponse this often (Salesforce: within 270 s)."""


class _State:
    """Shared state of one emulator instance."""

    def __init__(self, config: EmulatorConfig, instance_url: str) -> None:
        self.config = config
        self.auth = Authenticator(config.apps, instance_url, config.token_lifetime)
        self.store = EventStore()
        self.api_usage = RollingCounter(config.daily_api_limit, 24 * 3600)
        self.api = DataApi(
            load_definitions(config.metadata_dir),
            self.store,
            self.api_usage,
            RollingCounter(config.hourly_publish_limit, 3600),
            config.enqueued_info,
        )
        self.handler: HandlerEmulation | None = None
        if config.handler:
            metadata = Path(config.metadata_dir) if config.metadata_dir else default_metadata_dir()
            self.handler = HandlerEmulation(
                self.store,
                batch_size=subscriber_batch_size(metadata),
                log_successes=config.handler_log_successes,
            )
            self.store.on_append(self.handler.notify)
        self.api.access = load_access(config.metadata_dir) if config.enforce_permissions else None
        self.faults = FaultPlan(config.unavailable_rate, config.request_limit_rate, config.seed)
        self.calls = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self.cpu_start = time.process_time()
        self.pubsub: Any = None
        """The gRPC servicer (``walbridge.emulator.pubsub``) when the Pub/Sub API is served."""

    def count(self, status: int) -> None:
        with self.lock:
            self.calls += 1
            self.by_status[status] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            by_status = {str(k): v for k, v in sorted(self.by_status.items())}
            calls = self.calls
        return {
            "calls": calls,
            "api_usage": self.api_usage.used,
            "events": len(self.store),
            "latest_replay_id": self.store.latest_replay_id(),
            "by_status": by_status,
            "pubsub_requests": self.pubsub.requests if self.pubsub is not None else 0,
            "cpu_seconds": round(time.process_time() - self.cpu_start, 3),
        }

    def reset(self) -> None:
        self.store.reset()
        if self.handler is not None:
            self.handler.reset()
        self.api_usage.reset()
        self.api.publish_allocation.reset()
        with self.lock:
            self.calls = 0
            self.by_status.clear()
        if self.pubsub is not None:
            self.pubsub.requests = 0
        self.cpu_start = time.process_time()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "walbridge-sf-emulator"
    state: _State  # set on the subclass built per server

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: stats are in /emulator/stats

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = self._read_body()
        if url.path.startswith("/emulator/"):
            reply = self._emulator(method, url.path, urllib.parse.parse_qs(url.query))
        else:
            if self.state.config.latency_ms > 0:
                time.sleep(self.state.config.latency_ms / 1000)
            reply = self._salesforce(method, url.path, body)
            self.state.count(reply.status)
        self._send(reply)

    def _read_body(self) -> bytes:
        """The request body; a ``Content-Encoding: gzip`` or ``deflate`` body (as Salesforce accepts
        them) decompressed. A body that does not decompress stays as sent, and so fails to parse."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        try:
            if encoding == "gzip":
                return gzip.decompress(raw)
            if encoding == "deflate":
                return zlib.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return raw
        return raw

    def _send(self, reply: Reply) -> None:
        payload = orjson.dumps(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _salesforce(self, method: str, path: str, body: bytes) -> Reply:
        if path in ("/services/data", "/services/data/"):
            return Reply(200, versions()) if method == "GET" else _method_not_allowed(method, "GET,HEAD")
        if path == "/services/oauth2/token":
            return self._token(method, body)
        if path == "/services/oauth2/revoke":
            return self._revoke(method, body)
        match = _DATA_PATH.match(path)
        if match is None:
            return not_found()
        reply = self._data_call(method, match["version"], match["rest"] or "/", body)
        reply.headers["Sforce-Limit-Info"] = (
            f"api-usage={self.state.api_usage.used}/{self.state.api_usage.maximum}"
        )
        return reply

    def _token(self, method: str, body: bytes) -> Reply:
        if method != "POST":
            return _method_not_allowed(method, "POST")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
        status, answer = self.state.auth.token(
            form, self.headers.get("Authorization"), self.headers.get("Host", "")
        )
        return Reply(status, answer)

    def _revoke(self, method: str, body: bytes) -> Reply:
        query = urllib.parse.urlsplit(self.path).query if method == "GET" else body.decode("utf-8", "replace")
        token = urllib.parse.parse_qs(query).get("token", [""])[0]
        if self.state.auth.revoke(token):
            return Reply(200, {})
        return Reply(
            400, {"error": "unsupported_token_type", "error_description": "this token type is not supported"}
        )

    def _session(self) -> Session | None:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "oauth"):
            return None
        return self.state.auth.session(token.strip())

    def _data_call(self, method: str, version: str, rest: str, body: bytes) -> Reply:
        if not supported_version(version):
            return not_found()
        session = self._session()
        if session is None:
            return Reply(401, _SESSION_INVALID)
        fault = self.state.faults.draw(publishing=method == "POST")
        if fault is not None:
            return Reply(fault.status, [{"message": fault.message, "errorCode": fault.error_code}])
        if not self.state.api_usage.try_take(1):
            return Reply(403, _LIMIT_EXCEEDED)
        return self._route_data(method, rest, body, session)

    def _route_data(self, method: str, rest: str, body: bytes, session: Session) -> Reply:
        api = self.state.api
        if rest.rstrip("/") == "/limits":
            return Reply(200, api.limits()) if method == "GET" else _method_not_allowed(method, "GET,HEAD")
        if rest.rstrip("/") == "/composite/sobjects":
            if method != "POST":
                return _method_not_allowed(method, "POST")
            return _json_only(self.headers.get("Content-Type")) or api.publish_collection(
                body, session.user_id
            )
        match = _SOBJECT_PATH.match(rest)
        definition = api.definition(match["name"]) if match else None
        if match is None or definition is None:
            return not_found()
        if match["tail"]:
            return (
                Reply(200, describe_event(definition))
                if method == "GET"
                else _method_not_allowed(method, "GET,HEAD")
            )
        if method == "GET":
            return Reply(200, {"objectDescribe": object_info(definition), "recentItems": []})
        if method != "POST":
            return _method_not_allowed(method, "HEAD,GET,POST")
        return _json_only(self.headers.get("Content-Type")) or api.publish_one(
            definition, body, session.user_id
        )

    def _emulator(self, method: str, path: str, query: dict[str, list[str]]) -> Reply:
        state = self.state
        if path == "/emulator/events" and method == "GET":
            after = int(query.get("after", ["0"])[0])
            limit = min(int(query.get("limit", ["1000"])[0]), 10_000)
            events = state.store.after(after, limit, query.get("type", [None])[0])
            return Reply(200, {"events": events, "latest_replay_id": state.store.latest_replay_id()})
        if path == "/emulator/records" and method == "GET":
            return _records(state.handler, query)
        if path == "/emulator/stats" and method == "GET":
            return Reply(200, state.stats())
        if path == "/emulator/reset" and method == "POST":
            state.reset()
            return Reply(200, {"reset": True})
        if path == "/emulator/record-faults" and method == "POST":
            positions = frozenset(int(p) for p in query.get("positions", [""])[0].split(",") if p)
            state.api.fail_records(positions, int(query.get("calls", ["1"])[0]))
            return Reply(200, {"positions": sorted(positions)})
        if path == "/emulator/reload-metadata" and method == "POST":
            state.api.replace_definitions(load_definitions(state.config.metadata_dir))
            if state.config.enforce_permissions:
                state.api.access = load_access(state.config.metadata_dir)
            return Reply(200, {"reloaded": True})
        if path == "/emulator/expire-sessions" and method == "POST":
            state.auth.expire_all()
            return Reply(200, {"expired": True})
        return not_found()


def _records(handler: HandlerEmulation | None, query: dict[str, list[str]]) -> Reply:
    if handler is None:
        return Reply(404, [{"errorCode": "NOT_FOUND", "message": "start the emulator with handler=True"}])
    sobject = query.get("sobject", ["Account"])[0]
    try:
        records = handler.records(sobject, deleted=query.get("deleted", ["0"])[0] in ("1", "true"))
    except KeyError:
        return Reply(404, [{"errorCode": "NOT_FOUND", "message": f"no emulated records of {sobject}"}])
    return Reply(200, {"records": records, "handler": handler.status()})


def _method_not_allowed(method: str, allowed: str) -> Reply:
    return Reply(
        405,
        [
            {
                "errorCode": "METHOD_NOT_ALLOWED",
                "message": f"HTTP Method '{method}' not allowed. Allowed are {allowed}",
            }
        ],
    )


def _json_only(content_type: str | None) -> Reply | None:
    if content_type is None or "json" in content_type.lower():
        return None
    return Reply(
        415,
        [{"errorCode": "UNSUPPORTED_MEDIA_TYPE", "message": f"Content type '{content_type}' not supported"}],
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-request (killed, timed out) is normal here; anything else is a bug.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class EmulatorServer:
    """The emulator as a server object: ``start()``, ``url``, ``stop()``; also a context manager."""

    def __init__(self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self._httpd = _Server((host, port), _Handler, bind_and_activate=True)
        bound_host, bound_port = cast(tuple[str, int], self._httpd.server_address[:2])
        self.url = f"http://{bound_host}:{bound_port}"
        self.state = _State(self.config, self.url)
        self._httpd.RequestHandlerClass = type("BoundHandler", (_Handler,), {"state": self.state})
        self._thread: threading.Thread | None = None
        self.pubsub_url: str | None = None
        """``http://host:port`` of the Pub/Sub API when ``config.pubsub_port`` is set."""
        self._grpc: Any = None
        if self.config.pubsub_port is not None:
            self._start_pubsub(host, self.config.pubsub_port)

    def _start_pubsub(self, host: str, port: int) -> None:
        try:
            from walbridge.emulator.pubsub import PubSubEmulator, start_pubsub
        except ImportError as exc:
            self._httpd.server_close()
            raise ConfigError(
                "the emulator's Pub/Sub API needs the pubsub extra (pip install 'walbridge[pubsub]'): "
                f"{exc}; --pubsub-port -1 serves the REST API only"
            ) from None
        state = self.state
        state.pubsub = PubSubEmulator(
            state.auth,
            state.api,
            state.store,
            latency_ms=lambda: state.config.latency_ms,
            faults=state.faults,
            keepalive_s=self.config.pubsub_keepalive_s,
        )
        try:
            self._grpc, bound = start_pubsub(state.pubsub, host, port)
        except RuntimeError as exc:  # grpc's "failed to bind"
            self._httpd.server_close()
            raise ConfigError(
                f"cannot serve the Pub/Sub API on {host}:{port} ({exc}): choose another --pubsub-port, "
                "or -1 for none"
            ) from None
        self.pubsub_url = f"http://{host}:{bound}"

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sf-emulator", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the CLI's foreground mode)."""
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=0.5).wait(5)  # each PublishStream's reader ends with its RPC
        if self.state.handler is not None:
            self.state.handler.stop()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
