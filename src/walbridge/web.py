"""The operations endpoint of a walbridge process: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

A small threaded stdlib HTTP server: Prometheus text from the role's own registries (a process
exports only its own metrics), a liveness answer from a health callback ("making progress, or idle
with nothing to do": :mod:`walbridge.liveness`), a readiness answer ("started: its databases and broker
reached, its work loop running, and healthy"), and a JSON (or, for browsers, HTML) status document.

:func:`start_ops` starts it for one role (capture, sink-postgres, sink-salesforce) on that role's port
from ``settings.metrics``. A port already in use is a :class:`~walbridge.errors.ConfigError` (one clear
line): a process that silently serves nothing is worse than one that refuses to start. Several processes
of one role on one host need their own ports (``--metrics-port``; ``--workers N`` gives worker *i*
``port + i``).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from walbridge.config import MetricsSettings
from walbridge.errors import ConfigError
from walbridge.logs import last_problem, record_problems
from walbridge.metrics import registries_for

__all__ = ["OpsServer", "start_ops"]

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]


class OpsServer:
    """Serves the operations endpoints in a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        status: StatusFn,
        healthy: Callable[[], bool],
        registries: Sequence[CollectorRegistry] = (),
        ready: Callable[[], bool] | None = None,
    ) -> None:
        record_problems()
        self._registries = tuple(registries)
        self._status: StatusFn = lambda: {**status(), "last_error": last_problem()}
        self._healthy = healthy
        self._ready = ready or healthy
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="walbridge-ops", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    text = b"".join(generate_latest(registry) for registry in ops._registries)
                    self._send(200, CONTENT_TYPE_LATEST, text)
                elif path == "/healthz":
                    ok = ops._healthy()
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"unhealthy\n")
                elif path == "/readyz":
                    ok = ops._ready()
                    self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else b"not ready\n")
                elif path == "/status":
                    doc = ops._status()
                    if "text/html" in (self.headers.get("Accept") or ""):
                        self._send(200, "text/html; charset=utf-8", _status_page())
                    else:
                        self._send(200, "application/json", json.dumps(doc, default=str, indent=2).encode())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics, /healthz, /readyz or /status\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        return Handler


@functools.cache
def _status_page() -> bytes:
    """The live page for browsers: it polls ``/status`` and ``/metrics`` itself (no build step)."""
    return resources.files("walbridge").joinpath("status_page.html").read_bytes()


def start_ops(
    metrics: MetricsSettings,
    role: str,
    status: StatusFn,
    healthy: Callable[[], bool] = lambda: True,
    port_offset: int = 0,
    exports: bool = True,
    ready: Callable[[], bool] | None = None,
) -> OpsServer | None:
    """The running ops server of ``role`` on its port (+ ``port_offset``), or None when disabled.

    ``exports=False``: an empty ``/metrics`` (a supervisor whose workers export on their own ports).
    ``ready``: the ``/readyz`` answer (default: ``healthy``)."""
    if not metrics.enabled:
        return None
    port = metrics.port_for(role) + port_offset
    try:
        exported = registries_for(role) if exports else ()
        ops = OpsServer(metrics.host, port, status, healthy, exported, ready).start()
    except OSError as exc:
        raise ConfigError(
            f"metrics port {port} on {metrics.host} is not available ({exc.strerror}): another process "
            "serves it; give this one its own with --metrics-port or metrics.port, or set "
            "metrics.enabled: false"
        ) from None
    log.debug("metrics and status on %s", ops.url)
    return ops
