"""Capture's fast paths give exactly what the general paths give: row-change decoding, text rows,
spliced envelopes, COPY lines, the UTC timestamptz shortcut."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import replace

import orjson
import pytest

from walbridge.capture import log_rows
from walbridge.capture import pgoutput as pg
from walbridge.capture import rows as rows_module
from walbridge.capture.catalog import ColumnInfo, RelationInfo
from walbridge.capture.rows import RowCodec
from walbridge.capture.trigger import ChangeRow
from walbridge.capture.trigger import _changes as trigger_changes
from walbridge.capture.values import TypeRegistry, ValueOptions
from walbridge.events import (
    LSN_MARK,
    ChangeEvent,
    ColumnSchema,
    EncodingOptions,
    EnvelopeEncoder,
    Source,
    SplicedEvent,
    TableSchema,
)

NAMES = ("id", "note", "at")
COLUMNS = {16384: NAMES}


def tuple_data(*values: bytes | None, marker: bytes = b"t") -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        out += b"n" if value is None else marker + struct.pack(">I", len(value)) + value
    return out


def head(kind: bytes, oid: int = 16384) -> bytes:
    return kind + struct.pack(">I", oid)


ROW = (b"1", "é note".encode(), b"2024-01-02 03:04:05.123456+00")
TEXT_ROW = {"id": "1", "note": "é note", "at": "2024-01-02 03:04:05.123456+00"}


@pytest.mark.parametrize(
    ("buf", "expected"),
    [
        (head(b"I") + b"N" + tuple_data(*ROW), (ord("I"), 16384, None, None, TEXT_ROW)),
        (
            head(b"U") + b"O" + tuple_data(*ROW) + b"N" + tuple_data(b"2", None, None),
            (ord("U"), 16384, TEXT_ROW, None, {"id": "2", "note": None, "at": None}),
        ),
        (
            head(b"U") + b"K" + tuple_data(b"1", None, None) + b"N" + tuple_data(*ROW),
            (ord("U"), 16384, None, {"id": "1", "note": None, "at": None}, TEXT_ROW),
        ),
        (head(b"U") + b"N" + tuple_data(*ROW), (ord("U"), 16384, None, None, TEXT_ROW)),
        (head(b"D") + b"O" + tuple_data(*ROW), (ord("D"), 16384, TEXT_ROW, None, None)),
        (
            head(b"D") + b"K" + tuple_data(b"1", None, None),
            (ord("D"), 16384, None, {"id": "1", "note": None, "at": None}, None),
        ),
    ],
)
def test_row_change_matches_the_general_decoder(buf: bytes, expected: tuple) -> None:
    assert pg.decode_row_change(buf, COLUMNS) == expected
    message = pg.decode(buf)
    for tup, row in (
        (getattr(message, "new", None), expected[4]),
        (getattr(message, "old", None), expected[2]),
    ):
        if row is not None:
            assert {
                name: None if v is None else v.decode() for name, v in zip(NAMES, tup, strict=True)
            } == row


@pytest.mark.parametrize(
    "buf",
    [
        head(b"B") + bytes(16),  # not a row change
        head(b"I", oid=1) + b"N" + tuple_data(*ROW),  # relation not known
        head(b"I") + b"N" + tuple_data(b"1", b"x"),  # column count differs
        head(b"I") + b"N" + tuple_data(*ROW)[:-3],  # truncated
        head(b"I") + b"N" + tuple_data(*ROW) + b"x",  # trailing bytes
        head(b"I") + b"N" + tuple_data(b"1", b"\xff", None),  # not UTF-8
        head(b"I") + b"N" + tuple_data(*ROW, marker=b"b"),  # binary values
        head(b"U") + b"O" + tuple_data(*ROW) + b"N" + struct.pack(">H", 3) + b"unn",  # unchanged TOAST
        head(b"I") + b"X",
        head(b"D") + b"N" + tuple_data(*ROW),
    ],
)
def test_row_change_leaves_the_rest_to_the_general_decoder(buf: bytes) -> None:
    assert pg.decode_row_change(buf, COLUMNS) is None


def codec(exclude: tuple[str, ...] = (), key: tuple[str, ...] = ("id",)) -> RowCodec:
    rel = RelationInfo(
        16384,
        "public",
        "orders",
        (
            ColumnInfo("id", 20, -1, True, 1),
            ColumnInfo("note", 25, -1, False, 2),
            ColumnInfo("at", 1184, -1, False, 3),
        ),
        key,
        "f",
    )
    return RowCodec(rel, TypeRegistry(), ValueOptions(), exclude)


@pytest.mark.parametrize("exclude", [(), ("note",)])
def test_text_rows_convert_like_row(exclude: tuple[str, ...]) -> None:
    rows = codec(exclude)
    values = [v.decode() for v in ROW]
    expected = rows.row(list(ROW))
    assert rows.row_text(list(values)) == expected
    assert list(rows.convert_text_row(dict(TEXT_ROW))) == list(expected)
    assert rows.convert_text_row(dict(TEXT_ROW)) == expected
    assert rows.row_text([None, None, None]) == rows.row([None, None, None])


@pytest.mark.parametrize("encode", [rows_module.encode_text_rows_py, rows_module.encode_text_rows])
@pytest.mark.parametrize("schemas", [False, True])
@pytest.mark.parametrize("key", [("id",), ()])
def test_text_row_batches_encode_like_the_row_path(
    encode: Callable[..., list[tuple[SplicedEvent] | None]], schemas: bool, key: tuple[str, ...]
) -> None:
    """A snapshot batch encoded in one call gives each row's bytes from row_text, key and the prepared
    encoder; a row it cannot take (width, a value that does not convert) is left to that path."""
    rows = codec(key=key)
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="shop", schemas_enable=schemas))
    source = replace(STREAM_SOURCE, snapshot="true", lsn=0, ts_us=None)
    prepared = encoder.prepare(source, rows.table_schema)
    assert prepared is not None
    batch: list[Sequence[str | None]] = [
        ("1", "é note", "2024-01-02 03:04:05.123456+00"),
        ("2", None, None),
        ("3", "short"),  # not the table's width
        ("four", "x", None),  # id does not convert
        ("5", 'quote " \\ \n', "infinity"),
    ]
    plan = rows.text_rows_plan()
    assert plan is not None
    records = encode(
        batch, *plan, prepared.parts, 1_700_000_000_999, prepared.value_schema, prepared.key_schema
    )
    expected = []
    for values in batch:
        if len(values) != 3 or values[0] == "four":
            expected.append(None)
            continue
        after = rows.row_text(values)
        key_bytes, value = prepared.encode("r", rows.key(after), None, after, 0, 1_700_000_000_999)
        expected.append((("r", key_bytes, value),))
    assert records == expected
    assert codec(exclude=("note",)).text_rows_plan() is None  # excluded columns: the row path


def test_timestamptz_shortcut() -> None:
    convert = codec().convert_text_row
    for text, want in [
        ("2024-01-02 03:04:05.123456+00", "2024-01-02T03:04:05.123456Z"),
        ("2024-01-02 03:04:05.1+00", "2024-01-02T03:04:05.100000Z"),
        ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05.000000Z"),
        ("infinity", "infinity"),
    ]:
        assert convert({"id": "1", "note": None, "at": text})["at"] == want


REL = TableSchema(
    "public",
    "orders",
    (ColumnSchema("id", {"type": "int64", "optional": False}), ColumnSchema("note", {"type": "string"})),
    ("id",),
)
STREAM_SOURCE = Source(
    "postgresql",
    "shop",
    "db",
    "public",
    "orders",
    1_700_000_000_123,
    "false",
    77,
    None,
    None,
    None,
    1_700_000_000_123_456,
)


@pytest.mark.parametrize(
    "options",
    [
        EncodingOptions(topic_prefix="shop"),
        EncodingOptions(schemas_enable=True),
        EncodingOptions(tombstones_on_delete=False),
    ],
)
@pytest.mark.parametrize("snapshot", [False, True])
def test_prepared_source_encodes_like_encode(options: EncodingOptions, snapshot: bool) -> None:
    encoder = EnvelopeEncoder(options)
    if snapshot:
        template = replace(STREAM_SOURCE, snapshot="first", lsn=123, ts_us=None)
    else:
        template = replace(STREAM_SOURCE, lsn=LSN_MARK, sequence=f'["100","{LSN_MARK}"]')
    prepared = encoder.prepare(template, REL)
    assert prepared is not None
    after = {"id": 5, "note": 'quote " and é'}
    for op, before, aft in (("c", None, after), ("u", after, after), ("d", after, None), ("r", None, after)):
        lsn = 123 if snapshot else 4_567_890
        source = template if snapshot else replace(template, lsn=lsn, sequence=f'["100","{lsn}"]')
        event = ChangeEvent(op, source, {"id": 5}, before, aft, 1_700_000_000_999, REL)
        records = encoder.encode(event)
        key, value = prepared.encode(op, {"id": 5}, before, aft, lsn, 1_700_000_000_999)
        assert (key, value) == (records[0].key, records[0].value)
        assert len(records) == (2 if op == "d" and prepared.tombstones else 1)
        assert orjson.loads(value)  # valid JSON
    assert prepared.topic == encoder.topic("public", "orders")


def test_prepare_declines_what_it_cannot_splice() -> None:
    assert EnvelopeEncoder(EncodingOptions(unwrap=True)).prepare(STREAM_SOURCE, REL) is None
    # a database name holding the mark's digits: splitting on them would be ambiguous
    odd = replace(STREAM_SOURCE, db=str(LSN_MARK), lsn=LSN_MARK)
    assert EnvelopeEncoder(EncodingOptions()).prepare(odd, REL) is None


@pytest.mark.parametrize(
    "options", [EncodingOptions(topic_prefix="shop%s"), EncodingOptions(schemas_enable=True)]
)
def test_per_event_source_encodes_like_encode(options: EncodingOptions) -> None:
    """Trigger mode's spliced source block (ts, txId and change_id per event) gives encode()'s bytes."""
    encoder = EnvelopeEncoder(options)
    template = Source(
        "postgresql-trigger", options.topic_prefix, "db%d", "public", "orders", 0, tx_id=0, change_id=0
    )
    prepared = encoder.prepare_per_event(template, REL)
    assert prepared is not None
    after = {"id": 5, "note": "100% é"}
    for ts_us, tx_id, change_id in ((1_700_000_000_123_456, 755, 1), (0, 2**40, 2**62), (-1_001, 1, 9)):
        source = replace(template, ts_ms=ts_us // 1000, ts_us=ts_us, tx_id=tx_id, change_id=change_id)
        for op, before, aft in (("c", None, after), ("u", after, after), ("d", after, None)):
            event = ChangeEvent(op, source, {"id": 5}, before, aft, 1_700_000_000_999, REL)
            spliced = prepared.source_for(ts_us // 1000, ts_us, tx_id, change_id)
            key, value = prepared.encode_with_source(spliced, op, {"id": 5}, before, aft, 1_700_000_000_999)
            assert (key, value) == (encoder.encode(event)[0].key, encoder.encode(event)[0].value)


def test_per_event_source_declines_text_holding_a_mark() -> None:
    # the database name (before txId in the block) holds the digits of txId's first mark
    odd = Source(
        "postgresql-trigger", "shop", "1414213562373095", "public", "orders", 0, tx_id=0, change_id=0
    )
    assert EnvelopeEncoder(EncodingOptions()).prepare_per_event(odd, REL) is None
    assert EnvelopeEncoder(EncodingOptions(unwrap=True)).prepare_per_event(replace(odd, db="db"), REL) is None


LOG_ROWS = [
    ChangeRow(1, 755, "public", "orders", "c", None, dict(TEXT_ROW), 1_700_000_000_123_456),
    ChangeRow(2, 755, "public", "orders", "u", dict(TEXT_ROW), {**TEXT_ROW, "note": "100% é"}, 7),
    ChangeRow(3, 2**63 + 5, "public", "orders", "u", dict(TEXT_ROW), {**TEXT_ROW, "id": "2"}, -1_001),
    ChangeRow(4, 9, "public", "orders", "d", {**TEXT_ROW, "at": None}, None, -1_000),
    ChangeRow(5, 9, "public", "orders", "c", None, {"id": "6", "note": None}, 0),  # a column missing
    ChangeRow(6, 9, "public", "orders", "c", None, {**TEXT_ROW, "extra": "x"}, 0),  # a column more
    ChangeRow(7, 9, "public", "orders", "c", None, {**TEXT_ROW, "id": "seven"}, 0),  # id does not convert
    ChangeRow(8, 9, "public", "orders", "t", None, None, 0),  # a truncate
    ChangeRow(9, 9, "public", "orders", "d", None, None, 0),  # no image
    ChangeRow(10, 9, "public", "orders", "c", None, dict(TEXT_ROW), 2**70),  # past 64 bits
]
"""Change-log rows: those of ENCODED have events, the others are left to the row path."""
ENCODED = {0, 1, 2, 3, 9}


@pytest.mark.parametrize("encode", [log_rows.encode_change_rows_py, log_rows.encode_change_rows])
@pytest.mark.parametrize(
    "options", [EncodingOptions(topic_prefix="shop%d"), EncodingOptions(schemas_enable=True)]
)
@pytest.mark.parametrize("key", [("id",), ()])
def test_change_log_runs_encode_like_the_row_path(
    encode: Callable[..., list[tuple[SplicedEvent, ...] | None]],
    options: EncodingOptions,
    key: tuple[str, ...],
) -> None:
    """Trigger mode's page encoder gives each row the events of the row-at-a-time path (converted images,
    the key, a delete and a create when the key changed, the per-event source block), or leaves it."""
    rows = codec(key=key)
    template = Source("postgresql-trigger", "shop", "db", "public", "orders", 0, tx_id=0, change_id=0)
    prepared = EnvelopeEncoder(options).prepare_per_event(template, rows.table_schema)
    assert prepared is not None and prepared.source_pieces is not None
    plan = rows.text_rows_plan()
    assert plan is not None
    encoded = encode(LOG_ROWS, *plan, prepared.source_pieces, 1_700_000_000_999, prepared.value_schema,
                     prepared.key_schema)  # fmt: skip
    expected: list[tuple[SplicedEvent, ...] | None] = []
    for index, row in enumerate(LOG_ROWS):
        if index not in ENCODED:
            expected.append(None)
            continue
        before = rows.row_from_fitting_mapping(row.before) if row.before is not None else None
        after = rows.row_from_fitting_mapping(row.after) if row.after is not None else None
        source = prepared.source_for(row.changed_us // 1000, row.changed_us, row.txid, row.id)
        events = []
        for op, event_key, old, new in trigger_changes(row, rows, before, after):
            events.append(
                (op, *prepared.encode_with_source(source, op, event_key, old, new, 1_700_000_000_999))
            )
        expected.append(tuple(events))
    if key:
        assert [op for op, _, _ in encoded[2] or ()] == ["d", "c"]  # the key changed
    assert encoded == expected
