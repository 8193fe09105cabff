"""ChangeEvent → Platform Event record mapping and the pre-send check (pure; hand-built inputs)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from walbridge.emulator.describe import describe_event
from walbridge.emulator.metadata import load_definitions
from walbridge.errors import ConfigError, RecordRejected
from walbridge.events import ChangeEvent, Source
from walbridge.sinks.base import SinkRecord
from walbridge.sinks.salesforce.fields import DEFAULT_EVENT
from walbridge.sinks.salesforce.mapping import (
    TRUNCATION_MARKER,
    EventSchema,
    Mapper,
    event_key,
    parse_rules,
    record_id,
)

TS_MS = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z


def _schema(truncate: bool = False) -> EventSchema:
    definition = load_definitions()[DEFAULT_EVENT]
    return EventSchema.from_describe(describe_event(definition), truncate_oversized=truncate)


def _record(
    op: str,
    before: Any = None,
    after: Any = None,
    *,
    key: Any = None,
    offset: int = 7,
    table: str = "customers",
) -> SinkRecord:
    source = Source("postgresql", "shop", "db", "inventory", table, TS_MS, lsn=123456)
    row = after if after is not None else before
    key = key if key is not None else ({"id": row["id"]} if row else None)
    event = ChangeEvent(op, source, key, before, after, ts_ms=TS_MS + 50)
    return SinkRecord("shop.inventory." + table, 2, offset, b"k", b"v", None, TS_MS + 99, event)


def _mapper(tables: dict[str, Any] | None = None, truncate: bool = False, key_mode: str = "offset") -> Mapper:
    default, rules = parse_rules(DEFAULT_EVENT, tables or {})
    return Mapper(default, rules, {DEFAULT_EVENT: _schema(truncate)}, key_mode)


def test_default_mapping_of_an_update() -> None:
    row = {"id": 5, "email": "a@b.c"}
    mapped = _mapper().map(_record("u", {"id": 5, "email": "x"}, row))
    assert mapped is not None and mapped.sobject == DEFAULT_EVENT
    assert mapped.values == {
        "Source_Table__c": "inventory.customers",
        "Operation__c": "UPDATE",
        "Record_Id__c": "5",
        "Payload__c": orjson.dumps(row).decode(),
        "Timestamp__c": "2023-11-14T22:13:20.123Z",
        "Schema_Version__c": "1.0",
        "Kafka_Partition__c": 2,
        "Kafka_Offset__c": 7,
        "Event_Key__c": "shop.inventory.customers-2-7",
        "Source_Position__c": "00000000000000123456",  # LSN 123456, 20 digits: text order = number order
    }


@pytest.mark.parametrize(("op", "name"), [("c", "INSERT"), ("r", "READ"), ("d", "DELETE")])
def test_operations_and_delete_payload(op: str, name: str) -> None:
    before, after = ({"id": 1, "v": "old"}, None) if op == "d" else (None, {"id": 1, "v": "new"})
    mapped = _mapper().map(_record(op, before, after))
    assert mapped is not None
    assert mapped.values["Operation__c"] == name
    assert orjson.loads(mapped.values["Payload__c"]) == (before if op == "d" else after)


def test_truncate_has_no_record_id_or_payload() -> None:
    mapped = _mapper().map(_record("t", key={}))
    assert mapped is not None
    assert mapped.values["Operation__c"] == "TRUNCATE"
    assert "Record_Id__c" not in mapped.values and "Payload__c" not in mapped.values


def test_composite_keys_are_joined_and_escaped() -> None:
    assert record_id({"a": 1}) == "1"
    assert record_id({"a": 1, "b": "x|y", "c": None, "d": "back\\slash"}) == "1|x\\|y||back\\\\slash"
    assert record_id(None) is None


def test_source_event_key_mode() -> None:
    record = _record("c", after={"id": 9})
    assert event_key(record, "source") == "123456:9"
    assert event_key(record, "offset") == "shop.inventory.customers-2-7"


def test_tombstone_and_filtered_ops_are_skipped() -> None:
    tombstone = SinkRecord("t", 0, 1, b"k", None, None, 0, None)
    assert _mapper().map(tombstone) is None
    mapper = _mapper({"inventory.customers": {"ops": ["INSERT", "u"]}})
    assert mapper.map(_record("d", before={"id": 1})) is None
    assert mapper.map(_record("c", after={"id": 1})) is not None


def test_overrides_rename_static_columns_fields() -> None:
    tables = {
        "customers": {
            "fields": ["Source_Table__c", "Operation__c", "Event_Key__c", "Payload__c"],
            "rename": {"Payload__c": "Record_Id__c"},
            "static": {"Schema_Version__c": "v9"},
            "columns": {"Timestamp__c": "changed_at"},
        }
    }
    mapped = _mapper(tables).map(_record("c", after={"id": 1, "changed_at": "2024-01-02T03:04:05Z"}))
    assert mapped is not None
    assert mapped.values == {
        "Source_Table__c": "inventory.customers",
        "Operation__c": "INSERT",
        "Event_Key__c": "shop.inventory.customers-2-7",
        "Record_Id__c": '{"id":1,"changed_at":"2024-01-02T03:04:05Z"}',
        "Schema_Version__c": "v9",
        "Timestamp__c": "2024-01-02T03:04:05Z",
    }


def test_bad_overrides_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown keys"):
        parse_rules(DEFAULT_EVENT, {"t": {"evnt": "X__e"}})
    with pytest.raises(ConfigError, match="not default fields"):
        parse_rules(DEFAULT_EVENT, {"t": {"fields": ["Nope__c"]}})
    with pytest.raises(ConfigError, match="unknown operation"):
        parse_rules(DEFAULT_EVENT, {"t": {"ops": ["MERGE"]}})


def test_oversized_payload_rejected_with_salesforce_code() -> None:
    with pytest.raises(RecordRejected) as info:
        _mapper().map(_record("c", after={"id": 1, "blob": "x" * 131_072}))
    assert info.value.status_code == "STRING_TOO_LONG" and info.value.fields == ["Payload__c"]
    assert "max length=131072" in str(info.value)


def test_oversized_payload_truncated_with_marker() -> None:
    mapped = _mapper(truncate=True).map(_record("c", after={"id": 1, "blob": "😀" * 70_000}))
    assert mapped is not None
    payload = mapped.values["Payload__c"]
    assert payload.endswith(TRUNCATION_MARKER)
    assert len(payload.encode("utf-16-le")) // 2 <= 131_072


@pytest.mark.parametrize(
    ("value", "code"),
    [({"nested": 1}, "JSON_PARSER_ERROR"), ("x" * 11, "STRING_TOO_LONG"), ("", "REQUIRED_FIELD_MISSING")],
)
def test_invalid_values_rejected(value: Any, code: str) -> None:
    target = "Source_Table__c" if code == "REQUIRED_FIELD_MISSING" else "Schema_Version__c"
    mapper = _mapper({"customers": {"columns": {target: "v"}}})
    with pytest.raises(RecordRejected) as info:
        mapper.map(_record("c", after={"id": 1, "v": value}))
    assert info.value.status_code == code and info.value.fields == [target]


def test_number_range_and_types() -> None:
    schema = _schema()
    base = {"Source_Table__c": "s.t", "Operation__c": "INSERT", "Event_Key__c": "k"}
    assert schema.check({**base, "Kafka_Offset__c": 10**17})["Kafka_Offset__c"] == 10**17
    with pytest.raises(RecordRejected, match="NUMBER_OUTSIDE_VALID_RANGE"):
        schema.check({**base, "Kafka_Offset__c": 10**18})
    with pytest.raises(RecordRejected, match="JSON_PARSER_ERROR"):
        schema.check({**base, "Kafka_Offset__c": "abc"})
    with pytest.raises(RecordRejected, match="JSON_PARSER_ERROR"):
        schema.check({**base, "Timestamp__c": "yesterday"})
    with pytest.raises(RecordRejected, match="INVALID_FIELD"):
        schema.check({**base, "Nope__c": 1})


def test_truncation_never_cuts_a_key_field() -> None:
    long_key = "k" * 300  # Record_Id__c holds 255
    with pytest.raises(RecordRejected) as info:
        _mapper(truncate=True).map(_record("c", after={"id": long_key}))
    assert info.value.status_code == "STRING_TOO_LONG" and info.value.fields == ["Record_Id__c"]


def test_a_field_defaulted_on_create_is_not_required() -> None:
    checkbox = {"name": "Flag__c", "type": "boolean", "nillable": False, "defaultedOnCreate": True}
    text = {"name": "Name__c", "type": "string", "length": 10, "nillable": False}
    schema = EventSchema.from_describe({"name": "E__e", "fields": [checkbox, text]})
    assert schema.check({"Name__c": "x"}) == {"Name__c": "x"}
    with pytest.raises(RecordRejected, match="Required fields are missing: \\[Name__c\\]"):
        schema.check({"Flag__c": True})


def test_the_default_event_key_is_the_source_position_and_key() -> None:
    from walbridge.config import SalesforceSinkSettings

    assert SalesforceSinkSettings().event_key == "source"
    mapped = _mapper(key_mode="source").map(_record("c", after={"id": 9}))
    assert mapped is not None and mapped.values["Event_Key__c"] == "123456:9"
