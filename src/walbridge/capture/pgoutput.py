"""Pure decoder of PostgreSQL's ``pgoutput`` logical replication protocol (version 1, as capture asks).

Contract: bytes in, frozen dataclasses out; no I/O, no catalog lookups, no clocks. :func:`decode`
reads one pgoutput message (the payload of an XLogData frame; psycopg2's replication cursor reads the
outer frames and sends the standby status updates); :func:`decode_row_change` is its fast path for
row changes.

Column values in :data:`TupleData` are the ``bytes`` of PostgreSQL's text output, ``None`` for SQL
NULL, or :data:`UNCHANGED_TOAST` for an unchanged TOASTed value that the server did not resend. The
plugin's ``binary`` option must stay off: binary values would arrive as ``bytes`` indistinguishable
from text. Timestamps are converted from the PostgreSQL epoch (2000-01-01) to Unix microseconds.

Capture uses protocol version 1 without ``streaming``, so the version-2 Stream Start/Stop/Commit/Abort
messages (and the transaction id they prefix to others) never arrive: they are decoding errors here.

Malformed input raises :class:`walbridge.errors.DecodeError` naming the message type and offset.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from walbridge import accel
from walbridge.errors import DecodeError

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "Relation",
    "RelationColumn",
    "Truncate",
    "TupleData",
    "Type",
    "Update",
    "decode",
    "decode_row_change",
    "decode_row_change_py",
    "pg_to_unix_us",
]

PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000
"""Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's timestamp epoch."""


class _UnchangedToast:
    """Sentinel type: the column is TOASTed and unchanged, its value was not sent."""

    __slots__ = ()
    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()

TupleData = tuple["bytes | _UnchangedToast | None", ...]

# Replica identity markers in the Relation message (pg_class.relreplident).
REPLICA_IDENTITY_DEFAULT: Final = "d"
REPLICA_IDENTITY_NOTHING: Final = "n"
REPLICA_IDENTITY_FULL: Final = "f"
REPLICA_IDENTITY_INDEX: Final = "i"

TRUNCATE_CASCADE: Final = 1
TRUNCATE_RESTART_IDENTITY: Final = 2


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int
    """1 when the column is part of the replica identity key."""
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    old: TupleData | None
    """The full old row (REPLICA IDENTITY FULL)."""
    key: TupleData | None
    """The old key when it changed (other columns None)."""
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old: TupleData | None
    key: TupleData | None


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    """Bit 1: CASCADE, bit 2: RESTART IDENTITY."""
    relation_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A ``pg_logical_emit_message`` record."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage


# --------------------------------------------------------------------------- fixed-width fields

_BEGIN = struct.Struct(">qqI")
_COMMIT = struct.Struct(">bqqq")
_Q = struct.Struct(">q")
_I = struct.Struct(">I")
_i = struct.Struct(">i")
_H = struct.Struct(">H")
_RELATION_HEAD = struct.Struct(">I")
_COLUMN_TAIL = struct.Struct(">Ii")
_TRUNCATE_HEAD = struct.Struct(">Ib")
_MESSAGE_HEAD = struct.Struct(">bq")

_N, _U, _T, _B = ord("n"), ord("u"), ord("t"), ord("b")
_K, _O, _NEW = ord("K"), ord("O"), ord("N")


def pg_to_unix_us(pg_us: int) -> int:
    return pg_us + PG_EPOCH_OFFSET_US


class _Malformed(Exception):
    """Internal: carries the offset where decoding failed."""

    def __init__(self, pos: int, why: str) -> None:
        super().__init__(why)
        self.pos = pos
        self.why = why


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise _Malformed(pos, "unterminated string")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError:
        raise _Malformed(pos, "string is not UTF-8") from None


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    """TupleData: Int16 count, then per column a kind byte and, for text/binary, Int32 length + bytes."""
    (count,) = _H.unpack_from(buf, pos)
    pos += 2
    values: list[bytes | _UnchangedToast | None] = []
    append = values.append
    for _ in range(count):
        kind = buf[pos]
        if kind in (_T, _B):
            (length,) = _I.unpack_from(buf, pos + 1)
            start = pos + 5
            pos = start + length
            if pos > len(buf):
                raise _Malformed(start, f"column value of {length} bytes runs past the end")
            append(buf[start:pos])
        elif kind == _N:
            pos += 1
            append(None)
        elif kind == _U:
            pos += 1
            append(UNCHANGED_TOAST)
        else:
            raise _Malformed(pos, f"unknown tuple column kind {kind!r}")
    return tuple(values), pos


# --------------------------------------------------------------------------- one decoder per message


def _begin(buf: bytes, pos: int) -> tuple[Message, int]:
    final_lsn, ts, xid = _BEGIN.unpack_from(buf, pos)
    return Begin(final_lsn, pg_to_unix_us(ts), xid), pos + _BEGIN.size


def _commit(buf: bytes, pos: int) -> tuple[Message, int]:
    flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, pos)
    return Commit(flags, commit_lsn, end_lsn, pg_to_unix_us(ts)), pos + _COMMIT.size


def _origin(buf: bytes, pos: int) -> tuple[Message, int]:
    (lsn,) = _Q.unpack_from(buf, pos)
    name, pos = _cstring(buf, pos + 8)
    return Origin(lsn, name), pos


def _relation(buf: bytes, pos: int) -> tuple[Message, int]:
    (oid,) = _RELATION_HEAD.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    identity = chr(buf[pos])
    (count,) = _H.unpack_from(buf, pos + 1)
    pos += 3
    columns = []
    for _ in range(count):
        flags = buf[pos]
        col_name, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _COLUMN_TAIL.unpack_from(buf, pos)
        pos += _COLUMN_TAIL.size
        columns.append(RelationColumn(flags, col_name, type_oid, typmod))
    return Relation(oid, namespace, name, identity, tuple(columns)), pos


def _type(buf: bytes, pos: int) -> tuple[Message, int]:
    (oid,) = _I.unpack_from(buf, pos)
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    return Type(oid, namespace, name), pos


def _insert(buf: bytes, pos: int) -> tuple[Message, int]:
    (oid,) = _I.unpack_from(buf, pos)
    if buf[pos + 4] != _NEW:
        raise _Malformed(pos + 4, f"expected 'N', got {buf[pos + 4]!r}")
    new, pos = _tuple(buf, pos + 5)
    return Insert(oid, new), pos


def _old_or_key(buf: bytes, pos: int) -> tuple[TupleData | None, TupleData | None, int]:
    kind = buf[pos]
    if kind == _K:
        key, pos = _tuple(buf, pos + 1)
        return None, key, pos
    if kind == _O:
        old, pos = _tuple(buf, pos + 1)
        return old, None, pos
    return None, None, pos


def _update(buf: bytes, pos: int) -> tuple[Message, int]:
    (oid,) = _I.unpack_from(buf, pos)
    old, key, pos = _old_or_key(buf, pos + 4)
    if buf[pos] != _NEW:
        raise _Malformed(pos, f"expected 'N', got {buf[pos]!r}")
    new, pos = _tuple(buf, pos + 1)
    return Update(oid, old, key, new), pos


def _delete(buf: bytes, pos: int) -> tuple[Message, int]:
    (oid,) = _I.unpack_from(buf, pos)
    old, key, end = _old_or_key(buf, pos + 4)
    if end == pos + 4:
        raise _Malformed(end, f"expected 'K' or 'O', got {buf[end]!r}")
    return Delete(oid, old, key), end


def _truncate(buf: bytes, pos: int) -> tuple[Message, int]:
    count, options = _TRUNCATE_HEAD.unpack_from(buf, pos)
    pos += _TRUNCATE_HEAD.size
    oids = struct.unpack_from(f">{count}I", buf, pos)
    return Truncate(options, oids), pos + 4 * count


def _message(buf: bytes, pos: int) -> tuple[Message, int]:
    flags, lsn = _MESSAGE_HEAD.unpack_from(buf, pos)
    prefix, pos = _cstring(buf, pos + _MESSAGE_HEAD.size)
    (length,) = _I.unpack_from(buf, pos)
    start = pos + 4
    if start + length > len(buf):
        raise _Malformed(start, f"content of {length} bytes runs past the end")
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[start : start + length]), start + length


_DECODERS = {
    ord("B"): ("Begin", _begin),
    ord("C"): ("Commit", _commit),
    ord("O"): ("Origin", _origin),
    ord("R"): ("Relation", _relation),
    ord("Y"): ("Type", _type),
    ord("I"): ("Insert", _insert),
    ord("U"): ("Update", _update),
    ord("D"): ("Delete", _delete),
    ord("T"): ("Truncate", _truncate),
    ord("M"): ("Message", _message),
}


def decode(buf: bytes | memoryview) -> Message:
    """One pgoutput message → its dataclass. Raises DecodeError on malformed or unknown input."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    if not data:
        raise DecodeError("empty pgoutput message", offset=0)
    entry = _DECODERS.get(data[0])
    if entry is None:
        raise DecodeError(f"unknown pgoutput message type {chr(data[0])!r} at offset 0", offset=0)
    kind, reader = entry
    try:
        message, end = reader(data, 1)
    except _Malformed as exc:
        where = exc.pos
        raise DecodeError(f"malformed {kind} message at offset {where}: {exc.why}", offset=where) from None
    except (struct.error, IndexError):
        where = len(data)
        raise DecodeError(f"truncated {kind} message: input ends at offset {where}", offset=where) from None
    if end != len(data):
        raise DecodeError(
            f"malformed {kind} message at offset {end}: {len(data) - end} trailing bytes", offset=end
        )
    return message


# --------------------------------------------------------------------------- fast path for row changes

TextRow = dict[str, "str | None"]
RowChange = tuple[int, int, TextRow | None, TextRow | None, TextRow | None]
_INSERT, _UPDATE, _DELETE = ord("I"), ord("U"), ord("D")
_ROW_CHANGES = frozenset((_INSERT, _UPDATE, _DELETE))
_unpack_I = _I.unpack_from


def _text_row(buf: bytes, pos: int, names: tuple[str, ...]) -> tuple[TextRow, int]:
    """TupleData straight into ``{name: text}``; raises on anything unusual (the caller falls back)."""
    if buf[pos] << 8 | buf[pos + 1] != len(names):
        raise ValueError("column count")
    pos += 2
    row: TextRow = {}
    for name in names:
        kind = buf[pos]
        if kind == _T:
            start = pos + 5
            pos = start + _unpack_I(buf, pos + 1)[0]
            row[name] = buf[start:pos].decode()
        elif kind == _N:
            pos += 1
            row[name] = None
        else:
            raise ValueError(kind)  # unchanged TOAST, binary values or garbage: the slow path
    if pos > len(buf):
        raise ValueError(pos)
    return row, pos


def decode_row_change_py(buf: bytes, columns: Mapping[int, tuple[str, ...]]) -> RowChange | None:
    """Insert/Update/Delete outside streamed blocks → (type byte, relation oid, old, key, new).

    The capture's hot path: no message objects; each tuple becomes ``{column name: text or None}``
    with the names ``columns`` gives for the relation. Returns ``None`` for any other message and
    whenever :func:`decode` would reject the input or give something else (unknown relation, a column
    count that differs, unchanged TOAST, binary values, invalid UTF-8): the caller then uses
    :func:`decode`, which names any problem.
    """
    try:
        kind = buf[0]
        if kind not in _ROW_CHANGES:
            return None
        (oid,) = _unpack_I(buf, 1)
        names = columns.get(oid)
        if names is None:
            return None
        marker = buf[5]
        old = key = new = None
        if kind == _INSERT:
            if marker != _NEW:
                return None
            new, end = _text_row(buf, 6, names)
        else:
            if marker == _O:
                old, end = _text_row(buf, 6, names)
            elif marker == _K:
                key, end = _text_row(buf, 6, names)
            elif kind == _UPDATE and marker == _NEW:
                end = 5
            else:
                return None
            if kind == _UPDATE:
                if buf[end] != _NEW:
                    return None
                new, end = _text_row(buf, end + 1, names)
    except (ValueError, IndexError, struct.error):
        return None
    return (kind, oid, old, key, new) if end == len(buf) else None


decode_row_change: Final = accel.pick(decode_row_change_py)
"""Capture's row-change decoder: :func:`decode_row_change_py`, compiled where it was built."""
