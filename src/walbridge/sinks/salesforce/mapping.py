"""ChangeEvent → Platform Event record, and the check of each record against the event's definition.

Default mapping (event ``PostgreSQL_Data__e``, fields ``fields.DEFAULT_FIELDS``):

=====================  ===================================================================================
``Source_Table__c``    ``schema.table``
``Operation__c``       ``INSERT`` / ``UPDATE`` / ``DELETE`` / ``READ`` (snapshot) / ``TRUNCATE``
``Record_Id__c``       the primary key: one column → its value as text; several → the values in key-column
                       order joined by ``|``, with ``\\`` and ``|`` inside values escaped by ``\\``; a null
                       value is the empty string; no key (TRUNCATE, table without one) → absent
``Payload__c``         the row as JSON: ``after``, or ``before`` for DELETE; absent for TRUNCATE
``Timestamp__c``       the source commit time (``source.ts_ms``) as ISO 8601 UTC with milliseconds
``Schema_Version__c``  :data:`PAYLOAD_SCHEMA_VERSION`
``Kafka_Partition__c`` / ``Kafka_Offset__c``  where the record was read
``Source_Position__c`` the change's source position (LSN, or the trigger change id) as 20 zero-padded
                       digits: the handler skips an event older than what a record already holds
``Event_Key__c``       de-duplication key on the Salesforce side. ``offset`` mode (default):
                       ``<topic>-<partition>-<offset>``, identical for every re-delivery of the same Kafka
                       record (the sink's own duplicates). ``source`` mode: ``<lsn or change id>:<Record_Id>``
                       (also catches a change captured twice into different offsets); falls back to the
                       offset form when the source has no position. Keys over 255 characters are hashed.
=====================  ===================================================================================

Per-table overrides (``tables:`` keyed by ``schema.table`` or ``table``): ``event`` (another event
object), ``fields`` (the subset of default fields to send), ``rename`` (default field → field name),
``static`` (field → constant), ``columns`` (field → a column of the row), ``ops`` (only these
operations, as ``c/u/d/r/t`` or ``INSERT``…; others are skipped and committed).

:class:`EventSchema` checks a record as Salesforce would before sending it (length in UTF-16 units,
number range, JSON types, required fields) so that one bad value cannot fail a whole sObject
Collection: the record becomes a :class:`~walbridge.errors.RecordRejected` carrying Salesforce's
``status_code``, or with ``truncate_oversized`` an oversized text is cut and ends with
:data:`TRUNCATION_MARKER` (a truncated ``Payload__c`` is no longer valid JSON, on purpose).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from walbridge.errors import ConfigError, RecordRejected
from walbridge.events import ChangeEvent
from walbridge.sinks.base import SinkRecord
from walbridge.sinks.salesforce.fields import DEFAULT_EVENT, DEFAULT_FIELDS, KEY_FIELDS

__all__ = [
    "OPERATIONS",
    "PAYLOAD_SCHEMA_VERSION",
    "TRUNCATION_MARKER",
    "EventRecord",
    "EventSchema",
    "FieldSpec",
    "Mapper",
    "TableRule",
    "event_key",
    "parse_rules",
    "record_id",
    "sf_length",
    "source_position",
]

OPERATIONS = {"c": "INSERT", "u": "UPDATE", "d": "DELETE", "r": "READ", "t": "TRUNCATE"}
PAYLOAD_SCHEMA_VERSION = "1.0"
TRUNCATION_MARKER = "…[truncated by walbridge]"
_KEY_LIMIT = 255
_MAX_CACHED = 10_000
_RULE_KEYS = {"event", "fields", "rename", "static", "columns", "ops"}
_TEXT_TYPES = {"string", "textarea", "email", "url", "phone", "picklist"}


@dataclass(frozen=True, slots=True)
class TableRule:
    """How one table's events become event records."""

    event: str = DEFAULT_EVENT
    fields: tuple[str, ...] = DEFAULT_FIELDS
    rename: Mapping[str, str] = field(default_factory=dict)
    static: Mapping[str, Any] = field(default_factory=dict)
    columns: Mapping[str, str] = field(default_factory=dict)
    ops: frozenset[str] | None = None

    def key_fields(self) -> set[str]:
        """The names this rule gives the key fields (``KEY_FIELDS`` after ``rename``)."""
        return {self.rename.get(f, f) for f in KEY_FIELDS if f in self.fields}

    def target_fields(self) -> set[str]:
        """Every field name this rule may write (for the check against the describe result)."""
        return {self.rename.get(f, f) for f in self.fields} | set(self.static) | set(self.columns)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One record for ``composite/sobjects``: its event object, field values and ordering key."""

    sobject: str
    values: dict[str, Any]
    order_key: Hashable


def _op_code(value: str) -> str:
    text = value.strip()
    if text.lower() in OPERATIONS:
        return text.lower()
    for code, name in OPERATIONS.items():
        if name == text.upper():
            return code
    raise ConfigError(
        f"unknown operation {value!r} in a Salesforce table override (use c/u/d/r/t or INSERT...)"
    )


def _rule(table: str, raw: Mapping[str, Any]) -> TableRule:
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"salesforce.tables.{table}: unknown keys {sorted(unknown)} (allowed: {sorted(_RULE_KEYS)})"
        )
    fields = tuple(raw.get("fields", DEFAULT_FIELDS))
    extra = [f for f in fields if f not in DEFAULT_FIELDS]
    if extra:
        raise ConfigError(
            f"salesforce.tables.{table}.fields: {extra} are not default fields; use rename, static or columns"
        )
    ops = raw.get("ops")
    return TableRule(
        event=str(raw.get("event", DEFAULT_EVENT)),
        fields=fields,
        rename=dict(raw.get("rename", {})),
        static=dict(raw.get("static", {})),
        columns=dict(raw.get("columns", {})),
        ops=frozenset(_op_code(str(o)) for o in ops) if ops is not None else None,
    )


def parse_rules(
    default_event: str, tables: Mapping[str, Mapping[str, Any]]
) -> tuple[TableRule, dict[str, TableRule]]:
    """The default rule and the per-table ones (keys as configured: ``schema.table`` or ``table``)."""
    default = TableRule(event=default_event)
    rules = {}
    for name, raw in tables.items():
        if not isinstance(raw, Mapping):
            raise ConfigError(f"salesforce.tables.{name} must be a mapping")
        rules[name] = _rule(name, {"event": default_event, **raw})
    return default, rules


# --------------------------------------------------------------------------- field values


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def record_id(key: Mapping[str, Any] | None) -> str | None:
    """The primary key as text (see the module docstring for composite keys)."""
    if not key:
        return None
    if len(key) == 1:
        (only,) = key.values()
        return only if type(only) is str else _key_text(only)
    values = [_key_text(v) for v in key.values()]
    return "|".join(v.replace("\\", "\\\\").replace("|", "\\|") for v in values)


def _bounded(key: str) -> str:
    if len(key) <= _KEY_LIMIT:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def event_key(record: SinkRecord, mode: str = "offset") -> str:
    """Event_Key__c of a record (``offset`` or ``source`` mode)."""
    event = record.event
    if mode == "source" and event is not None:
        position = event.source.lsn if event.source.lsn is not None else event.source.change_id
        if position is not None:
            return _bounded(f"{position}:{record_id(event.key) or ''}")
    return _bounded(f"{record.topic}-{record.partition}-{record.offset}")


def source_position(event: ChangeEvent) -> str | None:
    """``Source_Position__c``: the LSN (logical) or change id (trigger) as 20 zero-padded digits, so that
    text order is numeric order (the Apex handler's guard compares it); None without a position."""
    position = event.source.lsn if event.source.lsn is not None else event.source.change_id
    return None if position is None else f"{position:020d}"


@lru_cache(maxsize=4096)
def _iso_second(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def _iso_ms(ts_ms: int) -> str:
    # The events of a batch share a few seconds: formatting each second once is ~10x cheaper.
    return f"{_iso_second(ts_ms // 1000)}{ts_ms % 1000:03d}Z"


def _payload(event: ChangeEvent) -> str | None:
    row = event.row
    if event.op == "t" or row is None:
        return None
    return orjson.dumps(row).decode()


def default_values(record: SinkRecord, key_mode: str = "offset") -> dict[str, Any]:
    """Every default field's value for a decoded record."""
    event = record.event
    assert event is not None
    return {
        "Source_Table__c": f"{event.source.schema}.{event.source.table}",
        "Operation__c": OPERATIONS.get(event.op, event.op.upper()),
        "Record_Id__c": record_id(event.key),
        "Payload__c": _payload(event),
        "Timestamp__c": _iso_ms(event.source.ts_ms or event.ts_ms or record.timestamp_ms),
        "Schema_Version__c": PAYLOAD_SCHEMA_VERSION,
        "Kafka_Partition__c": record.partition,
        "Kafka_Offset__c": record.offset,
        "Event_Key__c": event_key(record, key_mode),
        "Source_Position__c": source_position(event),
    }


# --------------------------------------------------------------------------- validation


def sf_length(text: str) -> int:
    """Length as Salesforce counts it: UTF-16 code units."""
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A custom field as the describe call reports it."""

    name: str
    label: str
    type: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    required: bool = False

    @classmethod
    def from_describe(cls, raw: Mapping[str, Any]) -> FieldSpec:
        return cls(
            name=str(raw["name"]),
            label=str(raw.get("label") or raw["name"]),
            type=str(raw.get("type", "string")),
            length=int(raw.get("length") or 0),
            precision=int(raw.get("precision") or 0),
            scale=int(raw.get("scale") or 0),
            # A Checkbox is not nillable but defaulted on create: Salesforce does not require it.
            required=not raw.get("nillable", True)
            and bool(raw.get("createable", True))
            and not raw.get("defaultedOnCreate", False),
        )


def _rejected(code: str, message: str, fields: list[str]) -> RecordRejected:
    shown = f" {fields}" if fields else ""
    return RecordRejected(f"{code}: {message}{shown}", status_code=code, sf_message=message, fields=fields)


def _parser_error(spec: FieldSpec, target: str, value: Any) -> RecordRejected:
    kind = type(value).__name__
    return _rejected(
        "JSON_PARSER_ERROR", f"{spec.label}: cannot deserialize a JSON {kind} as {target}", [spec.name]
    )


def _truncate(text: str, length: int) -> str:
    keep = max(0, length - len(TRUNCATION_MARKER))
    cut = text[:keep]
    while sf_length(cut) > keep:  # non-BMP characters count twice
        cut = cut[:-1]
    return cut + TRUNCATION_MARKER


class EventSchema:
    """The custom fields of one event object, checking records before they are sent."""

    def __init__(
        self,
        name: str,
        specs: list[FieldSpec],
        *,
        truncate_oversized: bool = False,
        never_truncate: frozenset[str] = KEY_FIELDS,
    ) -> None:
        self.name = name
        self.specs = {s.name.lower(): s for s in specs}
        self.truncate_oversized = truncate_oversized
        self.never_truncate = frozenset(n.lower() for n in never_truncate)
        """Key fields (as named in this event): an over-long one is refused, never cut."""
        self._required = [s.name for s in specs if s.required]
        self._plans: dict[tuple[str, ...], list[tuple[str, Callable[[Any], Any]] | None]] = {}
        """Per field-name tuple (one per mapping rule): each field's spelling and checker, None when
        unknown; :meth:`check` looks names up once per rule instead of once per value."""

    @classmethod
    def from_describe(
        cls,
        describe: Mapping[str, Any],
        *,
        truncate_oversized: bool = False,
        never_truncate: frozenset[str] = KEY_FIELDS,
    ) -> EventSchema:
        specs = [FieldSpec.from_describe(f) for f in describe.get("fields", []) if f.get("custom", True)]
        return cls(
            str(describe.get("name", "")),
            specs,
            truncate_oversized=truncate_oversized,
            never_truncate=never_truncate,
        )

    def unknown(self, names: set[str]) -> list[str]:
        return sorted(n for n in names if n.lower() not in self.specs)

    def check(self, values: dict[str, Any]) -> dict[str, Any]:
        """The values as sent (None dropped, maybe truncated); RecordRejected when they cannot be."""
        names = tuple(values)
        plan = self._plans.get(names)
        if plan is None:
            if len(self._plans) >= _MAX_CACHED:
                self._plans.clear()
            plan = self._plans[names] = [self._entry(name) for name in names]
        out: dict[str, Any] = {}
        for name, entry, value in zip(names, plan, values.values(), strict=True):
            if entry is None:
                raise _rejected(
                    "INVALID_FIELD", f"No such column '{name}' on sobject of type {self.name}", [name]
                )
            if value is not None:
                out[entry[0]] = entry[1](value)
        missing = [name for name in self._required if out.get(name) in (None, "")]
        if missing:
            raise _rejected(
                "REQUIRED_FIELD_MISSING", f"Required fields are missing: [{', '.join(missing)}]", missing
            )
        return out

    def _entry(self, name: str) -> tuple[str, Callable[[Any], Any]] | None:
        spec = self.specs.get(name.lower())
        return None if spec is None else (spec.name, self._checker(spec))

    def _checker(self, spec: FieldSpec) -> Callable[[Any], Any]:
        """``_value`` for one field, with a fast path for the values that need no conversion."""
        if spec.type in _TEXT_TYPES:
            length = spec.length

            def text(value: Any) -> Any:
                if type(value) is str and (
                    not length or (len(value) <= length and (value.isascii() or sf_length(value) <= length))
                ):
                    return value
                return self._text(spec, value)

            return text
        if spec.type in ("double", "int", "currency", "percent"):
            bound = float(10 ** (spec.precision - spec.scale)) if spec.precision else math.inf

            def number(value: Any) -> Any:
                if type(value) is int and abs(float(value)) < bound:
                    return value
                return self._number(spec, value)

            return number
        return lambda value: self._value(spec, value)

    def _value(self, spec: FieldSpec, value: Any) -> Any:
        if spec.type in _TEXT_TYPES:
            return self._text(spec, value)
        if spec.type in ("double", "int", "currency", "percent"):
            return self._number(spec, value)
        if spec.type == "boolean":
            if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
                return value
            raise _parser_error(spec, "boolean", value)
        if spec.type in ("datetime", "date"):
            return self._temporal(spec, value)
        return value

    def _text(self, spec: FieldSpec, value: Any) -> str:
        if isinstance(value, list | dict):
            raise _parser_error(spec, "string", value)
        text = value if isinstance(value, str) else _key_text(value)
        if spec.length and sf_length(text) > spec.length:
            if self.truncate_oversized and spec.name.lower() not in self.never_truncate:
                return _truncate(text, spec.length)
            raise _rejected(
                "STRING_TOO_LONG",
                f"{spec.label}: data value too large: {sf_length(text)} chars (max length={spec.length})",
                [spec.name],
            )
        return text

    def _number(self, spec: FieldSpec, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _parser_error(spec, "double", value)
        try:
            number = float(value)
        except ValueError:
            raise _parser_error(spec, "double", value) from None
        if math.isnan(number) or math.isinf(number):
            raise _parser_error(spec, "double", value)
        if spec.precision and abs(number) >= 10 ** (spec.precision - spec.scale):
            raise _rejected(
                "NUMBER_OUTSIDE_VALID_RANGE",
                f"{spec.label}: value outside of valid range on numeric field: {value}",
                [spec.name],
            )
        return value

    def _temporal(self, spec: FieldSpec, value: Any) -> str:
        if not isinstance(value, str):
            raise _parser_error(spec, spec.type, value)
        try:
            if spec.type == "date":
                dt.date.fromisoformat(value)
            else:
                dt.datetime.fromisoformat(value)
        except ValueError:
            raise _parser_error(spec, spec.type, value) from None
        return value


# --------------------------------------------------------------------------- the mapper


class Mapper:
    """Maps decoded records with the table rules and checks them against the event schemas."""

    def __init__(
        self,
        default: TableRule,
        rules: Mapping[str, TableRule],
        schemas: Mapping[str, EventSchema],
        key_mode: str = "offset",
    ) -> None:
        self.default = default
        self.rules = dict(rules)
        self.schemas = {name.lower(): s for name, s in schemas.items()}
        self.key_mode = key_mode
        self._by_table: dict[tuple[str, str], TableRule] = {}
        self._targets: dict[int, list[tuple[str, str]]] = {}
        """Per rule: ``(field name sent, default field)`` pairs, renames applied once."""

    def rule_for(self, event: ChangeEvent) -> TableRule:
        source = event.source
        table = (source.schema, source.table)
        rule = self._by_table.get(table)
        if rule is None:
            rule = (
                self.rules.get(f"{source.schema}.{source.table}")
                or self.rules.get(source.table)
                or self.default
            )
            if len(self._by_table) >= _MAX_CACHED:
                self._by_table.clear()
            self._by_table[table] = rule
        return rule

    def map(self, record: SinkRecord) -> EventRecord | None:
        """The event record; None when skipped (tombstone, filtered op); RecordRejected when invalid."""
        event = record.event
        if event is None:
            return None
        rule = self.rule_for(event)
        if rule.ops is not None and event.op not in rule.ops:
            return None
        values = self._values(record, event, rule)
        schema = self.schemas.get(rule.event.lower())
        checked = (
            schema.check(values) if schema is not None else {k: v for k, v in values.items() if v is not None}
        )
        return EventRecord(rule.event, checked, _order_key(record))

    def _values(self, record: SinkRecord, event: ChangeEvent, rule: TableRule) -> dict[str, Any]:
        defaults = default_values(record, self.key_mode)
        targets = self._targets.get(id(rule))  # rules live as long as the mapper (they are not hashable)
        if targets is None:
            targets = self._targets[id(rule)] = [(rule.rename.get(name, name), name) for name in rule.fields]
        values = {target: defaults[name] for target, name in targets}
        row = event.row or {}
        for target, column in rule.columns.items():
            values[target] = row.get(column)
        values.update(rule.static)
        return values


def _order_key(record: SinkRecord) -> Hashable:
    # The Kafka key is the primary key: per-key order is per-Kafka-key order. Keyless records keep
    # their partition's order.
    if record.key is None:
        return (record.topic, record.partition)
    return (record.topic, record.key)
