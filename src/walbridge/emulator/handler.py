"""Emulation of the deployed Apex handler's *contract* (``PostgreSQLDataEventHandler.cls``), not of Apex.

Contract: ``HandlerEmulation(store, ...)`` subscribes to ``PostgreSQL_Data__e`` in the emulator's
:class:`~walbridge.emulator.store.EventStore` like the platform-event trigger does, and keeps in memory the
Accounts, Contacts and ``Integration_Log__c`` rows the handler would write:

- runs of ``batch_size`` events (the subscriber config's ``batchSize``) in ReplayId order, applied in
  slices of :data:`SLICE_SIZE`; ``customers`` → Account, ``contacts`` → Contact, upserted by
  ``External_Id__c`` (``Record_Id__c``, else the payload's ``id``; case-sensitive); ``DELETE`` deletes;
  ``TRUNCATE``, other tables and a repeated ``Event_Key__c`` in a slice are skipped; unknown operations and
  bad payloads fail;
- the source-position guard: ``Source_Position__c`` (digits, left-padded to :data:`POSITION_LENGTH`) is stored
  on the record; an event whose position is before the stored one (live record or its deleted copy in the
  Recycle Bin, which a delete stamps with its own position) is skipped, an equal one re-applies; snapshot
  rows (READ) are guarded but do not store their position; deleting a missing record is skipped;
- a Contact whose ``customer_id`` Account is neither stored nor upserted in its slice is upserted unlinked
  with ``Pending_Account_Key__c``; upserting that Account later links it; deleting an Account deletes its
  Contacts (as Salesforce does);
- a log row for every Error and Skipped event; for Success only with ``log_successes``.

It does not emulate governor limits or row locks (so no retries).
``tests/emulator/test_handler_contract.py`` checks these names and rules against the Apex source.
Thread-safe; deliveries run on one background thread.
"""

from __future__ import annotations

import itertools
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from walbridge.emulator.store import EventStore, salesforce_id

__all__ = [
    "EVENT",
    "POSITION_LENGTH",
    "SLICE_SIZE",
    "HandlerEmulation",
    "normalize_position",
    "subscriber_batch_size",
]

EVENT = "PostgreSQL_Data__e"
TRIGGER = "PostgreSQLDataEventTrigger"
SLICE_SIZE = 25
POSITION_LENGTH = 20
DATA_SOURCE = "PostgreSQL"
DEFAULT_BATCH_SIZE = 2000  # the platform's default without a PlatformEventSubscriberConfig
TABLES = {"customers": "Account", "contacts": "Contact"}
_ID_PREFIX = {"Account": "001", "Contact": "003", "Integration_Log__c": "a00"}
_UPSERT_OPERATIONS = {"INSERT", "UPDATE", "READ"}
_NS = "{http://soap.sforce.com/2006/04/metadata}"


def subscriber_batch_size(metadata_dir: Path) -> int:
    """``batchSize`` of the PlatformEventSubscriberConfig of the trigger under ``metadata_dir``."""
    for path in sorted(metadata_dir.rglob("*.platformEventSubscriberConfig-meta.xml")):
        root = ET.parse(path).getroot()
        if (root.findtext(f"{_NS}platformEventConsumer") or "").strip() == TRIGGER:
            return int(root.findtext(f"{_NS}batchSize") or DEFAULT_BATCH_SIZE)
    return DEFAULT_BATCH_SIZE


def normalize_position(position: Any) -> str | None:
    """Fixed-width text so that text order is numeric order; anything but ≤20 digits is not comparable."""
    if position is None:
        return None
    text = str(position).strip()
    if not text or not text.isdigit() or not text.isascii() or len(text) > POSITION_LENGTH:
        return None
    return text.zfill(POSITION_LENGTH)


@dataclass
class _Change:
    event: dict[str, Any]
    status: str = "Success"
    message: str = ""
    target: str | None = None
    operation: str = ""
    external_id: str = ""
    position: str | None = None
    row: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = self.event["fields"]
        return fields

    @property
    def stores_position(self) -> bool:
        """Snapshot rows (READ) are guarded but never raise the stored position (see the Apex class)."""
        return self.position is not None and self.operation != "READ"

    def skip(self, reason: str) -> None:
        self.status, self.message = "Skipped", reason

    def fail(self, reason: str) -> None:
        self.status, self.message = "Error", reason


class HandlerEmulation:
    """Accounts, Contacts and logs as the deployed handler would leave them."""

    def __init__(
        self,
        store: EventStore,
        batch_size: int = DEFAULT_BATCH_SIZE,
        log_successes: bool = False,
    ) -> None:
        self._store = store
        self.batch_size = batch_size
        self.log_successes = log_successes
        self._lock = threading.RLock()
        """Held while a slice is applied and while the records are read; never by a publisher."""
        self._published = threading.Event()
        self._ids = itertools.count(1)
        self._records: dict[str, dict[str, dict[str, Any]]] = {"Account": {}, "Contact": {}}
        self._recycle_bin: dict[str, list[dict[str, Any]]] = {"Account": [], "Contact": []}
        self._deleted_positions: dict[str, dict[str, str]] = {"Account": {}, "Contact": {}}
        """Per sobject, External_Id__c → the latest position among its copies in the Recycle Bin (the
        guard's lookup; scanning the bin made every event slower as deletes accumulated)."""
        self._logs: list[dict[str, Any]] = []
        self.counts = {"applied": 0, "skipped": 0, "failed": 0, "runs": 0, "pending_links": 0}
        self.checkpoint = store.latest_replay_id()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="sf-emulator-handler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    def notify(self) -> None:
        """New events were published (the store's append hook). Never waits for a run under way: a
        publish call answers as fast while the handler works through a backlog."""
        self._published.set()

    def records(self, sobject: str, deleted: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            if sobject == "Integration_Log__c":
                return [dict(log) for log in self._logs]
            if sobject not in self._records:
                raise KeyError(sobject)
            found = [dict(r) for r in self._records[sobject].values()]
            if deleted:
                found += [dict(r, IsDeleted=True) for r in self._recycle_bin[sobject]]
            return found

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "checkpoint": self.checkpoint}

    def reset(self) -> None:
        with self._lock:
            for sobject in self._records:
                self._records[sobject].clear()
                self._recycle_bin[sobject].clear()
                self._deleted_positions[sobject].clear()
            self._logs.clear()
            self.counts = dict.fromkeys(self.counts, 0)
            self.checkpoint = self._store.latest_replay_id()

    def stop(self) -> None:
        self._stopped = True
        self._published.set()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------------ delivery

    def _loop(self) -> None:
        while not self._stopped:
            self._published.clear()  # before reading: an append from here on wakes the wait below
            batch = self._store.after(self.checkpoint, self.batch_size, EVENT)
            if batch:
                self._run(batch)
            else:
                self._published.wait(1.0)

    def _run(self, batch: list[dict[str, Any]]) -> None:
        """One trigger run: slices, the checkpoint after each (readers see the records between slices)."""
        with self._lock:
            self.counts["runs"] += 1
        for start in range(0, len(batch), SLICE_SIZE):
            chunk = batch[start : start + SLICE_SIZE]
            with self._lock:
                if self._stopped or int(chunk[0]["ReplayId"]) <= self.checkpoint:
                    return  # stopping, or reset() moved the checkpoint past this batch meanwhile
                self._apply_slice(chunk)
                self.checkpoint = int(chunk[-1]["ReplayId"])

    def _apply_slice(self, chunk: list[dict[str, Any]]) -> None:
        changes = [_Change(event) for event in chunk]
        seen_keys: set[str] = set()
        for change in changes:
            key = change.fields.get("Event_Key__c")
            if key and key in seen_keys:
                change.skip(f"duplicate event key {key} in the same batch")
                continue
            if key:
                seen_keys.add(key)
            try:
                self._route(change)
            except (ValueError, TypeError) as exc:
                change.fail(f"PayloadException: {exc}")
        last = self._guard(changes)
        upserts: dict[str, list[_Change]] = {"Account": [], "Contact": []}
        deletes: dict[str, list[_Change]] = {"Account": [], "Contact": []}
        for change in last.values():
            assert change.target is not None
            (deletes if change.operation == "DELETE" else upserts)[change.target].append(change)
        for change in upserts["Account"]:
            self._upsert(change, change.values)
            self._link_pending_contacts(change.external_id)
        for change in upserts["Contact"]:
            self._upsert(change, self._contact_fields(change))
        for target in ("Contact", "Account"):
            for change in deletes[target]:
                self._delete(change)
        self._write_logs(changes)

    def _route(self, change: _Change) -> None:
        operation = str(change.fields.get("Operation__c") or "").strip().upper()
        source_table = change.fields.get("Source_Table__c") or ""
        table = source_table.rsplit(".", 1)[-1].strip().lower()
        if operation == "TRUNCATE":
            change.skip("TRUNCATE is not applied to Salesforce records")
        elif operation != "DELETE" and operation not in _UPSERT_OPERATIONS:
            change.fail(f"unknown operation {change.fields.get('Operation__c')}")
        elif table in TABLES:
            change.target = TABLES[table]
            change.operation = operation
            change.row = _parse_payload(change.fields.get("Payload__c"))
            change.external_id = _external_id(change.fields.get("Record_Id__c"), change.row)
            change.position = normalize_position(change.fields.get("Source_Position__c"))
            if operation != "DELETE" and change.target == "Account":
                change.values = self._account_fields(change)
        else:
            change.skip(f"no mapping for table {source_table}")

    def _guard(self, changes: list[_Change]) -> dict[str, _Change]:
        stored: dict[str, str] = {}
        last: dict[str, _Change] = {}
        for change in changes:
            if change.target is None or change.status != "Success":
                continue
            key = f"{change.target}:{change.external_id}"
            if key not in stored:
                position = self._stored_position(change.target, change.external_id)
                if position is not None:
                    stored[key] = position
            current = stored.get(key)
            if change.position is not None and current is not None and change.position < current:
                change.skip(f"stale: source position {change.position} is before the applied {current}")
                continue
            if change.stores_position and change.position is not None:
                stored[key] = change.position
            previous = last.get(key)
            if previous is not None:
                event_key = change.fields.get("Event_Key__c")
                previous.message = f"superseded by event {event_key} in the same batch"
            last[key] = change
        return last

    def _stored_position(self, sobject: str, external_id: str) -> str | None:
        live = self._records[sobject].get(external_id)
        positions = [
            normalize_position(live.get("Source_Position__c")) if live else None,
            self._deleted_positions[sobject].get(external_id),
        ]
        return max((p for p in positions if p is not None), default=None)

    def _to_recycle_bin(self, sobject: str, record: dict[str, Any]) -> None:
        self._recycle_bin[sobject].append(record)
        position = normalize_position(record.get("Source_Position__c"))
        if position is not None:
            latest = self._deleted_positions[sobject]
            key = record["External_Id__c"]
            if key not in latest or latest[key] < position:
                latest[key] = position

    def _link_pending_contacts(self, account_key: str) -> None:
        account_id = self._records["Account"][account_key]["Id"]
        for contact in self._records["Contact"].values():
            if contact.get("Pending_Account_Key__c") == account_key:
                contact.update(AccountId=account_id, Pending_Account_Key__c=None)

    def _upsert(self, change: _Change, values: dict[str, Any]) -> None:
        if change.stores_position:  # otherwise the stored position is kept
            values["Source_Position__c"] = change.position
        table = self._records[change.target or ""]
        existing = table.get(change.external_id)
        if existing is None:
            prefix = _ID_PREFIX[change.target or ""]
            existing = table[change.external_id] = {"Id": salesforce_id(prefix, next(self._ids))}
        existing.update(values)

    def _delete(self, change: _Change) -> None:
        table = self._records[change.target or ""]
        record = table.pop(change.external_id, None)
        if record is None:
            change.skip(f"no {change.target} with External_Id__c {change.external_id} to delete")
            return
        if change.position is not None:
            record["Source_Position__c"] = change.position
        self._to_recycle_bin(change.target or "", record)
        if change.target == "Account":  # Salesforce deletes an Account's Contacts with it
            contacts = self._records["Contact"]
            for key in [k for k, c in contacts.items() if c.get("AccountId") == record["Id"]]:
                self._to_recycle_bin("Contact", contacts.pop(key))

    def _account_fields(self, change: _Change) -> dict[str, Any]:
        row = change.row
        values: dict[str, Any] = {
            "External_Id__c": change.external_id,
            "Data_Source__c": DATA_SOURCE,
            "PostgreSQL_Last_Modified__c": change.fields.get("Timestamp__c"),
            "Name": _full_name(row, f"Customer {change.external_id}")[:255],
            "Phone": _text(row, "phone", 40),
            "AccountNumber": _text(row, "customer_code", 40),
        }
        address = _as_map(row.get("address"))
        if address is not None:
            values.update(
                BillingStreet=_text(address, "street", 255),
                BillingCity=_text(address, "city", 40),
                BillingState=_text(address, "state", 80),
                BillingPostalCode=_text(address, "zip", 20),
                BillingCountry=_text(address, "country", 80),
            )
        return values

    def _contact_fields(self, change: _Change) -> dict[str, Any]:
        row = change.row
        last_name = _text(row, "last_name", 80)
        values: dict[str, Any] = {
            "External_Id__c": change.external_id,
            "FirstName": _text(row, "first_name", 40),
            "LastName": last_name or f"Contact {change.external_id}",
            "Email": _text(row, "email", 80),
            "Phone": _text(row, "phone", 40),
        }
        parent = _parent_key(row)
        if parent is not None:  # no customer_id: the link is left as it is
            account = self._records["Account"].get(parent)
            if account is not None:
                values.update(AccountId=account["Id"], Pending_Account_Key__c=None)
            else:
                values.update(AccountId=None, Pending_Account_Key__c=parent)
                change.message = f"Account {parent} not in Salesforce yet: linked when it arrives"
                self.counts["pending_links"] += 1
        return values

    def _write_logs(self, changes: list[_Change]) -> None:
        for change in changes:
            name = {"Success": "applied", "Skipped": "skipped", "Error": "failed"}[change.status]
            self.counts[name] += 1
            if change.status != "Success" or self.log_successes:
                fields = change.fields
                self._logs.append(
                    {
                        "Id": salesforce_id(_ID_PREFIX["Integration_Log__c"], next(self._ids)),
                        "Event_Key__c": fields.get("Event_Key__c"),
                        "Source_Table__c": fields.get("Source_Table__c"),
                        "Operation__c": fields.get("Operation__c"),
                        "Record_Id__c": fields.get("Record_Id__c"),
                        "Source_Position__c": fields.get("Source_Position__c"),
                        "Status__c": change.status,
                        "Message__c": change.message[:32768],
                        "Replay_Id__c": change.event["ReplayId"],
                    }
                )


def _parse_payload(payload: Any) -> dict[str, Any]:
    if payload is None or not str(payload).strip():
        raise ValueError("Payload__c is empty")
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"Payload__c is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("Payload__c is not a JSON object")
    return parsed


def _external_id(record_id: Any, row: dict[str, Any]) -> str:
    value = record_id if record_id not in (None, "") and str(record_id).strip() else None
    if value is None and row.get("id") is not None:
        value = _apex_string(row["id"])
    if value is None:
        raise ValueError("neither Record_Id__c nor payload id is set")
    return str(value)


def _parent_key(row: dict[str, Any]) -> str | None:
    parent = row.get("customer_id")
    return None if parent is None else _apex_string(parent)


def _apex_string(value: Any) -> str:
    """``String.valueOf`` of a value from ``JSON.deserializeUntyped``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _text(row: dict[str, Any], key: str, max_length: int) -> str | None:
    value = row.get(key)
    return None if value is None else _apex_string(value)[:max_length]


def _full_name(row: dict[str, Any], fallback: str) -> str:
    parts = [p for p in (_text(row, "first_name", 255), _text(row, "last_name", 255)) if p and p.strip()]
    return " ".join(parts) if parts else fallback


def _as_map(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"address is not valid JSON: {exc}") from None
        return parsed if isinstance(parsed, dict) else None
    return None
