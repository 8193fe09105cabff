"""pgoutput decoder: hand-built bytes for every message type, and malformed input."""

from __future__ import annotations

import struct

import pytest

from walbridge.capture import pgoutput as pg
from walbridge.errors import DecodeError

PG_EPOCH_US = 946_684_800_000_000


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(*values: bytes | str | None) -> bytes:
    out = struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == "u":
            out += b"u"
        else:
            assert isinstance(value, bytes)
            out += b"t" + struct.pack(">I", len(value)) + value
    return out


def test_begin_converts_timestamp_to_unix_micros() -> None:
    buf = b"B" + struct.pack(">qqI", 0x16_B374D848, 1_000_000, 777)
    assert pg.decode(buf) == pg.Begin(0x16_B374D848, PG_EPOCH_US + 1_000_000, 777)


def test_commit() -> None:
    buf = b"C" + struct.pack(">bqqq", 0, 100, 200, 0)
    assert pg.decode(buf) == pg.Commit(0, 100, 200, PG_EPOCH_US)


def test_origin() -> None:
    assert pg.decode(b"O" + struct.pack(">q", 5) + cstr("node1")) == pg.Origin(5, "node1")


def test_relation() -> None:
    buf = (
        b"R" + struct.pack(">I", 16384) + cstr("inventory") + cstr("customers") + b"d" + struct.pack(">H", 2)
        + b"\x01" + cstr("id") + struct.pack(">Ii", 23, -1)
        + b"\x00" + cstr("price") + struct.pack(">Ii", 1700, (10 << 16 | 2) + 4)
    )  # fmt: skip
    msg = pg.decode(buf)
    assert msg == pg.Relation(
        16384,
        "inventory",
        "customers",
        "d",
        (pg.RelationColumn(1, "id", 23, -1), pg.RelationColumn(0, "price", 1700, 655366)),
    )
    assert isinstance(msg, pg.Relation) and msg.columns[0].is_key and not msg.columns[1].is_key


def test_type() -> None:
    assert pg.decode(b"Y" + struct.pack(">I", 99999) + cstr("public") + cstr("mood")) == pg.Type(
        99999, "public", "mood"
    )


def test_insert_with_null_and_unchanged_toast() -> None:
    buf = b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(b"1", None, "u", b"")
    msg = pg.decode(memoryview(buf))
    assert msg == pg.Insert(16384, (b"1", None, pg.UNCHANGED_TOAST, b""))


def test_update_variants() -> None:
    new = tuple_data(b"1", b"b")
    plain = pg.decode(b"U" + struct.pack(">I", 1) + b"N" + new)
    assert plain == pg.Update(1, None, None, (b"1", b"b"))
    keyed = pg.decode(b"U" + struct.pack(">I", 1) + b"K" + tuple_data(b"0", None) + b"N" + new)
    assert keyed == pg.Update(1, None, (b"0", None), (b"1", b"b"))
    full = pg.decode(b"U" + struct.pack(">I", 1) + b"O" + tuple_data(b"1", b"a") + b"N" + new)
    assert full == pg.Update(1, (b"1", b"a"), None, (b"1", b"b"))


def test_delete_key_and_old() -> None:
    assert pg.decode(b"D" + struct.pack(">I", 7) + b"K" + tuple_data(b"1", None)) == pg.Delete(
        7, None, (b"1", None)
    )
    assert pg.decode(b"D" + struct.pack(">I", 7) + b"O" + tuple_data(b"1", b"x")) == pg.Delete(
        7, (b"1", b"x"), None
    )


def test_truncate() -> None:
    buf = b"T" + struct.pack(">Ib", 2, pg.TRUNCATE_CASCADE) + struct.pack(">II", 10, 11)
    assert pg.decode(buf) == pg.Truncate(1, (10, 11))


def test_logical_message() -> None:
    buf = b"M" + struct.pack(">bq", 1, 42) + cstr("walbridge") + struct.pack(">I", 3) + b"abc"
    assert pg.decode(buf) == pg.LogicalMessage(True, 42, "walbridge", b"abc")


@pytest.mark.parametrize(
    ("buf", "fragment"),
    [
        (b"", "empty"),
        (b"Z\x00", "unknown pgoutput message type 'Z' at offset 0"),
        (b"B" + b"\x00" * 5, "truncated Begin message: input ends at offset 6"),
        (b"I" + struct.pack(">I", 1) + b"X", "malformed Insert message at offset 5"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"q", "unknown tuple column kind"),
        (b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 1) + b"t" + struct.pack(">I", 9) + b"ab",
         "malformed Insert message at offset 13: column value of 9 bytes runs past the end"),
        (b"R" + struct.pack(">I", 1) + b"public", "Relation message at offset 5: unterminated string"),
        (b"D" + struct.pack(">I", 1) + b"N" + tuple_data(b"1"), "expected 'K' or 'O'"),
        (b"C" + struct.pack(">bqqq", 0, 1, 2, 3) + b"!", "Commit message at offset 26: 1 trailing bytes"),
        (b"S" + struct.pack(">Ib", 900, 1), "unknown pgoutput message type 'S'"),  # streaming is off
    ],
)  # fmt: skip
def test_bad_bytes_raise_decode_error(buf: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError, match=None) as info:
        pg.decode(buf)
    assert fragment in str(info.value)
