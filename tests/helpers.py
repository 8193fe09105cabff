"""Test helpers shared by the whole suite: Kafka reading, polling, running the CLI, free ports.

- ``consume_all(bootstrap, topics, ...)`` reads every partition from the beginning with ``assign``
  (no consumer-group join: slow on the test broker) and returns the ``confluent_kafka.Message`` objects.
- ``json_or_none(raw)`` decodes a key or value (``None`` stays ``None``: tombstones).
- ``wait_until(predicate, timeout_s, interval_s)`` polls until truthy, returns the value or raises.
- ``run_cli(*args, env=..., timeout=...)``: ``python -m walbridge.cli ARGS`` -> (code, stdout, stderr).
- ``free_port()`` and ``with_dbname(dsn, name)``.
- ``scratch_database(admin_dsn, prefix)``: a fresh database for the block, dropped after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from psycopg.conninfo import make_conninfo

from walbridge.dev.devstack import create_database, drop_database, free_port

__all__ = [
    "consume_all",
    "free_port",
    "json_or_none",
    "run_cli",
    "scratch_database",
    "wait_until",
    "with_dbname",
]

T = TypeVar("T")


def _partitions(consumer: Consumer, topics: Iterable[str], timeout_s: float) -> list[TopicPartition]:
    """Every partition of ``topics``, from the beginning; waits for topics that do not exist yet."""
    wanted = list(topics)
    deadline = time.monotonic() + timeout_s
    while True:
        metadata = consumer.list_topics(timeout=5)
        found = {
            t: metadata.topics[t] for t in wanted if t in metadata.topics and not metadata.topics[t].error
        }
        if len(found) == len(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [TopicPartition(t, p, 0) for t, meta in found.items() for p in sorted(meta.partitions)]


def consume_all(
    bootstrap: str,
    topics: Iterable[str],
    *,
    min_count: int | None = None,
    idle_s: float = 2.0,
    timeout_s: float = 60.0,
    config: Mapping[str, Any] | None = None,
) -> list[Message]:
    """Read ``topics`` from offset 0 until ``min_count`` messages arrived and ``idle_s`` passed without
    a new one, or ``timeout_s`` passed. Returns what was read (check its length yourself)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"helpers-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            **(config or {}),
        }
    )
    messages: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign(_partitions(consumer, topics, timeout_s))
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=1000, timeout=0.2)
            fresh = [m for m in batch if _checked(m)]
            if fresh:
                messages.extend(fresh)
                last_new = time.monotonic()
            enough = min_count is None or len(messages) >= min_count
            if enough and time.monotonic() - last_new >= idle_s:
                break
    finally:
        consumer.close()
    return messages


def _checked(message: Message) -> bool:
    """True for a record, False for a partition-EOF event; raises on any other error."""
    error = message.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        return False
    raise RuntimeError(f"consume error: {error}")


def json_or_none(raw: bytes | str | None) -> Any:
    """Decode JSON bytes; ``None`` (a tombstone value or a null key) stays ``None``."""
    return None if raw is None else json.loads(raw)


def wait_until(predicate: Callable[[], T], timeout_s: float = 30.0, interval_s: float = 0.2) -> T:
    """Call ``predicate`` until it returns something truthy; return it, or raise AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last value: {value!r})")
        time.sleep(interval_s)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0, module: str = "walbridge.cli"
) -> tuple[int, str, str]:
    """Run ``python -m walbridge.cli ARGS`` with ``env`` added to the environment."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return result.returncode, result.stdout, result.stderr


def with_dbname(dsn: str, dbname: str) -> str:
    """The same DSN pointing at another database (URI and key=value forms)."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(dsn, dbname=dbname)


@contextmanager
def scratch_database(admin_dsn: str, prefix: str = "test") -> Iterator[str]:
    """A fresh database ``<prefix>_<random>`` beside ``admin_dsn``'s; its DSN. Dropped (FORCE) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    create_database(admin_dsn, name)
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        drop_database(admin_dsn, name)
