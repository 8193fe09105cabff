"""The ops endpoint of a sink process: ``/metrics``, ``/healthz``, ``/status`` from ``settings.metrics``.

:func:`start_ops` starts :class:`walbridge.web.OpsServer` when ``metrics.enabled`` (or on an
explicit port) and returns it, or None. Unlike capture, a port already in use only disables the
endpoint with a warning: several members of one consumer group may run on one host from the
same settings file, and the first one serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from walbridge.config import MetricsSettings
from walbridge.web import OpsServer

__all__ = ["start_ops"]

log = logging.getLogger(__name__)


def start_ops(
    metrics: MetricsSettings,
    status: Callable[[], dict[str, Any]],
    healthy: Callable[[], bool] = lambda: True,
    port: int | None = None,
) -> OpsServer | None:
    """The running ops server (``port`` overrides ``metrics.port`` and enables it), or None."""
    if port is None and not metrics.enabled:
        return None
    chosen = metrics.port if port is None else port
    try:
        ops = OpsServer(metrics.host, chosen, status, healthy).start()
    except OSError as exc:
        log.warning(
            "metrics.port %d on %s is not available (%s); this process serves no ops endpoint",
            chosen,
            metrics.host,
            exc.strerror,
        )
        return None
    log.debug("metrics and status on %s", ops.url)
    return ops
