"""A lean record decoder for sinks that need only the change itself (op, key, before, after, table).

:func:`decode_lean` reads the common shape — a schemaless Debezium envelope with a schemaless (or
absent) key — straight into a :class:`ChangeEvent` whose ``source`` is shared per table and carries
only ``schema`` and ``table`` (``connector``, ``db``, ``lsn``, ``ts_ms``, ... are left empty). Every
other shape (schema blocks, unwrapped rows, malformed input) goes to
:func:`walbridge.events.decode_record`, so the result and the :class:`DecodeError` raised are the
ones ``decode_record`` gives; only the source fields are thinner.
"""

from __future__ import annotations

from typing import Any

import orjson

from walbridge.events import ChangeEvent, Source, change_event, decode_record

__all__ = ["decode_lean"]

_ROW_OPS = frozenset({"c", "r", "u"})
_MAX_SOURCES = 10_000
_sources: dict[tuple[str, Any, Any], Source] = {}
_loads = orjson.loads


def _source(topic: str, schema: Any, table: Any) -> Source | None:
    ident = (topic, schema, table)
    source = _sources.get(ident)
    if source is not None:
        return source
    if not (isinstance(schema, str) and schema and isinstance(table, str) and table):
        return None  # derived from the topic name: leave it to decode_record
    if len(_sources) >= _MAX_SOURCES:
        _sources.clear()
    source = _sources[ident] = Source(connector="", name="", db="", schema=schema, table=table, ts_ms=0)
    return source


def decode_lean(topic: str, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """Like :func:`decode_record` (same results, same errors) with a thin, shared ``source``."""
    if value is None:
        return None
    try:
        doc = _loads(value)
        key_doc = None if key is None else _loads(key)
    except orjson.JSONDecodeError:
        return decode_record(topic, key, value)
    if type(doc) is not dict or "schema" in doc or not (key_doc is None or _plain_key(key_doc)):
        return decode_record(topic, key, value)
    get = doc.get
    op: Any = get("op")
    src = get("source")
    before, after = get("before"), get("after")
    if op in _ROW_OPS:
        shaped = type(after) is dict and (before is None or type(before) is dict)
    else:
        shaped = op == "d" and type(before) is dict and (after is None or type(after) is dict)
    ts_ms = get("ts_ms")
    if not shaped or type(src) is not dict or not (ts_ms is None or type(ts_ms) is int):
        return decode_record(topic, key, value)
    source = _sources.get((topic, src.get("schema"), src.get("table")))
    if source is None:
        source = _source(topic, src.get("schema"), src.get("table"))
        if source is None:
            return decode_record(topic, key, value)
    return change_event(op, source, key_doc, before, after, ts_ms or 0)


def _plain_key(doc: Any) -> bool:
    """A schemaless key object (not ``{"schema": …, "payload": …}``)."""
    return type(doc) is dict and not ("payload" in doc and "schema" in doc and len(doc) == 2)
