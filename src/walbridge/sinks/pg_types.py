"""Destination catalog and value conversion for the PostgreSQL sink (pure functions + one query).

Values arrive encoded the way Debezium's JsonConverter writes them (default modes): ``date`` as
days since the epoch, ``timestamp`` as micro- (or, for precision ≤ 3, milli-) seconds since the
epoch, ``timestamptz``/``timetz`` as ISO strings, ``time`` as microseconds since midnight (MicroTime,
whatever the precision: ``adaptive_time_microseconds``),
``interval`` as microseconds (or ISO-8601 text), ``numeric`` as a string, a double, or — in
``decimal.handling.mode=precise`` — a ``Decimal`` already decoded from the schema block (raw
base64 without a schema is refused with an error naming the mode), ``json``/``jsonb`` as
strings, ``bytea`` as base64. :func:`converter` picks the conversion from the *destination*
column's type, read once per table by :func:`read_table`; a value that does not fit raises
:class:`ValueError` with a message naming the column.

Edge values (:mod:`walbridge.edge_values`) are written back exactly: Debezium's infinity numbers of
``date``/``timestamp`` become ``infinity``/``-infinity``; days and instants outside Python's years
1-9999 (BC, 10000 AD and later) and ZonedTimestamp years such as ``0000``/``-4712``/``+294276`` go to
PostgreSQL as its own text; numeric ``NAN``/``POSITIVE_INFINITY``/``NEGATIVE_INFINITY`` (and
``NaN``/``Infinity``/``-Infinity``) become the special numerics; ``hstore`` JSON objects become hstore
text; Bits become bit strings (``bit(n)`` padded to its length).

:func:`sql_expr` is the same conversion written in SQL, applied by PostgreSQL to the value's
JSON text (``json_to_record`` with text columns), so that the sink's fast path can load rows as
JSON without touching each value in Python. It exists for the types whose Debezium encodings it
can convert exactly (None for arrays, ``money`` and bit strings: those tables take the Python
path). Where the SQL is stricter than Python (``5.0`` for an integer), the statement fails and
the sink retries the rows with the Python converters, so the result is the Python one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from psycopg import sql

from walbridge import pgcatalog
from walbridge.edge_values import (
    DATE_NEGATIVE_INFINITY,
    DATE_POSITIVE_INFINITY,
    NUMERIC_SPECIAL_VALUES,
    TIMESTAMP_NEGATIVE_INFINITY_US,
    TIMESTAMP_POSITIVE_INFINITY_US,
    US_PER_DAY,
    date_text,
    timestamp_text,
    zoned_iso_to_pg,
)
from walbridge.events import decode_precise_decimal

__all__ = [
    "Column",
    "TableInfo",
    "connect_type",
    "converter",
    "read_table",
    "sql_expr",
]

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
# Python's date/datetime cover years 1-9999; values outside go to PostgreSQL as its own text.
_PY_DAYS = range(
    date.min.toordinal() - _EPOCH_DATE.toordinal(), date.max.toordinal() + 1 - _EPOCH_DATE.toordinal()
)
_PY_MICROS = range(_PY_DAYS.start * US_PER_DAY, _PY_DAYS.stop * US_PER_DAY)

Converter = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    """Base type name (domains resolved), e.g. ``int4``, ``numeric``, ``timestamptz``, ``_int4``."""
    precision: int | None
    """Fractional-second digits for temporal types (None: the default, 6); the length of ``bit(n)``."""
    element: str | None = None
    """Element type of an array column."""
    sql_type: str | None = None
    """The column's type as SQL without its modifier (``character varying``, a domain's name, ...)."""


@dataclass(frozen=True, slots=True)
class TableInfo:
    schema: str
    name: str
    columns: dict[str, Column]
    """Writable columns (generated columns left out), by name, in table order."""
    key: tuple[str, ...]
    generated: frozenset[str] = frozenset()
    """Generated columns: computed by the destination, never written (their event values are ignored)."""
    unique_keys: frozenset[frozenset[str]] = frozenset()
    """Column sets of the primary key and the unique indexes rows can be matched by."""

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


_TEMPORAL = {"timestamp", "timestamptz", "time", "timetz"}


def read_table(conn: Any, schema: str, table: str) -> TableInfo | None:
    """The destination table's writable columns and primary key; None when it does not exist."""
    rel = pgcatalog.read_table(conn, schema, table)
    if rel is None:
        return None
    columns = {}
    for col in rel.columns:
        if col.generated:
            continue
        base = col.element or col.base_type
        precision = col.typmod if (base in _TEMPORAL or base == "bit") and col.typmod >= 0 else None
        columns[col.name] = Column(col.name, col.base_type, precision, col.element, col.sql_type)
    generated = frozenset(col.name for col in rel.columns if col.generated)
    unique_keys = frozenset(map(frozenset, rel.unique_keys))
    return TableInfo(schema, table, columns, rel.primary_key, generated, unique_keys)


# --------------------------------------------------------------------------- conversions


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"{value!r} is not an integer")


def _float(value: Any) -> float:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return float(value)
    raise ValueError(f"{value!r} is not a number")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "t", "f"):
        return value.lower() in ("true", "t")
    if isinstance(value, int):
        return bool(value)
    raise ValueError(f"{value!r} is not a boolean")


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict) and "scale" in value and "value" in value:
        return decode_precise_decimal(str(value["value"]), int(value["scale"]))
    if isinstance(value, str):
        special = NUMERIC_SPECIAL_VALUES.get(value)
        if special is not None:
            return special
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError(
                f"{value!r} is not a decimal number; it looks like decimal.handling.mode=precise (base64) "
                "without a schema block: enable schemas in the JSON converter (schemas.enable=true) "
                "or use decimal.handling.mode=string or double"
            ) from None
    raise ValueError(f"{value!r} is not a decimal number")


def _date(value: Any) -> date | str:
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _PY_DAYS:
            return _EPOCH_DATE + timedelta(days=value)
        if value == DATE_POSITIVE_INFINITY:
            return "infinity"
        if value == DATE_NEGATIVE_INFINITY:
            return "-infinity"
        return date_text(value)  # BC or after 9999
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return value  # 'infinity', '0044-03-15 BC', ...: PostgreSQL reads its own text
    if isinstance(value, date):
        return value
    raise ValueError(f"{value!r} is not a date (days since 1970-01-01)")


def _epoch_delta(value: int, precision: int | None) -> timedelta:
    # Debezium's adaptive modes: precision 0-3 → milliseconds (Timestamp/Time), 4-6 → microseconds.
    if precision is not None and precision <= 3:
        return timedelta(milliseconds=value)
    return timedelta(microseconds=value)


def _epoch_micros(value: int, precision: int | None) -> int | str:
    """Epoch µs of a Debezium timestamp number, or ``infinity``/``-infinity``."""
    if precision is not None and precision <= 3:
        if value * 1000 == TIMESTAMP_POSITIVE_INFINITY_US:
            return "infinity"
        if value * 1000 == TIMESTAMP_NEGATIVE_INFINITY_US:
            return "-infinity"
        return value * 1000
    if value == TIMESTAMP_POSITIVE_INFINITY_US:
        return "infinity"
    if value == TIMESTAMP_NEGATIVE_INFINITY_US:
        return "-infinity"
    return value


def _timestamp(precision: int | None) -> Converter:
    def convert(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            micros = _epoch_micros(value, precision)
            if isinstance(micros, str) or micros not in _PY_MICROS:
                return micros if isinstance(micros, str) else timestamp_text(micros)
            return _EPOCH + timedelta(microseconds=micros)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return _pg_timestamp_text(value)
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(UTC)
            return parsed.replace(tzinfo=None)
        raise ValueError(f"{value!r} is not a timestamp")

    return convert


def _pg_timestamp_text(value: str) -> str:
    """A timestamp string Python cannot read (``infinity``, BC, ``+10000-…``): PostgreSQL reads it."""
    return zoned_iso_to_pg(value) or value


def _timestamptz(value: Any) -> datetime | str:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _pg_timestamp_text(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        micros = _epoch_micros(value, None)
        if isinstance(micros, str) or micros not in _PY_MICROS:
            return micros if isinstance(micros, str) else timestamp_text(micros, "+00")
        return _EPOCH_UTC + timedelta(microseconds=micros)
    raise ValueError(f"{value!r} is not a timestamp with time zone")


def _time(precision: int | None) -> Converter:
    """MicroTime (microseconds) whatever the precision: walbridge's and Debezium's
    ``adaptive_time_microseconds`` mode. (Debezium's ``adaptive`` sends ``time(0-3)`` in milliseconds.)"""

    def convert(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            delta = timedelta(microseconds=value)
            if delta >= timedelta(days=1):
                return "24:00:00"
            return (datetime.min + delta).time()
        if isinstance(value, str):
            try:
                return time.fromisoformat(value)
            except ValueError:
                return value  # '24:00:00': PostgreSQL reads it
        raise ValueError(f"{value!r} is not a time of day")

    return convert


def _interval(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(microseconds=value)
    if isinstance(value, str):
        return value  # ISO-8601 duration (interval.handling.mode=string): PostgreSQL parses it
    raise ValueError(f"{value!r} is not an interval")


def _bytea(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise ValueError(
                f"{value[:40]!r} is not base64; bytea values are expected in "
                "binary.handling.mode=bytes or base64"
            ) from None
    raise ValueError(f"{value!r} is not binary data")


def _json(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _hstore(value: Any) -> str:
    """Debezium's hstore JSON object (text or decoded) → hstore text; other text as it is."""
    if isinstance(value, str) and value.startswith("{"):
        value = orjson.loads(value)
    if not isinstance(value, dict):
        return _text(value)
    return ", ".join(
        f"{_hstore_quote(str(key))}=>{'NULL' if item is None else _hstore_quote(_text(item))}"
        for key, item in value.items()
    )


def _hstore_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


def _bit(length: int | None) -> Converter:
    """io.debezium.data.Bits (little-endian bytes, base64) or a boolean for ``bit(1)`` → bit string text.

    Debezium's encoding keeps no length: a ``varbit`` value's leading zeros are lost.
    """

    def convert(value: Any) -> str:
        if isinstance(value, bool):
            return "1" if value else "0"
        raw = value if isinstance(value, bytes) else _bytea(value)
        bits = format(int.from_bytes(raw, "little"), "b") if raw else ""
        return bits.zfill(length or 0) if length else bits or "0"

    return convert


def _array(element: Converter) -> Converter:
    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not an array")
        items = [
            None if item is None else convert(item) if isinstance(item, list) else element(item)
            for item in value
        ]
        kinds = {item.__class__ for item in items if item is not None and not isinstance(item, list)}
        if str in kinds and len(kinds) > 1:  # e.g. dates and 'infinity': one type per array for psycopg
            return _as_text(items)
        return items

    return convert


def _as_text(items: list[Any]) -> list[Any]:
    return [
        None
        if item is None
        else _as_text(item)
        if isinstance(item, list)
        else item.isoformat()
        if isinstance(item, date | time)
        else str(item)
        for item in items
    ]


_SIMPLE: dict[str, Converter] = {
    "int2": _int,
    "int4": _int,
    "int8": _int,
    "oid": _int,
    "float4": _float,
    "float8": _float,
    "numeric": _decimal,
    "money": _decimal,
    "bool": _bool,
    "date": _date,
    "timestamptz": _timestamptz,
    "interval": _interval,
    "bytea": _bytea,
    "json": _json,
    "jsonb": _json,
    "hstore": _hstore,
}


def _scalar(typ: str, precision: int | None) -> Converter:
    if typ == "timestamp":
        return _timestamp(precision)
    if typ == "time":
        return _time(precision)
    if typ in ("bit", "varbit"):
        return _bit(precision if typ == "bit" else None)
    return _SIMPLE.get(typ, _text)


def converter(column: Column) -> Converter:
    """The function turning a Debezium-encoded value into a value for ``column``."""
    if column.element == "varbit":
        return _array(_text)  # capture sends varbit[] as lists of text (Debezium has no encoding)
    if column.element is not None:
        return _array(_scalar(column.element, column.precision))
    return _scalar(column.type, column.precision)


# --------------------------------------------------------------------------- the same in SQL

_INTEGER = "^-?[0-9]+$"
_NUMBER = "^-?[0-9]+([.][0-9]+)?([eE][-+]?[0-9]+)?$"
_ZONED = "[T ][0-9:.]+(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
"""An ISO date-time with an offset: Python's fromisoformat makes it aware."""
_NO_SQL = {"money", "bit", "varbit", "hstore"}
_CASTS = {
    "int2": "int2",
    "int4": "int4",
    "int8": "int8",
    "oid": "oid",
    "float4": "float4",
    "float8": "float8",
    "bool": "bool",
    "json": "json",
    "jsonb": "jsonb",
}


def _epoch_unit(precision: int | None) -> str:
    return "1 millisecond" if precision is not None and precision <= 3 else "1 microsecond"


_NON_POSITIVE_YEAR = (
    "^(-[0-9]{4,}|0000)-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2}(?:[.][0-9]+)?)Z$"
)
_ISO_YEARS_SQL = (
    # ZonedTimestamp years PostgreSQL does not read: '+294276-…' (sign) and astronomical years ≤ 0
    # ('0000-…' is 1 BC, '-4712-…' 4713 BC; make_timestamptz counts -1 as 1 BC).
    "WHEN {v} ~ '^[+][0-9]' THEN ltrim({v}, '+')::timestamptz"
    f" WHEN {{v}} ~ '{_NON_POSITIVE_YEAR}' THEN (SELECT make_timestamptz(m[1]::int - 1, m[2]::int, m[3]::int,"
    f" m[4]::int, m[5]::int, m[6]::float8, 'UTC') FROM regexp_match({{v}}, '{_NON_POSITIVE_YEAR}') AS m)"
)


def _floor_div_sql(divisor: int) -> str:
    """``floor({v} / divisor)`` in exact 64-bit integer arithmetic. (A count beyond 64 bits, a timestamp
    after 294247 AD, fails the cast: the sink then converts that batch in Python.)"""
    return f"({{v}}::int8 / {divisor} - (mod({{v}}::int8, {divisor}) < 0)::int)"


def _epoch_sql(base: str, precision: int | None) -> str:
    """SQL for ``base`` plus the epoch count ``{v}``: exact (whole days, then the rest of the day), with
    Debezium's infinity numbers. A float product (``{v} * interval``) would round beyond 2**53 µs."""
    unit = _epoch_unit(precision)
    ms = unit == "1 millisecond"
    per_day = US_PER_DAY // 1000 if ms else US_PER_DAY
    pos, neg = TIMESTAMP_POSITIVE_INFINITY_US, TIMESTAMP_NEGATIVE_INFINITY_US
    if ms:
        pos, neg = pos // 1000, neg // 1000
    days = _floor_div_sql(per_day)
    return (
        f"CASE {{v}}::int8 WHEN {pos} THEN 'infinity' WHEN {neg} THEN '-infinity' ELSE"
        f" {base} + {days} * interval '1 day' + ({{v}}::int8 - {days} * {per_day}) * interval '{unit}' END"
    )


def _sql_templates(column: Column) -> str | None:
    """A template over ``{v}`` (the value's JSON text) converting it like :func:`converter`."""
    typ = column.type
    if typ in _CASTS:
        return "{v}::" + _CASTS[typ]
    if typ == "numeric":
        specials = " ".join(f"WHEN '{name}' THEN '{value}'" for name, value in NUMERIC_SPECIAL_VALUES.items())
        return f"(CASE {{v}} {specials} ELSE {{v}} END)::numeric"
    if typ == "date":
        return (
            f"CASE WHEN {{v}} ~ '{_INTEGER}' THEN CASE {{v}}::int8"
            f" WHEN {DATE_POSITIVE_INFINITY} THEN 'infinity' WHEN {DATE_NEGATIVE_INFINITY} THEN '-infinity'"
            " ELSE date '1970-01-01' + {v}::int4 END"
            " WHEN {v} ~ 'T' THEN left({v}, 10)::date ELSE {v}::date END"
        )
    if typ == "timestamp":
        epoch = _epoch_sql("timestamp '1970-01-01'", column.precision)
        return (
            f"CASE WHEN {{v}} ~ '{_INTEGER}' THEN {epoch}"
            f" WHEN {{v}} ~ '{_ZONED}' THEN {{v}}::timestamptz AT TIME ZONE 'UTC' ELSE {{v}}::timestamp END"
        )
    if typ == "timestamptz":
        epoch = _epoch_sql("timestamptz 'epoch'", None)
        return (
            f"CASE WHEN {{v}} ~ '{_INTEGER}' THEN {epoch} {_ISO_YEARS_SQL}"
            f" WHEN {{v}} ~ '{_ZONED}' THEN {{v}}::timestamptz ELSE {{v}}::timestamp AT TIME ZONE 'UTC' END"
        )
    if typ == "time":
        unit, day = "1 microsecond", US_PER_DAY  # MicroTime, as in _time
        return (
            f"CASE WHEN {{v}} !~ '{_INTEGER}' THEN {{v}}::time WHEN {{v}}::int8 >= {day} THEN time '24:00'"
            f" WHEN {{v}}::int8 >= 0 THEN time '00:00' + {{v}}::int8 * interval '{unit}' END"
        )
    if typ == "interval":
        # Whole days, then the rest: exact, and the same interval as Python's timedelta.
        days = _floor_div_sql(US_PER_DAY)
        return (
            f"CASE WHEN {{v}} ~ '{_INTEGER}' THEN {days} * interval '1 day'"
            f" + ({{v}}::int8 - {days} * {US_PER_DAY}) * interval '1 microsecond'"
            f" WHEN {{v}} ~ '{_NUMBER}' THEN justify_hours({{v}}::float8 * interval '1 microsecond')"
            " ELSE {v}::interval END"
        )
    if typ == "bytea":
        return "decode({v}, 'base64')"
    if typ in ("text", "varchar", "bpchar"):  # no CAST: format_type(bpchar, NULL) is char(1)
        return "{v}"
    if typ in _NO_SQL or column.sql_type is None:
        return None
    return "CAST({v} AS " + column.sql_type + ")"


def sql_expr(column: Column, value: sql.Composable) -> sql.Composable | None:
    """SQL converting ``value`` (a text expression: the JSON value's text) for ``column``; None: no SQL form.

    A negative time of day gives NULL here where Python raises; Debezium never sends one.
    """
    if column.element is not None:
        return None
    template = _sql_templates(column)
    if template is None:
        return None
    escaped = template.replace("{", "{{").replace("}", "}}").replace("{{v}}", "{0}")
    return sql.SQL(escaped).format(value)


# --------------------------------------------------------------------------- auto-create

_CONNECT_TYPES = {
    "int8": "smallint",
    "int16": "smallint",
    "int32": "integer",
    "int64": "bigint",
    "float32": "real",
    "float64": "double precision",
    "boolean": "boolean",
    "string": "text",
    "bytes": "bytea",
}
_LOGICAL_TYPES = {
    "io.debezium.time.Date": "date",
    "org.apache.kafka.connect.data.Date": "date",
    "io.debezium.time.Timestamp": "timestamp(3)",
    "org.apache.kafka.connect.data.Timestamp": "timestamp(3)",
    "io.debezium.time.MicroTimestamp": "timestamp",
    "io.debezium.time.NanoTimestamp": "timestamp",
    "io.debezium.time.ZonedTimestamp": "timestamptz",
    "io.debezium.time.Time": "time(3)",
    "org.apache.kafka.connect.data.Time": "time(3)",
    "io.debezium.time.MicroTime": "time",
    "io.debezium.time.ZonedTime": "timetz",
    "io.debezium.time.MicroDuration": "interval",
    "io.debezium.time.Interval": "interval",
    "io.debezium.data.VariableScaleDecimal": "numeric",
    "io.debezium.data.Json": "jsonb",
    "io.debezium.data.Uuid": "uuid",
    "io.debezium.data.Xml": "xml",
}


def connect_type(field: dict[str, Any]) -> str | None:
    """The PostgreSQL type for a Kafka Connect field schema (the documented mapping), or None."""
    name = field.get("name")
    if name == "org.apache.kafka.connect.data.Decimal":
        params = field.get("parameters") or {}
        precision = params.get("connect.decimal.precision")
        scale = params.get("scale", "0")
        return f"numeric({int(precision)},{int(scale)})" if precision else "numeric"
    if name in _LOGICAL_TYPES:
        return _LOGICAL_TYPES[name]
    if field.get("type") == "array":
        items = connect_type(field.get("items") or {})
        return None if items is None else f"{items}[]"
    return _CONNECT_TYPES.get(str(field.get("type")))
