"""walbridge.pubsub_api.avro: the flat encoder writes exactly what fastavro's writer writes, the flat decoder
reads exactly what fastavro's reader reads (and refuses what it refuses), and values round-trip between
their REST form and Avro."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from walbridge.pubsub_api.avro import AvroCodec, event_schema, schema_id

FIELDS = [
    ("Text__c", "Text"),
    ("Long__c", "LongTextArea"),
    ("Number__c", "Number"),
    ("Flag__c", "Checkbox"),
    ("Day__c", "Date"),
    ("At__c", "DateTime"),
]
CODEC = AvroCodec(orjson.dumps(event_schema("Test__e", FIELDS)).decode())


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"Text__c": "plain", "Long__c": "é€😀" * 100, "Number__c": 12, "Flag__c": True},
        {"Number__c": -2.5, "Flag__c": "false", "Day__c": "1969-12-31", "At__c": "2023-11-14T22:13:20.007Z"},
        {"text__c": "any case", "Number__c": 2**60, "At__c": "2024-02-29T00:00:00+01:00"},
    ],
)
@pytest.mark.parametrize("created", [0, 1_700_000_000_123, -1])
def test_compiled_encoder_matches_fastavro_and_round_trips(values: dict[str, Any], created: int) -> None:
    payload = CODEC.encode(values, created, "005xx0000012345AAA")
    generic = AvroCodec(orjson.dumps(CODEC.raw).decode())
    generic._flat = None  # fastavro's writer
    assert payload == generic.encode(values, created, "005xx0000012345AAA")
    decoded = CODEC.decode(payload)
    assert decoded == generic.decode(payload)  # fastavro's reader
    assert decoded["CreatedDate"] == created
    for name, value in values.items():
        spelled = CODEC.field_name(name)
        assert spelled is not None
        if name.endswith("Flag__c") and isinstance(value, str):
            value = value == "true"
        if spelled == "At__c" and "+01:00" in str(value):
            value = "2024-02-28T23:00:00.000Z"
        assert decoded[spelled] == value


def test_a_field_the_schema_lacks_is_a_key_error_and_the_id_follows_the_definition() -> None:
    with pytest.raises(KeyError):
        CODEC.encode({"Gone__c": 1}, 0, "005")
    changed = event_schema("Test__e", [*FIELDS, ("New__c", "Text")])
    assert schema_id(changed) != CODEC.id == schema_id(CODEC.raw)


def test_flat_decoder_refuses_what_fastavro_refuses() -> None:
    generic = AvroCodec(orjson.dumps(CODEC.raw).decode())
    generic._flat = None
    payload = CODEC.encode({"Text__c": "plain", "Number__c": 1.5, "At__c": 5}, 1, "005xx0000012345AAA")
    refused = (ValueError, TypeError, EOFError, IndexError, UnicodeDecodeError)  # as the emulator catches
    for cut in range(len(payload)):
        with pytest.raises(refused):
            CODEC.decode(payload[:cut])
        with pytest.raises(refused):
            generic.decode(payload[:cut])
    bad_branch = bytearray(payload)
    bad_branch[payload.index(b"plain") - 2] = 4  # the text field's union branch: 2 does not exist
    for codec in (CODEC, generic):
        with pytest.raises(refused):
            codec.decode(bytes(bad_branch))
