"""What the soak measures while it runs: topic ends, sink positions, lag, capture's memory.

Contract: :class:`TopicTail` reads every partition of the pipeline's topics from the start and keeps
each one's end (the next offset) from the records it read, which is exact, unlike a listed high
watermark on the test broker. :class:`Sampler` records a :class:`Sample` every ``interval_s``: changes
written, records in Kafka, records the PostgreSQL sink applied (its offsets in the destination), the
lag of both sinks (the Salesforce sink's from its group's committed offsets) and capture's RSS. A value
that cannot be read at that moment (the destination is stopped) is None.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, TopicPartition

from walbridge.sinks.postgres import OFFSETS_TABLE

__all__ = ["Sample", "Sampler", "TopicTail", "rss_mb"]


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


class TopicTail:
    """Reads ``topics`` (3 partitions each) from the start on a thread; ``ends`` is exact once read."""

    def __init__(self, bootstrap: str, topics: list[str], options: dict[str, Any], partitions: int = 3):
        self.topics = topics
        self.ends: dict[tuple[str, int], int] = {}
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"soak-tail-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "log_level": 0,
                **options,
            }
        )
        self._consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="soak-tail", daemon=True)
        self.last_read = time.monotonic()

    def start(self) -> TopicTail:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(2000, timeout=0.5)
            with self._lock:
                for message in messages:
                    if message.error() is None:
                        key = (str(message.topic()), int(message.partition() or 0))
                        self.ends[key] = max(self.ends.get(key, 0), int(message.offset() or 0) + 1)
            if messages:
                self.last_read = time.monotonic()
        self._consumer.close()

    def snapshot(self, topics: list[str] | None = None) -> dict[tuple[str, int], int]:
        with self._lock:
            return {k: v for k, v in self.ends.items() if topics is None or k[0] in topics}

    def idle_s(self) -> float:
        return time.monotonic() - self.last_read

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass
class Sample:
    t_s: float
    written: int
    in_kafka: int
    applied_pg: int | None
    lag_pg: int | None
    lag_sf: int | None
    capture_rss_mb: float | None


class SinkPositions:
    """Where each sink is: the PostgreSQL sink's offsets in the destination, the Salesforce sink's."""

    def __init__(self, dest_dsn: str, pg_group: str, bootstrap: str, sf_group: str, options: dict[str, Any]):
        self.dest_dsn = dest_dsn
        self.pg_group = pg_group
        self._sf = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": sf_group,
                "enable.auto.commit": False,
                "log_level": 0,
                **options,
            }
        )

    def postgres(self) -> dict[tuple[str, int], int] | None:
        try:
            with psycopg.connect(self.dest_dsn, autocommit=True, connect_timeout=2) as conn:
                if conn.execute("SELECT to_regclass(%s)", (OFFSETS_TABLE,)).fetchone() == (None,):
                    return {}
                rows = conn.execute(
                    f'SELECT topic, "partition", next_offset FROM {OFFSETS_TABLE} WHERE group_id = %s',
                    (self.pg_group,),
                ).fetchall()
        except psycopg.Error:
            return None
        return {(topic, partition): offset for topic, partition, offset in rows}

    def salesforce(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        try:
            found = self._sf.committed([TopicPartition(t, p) for t, p in partitions], timeout=3)
        except KafkaException:
            return None
        return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in found}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._sf.close()


def lag(ends: dict[tuple[str, int], int], positions: dict[tuple[str, int], int] | None) -> int | None:
    if positions is None:
        return None
    return sum(max(0, end - positions.get(key, 0)) for key, end in ends.items())


class Sampler:
    """A :class:`Sample` every ``interval_s`` on a thread, until stopped."""

    def __init__(
        self,
        clock: Callable[[], float],
        written: Callable[[], int],
        capture_pid: Callable[[], int | None],
        tail: TopicTail,
        positions: SinkPositions,
        sf_topics: list[str],
        interval_s: float = 1.0,
    ) -> None:
        self.clock = clock
        self.written = written
        self.capture_pid = capture_pid
        self.tail = tail
        self.positions = positions
        self.sf_topics = sf_topics
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def take(self) -> Sample:
        ends = self.tail.snapshot()
        pg = self.positions.postgres()
        sf_ends = {k: v for k, v in ends.items() if k[0] in self.sf_topics}
        sf = self.positions.salesforce(list(sf_ends))
        return Sample(
            t_s=round(self.clock(), 2),
            written=self.written(),
            in_kafka=sum(ends.values()),
            applied_pg=None if pg is None else sum(pg.values()),
            lag_pg=lag(ends, pg),
            lag_sf=lag(sf_ends, sf),
            capture_rss_mb=rss_mb(self.capture_pid()),
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self.take())

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
