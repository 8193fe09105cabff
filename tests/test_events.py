"""The event model: Debezium envelope, unwrapped form, schemas block, tombstones; decoding every form."""

from __future__ import annotations

import base64

import orjson
import pytest

from walbridge.errors import DecodeError
from walbridge.events import (
    ChangeEvent,
    ColumnSchema,
    EncodingOptions,
    EnvelopeEncoder,
    Source,
    TableSchema,
    decode_record,
    split_topic,
)

SRC = Source("postgresql", "shop", "db", "inventory", "customers", 1_700_000_000_000, "false", 42, 1234, None)
REL = TableSchema(
    "inventory",
    "customers",
    (
        ColumnSchema("id", {"type": "int32", "optional": False}),
        ColumnSchema(
            "total",
            {
                "type": "bytes",
                "optional": True,
                "name": "org.apache.kafka.connect.data.Decimal",
                "parameters": {"scale": "2", "connect.decimal.precision": "10"},
            },
        ),
    ),
    ("id",),
)


def event(op: str, before: dict | None, after: dict | None) -> ChangeEvent:
    key = {"id": (after or before or {}).get("id")}
    return ChangeEvent(op, SRC, key, before, after, 1_700_000_000_500, REL)


def test_envelope_shape_and_topic() -> None:
    records = EnvelopeEncoder(EncodingOptions(topic_prefix="shop")).encode(
        event("c", None, {"id": 1, "total": "9.99"})
    )
    assert len(records) == 1
    rec = records[0]
    assert rec.topic == "shop.inventory.customers"
    assert orjson.loads(rec.key) == {"id": 1}
    value = orjson.loads(rec.value)
    assert set(value) == {"before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"}
    assert value["op"] == "c" and value["before"] is None and value["after"] == {"id": 1, "total": "9.99"}
    src = value["source"]
    assert (
        src["connector"] == "postgresql"
        and src["name"] == "shop"
        and src["txId"] == 42
        and src["lsn"] == 1234
    )
    assert src["snapshot"] == "false" and src["schema"] == "inventory" and src["table"] == "customers"


def test_delete_is_followed_by_a_tombstone_unless_disabled() -> None:
    deleted = event("d", {"id": 1, "total": None}, None)
    records = EnvelopeEncoder(EncodingOptions()).encode(deleted)
    assert [r.value is None for r in records] == [False, True]
    assert records[0].key == records[1].key
    assert len(EnvelopeEncoder(EncodingOptions(tombstones_on_delete=False)).encode(deleted)) == 1


def test_unwrapped_form_rewrites_deletes() -> None:
    enc = EnvelopeEncoder(
        EncodingOptions(unwrap=True, unwrap_add_fields=("op", "table", "lsn", "source.ts_ms"))
    )
    flat = orjson.loads(enc.encode(event("u", None, {"id": 1, "total": "1.00"}))[0].value)
    assert flat == {
        "id": 1,
        "total": "1.00",
        "__deleted": "false",
        "__op": "u",
        "__table": "customers",
        "__lsn": 1234,
        "__source_ts_ms": 1_700_000_000_000,
    }
    records = enc.encode(event("d", {"id": 1, "total": "1.00"}, None))
    assert orjson.loads(records[0].value)["__deleted"] == "true"
    assert records[1].value is None
    assert enc.encode(ChangeEvent("t", SRC, None, None, None, 0, REL)) == []


def test_schemas_block() -> None:
    enc = EnvelopeEncoder(EncodingOptions(topic_prefix="shop", schemas_enable=True))
    rec = enc.encode(event("c", None, {"id": 1, "total": "Th8="}))[0]
    value, key = orjson.loads(rec.value), orjson.loads(rec.key)
    assert value["schema"]["name"] == "shop.inventory.customers.Envelope"
    assert key["schema"]["name"] == "shop.inventory.customers.Key"
    assert key["payload"] == {"id": 1}
    after_schema = next(f for f in value["schema"]["fields"] if f["field"] == "after")
    assert [f["field"] for f in after_schema["fields"]] == ["id", "total"]


@pytest.mark.parametrize("schemas", [False, True])
def test_round_trip_every_form(schemas: bool) -> None:
    original = event("u", {"id": 7, "total": "Th8="}, {"id": 7, "total": "Th8="})
    enc = EnvelopeEncoder(EncodingOptions(topic_prefix="shop", schemas_enable=schemas))
    rec = enc.encode(original)[0]
    decoded = decode_record(rec.topic, rec.key, rec.value)
    assert decoded is not None
    assert decoded.op == "u" and decoded.key == {"id": 7}
    assert decoded.source.table == "customers" and decoded.source.lsn == 1234
    # with the schema block, precise decimals become Decimal (199.99 → "Th8=" in Debezium's docs)
    expected = "199.99" if schemas else "Th8="
    assert str(decoded.after["total"]) == expected


def test_decode_unwrapped_and_tombstone() -> None:
    topic = "shop.inventory.customers"
    flat = decode_record(topic, b'{"id": 3}', b'{"id": 3, "name": "x", "__deleted": "true"}')
    assert (
        flat is not None and flat.op == "d" and flat.before == {"id": 3, "name": "x"} and flat.after is None
    )
    upsert = decode_record(topic, b'{"id": 3}', b'{"id": 3, "name": "y", "__deleted": "false", "__op": "r"}')
    assert upsert is not None and upsert.op == "r" and upsert.after == {"id": 3, "name": "y"}
    assert decode_record(topic, b'{"id": 3}', None) is None


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"\x00\xffgarbage", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hello": "world"}', "neither a Debezium envelope"),
        (b'{"op": "x", "source": {}, "after": {}}', "op 'x'"),
        (b'{"op": "c", "source": {}, "after": null}', "no after"),
        (b'{"op": "d", "source": {}, "before": null}', "no before"),
    ],
)
def test_decode_errors_name_the_problem(value: bytes, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        decode_record("shop.inventory.customers", b'{"id": 1}', value)


def test_split_topic() -> None:
    assert split_topic("my.prefix.inventory.orders") == ("inventory", "orders")
    with pytest.raises(DecodeError):
        split_topic("orders")


def test_precise_decimal_decoding_with_variable_scale() -> None:
    payload = {
        "id": 1,
        "total": {"scale": 3, "value": base64.b64encode((-12345).to_bytes(2, "big", signed=True)).decode()},
    }
    schema = {
        "type": "struct",
        "fields": [
            {"field": "before", "type": "struct", "fields": []},
            {
                "field": "after",
                "type": "struct",
                "fields": [
                    {"field": "id", "type": "int32"},
                    {"field": "total", "type": "struct", "name": "io.debezium.data.VariableScaleDecimal"},
                ],
            },
        ],
    }
    value = orjson.dumps(
        {"schema": schema, "payload": {"op": "c", "source": {"table": "t"}, "before": None, "after": payload}}
    )
    decoded = decode_record("p.s.t", None, value)
    assert decoded is not None and str(decoded.after["total"]) == "-12.345"


def test_precise_decimals_special_values_arrays_and_placeholders_decode() -> None:
    """Special numerics by name, arrays of decimals, exact beyond 28 digits; a string that is not a precise
    decimal (Debezium's unavailable-value placeholder) stays as it is, never decoded into a number."""
    from decimal import Decimal

    from walbridge.events import _decode_precise

    decimal = {"name": "org.apache.kafka.connect.data.Decimal", "parameters": {"scale": "2"}}
    schema = {
        "fields": [
            {"field": "a", **decimal},
            {"field": "b", "name": "io.debezium.data.VariableScaleDecimal"},
            {"field": "c", "type": "array", "items": decimal},
        ]
    }
    placeholder = "__debezium_unavailable_value"
    decoded = _decode_precise({"a": "NAN", "b": "NEGATIVE_INFINITY", "c": ["AJY=", None, "NAN"]}, schema)
    assert decoded is not None
    assert decoded["a"].is_nan() and decoded["b"] == Decimal("-Infinity")
    assert decoded["c"][:2] == [Decimal("1.50"), None] and decoded["c"][2].is_nan()
    big = _decode_precise({"b": {"scale": 29, "value": "Afd+5uOsaXA1hlpdOME4xULa4ZgorjmBFQ=="}}, schema)
    assert big is not None and str(big["b"]) == "123456789012345678901234567890.12345678901234567890123456789"
    kept = {"a": placeholder, "b": placeholder, "c": [placeholder]}
    assert _decode_precise(kept, schema) == kept
