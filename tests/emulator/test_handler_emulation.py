"""The emulator's emulation of the Apex handler (EmulatorConfig(handler=True)): events published through the
REST API become Accounts/Contacts as PostgreSQLDataEventHandler.cls would write them, read back through
``GET /emulator/records``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from helpers import wait_until
from walbridge.emulator import EmulatorConfig, EmulatorServer
from walbridge.emulator.handler import SLICE_SIZE, subscriber_batch_size
from walbridge.emulator.metadata import default_metadata_dir

EVENT = "PostgreSQL_Data__e"
V = "/services/data/v62.0"


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    emulator = EmulatorServer(EmulatorConfig(handler=True)).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/emulator/reset").raise_for_status()
        answer = http.post(
            "/services/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "walbridge-emulator",
                "client_secret": "walbridge-emulator-secret",
            },
        )
        http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
        yield http


_position = iter(range(1000, 10**9))


def change(
    table: str, op: str, key: str, row: dict[str, Any] | None = None, position: int | None = None
) -> dict[str, Any]:
    return {
        "Source_Table__c": f"inventory.{table}",
        "Operation__c": op,
        "Record_Id__c": key,
        "Payload__c": orjson.dumps(row if row is not None else {"id": key}).decode(),
        "Timestamp__c": "2024-05-01T12:00:00.000Z",
        "Event_Key__c": f"k-{uuid.uuid4()}",
        "Source_Position__c": str(position if position is not None else next(_position)).zfill(20),
    }


def customer(key: str, first: str, **extra: Any) -> dict[str, Any]:
    return {"id": key, "first_name": first, "last_name": "Doe", **extra}


def publish(http: httpx.Client, *records: dict[str, Any]) -> None:
    body = {"allOrNone": False, "records": [{"attributes": {"type": EVENT}, **r} for r in records]}
    answer = http.post(f"{V}/composite/sobjects", json=body)
    assert answer.status_code == 200, answer.text
    assert all(result["success"] for result in answer.json()), answer.text


def records(http: httpx.Client, sobject: str, deleted: bool = False) -> dict[str, dict[str, Any]]:
    params = {"sobject": sobject, "deleted": "1" if deleted else "0"}
    body = http.get("/emulator/records", params=params).raise_for_status().json()
    if sobject == "Integration_Log__c":
        return {log["Event_Key__c"]: log for log in body["records"]}
    return {r["External_Id__c"]: r for r in body["records"] if not r.get("IsDeleted")}


def settled(http: httpx.Client) -> dict[str, Any]:
    """The handler's status once it has consumed every published event."""
    latest = http.get("/emulator/stats").json()["latest_replay_id"]

    def done() -> dict[str, Any] | None:
        status = http.get("/emulator/records").json()["handler"]
        return status if status["checkpoint"] >= latest else None

    return wait_until(done, timeout_s=10, interval_s=0.05)


def test_upsert_update_delete_and_address(client: httpx.Client) -> None:
    address = orjson.dumps({"street": "1 Main", "city": "Boston", "zip": "02101"}).decode()
    publish(client, change("customers", "INSERT", "1", customer("1", "Ann", address=address, phone="555")))
    publish(client, change("customers", "UPDATE", "1", customer("1", "Anna", address=address)))
    publish(client, change("customers", "INSERT", "2", customer("2", "Bo")))
    publish(client, change("customers", "DELETE", "2", customer("2", "Bo")))
    status = settled(client)

    accounts = records(client, "Account")
    assert set(accounts) == {"1"}
    assert accounts["1"]["Name"] == "Anna Doe"
    assert accounts["1"]["Phone"] is None  # the update's row has no phone: the field is cleared
    assert (accounts["1"]["BillingCity"], accounts["1"]["BillingPostalCode"]) == ("Boston", "02101")
    assert accounts["1"]["Data_Source__c"] == "PostgreSQL"
    assert (status["applied"], status["skipped"], status["failed"]) == (4, 0, 0)
    assert records(client, "Integration_Log__c") == {}, "successes are not logged by default"


def test_older_position_is_skipped_for_upserts_and_deletes(client: httpx.Client) -> None:
    inserted = change("customers", "INSERT", "7", customer("7", "New"), position=500)
    publish(client, inserted)
    publish(client, change("customers", "UPDATE", "7", customer("7", "Old"), position=400))
    stale_delete = change("customers", "DELETE", "7", position=450)
    publish(client, stale_delete)
    publish(client, inserted)  # the same change again (same position): re-applied, harmless
    status = settled(client)

    account = records(client, "Account")["7"]
    assert account["Name"] == "New Doe"
    assert account["Source_Position__c"] == "500".zfill(20)
    assert (status["skipped"], status["applied"]) == (2, 2)
    log = records(client, "Integration_Log__c")[stale_delete["Event_Key__c"]]
    assert log["Status__c"] == "Skipped" and log["Message__c"].startswith("stale")


def test_snapshot_row_does_not_hide_a_transaction_open_during_the_snapshot(client: httpx.Client) -> None:
    snapshot = change("customers", "READ", "9", customer("9", "Snapshot"), position=900)
    open_transaction = change("customers", "UPDATE", "9", customer("9", "Committed"), position=850)
    publish(client, snapshot)
    publish(client, open_transaction)
    publish(client, snapshot, open_transaction)  # replayed from an older offset
    status = settled(client)

    account = records(client, "Account")["9"]
    assert (account["Name"], account["Source_Position__c"]) == ("Committed Doe", "850".zfill(20))
    assert status["skipped"] == 0


def test_a_stale_upsert_does_not_resurrect_a_deleted_record(client: httpx.Client) -> None:
    publish(client, change("customers", "INSERT", "8", customer("8", "Gone"), position=600))
    publish(client, change("customers", "DELETE", "8", position=700))
    publish(client, change("customers", "UPDATE", "8", customer("8", "Zombie"), position=650))
    settled(client)

    assert "8" not in records(client, "Account")
    deleted = client.get("/emulator/records", params={"sobject": "Account", "deleted": "1"}).json()
    assert [r["Source_Position__c"] for r in deleted["records"] if r["External_Id__c"] == "8"] == [
        "700".zfill(20)
    ]


def test_the_latest_of_several_deleted_copies_guards(client: httpx.Client) -> None:
    """Deleted, inserted again, deleted again: an upsert older than the second delete stays out, one
    newer than it comes back; the Recycle Bin keeps both copies."""
    publish(client, change("customers", "INSERT", "6", customer("6", "First"), position=100))
    publish(client, change("customers", "DELETE", "6", position=200))
    publish(client, change("customers", "INSERT", "6", customer("6", "Second"), position=300))
    publish(client, change("customers", "DELETE", "6", position=400))
    stale = change("customers", "UPDATE", "6", customer("6", "Between"), position=350)
    publish(client, stale)
    settled(client)
    assert "6" not in records(client, "Account")
    log = records(client, "Integration_Log__c")[stale["Event_Key__c"]]
    assert log["Status__c"] == "Skipped" and log["Message__c"].startswith("stale")

    publish(client, change("customers", "UPDATE", "6", customer("6", "Back"), position=450))
    settled(client)
    assert records(client, "Account")["6"]["Name"] == "Back Doe"
    deleted = client.get("/emulator/records", params={"sobject": "Account", "deleted": "1"}).json()
    copies = [r for r in deleted["records"] if r["External_Id__c"] == "6" and r.get("IsDeleted")]
    assert sorted(r["Source_Position__c"] for r in copies) == [
        "200".zfill(20),
        "400".zfill(20),
    ]


def test_deleting_a_missing_row_is_skipped(client: httpx.Client) -> None:
    missing = change("contacts", "DELETE", "404")
    publish(client, missing)
    settled(client)

    log = records(client, "Integration_Log__c")[missing["Event_Key__c"]]
    assert log["Status__c"] == "Skipped"
    assert log["Message__c"] == "no Contact with External_Id__c 404 to delete"


def test_external_ids_are_case_sensitive(client: httpx.Client) -> None:
    publish(client, change("customers", "INSERT", "abc", customer("abc", "Lower")))
    publish(client, change("customers", "INSERT", "ABC", customer("ABC", "Upper")))
    settled(client)

    accounts = records(client, "Account")
    assert (accounts["abc"]["Name"], accounts["ABC"]["Name"]) == ("Lower Doe", "Upper Doe")


def test_contact_before_its_account_is_linked_when_the_account_arrives(client: httpx.Client) -> None:
    publish(client, change("contacts", "INSERT", "50", {"id": 50, "customer_id": 9, "last_name": "Lee"}))
    status = settled(client)
    waiting = records(client, "Contact")["50"]
    assert (waiting["AccountId"], waiting["Pending_Account_Key__c"]) == (None, "9")
    assert status["pending_links"] == 1

    publish(client, change("customers", "INSERT", "9", customer("9", "Parent")))
    settled(client)

    contact = records(client, "Contact")["50"]
    assert contact["AccountId"] == records(client, "Account")["9"]["Id"]
    assert contact["Pending_Account_Key__c"] is None
    assert records(client, "Integration_Log__c") == {}


def test_contact_and_its_account_in_one_slice_are_linked(client: httpx.Client) -> None:
    publish(
        client,
        change("contacts", "INSERT", "52", {"id": 52, "customer_id": 61, "last_name": "Y"}),
        change("customers", "INSERT", "61", customer("61", "Same")),
    )
    status = settled(client)

    assert records(client, "Contact")["52"]["AccountId"] == records(client, "Account")["61"]["Id"]
    assert status["pending_links"] == 0


def test_deleting_an_account_deletes_its_contacts(client: httpx.Client) -> None:
    publish(client, change("customers", "INSERT", "62", customer("62", "Parent")))
    publish(client, change("contacts", "INSERT", "53", {"id": 53, "customer_id": 62, "last_name": "Z"}))
    publish(client, change("customers", "DELETE", "62"))
    settled(client)

    assert records(client, "Contact") == {}
    deleted = client.get("/emulator/records", params={"sobject": "Contact", "deleted": "1"}).json()
    assert [c["External_Id__c"] for c in deleted["records"]] == ["53"]


def test_skips_failures_and_slices(client: httpx.Client) -> None:
    truncate = change("customers", "TRUNCATE", "")
    other = change("orders", "INSERT", "1")
    bad_op = change("customers", "MERGE", "3")
    bad_json = {**change("customers", "INSERT", "4"), "Payload__c": '{"id": '}
    events = [truncate, other, bad_op, bad_json]
    events += [change("customers", "INSERT", str(i), customer(str(i), "Bulk")) for i in range(100, 160)]
    publish(client, *events)
    status = settled(client)

    logs = records(client, "Integration_Log__c")
    assert logs[truncate["Event_Key__c"]]["Status__c"] == "Skipped"
    assert logs[other["Event_Key__c"]]["Status__c"] == "Skipped"
    assert logs[bad_op["Event_Key__c"]]["Status__c"] == "Error"
    assert logs[bad_json["Event_Key__c"]]["Status__c"] == "Error"
    assert len(records(client, "Account")) == 60
    batch = subscriber_batch_size(default_metadata_dir())
    assert status["runs"] >= -(-len(events) // batch) and len(events) > SLICE_SIZE


def test_records_endpoint_needs_the_handler() -> None:
    with EmulatorServer(EmulatorConfig()) as plain, httpx.Client(base_url=plain.url) as http:
        assert http.get("/emulator/records").status_code == 404
