"""The whole Salesforce path with the handler emulated: logical capture of customers and contacts (snapshot
and concurrent changes) → Kafka (3 partitions) → Salesforce sink → emulator with ``handler=True``; the
emulated Accounts and Contacts end equal, row for row, to the source tables read by SQL."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from capture_support import RunningCapture, make_settings
from helpers import wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.config import DlqSettings, KafkaSettings, SalesforceSinkSettings, Settings
from walbridge.emulator import DEFAULT_APP, EmulatorConfig, EmulatorServer
from walbridge.sinks.runner import SinkRunner
from walbridge.sinks.salesforce.sink import SalesforceSink

SCHEMA = """
CREATE SCHEMA inventory;
CREATE TABLE inventory.customers (
    id integer PRIMARY KEY, first_name text, last_name text NOT NULL, phone text, address jsonb
);
CREATE TABLE inventory.contacts (
    id integer PRIMARY KEY, customer_id integer NOT NULL, last_name text NOT NULL, email text
);
ALTER TABLE inventory.customers REPLICA IDENTITY FULL;
ALTER TABLE inventory.contacts REPLICA IDENTITY FULL;
INSERT INTO inventory.customers
    SELECT g, 'First' || g, 'Last', '555-' || g, jsonb_build_object('city', 'City' || g)
    FROM generate_series(1, 30) g;
INSERT INTO inventory.contacts SELECT g, 1 + g % 10, 'Contact' || g, 'c' || g || '@example.com'
    FROM generate_series(1, 10) g;
"""
TABLES = ["inventory.customers", "inventory.contacts"]


@pytest.fixture
def source(pg_dsn: str) -> Iterator[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    yield pg_dsn


def workload(dsn: str, seed: int, count: int) -> None:
    """Customers 1..10 and 61..120 (the contacts' parents) are never deleted, 11..60 come and go; a contact
    is inserted in the transaction that inserts or updates its parent, and contacts come and go."""
    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            action = rng.random()
            if action < 0.35:
                key = rng.randint(11, 60)
                conn.execute(
                    "INSERT INTO inventory.customers VALUES (%s, %s, 'New', NULL, %s) "
                    "ON CONFLICT (id) DO UPDATE SET first_name = EXCLUDED.first_name",
                    (key, f"v{rng.randint(0, 999)}", '{"city": "Paris"}'),
                )
            elif action < 0.6:
                conn.execute(
                    "UPDATE inventory.customers SET first_name = %s, phone = %s WHERE id = %s",
                    (f"u{rng.randint(0, 999)}", f"555-{rng.randint(0, 99)}", rng.randint(1, 60)),
                )
            elif action < 0.75:
                conn.execute("DELETE FROM inventory.customers WHERE id = %s", (rng.randint(11, 60),))
            elif action < 0.9:
                with conn.transaction():  # a new parent and its contact: they travel on different topics
                    parent = rng.randint(61, 120)
                    conn.execute(
                        "INSERT INTO inventory.customers VALUES (%s, 'Parent', %s, NULL, NULL) "
                        "ON CONFLICT (id) DO UPDATE SET last_name = EXCLUDED.last_name",
                        (parent, f"L{rng.randint(0, 99)}"),
                    )
                    conn.execute(
                        "INSERT INTO inventory.contacts VALUES (%s, %s, %s, NULL) "
                        "ON CONFLICT (id) DO UPDATE SET customer_id = EXCLUDED.customer_id, "
                        "last_name = EXCLUDED.last_name",
                        (rng.randint(11, 40), parent, f"C{rng.randint(0, 999)}"),
                    )
            else:
                conn.execute("DELETE FROM inventory.contacts WHERE id = %s", (rng.randint(1, 40),))


def source_rows(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        accounts = conn.execute(
            "SELECT id::text, concat_ws(' ', first_name, last_name), phone, address->>'city' "
            "FROM inventory.customers"
        ).fetchall()
        contacts = conn.execute(
            "SELECT id::text, last_name, email, customer_id::text FROM inventory.contacts"
        ).fetchall()
    return {"Account": sorted(accounts), "Contact": sorted(contacts)}


def emulated_rows(url: str) -> dict[str, Any]:
    def read(sobject: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{url}/emulator/records", params={"sobject": sobject}, timeout=5).json()
        return list(body["records"])

    accounts = read("Account")
    by_id = {a["Id"]: a["External_Id__c"] for a in accounts}
    return {
        "Account": sorted(
            (a["External_Id__c"], a["Name"], a["Phone"], a.get("BillingCity")) for a in accounts
        ),
        "Contact": sorted(
            (c["External_Id__c"], c["LastName"], c["Email"], by_id.get(c["AccountId"]))
            for c in read("Contact")
        ),
    }


def test_emulated_accounts_and_contacts_equal_the_source(
    source: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    emulator = EmulatorServer(EmulatorConfig(handler=True)).start()
    capture_settings = make_settings(source, kafka_bootstrap, topic_prefix, tmp_path, TABLES)
    sink_settings = SalesforceSinkSettings(
        instance_url=emulator.url,
        client_id=DEFAULT_APP.client_id,
        client_secret=DEFAULT_APP.client_secret,
        topics=[f"{topic_prefix}.{table}" for table in TABLES],
        group_id=f"{topic_prefix}-sf",
        linger_ms=50,
    )
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, partitions=3, session_timeout_ms=6000),
        dlq=DlqSettings(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.5),
        sinks=[sink_settings],
    )
    stop_sink = threading.Event()
    errors: list[BaseException] = []

    def run_sink() -> None:
        try:
            SinkRunner(SalesforceSink(sink_settings), settings, sink_settings).run(stop_sink)
        except BaseException as exc:
            errors.append(exc)

    sink = threading.Thread(target=run_sink, daemon=True)
    try:
        with RunningCapture(LogicalCapture(capture_settings)):
            sink.start()
            writers = [threading.Thread(target=workload, args=(source, n, 150)) for n in range(2)]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join(120)
            expected = source_rows(source)
            last: list[Any] = []

            def equal() -> bool:
                last[:] = [emulated_rows(emulator.url)]
                return last[0] == expected and not errors

            try:
                wait_until(equal, timeout_s=90, interval_s=1)
            except AssertionError as exc:
                got = last[0] if last else {}
                diff = {
                    sobject: {
                        "missing": sorted(set(rows) - set(got.get(sobject, []))),
                        "unexpected": sorted(set(got.get(sobject, [])) - set(rows)),
                    }
                    for sobject, rows in expected.items()
                }
                status = httpx.get(f"{emulator.url}/emulator/records").json()["handler"]
                raise AssertionError(
                    f"emulated org differs from the source: {diff}; handler {status}; {errors}"
                ) from exc
        status = httpx.get(f"{emulator.url}/emulator/records").json()["handler"]
        assert status["failed"] == 0, status
    finally:
        stop_sink.set()
        sink.join(30)
        emulator.stop()
