"""The emulator's handler emulation (walbridge.emulator.handler) and the Apex handler it emulates
(salesforce/.../PostgreSQLDataEventHandler.cls) state the same contract: both sources are read and their
constants, tables, operations, field mappings, log fields, guard and messages compared."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from walbridge.emulator import handler
from walbridge.emulator.handler import subscriber_batch_size
from walbridge.emulator.metadata import default_metadata_dir

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ROOT / "salesforce" / "force-app" / "main" / "default" / "classes"
APEX = (CLASSES / "PostgreSQLDataEventHandler.cls").read_text()
PYTHON = inspect.getsource(handler)


def _apex_constant(name: str) -> str:
    match = re.search(rf"static final \w+ {name} = '?([^';]+)'?;", APEX)
    assert match, name
    return match.group(1)


def _apex_method(name: str) -> str:
    declaration = re.search(rf"\n( +)(?:public|private)[^\n(]* {name}\(", APEX)
    assert declaration, name
    end = APEX.index(f"\n{declaration.group(1)}}}\n", declaration.start())
    return APEX[declaration.start() : end]


def test_constants() -> None:
    assert int(_apex_constant("MAX_RETRIES")) == 9  # row locks only; the emulation has none
    assert int(_apex_constant("SLICE_SIZE")) == handler.SLICE_SIZE
    assert int(_apex_constant("POSITION_LENGTH")) == handler.POSITION_LENGTH
    assert _apex_constant("DATA_SOURCE") == handler.DATA_SOURCE
    statuses = {_apex_constant(f"STATUS_{s}") for s in ("SUCCESS", "SKIPPED", "ERROR")}
    assert statuses == set(re.findall(r'"(Success|Skipped|Error)"', PYTHON))


def test_tables_and_operations() -> None:
    route = _apex_method("route")
    both = re.search(r"table == '(\w+)' \|\| table == '(\w+)'", route)
    choice = re.search(r"table == '(\w+)' \? '(\w+)' : '(\w+)'", route)
    assert both and choice
    first, second = both.groups()
    other = second if choice.group(1) == first else first
    assert {choice.group(1): choice.group(2), other: choice.group(3)} == handler.TABLES
    upserts = re.search(r"UPSERT_OPERATIONS = new Set<String>\{([^}]*)\}", APEX)
    assert upserts
    assert set(re.findall(r"'(\w+)'", upserts.group(1))) == handler._UPSERT_OPERATIONS
    for operation in ("TRUNCATE", "DELETE"):
        assert f"operation == '{operation}'" in APEX or f"operation != '{operation}'" in APEX
        assert f'"{operation}"' in PYTHON


def _apex_mapping(method: str) -> set[tuple[str, str, int]]:
    body = _apex_method(method)
    return {
        (field, column, int(length))
        for field, column, length in re.findall(r"(\w+) = text\(\w+, '(\w+)', (\d+)\)", body)
        if field[0].isupper()  # fields, not local variables
    }


def _python_mapping(function: str) -> set[tuple[str, str, int]]:
    source = inspect.getsource(getattr(handler.HandlerEmulation, function))
    pattern = r"\"?(\w+)\"?[:=]\s*_text\(\w+, \"(\w+)\", (\d+)\)"
    return {(field, column, int(length)) for field, column, length in re.findall(pattern, source)}


def test_column_to_field_mappings() -> None:
    assert _apex_mapping("toAccount") == _python_mapping("_account_fields")
    assert _apex_mapping("toContact") == _python_mapping("_contact_fields")
    assert {f for f, _, _ in _apex_mapping("toAccount")} >= {"Phone", "BillingCity", "AccountNumber"}


def _apex_fields(method: str, sobject: str) -> set[str]:
    body = _apex_method(method)
    constructor = re.search(rf"new {sobject}\((.*?)\n\s*\);", body, re.S)
    assert constructor, method
    names = set(re.findall(r"(\w+) = ", constructor.group(1)))
    names |= set(re.findall(rf"{sobject.lower()}\.(\w+) = ", body))
    return names


def _python_fields(function: str) -> set[str]:
    source = inspect.getsource(getattr(handler.HandlerEmulation, function))
    return set(re.findall(r"\"(\w+)\": ", source)) | set(re.findall(r"(\w+)=_text", source))


def test_record_fields() -> None:
    account = _apex_fields("toAccount", "Account")
    assert account == _python_fields("_account_fields") | {"Source_Position__c"}
    assert {"External_Id__c", "Source_Position__c", "Name"} <= account
    contact = _apex_fields("toContact", "Contact")
    # The Account link (AccountId or Pending_Account_Key__c) is set apart: see the pending-key test.
    emulated = _python_fields("_contact_fields") - {"AccountId", "Pending_Account_Key__c"}
    assert contact == emulated | {"Source_Position__c"}


def test_log_fields() -> None:
    apex = set(re.findall(r"(\w+__c) = ", _apex_method("toLog")))
    python = set(re.findall(r"\"(\w+__c)\": ", inspect.getsource(handler.HandlerEmulation._write_logs)))
    assert apex == python
    assert "Log_Successes__c" in APEX and "log_successes" in PYTHON


def test_position_guard_and_messages() -> None:
    guard = _apex_method("guard")
    assert "change.position.compareTo(current) < 0" in guard
    assert "change.position < current" in inspect.getsource(handler.HandlerEmulation._guard)
    assert "return position != null && operation != 'READ';" in APEX
    assert 'return self.position is not None and self.operation != "READ"' in PYTHON
    for method in ("guard", "toAccount", "toContact"):
        assert "change.storesPosition()" in _apex_method(method), method
    for keys in ("accountKeys", "contactKeys"):  # stored positions include deleted records (Recycle Bin)
        assert f"External_Id__c IN :{keys} ALL ROWS" in APEX
    assert "row.put('Source_Position__c', change.position)" in _apex_method("deleteRecords")
    assert "leftPad(POSITION_LENGTH, '0')" in APEX and ".zfill(POSITION_LENGTH)" in PYTHON
    for apex, python in [
        ("'stale: source position '", '"stale: source position '),
        ("' is before the applied '", " is before the applied "),
        ("' with External_Id__c '", " with External_Id__c "),
        (
            "' not in Salesforce yet: linked when it arrives'",
            " not in Salesforce yet: linked when it arrives",
        ),
        ("'duplicate event key '", '"duplicate event key '),
        ("'TRUNCATE is not applied to Salesforce records'", '"TRUNCATE is not applied to Salesforce'),
        ("'no mapping for table '", '"no mapping for table '),
        ("'superseded by event '", '"superseded by event '),
    ]:
        assert apex in APEX, apex
        assert python in PYTHON, python


def test_contact_waits_for_its_account_by_pending_key() -> None:
    link = _apex_method("linkParents")
    assert "contact.Pending_Account_Key__c = parent;" in link and "contact.AccountId = null;" in link
    assert "WHERE Pending_Account_Key__c IN :keys" in _apex_method("linkPendingContacts")
    contact = inspect.getsource(handler.HandlerEmulation._contact_fields)
    assert "AccountId=None, Pending_Account_Key__c=parent" in contact
    assert "AccountId=account_id, Pending_Account_Key__c=None" in PYTHON


def test_batch_size_comes_from_the_subscriber_config() -> None:
    configs = list((ROOT / "salesforce").rglob("*.platformEventSubscriberConfig-meta.xml"))
    assert len(configs) == 1
    batch = int(re.search(r"<batchSize>(\d+)</batchSize>", configs[0].read_text()).group(1))  # type: ignore[union-attr]
    assert subscriber_batch_size(default_metadata_dir()) == batch
    assert handler.SLICE_SIZE < batch <= 2000
