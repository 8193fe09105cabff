"""Logical capture end to end: real PostgreSQL (pgoutput), real Kafka-protocol broker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from capture_support import RunningCapture, make_settings
from helpers import consume_all, json_or_none, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.dev.samples import ECOMMERCE_CHANGES, ECOMMERCE_SCHEMA

TABLES = ["inventory.customers", "inventory.orders"]


@pytest.fixture
def ecommerce(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ECOMMERCE_SCHEMA)
    yield pg_dsn


def test_snapshot_then_stream(ecommerce: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Any) -> None:
    settings = make_settings(ecommerce, kafka_bootstrap, topic_prefix, tmp_path, TABLES)
    with RunningCapture(LogicalCapture(settings)) as running:
        with psycopg.connect(ecommerce, autocommit=True) as conn:
            for statement in ECOMMERCE_CHANGES:
                conn.execute(statement)
        topics = [f"{topic_prefix}.inventory.customers", f"{topic_prefix}.inventory.orders"]
        # 4 snapshot rows + 5 changes + 1 tombstone
        messages = consume_all(kafka_bootstrap, topics, min_count=10, timeout_s=60)
        wait_until(lambda: running.capture.confirmed > 0, timeout_s=20)
    values = [json_or_none(m.value()) for m in messages]
    ops = sorted(v["op"] if v else "tombstone" for v in values)
    assert ops == sorted(["r", "r", "r", "r", "c", "u", "c", "u", "d", "tombstone"])
    snapshot = [v for v in values if v and v["op"] == "r"]
    assert {v["source"]["snapshot"] for v in snapshot} <= {
        "first",
        "true",
        "last",
        "first_in_data_collection",
        "last_in_data_collection",
    }
    order = next(
        v for v in values if v and v["op"] == "r" and v["after"].get("order_number") == "ORD-2024-001"
    )
    assert order["after"]["total_amount"] == "149.99"
    assert isinstance(order["after"]["items"], str)
    update = next(v for v in values if v and v["op"] == "u" and v["source"]["table"] == "customers")
    assert update["before"]["phone"] == "+1-555-0101"
    assert update["after"]["phone"] == "+1-555-0199"
    assert update["after"]["created_at"].endswith("Z")
    delete = next(v for v in values if v and v["op"] == "d")
    assert delete["before"]["order_number"] == "ORD-2024-002"
    keys = {json_or_none(m.key())["id"] for m in messages if m.topic().endswith("orders")}
    assert keys == {1, 2, 3}
