"""The unavailable-value placeholder's forms, and the encoder's schema blocks following a table's shape."""

from __future__ import annotations

import base64

import orjson
import pytest

from walbridge.events import ChangeEvent, ColumnSchema, EncodingOptions, EnvelopeEncoder, Source, TableSchema
from walbridge.unavailable import (
    PLACEHOLDER,
    is_unavailable,
    mentions_unavailable,
    placeholder_for,
    unavailable_names,
)

TYPES = [
    ("text", False),
    ("bytea", False),
    ("jsonb", False),
    ("numeric", False),
    ("_text", True),
    ("_int4", True),
    ("_int8", True),
    ("_date", True),
    ("_uuid", True),
    ("_bytea", True),
    ("_numeric", True),
]


@pytest.mark.parametrize(("name", "is_array"), TYPES)
def test_every_form_is_recognised_in_values_and_in_raw_records(name: str, is_array: bool) -> None:
    value = placeholder_for(name, is_array)
    assert is_unavailable(value)
    assert mentions_unavailable(orjson.dumps({"after": {"c": value}}))


@pytest.mark.parametrize(("name", "is_array"), TYPES)
def test_unavailable_names_finds_every_form_among_other_values(name: str, is_array: bool) -> None:
    value = placeholder_for(name, is_array)
    for others in ({"a": 1, "b": "x"}, {"a": [1, 2], "b": {"k": "v"}}, {"a": [PLACEHOLDER, "x"]}):
        row = {**others, "c": value}
        assert unavailable_names(row, orjson.dumps({"after": row})) == ["c"]
        assert unavailable_names(others, orjson.dumps({"after": others})) == []
    hstore = {"a": 1, "h": {PLACEHOLDER: PLACEHOLDER}}
    assert unavailable_names(hstore, orjson.dumps({"after": hstore})) == ["h"]


def test_debezium_forms() -> None:
    assert placeholder_for("text", False) == PLACEHOLDER
    assert base64.b64decode(placeholder_for("bytea", False)) == PLACEHOLDER.encode()
    assert placeholder_for("_int4", True) == list(PLACEHOLDER.encode())
    assert placeholder_for("_varchar", True) == [PLACEHOLDER]
    assert is_unavailable({PLACEHOLDER: PLACEHOLDER})  # hstore, map mode
    for real in ("x", [1, 2], [PLACEHOLDER, "x"], 5, None, {"a": 1}):
        assert not is_unavailable(real)


def test_schema_block_follows_the_table_shape() -> None:
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="p", schemas_enable=True))
    source = Source("postgresql", "p", "db", "public", "t", 0)

    def fields(columns: tuple[str, ...]) -> list[str]:
        shape = TableSchema(
            "public",
            "t",
            tuple(ColumnSchema(c, {"type": "int32", "optional": c != "id"}) for c in columns),
            ("id",),
        )
        row = dict.fromkeys(columns, 1)
        value = encoder.encode(ChangeEvent("c", source, {"id": 1}, None, row, 1, shape))[0].value
        after = next(f for f in orjson.loads(value)["schema"]["fields"] if f["field"] == "after")
        return [f["field"] for f in after["fields"]]

    assert fields(("id", "a")) == ["id", "a"]
    assert fields(("id", "a", "b")) == ["id", "a", "b"]
    assert fields(("id",)) == ["id"]
