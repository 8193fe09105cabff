"""The one event model of walbridge and its Debezium-compatible wire form.

Every source (logical replication, trigger log) produces :class:`ChangeEvent` values;
:class:`EnvelopeEncoder` turns them into Kafka records exactly as Debezium's PostgreSQL
connector with JsonConverter would (envelope or ``ExtractNewRecordState``-style flat form,
with or without the ``schema`` block); :func:`decode_record` reads records back, from
walbridge or from a real Debezium, into the same :class:`ChangeEvent` for every sink.

Column values inside ``before``/``after``/``key`` are already JSON-ready, encoded the way
Debezium encodes them (see ``capture/values.py``).
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple

import orjson

from walbridge import __version__, accel
from walbridge.edge_values import NUMERIC_SPECIAL_VALUES
from walbridge.errors import DecodeError
from walbridge.unavailable import is_unavailable

__all__ = [
    "LSN_MARK",
    "OPS",
    "ChangeEvent",
    "ColumnSchema",
    "EncodedRecord",
    "EncodingOptions",
    "EnvelopeEncoder",
    "KafkaRecord",
    "Op",
    "PreparedSource",
    "Source",
    "SplicedEvent",
    "TableSchema",
    "change_event",
    "decode_record",
    "split_topic",
]

Op = Literal["c", "u", "d", "r", "t"]
OPS: frozenset[str] = frozenset({"c", "u", "d", "r", "t"})

LOGICAL_CONNECTOR = "postgresql"
TRIGGER_CONNECTOR = "postgresql-trigger"
SOURCE_VERSION = f"{__version__}-walbridge"

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Source:
    """Where and when a change happened: Debezium's ``source`` block."""

    connector: str
    name: str
    db: str
    schema: str
    table: str
    ts_ms: int
    snapshot: str = "false"
    tx_id: int | None = None
    lsn: int | None = None
    sequence: str | None = None
    change_id: int | None = None
    """Trigger mode: the change-log row id, in place of an LSN."""
    ts_us: int | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One committed change of one row (or one TRUNCATE of a table)."""

    op: str
    source: Source
    key: Row | None
    before: Row | None
    after: Row | None
    ts_ms: int = 0
    relation: TableSchema | None = field(default=None, compare=False, repr=False)
    """The table's column schemas, for the optional ``schema`` block and for sinks."""

    @property
    def schema(self) -> str:
        return self.source.schema

    @property
    def table(self) -> str:
        return self.source.table

    @property
    def row(self) -> Row | None:
        """The row's current state: ``after``, or ``before`` for a delete."""
        return self.before if self.op == "d" else self.after


_new = object.__new__
_set_op, _set_source, _set_key, _set_before, _set_after, _set_ts_ms, _set_relation = (
    ChangeEvent.__dict__[name].__set__ for name in ChangeEvent.__slots__
)


def change_event(
    op: str, source: Source, key: Row | None, before: Row | None, after: Row | None, ts_ms: int
) -> ChangeEvent:
    """``ChangeEvent(op, source, key, before, after, ts_ms)`` at half the cost, for per-record decoders:
    the frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; this sets the
    slots directly."""
    event = _new(ChangeEvent)
    _set_op(event, op)
    _set_source(event, source)
    _set_key(event, key)
    _set_before(event, before)
    _set_after(event, after)
    _set_ts_ms(event, ts_ms)
    _set_relation(event, None)
    return event


@dataclass(frozen=True, slots=True)
class ColumnSchema:
    """A column and its Kafka Connect field schema (without the ``field`` name)."""

    name: str
    connect: Mapping[str, Any]
    """e.g. ``{"type": "int32", "optional": False}``, with ``name``/``parameters`` for logical types."""


@dataclass(frozen=True, slots=True)
class TableSchema:
    schema: str
    table: str
    columns: tuple[ColumnSchema, ...]
    key_columns: tuple[str, ...]


class KafkaRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None


@dataclass(frozen=True, slots=True)
class EncodingOptions:
    """How events are written to Kafka. Field names follow Debezium's option names."""

    topic_prefix: str = "walbridge"
    tombstones_on_delete: bool = True
    schemas_enable: bool = False
    unwrap: bool = False
    """Flat row like ``ExtractNewRecordState`` with deletes rewritten (``__deleted``)."""
    unwrap_add_fields: tuple[str, ...] = ()
    """Any of ``op``, ``table``, ``lsn``, ``source.ts_ms``, ``db``, ``schema``, ``txId``."""
    emit_truncate: bool = True


_ENVELOPE_VERSION = 2


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EnvelopeEncoder:
    """ChangeEvent → Kafka records (value, key, topic), Debezium's JsonConverter layout."""

    def __init__(self, options: EncodingOptions) -> None:
        self.options = options
        self._topics: dict[tuple[str, str], str] = {}
        self._schemas: dict[tuple[str, str], tuple[TableSchema, dict[str, Any], dict[str, Any] | None]] = {}
        """Per table: the shape the schema blocks were made for, and the blocks."""

    def topic(self, schema: str, table: str) -> str:
        name = self._topics.get((schema, table))
        if name is None:
            name = self._topics[(schema, table)] = f"{self.options.topic_prefix}.{schema}.{table}"
        return name

    def prepare(self, source: Source, relation: TableSchema | None) -> PreparedSource | None:
        """The fast encoder of one table's events sharing ``source`` up to the LSN (see PreparedSource).

        Every :data:`LSN_MARK` in ``source`` (``lsn``, inside ``sequence``) stands for each event's LSN.
        ``None`` when the options need the general path (unwrapped form).
        """
        opts = self.options
        if opts.unwrap:
            return None
        parts = _source_parts(source, opts.topic_prefix)
        if parts is None:
            return None
        return self._prepared(source, relation, parts, None)

    def prepare_per_event(self, source: Source, relation: TableSchema | None) -> PreparedSource | None:
        """Like :meth:`prepare` for events whose ``ts_ms``, ``ts_us``, ``txId`` and ``change_id`` differ
        (trigger mode): encode with :meth:`PreparedSource.source_for`. ``None`` as :meth:`prepare`."""
        if self.options.unwrap:
            return None
        pieces = _source_pieces(source, self.options.topic_prefix)
        if pieces is None:
            return None
        return self._prepared(source, relation, [], pieces)

    def _prepared(
        self,
        source: Source,
        relation: TableSchema | None,
        parts: list[bytes],
        source_pieces: tuple[bytes, ...] | None,
    ) -> PreparedSource | None:
        opts = self.options
        value_schema = key_schema = None
        if opts.schemas_enable:
            if relation is None:
                return None
            envelope, key = self._connect_schemas(relation)
            value_schema = orjson.dumps(envelope)
            key_schema = orjson.dumps(key)
        return PreparedSource(
            self.topic(source.schema, source.table),
            f"{source.schema}.{source.table}",
            parts,
            opts.tombstones_on_delete,
            value_schema,
            key_schema,
            source_pieces,
        )

    def encode(self, event: ChangeEvent) -> list[KafkaRecord]:
        """The records for one event: usually one; a delete adds a tombstone; unwrap may drop."""
        opts = self.options
        if event.op == "t" and (opts.unwrap or not opts.emit_truncate):
            return []
        topic = self.topic(event.source.schema, event.source.table)
        key = self._encode_key(event)
        value = self._encode_flat(event) if opts.unwrap else self._encode_envelope(event)
        if event.op == "d" and opts.tombstones_on_delete and key is not None:
            return [KafkaRecord(topic, key, value), KafkaRecord(topic, key, None)]
        return [KafkaRecord(topic, key, value)]

    def _encode_key(self, event: ChangeEvent) -> bytes | None:
        if event.key is None:
            return None
        if not self.options.schemas_enable:
            return orjson.dumps(event.key)
        key_schema = self._schemas_for(event)[1]
        return orjson.dumps({"schema": key_schema, "payload": event.key})

    def _encode_envelope(self, event: ChangeEvent) -> bytes:
        ts_ms = event.ts_ms or _now_ms()
        payload = {
            "before": event.before,
            "after": event.after,
            "source": source_block(event.source, self.options.topic_prefix),
            "transaction": None,
            "op": event.op,
            "ts_ms": ts_ms,
            "ts_us": ts_ms * 1000,
            "ts_ns": ts_ms * 1_000_000,
        }
        if not self.options.schemas_enable:
            return orjson.dumps(payload)
        return orjson.dumps({"schema": self._schemas_for(event)[0], "payload": payload})

    def _encode_flat(self, event: ChangeEvent) -> bytes:
        row = dict(event.row or {})
        row["__deleted"] = "true" if event.op == "d" else "false"
        src = event.source
        for name in self.options.unwrap_add_fields:
            row["__" + name.replace(".", "_")] = _added_field(name, event, src)
        return orjson.dumps(row)

    def _schemas_for(self, event: ChangeEvent) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if event.relation is None:
            src = event.source
            raise DecodeError(
                f"schemas.enable needs column schemas for {src.schema}.{src.table}, which this source lacks"
            )
        return self._connect_schemas(event.relation)

    def _connect_schemas(self, relation: TableSchema) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The table's schema blocks, made again whenever its shape changed (ALTER TABLE)."""
        ident = (relation.schema, relation.table)
        cached = self._schemas.get(ident)
        if cached is None or (cached[0] is not relation and cached[0] != relation):
            envelope, key = connect_schemas(relation, self.options.topic_prefix)
            cached = self._schemas[ident] = (relation, envelope, key)
        return cached[1], cached[2]


LSN_MARK = 7_777_777_777_777_777_777
"""Placeholder LSN of a source given to :meth:`EnvelopeEncoder.prepare`."""
_OTHER_MARK = 8_888_888_888_888_888_888
_ENVELOPE_BYTES = (
    b'{"before":%b,"after":%b,"source":%b,"transaction":null,"op":"%b","ts_ms":%d,"ts_us":%d,"ts_ns":%d}'
)
_WITH_SCHEMA = b'{"schema":%b,"payload":%b}'
_dumps = orjson.dumps


def _source_parts(source: Source, name: str) -> list[bytes] | None:
    """The source block's JSON split where the LSN goes; None if the split is ambiguous."""

    def split(mark: int) -> list[bytes]:
        marked = replace(
            source,
            lsn=mark if source.lsn == LSN_MARK else source.lsn,
            sequence=source.sequence.replace(str(LSN_MARK), str(mark)) if source.sequence else None,
        )
        return orjson.dumps(source_block(marked, name)).split(str(mark).encode())

    parts = split(LSN_MARK)
    # Text that happens to contain the mark's digits would be replaced too: then use the general path.
    return parts if parts == split(_OTHER_MARK) else None


# Two sets of marks for the per-event fields of a source template (ts_ns = ts_us * 1000 fits int64 too).
_TEMPLATE_MARKS = (
    {"ts_ms": 3_141_592_653_589_793, "ts_us": 2_718_281_828_459_045, "tx_id": 1_414_213_562_373_095,
     "change_id": 1_732_050_807_568_877},
    {"ts_ms": 6_022_140_760_000_001, "ts_us": 1_602_176_634_000_003, "tx_id": 2_997_924_580_000_007,
     "change_id": 6_674_300_000_000_009},
)  # fmt: skip


def _source_pieces(source: Source, name: str) -> tuple[bytes, ...] | None:
    """The source block's JSON split where ts_ms, ts_us, ts_ns, txId and change_id go (in that order: six
    pieces); None if ambiguous."""

    def build(marks: dict[str, int]) -> tuple[bytes, ...] | None:
        marked = replace(
            source,
            ts_ms=marks["ts_ms"],
            ts_us=marks["ts_us"],
            tx_id=marks["tx_id"],
            change_id=marks["change_id"],
        )
        text = orjson.dumps(source_block(marked, name))
        pieces, pos = [], 0
        for value in (
            marks["ts_ms"],
            marks["ts_us"],
            marks["ts_us"] * 1000,
            marks["tx_id"],
            marks["change_id"],
        ):
            digits = b"%d" % value
            at = text.find(digits, pos)
            if at < 0:
                return None
            pieces.append(text[pos:at])
            pos = at + len(digits)
        pieces.append(text[pos:])
        return tuple(pieces)

    first, second = (build(marks) for marks in _TEMPLATE_MARKS)
    return first if first is not None and first == second else None


class PreparedSource:
    """Envelope records of one table with a fixed ``source`` block but for the LSN: bytes spliced, no dicts.

    Produces exactly the bytes :meth:`EnvelopeEncoder.encode` produces for the same event (capture's
    hot path: stream transactions and snapshot tables).
    """

    __slots__ = (
        "_template",
        "key_schema",
        "label",
        "parts",
        "source_pieces",
        "tombstones",
        "topic",
        "value_schema",
    )

    def __init__(
        self,
        topic: str,
        label: str,
        parts: list[bytes],
        tombstones: bool,
        value_schema: bytes | None,
        key_schema: bytes | None,
        source_pieces: tuple[bytes, ...] | None = None,
    ) -> None:
        self.topic = topic
        self.label = label
        """``schema.table``."""
        self.tombstones = tombstones
        """A delete with a key is followed by a tombstone."""
        self.parts = parts
        """The source block split where its LSN goes (see :func:`splice_envelope`)."""
        self.value_schema = value_schema
        self.key_schema = key_schema
        """The Connect schemas of value and key, when ``schemas_enable``."""
        self.source_pieces = source_pieces
        """Per-event encoders (:meth:`EnvelopeEncoder.prepare_per_event`): the source block split where
        ts_ms, ts_us, ts_ns, txId and change_id go (see :func:`walbridge.capture.trigger_rows`)."""
        self._template = (
            None if source_pieces is None else b"%d".join(p.replace(b"%", b"%%") for p in source_pieces)
        )

    def encode(
        self, op: str, key: Row | None, before: Row | None, after: Row | None, lsn: int, ts_ms: int
    ) -> tuple[bytes | None, bytes]:
        """(key, value) of one event with op c, u, d or r."""
        return splice_envelope(
            self.parts, lsn, op, key, before, after, ts_ms, self.value_schema, self.key_schema
        )

    def source_for(self, ts_ms: int, ts_us: int, tx_id: int, change_id: int) -> bytes:
        """The source block of one event (a :meth:`EnvelopeEncoder.prepare_per_event` encoder only)."""
        assert self._template is not None
        return self._template % (ts_ms, ts_us, ts_us * 1000, tx_id, change_id)

    def encode_with_source(
        self, source: bytes, op: str, key: Row | None, before: Row | None, after: Row | None, ts_ms: int
    ) -> tuple[bytes | None, bytes]:
        """(key, value) of one event with op c, u, d or r and this source block."""
        return splice_envelope(
            (source,), 0, op, key, before, after, ts_ms, self.value_schema, self.key_schema
        )


EncodedRecord = tuple[bytes | None, bytes]
"""A Kafka record's (key, value) bytes: the key is None for a table without a primary key."""

SplicedEvent = tuple[str, bytes | None, bytes]
"""One event encoded in advance: (op, key, value) (see :meth:`EventPublisher.publish_spliced`)."""


def splice_envelope_py(
    parts: Sequence[bytes],
    lsn: int,
    op: str,
    key: Row | None,
    before: Row | None,
    after: Row | None,
    ts_ms: int,
    value_schema: bytes | None,
    key_schema: bytes | None,
) -> EncodedRecord:
    """(key, value) of one envelope: the source block is ``parts`` joined by the LSN's digits, the
    rows JSON, and with ``value_schema`` both wrapped in ``{"schema": …, "payload": …}``."""
    value = _ENVELOPE_BYTES % (
        _dumps(before), _dumps(after), (b"%d" % lsn).join(parts), op.encode(), ts_ms, ts_ms * 1000,
        ts_ms * 1_000_000,
    )  # fmt: skip
    key_bytes = None if key is None else _dumps(key)
    if value_schema is not None:
        value = _WITH_SCHEMA % (value_schema, value)
        if key_bytes is not None:
            key_bytes = _WITH_SCHEMA % (key_schema, key_bytes)
    return key_bytes, value


splice_envelope: Final = accel.pick(splice_envelope_py)
"""The envelope splicer of :class:`PreparedSource`: :func:`splice_envelope_py`, compiled where built."""


def _added_field(name: str, event: ChangeEvent, src: Source) -> Any:
    values: dict[str, Any] = {
        "op": event.op,
        "table": src.table,
        "schema": src.schema,
        "db": src.db,
        "lsn": src.lsn,
        "txId": src.tx_id,
        "source.ts_ms": src.ts_ms,
        "ts_ms": event.ts_ms,
    }
    return values.get(name)


def source_block(src: Source, name: str) -> dict[str, Any]:
    """Debezium's ``source`` struct for one event."""
    ts_us = src.ts_us if src.ts_us is not None else src.ts_ms * 1000
    block: dict[str, Any] = {
        "version": SOURCE_VERSION,
        "connector": src.connector,
        "name": name,
        "ts_ms": src.ts_ms,
        "ts_us": ts_us,
        "ts_ns": ts_us * 1000,
        "snapshot": src.snapshot,
        "db": src.db,
        "sequence": src.sequence,
        "schema": src.schema,
        "table": src.table,
        "txId": src.tx_id,
        "lsn": src.lsn,
        "xmin": None,
    }
    if src.change_id is not None:
        block["change_id"] = src.change_id
    return block


_SOURCE_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("version", "string", False),
    ("connector", "string", False),
    ("name", "string", False),
    ("ts_ms", "int64", False),
    ("ts_us", "int64", True),
    ("ts_ns", "int64", True),
    ("snapshot", "string", True),
    ("db", "string", False),
    ("sequence", "string", True),
    ("schema", "string", False),
    ("table", "string", False),
    ("txId", "int64", True),
    ("lsn", "int64", True),
    ("xmin", "int64", True),
    ("change_id", "int64", True),
)


def connect_schemas(relation: TableSchema, prefix: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Kafka Connect schemas (envelope, key) for a table, named as Debezium names them."""
    base = f"{prefix}.{relation.schema}.{relation.table}"
    fields = [{**col.connect, "field": col.name} for col in relation.columns]
    row_schema = {"type": "struct", "fields": fields, "optional": True, "name": f"{base}.Value"}
    source_schema = {
        "type": "struct",
        "fields": [
            {"type": typ, "optional": optional, "field": name} for name, typ, optional in _SOURCE_FIELDS
        ],
        "optional": False,
        "name": "io.debezium.connector.postgresql.Source",
    }
    envelope = {
        "type": "struct",
        "fields": [
            {**row_schema, "field": "before"},
            {**row_schema, "field": "after"},
            {**source_schema, "field": "source"},
            {
                "type": "struct",
                "optional": True,
                "field": "transaction",
                "fields": [],
                "name": "event.block",
                "version": 1,
            },
            {"type": "string", "optional": False, "field": "op"},
            {"type": "int64", "optional": True, "field": "ts_ms"},
            {"type": "int64", "optional": True, "field": "ts_us"},
            {"type": "int64", "optional": True, "field": "ts_ns"},
        ],
        "optional": False,
        "name": f"{base}.Envelope",
        "version": _ENVELOPE_VERSION,
    }
    if not relation.key_columns:
        return envelope, None
    by_name = {col.name: col for col in relation.columns}
    key = {
        "type": "struct",
        "fields": [{**by_name[name].connect, "field": name} for name in relation.key_columns],
        "optional": False,
        "name": f"{base}.Key",
    }
    return envelope, key


# --------------------------------------------------------------------------- decoding


def split_topic(topic: str) -> tuple[str, str]:
    """``prefix.schema.table`` → (schema, table); the prefix may itself contain dots."""
    parts = topic.rsplit(".", 2)
    if len(parts) < 3:
        raise DecodeError(f"topic {topic!r} is not of the form <prefix>.<schema>.<table>", topic=topic)
    return parts[1], parts[2]


def _loads(data: bytes, what: str, topic: str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"{what} of a record in {topic} is not JSON: {exc}", topic=topic) from exc


def _unwrap_schema(doc: Any) -> tuple[Any, dict[str, Any] | None]:
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc and len(doc) == 2:
        return doc["payload"], doc["schema"]
    return doc, None


def decode_record(topic: str, key: bytes | None, value: bytes | None) -> ChangeEvent | None:
    """A Kafka record (walbridge's or Debezium's, any of the supported forms) → ChangeEvent.

    Returns ``None`` for a tombstone. Raises :class:`DecodeError` naming what is wrong.
    """
    if value is None:
        return None
    doc, value_schema = _unwrap_schema(_loads(value, "value", topic))
    key_doc: Any = None
    if key is not None:
        key_doc, key_schema = _unwrap_schema(_loads(key, "key", topic))
        if key_doc is not None and not isinstance(key_doc, dict):
            raise DecodeError(f"key of a record in {topic} is not a JSON object", topic=topic)
        if key_schema is not None and key_doc is not None:
            key_doc = _decode_precise(key_doc, key_schema)
    if not isinstance(doc, dict):
        raise DecodeError(f"value of a record in {topic} is not a JSON object", topic=topic)
    if "op" in doc and "source" in doc:
        return _decode_envelope(topic, doc, key_doc, value_schema)
    return _decode_flat(topic, doc, key_doc, value_schema)


def _row_schema(envelope_schema: dict[str, Any] | None, field_name: str) -> dict[str, Any] | None:
    if envelope_schema is None:
        return None
    for fld in envelope_schema.get("fields", ()):
        if fld.get("field") == field_name:
            return fld  # type: ignore[no-any-return]
    return None


def _decode_envelope(
    topic: str, doc: dict[str, Any], key: Row | None, value_schema: dict[str, Any] | None
) -> ChangeEvent:
    op = doc.get("op")
    if op not in OPS:
        raise DecodeError(f"record in {topic} has op {op!r}; expected one of c, u, d, r, t", topic=topic)
    src = doc.get("source")
    if not isinstance(src, dict):
        raise DecodeError(f"record in {topic} has no source block", topic=topic)
    before, after = doc.get("before"), doc.get("after")
    for name, row in (("before", before), ("after", after)):
        if row is not None and not isinstance(row, dict):
            raise DecodeError(f"record in {topic} has a {name} that is not an object", topic=topic)
    if op in ("c", "r", "u") and after is None:
        raise DecodeError(f"record in {topic} with op {op!r} has no after", topic=topic)
    if op == "d" and before is None:
        raise DecodeError(f"delete in {topic} has no before", topic=topic)
    if value_schema is not None:
        before = _decode_precise(before, _row_schema(value_schema, "before"))
        after = _decode_precise(after, _row_schema(value_schema, "after"))
    try:
        schema, table = split_topic(topic)
    except DecodeError:
        schema, table = "", ""
    source = Source(
        connector=str(src.get("connector", "")),
        name=str(src.get("name", "")),
        db=str(src.get("db", "")),
        schema=str(src.get("schema") or schema),
        table=str(src.get("table") or table),
        ts_ms=int(src.get("ts_ms") or 0),
        snapshot=str(src.get("snapshot", "false")),
        tx_id=src.get("txId"),
        lsn=src.get("lsn"),
        sequence=src.get("sequence"),
        change_id=src.get("change_id"),
    )
    return ChangeEvent(op, source, key, before, after, int(doc.get("ts_ms") or 0))


def _decode_flat(
    topic: str, doc: dict[str, Any], key: Row | None, value_schema: dict[str, Any] | None
) -> ChangeEvent:
    deleted = doc.get("__deleted")
    if deleted is None and "__op" not in doc:
        raise DecodeError(
            f"record in {topic} is neither a Debezium envelope (op/source/before/after) "
            "nor an unwrapped row (__deleted)",
            topic=topic,
        )
    row = {k: v for k, v in doc.items() if not k.startswith("__")}
    if value_schema is not None:
        row = _decode_precise(row, value_schema) or {}
    is_delete = str(deleted).lower() == "true" or doc.get("__op") == "d"
    op = "d" if is_delete else str(doc.get("__op") or "c")
    if op not in OPS:
        raise DecodeError(f"record in {topic} has __op {op!r}", topic=topic)
    schema, table = split_topic(topic)
    table = str(doc.get("__table") or table)
    source = Source(
        connector="",
        name="",
        db=str(doc.get("__db", "")),
        schema=str(doc.get("__schema") or schema),
        table=table,
        ts_ms=int(doc.get("__source_ts_ms") or 0),
        lsn=doc.get("__lsn"),
    )
    before, after = (row, None) if is_delete else (None, row)
    return ChangeEvent(op, source, key, before, after, int(doc.get("__ts_ms") or 0))


_DECIMAL = "org.apache.kafka.connect.data.Decimal"
_VARIABLE_DECIMAL = "io.debezium.data.VariableScaleDecimal"


def decode_precise_decimal(encoded: str, scale: int) -> Decimal:
    """Debezium ``decimal.handling.mode=precise``: base64 two's-complement unscaled integer.

    Also walbridge's names of NaN and the infinities (:data:`walbridge.edge_values.NUMERIC_SPECIALS`).
    """
    special = NUMERIC_SPECIAL_VALUES.get(encoded)
    if special is not None:
        return special
    unscaled = int.from_bytes(base64.b64decode(encoded), "big", signed=True)
    return Decimal(f"{unscaled}E{-scale}")  # exact: scaleb() would round to the context's 28 digits


def _decode_precise(row: Row | None, struct_schema: dict[str, Any] | None) -> Row | None:
    """Turn precise-mode decimals into ``Decimal`` using the schema block; other values unchanged."""
    if row is None or struct_schema is None:
        return row
    out = row
    for fld in struct_schema.get("fields", ()):
        name = fld.get("field")
        value = row.get(name)
        if value is None or is_unavailable(value):
            continue
        if fld.get("type") == "array" and isinstance(value, list):
            items = fld.get("items") or {}
            if items.get("name") in (_DECIMAL, _VARIABLE_DECIMAL):
                out = out if out is not row else dict(row)
                out[name] = _decode_precise_items(value, items)
            continue
        decoded = _decode_precise_value(value, fld)
        if decoded is not value:
            out = out if out is not row else dict(row)
            out[name] = decoded
    return out


_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _decode_precise_value(value: Any, fld: dict[str, Any]) -> Any:
    name = fld.get("name")
    if name == _VARIABLE_DECIMAL and isinstance(value, dict):
        return decode_precise_decimal(value["value"], int(value["scale"]))
    if name in (_DECIMAL, _VARIABLE_DECIMAL) and isinstance(value, str):
        special = NUMERIC_SPECIAL_VALUES.get(value)
        if special is not None:  # NaN or an infinity, by name
            return special
        if name == _DECIMAL and _BASE64.fullmatch(value):
            return decode_precise_decimal(value, int(fld.get("parameters", {}).get("scale", 0)))
    # anything else (e.g. Debezium's unavailable-value placeholder) is left to the sink, never decoded
    # leniently into a wrong number
    return value


def _decode_precise_items(values: list[Any], items: dict[str, Any]) -> list[Any]:
    return [
        _decode_precise_items(v, items)
        if isinstance(v, list)
        else None
        if v is None
        else _decode_precise_value(v, items)
        for v in values
    ]
