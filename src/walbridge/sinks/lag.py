"""A sink's lag read from the broker on a timer: the group's committed offsets against the partition ends.

Read by its own consumer (same group id, never subscribed, so it does not join the group) in its own
thread, so the gauge keeps moving while the sink retries a batch forever or has left the group while
its destination is down. The partitions are those the sink holds, or held last while it is out of the
group (nobody else may hold them).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from walbridge.admin import partition_lags
from walbridge.config import Settings
from walbridge.errors import WalbridgeError
from walbridge.kafka import make_consumer
from walbridge.sinks.base import TopicPartitionKey

__all__ = ["LagMonitor"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0


class LagMonitor:
    """``start()`` / ``stop()``; :attr:`total`: the last reading (None: none yet, or no answer)."""

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        sink_name: str,
        partitions: Callable[[], set[TopicPartitionKey] | None],
        gauge: Any = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.sink_name = sink_name
        self._partitions = partitions
        self._gauge = gauge
        self.total: int | None = None
        self._held: set[TopicPartitionKey] = set()
        self._exported: set[TopicPartitionKey] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{sink_name}-lag", daemon=True)
        self._consumer: Any = None

    def start(self) -> LagMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(_TIMEOUT_S * 2 + 1)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.settings.metrics.refresh_s)

    def refresh(self) -> dict[TopicPartitionKey, int] | None:
        """Read the lag of the sink's partitions into the gauge; the lag per partition."""
        current = self._partitions()
        if current is not None:  # None: out of the group; keep the partitions it held
            self._held = current
        try:
            lags = self._read(sorted(self._held))
        except (KafkaException, WalbridgeError) as exc:
            log.debug("%s: lag unavailable: %s", self.sink_name, exc)
            self.total = None
            return None
        self.total = sum(lags.values())
        self._export(lags)
        return lags

    def _read(self, keys: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        if not keys:
            return {}
        if self._consumer is None:
            self._consumer = make_consumer(self.settings.kafka, self.group_id)
        partitions = [TopicPartition(t, p) for t, p in keys]
        lags = partition_lags(self._consumer, partitions, _TIMEOUT_S)
        return {(p.topic, p.partition): p.backlog for p in lags}

    def _export(self, lags: dict[TopicPartitionKey, int]) -> None:
        if self._gauge is None:
            return
        for topic, partition in self._exported - set(lags):
            with contextlib.suppress(KeyError):
                self._gauge.remove(self.sink_name, topic, str(partition))
        for (topic, partition), lag in lags.items():
            self._gauge.labels(sink=self.sink_name, topic=topic, partition=str(partition)).set(lag)
        self._exported = set(lags)
