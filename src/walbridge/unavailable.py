"""Debezium's unavailable-value placeholder: the one definition, for capture and sinks.

pgoutput does not resend a TOASTed value that an UPDATE left unchanged (unless the table has
``REPLICA IDENTITY FULL``, whose old row carries it). Debezium then writes its
``unavailable.value.placeholder`` in the column's place, converted to the column's JSON type
(``UnchangedToastedPlaceholder`` / ``UnchangedToastedReplicationMessageColumn.markerForType`` of
Debezium's PostgreSQL connector):

============================================  ===========================================
column type                                   value in the event
============================================  ===========================================
``bytea``                                     base64 of the placeholder's UTF-8 bytes (the
                                              placeholder itself with ``binary.handling.mode=hex``)
``text[]``, ``varchar[]``, ``char[]``,         ``[placeholder]``
``json[]``, ``jsonb[]``
``bytea[]``                                   ``[base64 of the placeholder]``
``int4[]``, ``date[]``, ``int8[]``            the placeholder's bytes as integers
``uuid[]``                                    ``[UUID.nameUUIDFromBytes(placeholder)]``
``hstore`` (``hstore.handling.mode=json``)    ``{"placeholder":"placeholder"}`` as a string
any other type                                the placeholder string
============================================  ===========================================

walbridge's capture emits exactly these (other array types, where Debezium 3.6 fails to serialise
the marker, get ``[placeholder]``); a sink recognises every form with :func:`is_unavailable`, after
the cheap byte test :func:`mentions_unavailable` on the raw record. A real value equal to one of
these forms (a 28-element ``int[]`` spelling the placeholder, a text holding its base64) is read
as "unchanged" too, as Debezium's own JDBC sink does.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import orjson

__all__ = [
    "PLACEHOLDER",
    "is_unavailable",
    "mentions_unavailable",
    "placeholder_for",
    "unavailable_names",
]

PLACEHOLDER = "__debezium_unavailable_value"
"""Debezium's default ``unavailable.value.placeholder``."""

_RAW = PLACEHOLDER.encode()
_BASE64 = base64.b64encode(_RAW).decode()
_BYTE_LIST = list(_RAW)
# Java's UUID.nameUUIDFromBytes: MD5 of the bytes with version 3 and the RFC 4122 variant.
_UUID = str(uuid.UUID(bytes=hashlib.md5(_RAW).digest(), version=3))
_HSTORE_JSON = orjson.dumps({PLACEHOLDER: PLACEHOLDER}).decode()

_TEXT_ARRAYS = frozenset({"_text", "_varchar", "_bpchar", "_json", "_jsonb"})
_BYTE_LIST_ARRAYS = frozenset({"_int4", "_date", "_int8"})

_STRINGS = frozenset({PLACEHOLDER, _BASE64, _HSTORE_JSON})
_LISTS = ([PLACEHOLDER], [_BASE64], _BYTE_LIST, [_UUID])
_MAP = {PLACEHOLDER: PLACEHOLDER}
_MARKERS = (_RAW, _BASE64.encode(), orjson.dumps(_BYTE_LIST)[1:-1], _UUID.encode())
"""Byte strings of which every form's JSON contains at least one."""


def placeholder_for(type_name: str, is_array: bool, binary_handling_mode: str = "bytes") -> Any:
    """The value standing for an unchanged TOASTed column of this type (``_int4`` for ``int4[]``)."""
    if type_name == "bytea":
        return PLACEHOLDER if binary_handling_mode == "hex" else _BASE64
    if not is_array or type_name in _TEXT_ARRAYS:
        return [PLACEHOLDER] if is_array else PLACEHOLDER
    if type_name == "_bytea":
        return [_BASE64]
    if type_name in _BYTE_LIST_ARRAYS:
        return list(_BYTE_LIST)
    if type_name == "_uuid":
        return [_UUID]
    return [PLACEHOLDER]


def is_unavailable(value: Any) -> bool:
    """Whether a decoded JSON value is the placeholder in any of its forms."""
    cls = value.__class__
    if cls is str:
        return value in _STRINGS
    if cls is list:
        return 0 < len(value) <= len(_BYTE_LIST) and value in _LISTS
    if cls is dict:
        return bool(value == _MAP)
    return False


def mentions_unavailable(raw: bytes | None) -> bool:
    """Whether a record's bytes may hold a placeholder (no false negatives; cheap)."""
    return raw is not None and any(marker in raw for marker in _MARKERS)


def unavailable_names(row: dict[str, Any], raw: bytes | None) -> list[str]:
    """The names of ``row``'s values that are the placeholder (``row`` decoded from ``raw``).

    The common row, with only scalar values, is settled in one set test: a placeholder among them is
    one of a few strings. A row with a list or object value (unhashable) takes the byte test of
    :func:`mentions_unavailable` first, then :func:`is_unavailable` per value.
    """
    try:
        if _STRINGS.isdisjoint(row.values()):
            return []
    except TypeError:  # a list or dict value
        if not mentions_unavailable(raw):
            return []
    return [name for name, value in row.items() if is_unavailable(value)]
