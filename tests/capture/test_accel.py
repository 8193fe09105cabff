"""The compiled hot path (``walbridge._accel``) against its pure-Python twins, on the same inputs.

The inputs are the pgoutput messages a real server sends for the type matrix (every built-in type with
its edge values, inserted, updated, deleted, with REPLICA IDENTITY FULL and DEFAULT), every truncation of
them and seeded random corruptions. Both paths must give identical results, and the events encoded from
them identical bytes. CI requires the compiled path to have been built."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import type_matrix
from walbridge import accel, pgcatalog
from walbridge import events as events_module
from walbridge.capture import catalog, log_rows, pgoutput, rows, values
from walbridge.capture.connection import load_as_text
from walbridge.capture.rows import RowCodec
from walbridge.capture.trigger import ChangeRow
from walbridge.capture.values import ValueOptions
from walbridge.events import LSN_MARK, EncodingOptions, EnvelopeEncoder, Source

compiled_only = pytest.mark.skipif(
    not accel.ACCELERATED, reason=f"the compiled hot path is not in use: {accel.describe()}"
)

Columns = dict[int, tuple[str, ...]]


def test_ci_builds_the_compiled_path() -> None:
    """A fresh machine has gcc and the Python headers: CI (``.ci/run`` sets WALBRIDGE_REQUIRE_COMPILED) must
    build, and so test, the compiled path."""
    if not os.environ.get("WALBRIDGE_REQUIRE_COMPILED"):
        pytest.skip("required where WALBRIDGE_REQUIRE_COMPILED is set (CI)")
    assert accel.ACCELERATED, accel.describe()


def outcome(function: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """What a call gave: its result, or the type of what it raised."""
    try:
        return "result", function(*args)
    except Exception as exc:
        return "raised", type(exc)


@pytest.fixture
def matrix_messages(pg_dsn: str) -> Iterator[tuple[list[bytes], Columns]]:
    """Every pgoutput message the type matrix's changes produce, and the relations' column names."""
    slot = f"accel_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        version, xml = conn.info.server_version, type_matrix.xml_supported(conn)
        for statement in type_matrix.schema_statements(version, xml=xml):
            conn.execute(statement)
        conn.execute(f"CREATE PUBLICATION {slot} FOR TABLE {', '.join(type_matrix.TABLES)}")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        for statement in type_matrix.snapshot_statements(version, xml=xml):
            conn.execute(statement)
        for statement in type_matrix.change_statements(version, xml=xml):
            conn.execute(statement)
        # The matrix's tables send old rows in full ('O' tuples); with the default identity, an update
        # sends the old key ('K') when the key changed and no old tuple otherwise, a delete the key.
        conn.execute(f"ALTER TABLE {type_matrix.SCALAR_TABLE} REPLICA IDENTITY DEFAULT")
        conn.execute(f"UPDATE {type_matrix.SCALAR_TABLE} SET id = id + 100")
        conn.execute(f"UPDATE {type_matrix.SCALAR_TABLE} SET txt = 'changed'")
        conn.execute("SET synchronous_commit = on")  # the SQL interface decodes flushed WAL only
        for table in type_matrix.TABLES:
            conn.execute(f"DELETE FROM {table}")
        payloads = [
            bytes(data)
            for (data,) in conn.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL,"
                " 'proto_version', '1', 'publication_names', %s)",
                (slot, slot),
            )
        ]
        try:
            columns: Columns = {}
            for payload in payloads:
                message = pgoutput.decode(payload)
                if isinstance(message, pgoutput.Relation):
                    columns[message.oid] = tuple(column.name for column in message.columns)
            yield payloads, columns
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


@compiled_only
def test_row_changes_decode_alike(matrix_messages: tuple[list[bytes], Columns]) -> None:
    payloads, columns = matrix_messages
    decoded = 0
    markers = set()
    for payload in payloads:
        pure = pgoutput.decode_row_change_py(payload, columns)
        assert pgoutput.decode_row_change(payload, columns) == pure, payload[:1]
        if pure is not None:
            decoded += 1
            markers.add((payload[0], payload[5]))
    # Inserts, updates with and without the old row, deletes by key and by old row all took the fast path.
    assert {(ord("I"), ord("N")), (ord("U"), ord("N")), (ord("U"), ord("O"))} <= markers
    assert {(ord("D"), ord("K")), (ord("D"), ord("O"))} <= markers
    assert decoded >= 40


@compiled_only
def test_damaged_messages_decode_alike(matrix_messages: tuple[list[bytes], Columns]) -> None:
    """Every truncation and seeded random corruptions (bytes, lengths, markers) of the row changes."""
    payloads, columns = matrix_messages
    changes = [p for p in payloads if p[:1] in (b"I", b"U", b"D")]
    rng = random.Random(20261201)
    compared = 0

    def same(data: bytes, names: Any = columns) -> None:
        nonlocal compared
        want = outcome(pgoutput.decode_row_change_py, data, names)
        assert outcome(pgoutput.decode_row_change, data, names) == want, data
        compared += 1

    for payload in changes:
        for end in range(len(payload)):
            same(payload[:end])
        same(payload + b"\x00")
        for _ in range(40):
            damaged = bytearray(payload)
            for _ in range(rng.randint(1, 3)):
                byte = rng.choice((0, 0xFF, ord("t"), ord("n"), ord("u"), rng.randrange(256)))
                damaged[rng.randrange(len(damaged))] = byte
            same(bytes(damaged))
        same(payload, {})  # relation not known
        same(payload, {oid: (*names, "extra") for oid, names in columns.items()})  # column count differs
    same(b"")
    same(b"\xc3")
    assert compared > 10_000


def _matrix_codecs(dsn: str, options: ValueOptions) -> dict[int, RowCodec]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        registry = catalog.load_type_registry(conn)
        codecs = {}
        for name in type_matrix.TABLES:
            schema, table = name.split(".")
            relation = pgcatalog.read_table(conn, schema, table)
            assert relation is not None
            codecs[relation.oid] = RowCodec(relation, registry, options)
    return codecs


@compiled_only
@pytest.mark.parametrize("decimal_mode", ["string", "precise", "double"])
@pytest.mark.parametrize("schemas", [False, True])
def test_events_encode_to_identical_bytes(
    matrix_messages: tuple[list[bytes], Columns],
    pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    decimal_mode: str,
    schemas: bool,
) -> None:
    """Decoded and converted by each path, every event of the type matrix encodes to the same bytes."""
    payloads, columns = matrix_messages
    options = ValueOptions(decimal_handling_mode=decimal_mode, **type_matrix.EVENTS_OPTIONS)  # type: ignore[arg-type]
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="accel", schemas_enable=schemas))

    def events(pure: bool) -> list[tuple[bytes | None, bytes]]:
        def twin(module: Any, name: str) -> Any:
            python = getattr(module, f"{name}_py")
            chosen = python if pure else accel.pick(python)
            monkeypatch.setattr(module, name, chosen)
            return chosen

        decode = twin(pgoutput, "decode_row_change")
        twin(rows, "convert_typed")
        twin(events_module, "splice_envelope")
        twin(values, "utc_timestamp_fast_path")
        codecs = _matrix_codecs(pg_dsn, options)  # its converters made by the chosen twins
        out = []
        for lsn, payload in enumerate(payloads):
            change = decode(payload, columns)
            if change is None:
                continue
            kind, oid, old, key, new = change
            codec = codecs[oid]
            relation = codec.relation
            source = Source("postgresql", "accel", "db", relation.schema, relation.table, 1_700_000_000_000,
                            "false", 7, LSN_MARK, None, None, 1_700_000_000_000_000)  # fmt: skip
            prepared = encoder.prepare(source, codec.table_schema)
            assert prepared is not None
            after = codec.convert_text_row(new) if new is not None else None
            before_text = old if old is not None else key
            before = codec.convert_text_row(before_text) if before_text is not None else None
            row = after if after is not None else before
            assert row is not None
            op = {ord("I"): "c", ord("U"): "u", ord("D"): "d"}[kind]
            out.append(prepared.encode(op, codec.key(row), before, after, lsn, 1_700_000_000_999))
        return out

    pure = events(pure=True)
    compiled = events(pure=False)
    assert len(pure) >= 40
    assert compiled == pure


@pytest.fixture
def matrix_text_rows(pg_dsn: str) -> dict[str, list[tuple[str | None, ...]]]:
    """Each type-matrix table's rows as a snapshot reads them: every column's text."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        version, xml = conn.info.server_version, type_matrix.xml_supported(conn)
        for statement in type_matrix.schema_statements(version, xml=xml):
            conn.execute(statement)
        for statement in type_matrix.snapshot_statements(version, xml=xml) + type_matrix.change_statements(
            version, xml=xml
        ):
            conn.execute(statement)
        tables = {}
        for name in type_matrix.TABLES:
            with conn.cursor() as cur:
                load_as_text(cur.adapters)
                tables[name] = cur.execute(f"SELECT * FROM {name}").fetchall()
    return tables


@compiled_only
@pytest.mark.parametrize("decimal_mode", ["string", "precise", "double"])
@pytest.mark.parametrize("schemas", [False, True])
def test_snapshot_batches_encode_to_identical_bytes(
    matrix_text_rows: dict[str, list[tuple[str | None, ...]]], pg_dsn: str, decimal_mode: str, schemas: bool
) -> None:
    """The type matrix's rows, encoded a batch at a time by each path, give the same records, and the same
    bytes as the row-at-a-time path (row_text, key, the prepared encoder); as change-log rows of trigger
    mode, the same events by each path."""
    options = ValueOptions(decimal_handling_mode=decimal_mode, **type_matrix.EVENTS_OPTIONS)  # type: ignore[arg-type]
    encoder = EnvelopeEncoder(EncodingOptions(topic_prefix="accel", schemas_enable=schemas))
    encoded = 0
    for codec in _matrix_codecs(pg_dsn, options).values():
        relation = codec.relation
        batch = matrix_text_rows[f"{relation.schema}.{relation.table}"]
        source = Source(
            "postgresql", "accel", "db", relation.schema, relation.table, 1_700_000_000_000, "true", None, 0
        )
        prepared = encoder.prepare(source, codec.table_schema)
        plan = codec.text_rows_plan()
        assert prepared is not None and plan is not None
        args = (*plan, prepared.parts, 1_700_000_000_999, prepared.value_schema, prepared.key_schema)
        compiled = rows.encode_text_rows(batch, *args)
        assert compiled == rows.encode_text_rows_py(batch, *args)
        for texts, record in zip(batch, compiled, strict=True):
            after = codec.row_text(texts)
            key_bytes, value = prepared.encode("r", codec.key(after), None, after, 0, 1_700_000_000_999)
            assert record == (("r", key_bytes, value),)
            encoded += 1
        # The same rows as trigger mode's change log holds them: created, updated, key changed, deleted.
        per_event = encoder.prepare_per_event(
            Source(
                "postgresql-trigger", "accel", "db", relation.schema, relation.table, 0, tx_id=0, change_id=0
            ),
            codec.table_schema,
        )
        assert per_event is not None and per_event.source_pieces is not None
        log = []
        for number, texts in enumerate(batch):
            image = dict(zip(plan[0], texts, strict=True))
            moved = {**image, "id": str(10_000 + number)}
            for op, before, after_image in (
                ("c", None, image),
                ("u", image, image),
                ("u", image, moved),
                ("d", image, None),
            ):
                where = (relation.schema, relation.table)
                changed_us = 1_700_000_000_123_456 + number
                log.append(ChangeRow(len(log) + 1, 900 + number, *where, op, before, after_image, changed_us))
        args = (
            *plan,
            per_event.source_pieces,
            1_700_000_000_999,
            per_event.value_schema,
            per_event.key_schema,
        )
        compiled_log = log_rows.encode_change_rows(log, *args)
        assert compiled_log == log_rows.encode_change_rows_py(log, *args)
        assert None not in compiled_log
        encoded += len(compiled_log)
    assert encoded >= 50


class _Refused(Exception):
    pass


def _refuse(text: str) -> str:
    if text == "bad":
        raise _Refused(text)
    return text.upper()


@compiled_only
@pytest.mark.parametrize(
    ("row", "typed"),
    [
        ({"a": "x", "b": None, "c": "y"}, (("a", _refuse), ("b", _refuse), ("c", _refuse))),
        ({"a": "x", "b": "bad", "c": "y"}, (("a", _refuse), ("b", _refuse), ("c", _refuse))),  # stops at b
        ({"a": "x"}, (("a", _refuse), ("missing", _refuse))),  # a KeyError is a failure of that column
        ({"a": "7"}, (("a", int),)),
        ({"a": "seven"}, (("a", int),)),
        ({}, ()),
    ],
)
def test_rows_convert_alike(row: dict[str, Any], typed: tuple[tuple[str, Any], ...]) -> None:
    pure_row, compiled_row = dict(row), dict(row)
    failed = rows.convert_typed_py(pure_row, typed)
    assert rows.convert_typed(compiled_row, typed) == failed
    assert compiled_row == pure_row


@compiled_only
def test_interrupts_are_not_conversion_failures() -> None:
    def interrupted(text: str) -> str:
        raise KeyboardInterrupt

    for convert in (rows.convert_typed_py, rows.convert_typed):
        with pytest.raises(KeyboardInterrupt):
            convert({"a": "x"}, (("a", interrupted),))


_PARTS = (b'{"version":"1","lsn":', b',"sequence":"[\\"1\\",\\"', b'\\"]"}')


@compiled_only
@pytest.mark.parametrize(
    "args",
    [
        (_PARTS, 123_456_789, "c", {"id": 1}, None, {"id": 1, "t": "é"}, 1_700_000_000_999, None, None),
        (_PARTS, 0, "d", {"id": 1}, {"id": 1}, None, 0, b'{"type":"struct"}', b'{"type":"key"}'),
        ((b"source",), 5, "u", None, {"a": [1, 2]}, {"a": None}, -1, b"{}", None),  # keyless, with schemas
        ([b"a", bytearray(b"b"), memoryview(b"c")], 2**64 - 1, "r", {"k": "v"}, None, {}, 2**53, None, None),
        (_PARTS, 2**70, "c", None, None, {"x": 1}, 2**62, None, None),  # past 64 bits: Python's own digits
        ((b"s",), 1, "c", {"id": 1}, None, {"id": 1}, 1, b"{}", None),  # a key but no key schema: TypeError
        ((b"s",), None, "c", None, None, None, 1, None, None),  # no LSN: TypeError
        ((b"s", "text"), 1, "c", None, None, None, 1, None, None),  # a str part: TypeError
        ((b"s",), 1, "\udc80", None, None, None, 1, None, None),  # op not encodable: UnicodeEncodeError
        ((b"s",), 1, "c", None, {"n": 2**65}, None, 1, None, None),  # orjson refuses: its error
    ],
)
def test_envelopes_splice_alike(args: tuple[Any, ...]) -> None:
    expected = outcome(events_module.splice_envelope_py, *args)
    assert outcome(events_module.splice_envelope, *args) == expected


def _timestamp_texts(rng: random.Random) -> list[str]:
    """What the server prints for timestamptz in a UTC session, and what it does not."""
    texts = ["infinity", "-infinity", "2024-01-02 03:04:05+00", "0001-01-01 00:00:00+00 BC", "é" * 25 + "+00"]
    for _ in range(3_000):
        year = rng.choice(("2024", "1970", "0001", "9999", "12345", "0044"))
        fraction = "".join(rng.choice("0123456789") for _ in range(rng.choice((0, 1, 3, 5, 6, 6, 9, 12))))
        if rng.random() < 0.3:
            fraction = fraction.rstrip("0") or fraction[:1]
        zone = rng.choice(("+00", "+00", "+00", "+05:30", "-08", "+00 BC", "Z"))
        day = f"{year}-0{rng.randint(1, 9)}-{rng.randint(10, 28)}"
        text = f"{day} {rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}"
        text += (f".{fraction}" if fraction else "") + zone
        if rng.random() < 0.1:  # damaged: a character replaced or cut
            where = rng.randrange(len(text))
            text = text[:where] + rng.choice((".", " ", "-", "0", "")) + text[where + 1 :]
        texts.append(text)
    return texts


@compiled_only
@pytest.mark.parametrize("fraction_digits", [-1, 0, 1, 3, 6, 9, 10])
def test_timestamptz_converts_alike(monkeypatch: pytest.MonkeyPatch, fraction_digits: int) -> None:
    compiled = values._zoned_timestamp(fraction_digits)
    monkeypatch.setattr(values, "utc_timestamp_fast_path", values.utc_timestamp_fast_path_py)
    pure = values._zoned_timestamp(fraction_digits)
    assert type(compiled) is not type(pure)
    for text in _timestamp_texts(random.Random(fraction_digits)):
        assert outcome(compiled, text) == outcome(pure, text), text
