"""PostgreSQL text output → JSON values and Kafka Connect schemas, as Debezium 3.x encodes them.

Contract: :func:`converter_for` builds one ``Callable[[str], Any]`` per column (type decisions are made
once, not per value); the callable takes the column's PostgreSQL text (never NULL: callers map NULL to
``None`` themselves) and returns the JSON-ready value that Debezium's PostgreSQL connector with
JsonConverter writes. :func:`column_schema` returns the matching Kafka Connect field schema.

The text must come from a session with these settings, which the capture connections set:
``TimeZone=UTC``, ``DateStyle=ISO``, ``IntervalStyle=postgres`` (the server default and what
Debezium's pgjdbc interval parser reads; ISO-8601 intervals are accepted too), ``bytea_output=hex``,
``extra_float_digits=1`` (shortest exact floats, the default since PostgreSQL 12) and
``lc_monetary=C`` (``money`` text in one format, whatever the database's locale).

Values at the edge of their type are encoded as Debezium 3.6's streaming path encodes them (checked
with the real connector in tests/compat); the shared constants live in :mod:`walbridge.edge_values`:
``date`` ±infinity as -2147472692/-2147472691, BC and years past 9999 as plain day counts of the
proleptic calendar; ``timestamp`` ±infinity as pgjdbc's infinity instants; ``timestamptz`` as
``infinity``/``-infinity`` and java.time years (``0000`` is 1 BC, ``-4712``, ``+10000``); ``time``
``24:00:00`` as a full day; float and ``double``-mode numeric NaN/±Infinity as the strings ``NaN``,
``Infinity``, ``-Infinity``; ``string``-mode numeric ones as ``NAN``, ``POSITIVE_INFINITY``,
``NEGATIVE_INFINITY``; ``MicroDuration`` intervals saturated at the 64-bit bounds; ``hstore`` as a
JSON object (``hstore.handling.mode=json``), ``ltree`` and ``citext`` as text.

Known differences from Debezium, by choice (each keeps a value Debezium loses or garbles):
- numeric NaN/±Infinity in ``precise`` mode: Debezium writes ``null``; walbridge the ``string``-mode
  names (never valid padded base64, so no reader can take them for a number); a ``numeric[]``
  holding one of them: Debezium writes ``null`` for the whole array (in every mode);
- ``timestamp`` after 294247 AD: microseconds since 1970 exceed 64 bits; Debezium wraps around,
  walbridge writes the exact (larger) number;
- ``timetz`` ``24:00:00+00``: Debezium writes ``00:00:00Z``, walbridge ``24:00:00Z``;
- elements of ``date[]``/``timestamp[]``: Debezium reads them through JDBC's java.sql types (Julian
  calendar before 1582, BC dates read as AD, other numbers for infinite dates); walbridge encodes
  them like the scalar type;
- multi-dimensional arrays: Debezium writes one null per sub-array, walbridge the nested lists;
- types Debezium drops silently (unknown/extension types, composites, ``name[]``, ``interval[]``,
  ``xml[]``, ``point[]`` with ``include.unknown.datatypes`` off) are emitted as text (arrays as lists
  of text, ``money[]`` as lists of decimal strings) with one warning per type; geometric types are
  text, not Debezium's Geometry structs.
A value that its converter cannot read (which PostgreSQL should never produce) goes out as its
PostgreSQL text with one warning per column (:class:`~walbridge.capture.rows.RowCodec`): a row
never stops capture.

Lossy by Debezium's design, kept for compatibility: ``timetz`` carries the moment in UTC, not the
source's offset; ``MicroDuration`` intervals count a month as 30.4375 days (``interval_handling_mode:
string`` keeps every field); ``precise`` variable-scale numerics drop trailing fractional zeros;
``varbit`` (Bits) keeps no length, so leading zeros are lost.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any, Final, Literal

import orjson

from walbridge import accel
from walbridge.edge_values import (
    DATE_NEGATIVE_INFINITY,
    DATE_POSITIVE_INFINITY,
    NUMERIC_SPECIALS,
    TIMESTAMP_NEGATIVE_INFINITY_US,
    TIMESTAMP_POSITIVE_INFINITY_US,
    US_PER_DAY,
    civil_from_days,
    iso_year,
    parse_pg_datetime,
)
from walbridge.errors import DecodeError
from walbridge.events import ColumnSchema

__all__ = [
    "BUILTIN_TYPES",
    "SESSION_SETTINGS",
    "Converter",
    "PgType",
    "TypeRegistry",
    "ValueOptions",
    "column_schema",
    "converter_for",
    "is_passthrough",
    "parse_array_literal",
    "parse_record_literal",
]

log = logging.getLogger(__name__)

Converter = Callable[[str], Any]
Schema = dict[str, Any]

SESSION_SETTINGS: Mapping[str, str] = {
    "TimeZone": "UTC",
    "DateStyle": "ISO",
    "IntervalStyle": "postgres",
    "bytea_output": "hex",
    "extra_float_digits": "1",
    "lc_monetary": "C",
}
"""The session settings every connection whose text output is converted here must use."""


@dataclass(frozen=True, slots=True)
class ValueOptions:
    """Value encodings; field names follow Debezium's options (``decimal.handling.mode`` ...)."""

    decimal_handling_mode: Literal["precise", "string", "double"] = "string"
    """walbridge's default is ``string`` (Debezium's is ``precise``): readable by every sink."""
    time_precision_mode: Literal["adaptive_time_microseconds", "adaptive", "connect"] = (
        "adaptive_time_microseconds"
    )
    binary_handling_mode: Literal["bytes", "base64", "base64-url-safe", "hex"] = "bytes"
    interval_handling_mode: Literal["numeric", "string"] = "numeric"


@dataclass(frozen=True, slots=True)
class PgType:
    """One ``pg_type`` row, as much of it as value conversion needs."""

    oid: int
    name: str
    typtype: str = "b"
    """``b`` base, ``e`` enum, ``d`` domain, ``c`` composite, ``r`` range, ``p`` pseudo, ``m`` multirange."""
    element_oid: int = 0
    """For array types: the element type (``typelem`` with ``typcategory = 'A'``)."""
    base_oid: int = 0
    """For domains: the underlying type (``typbasetype``)."""
    base_typmod: int = -1
    enum_values: tuple[str, ...] = ()

    @property
    def is_array(self) -> bool:
        return self.element_oid != 0


# generated by: SELECT oid, typname, typarray FROM pg_type WHERE typtype = 'b' AND typnamespace = 11 (PG 15),
# trimmed to the types the converters know; (oid, name, array oid).
# fmt: off
_BUILTIN_ROWS: tuple[tuple[int, str, int], ...] = (
    (16, "bool", 1000), (17, "bytea", 1001), (18, "char", 1002), (19, "name", 1003),
    (20, "int8", 1016), (21, "int2", 1005), (23, "int4", 1007), (25, "text", 1009),
    (26, "oid", 1028), (114, "json", 199), (142, "xml", 143), (600, "point", 1017),
    (601, "lseg", 1018), (602, "path", 1019), (603, "box", 1020), (604, "polygon", 1027),
    (628, "line", 629), (650, "cidr", 651), (700, "float4", 1021), (701, "float8", 1022),
    (718, "circle", 719), (774, "macaddr8", 775), (790, "money", 791), (829, "macaddr", 1040),
    (869, "inet", 1041), (1042, "bpchar", 1014), (1043, "varchar", 1015), (1082, "date", 1182),
    (1083, "time", 1183), (1114, "timestamp", 1115), (1184, "timestamptz", 1185),
    (1186, "interval", 1187), (1266, "timetz", 1270), (1560, "bit", 1561), (1562, "varbit", 1563),
    (1700, "numeric", 1231), (2950, "uuid", 2951), (3220, "pg_lsn", 3221), (3614, "tsvector", 3643),
    (3615, "tsquery", 3645), (3802, "jsonb", 3807), (3904, "int4range", 3905),
    (3906, "numrange", 3907), (3908, "tsrange", 3909), (3910, "tstzrange", 3911),
    (3912, "daterange", 3913), (3926, "int8range", 3927), (4072, "jsonpath", 4073),
    # types whose text is their only sensible JSON form (PG 14+ multiranges included)
    (24, "regproc", 1008), (27, "tid", 1010), (28, "xid", 1011), (29, "cid", 1012),
    (1033, "aclitem", 1034), (1790, "refcursor", 2201), (2202, "regprocedure", 2207),
    (2203, "regoper", 2208), (2204, "regoperator", 2209), (2205, "regclass", 2210),
    (2206, "regtype", 2211), (2970, "txid_snapshot", 2949), (3734, "regconfig", 3735),
    (3769, "regdictionary", 3770), (4089, "regnamespace", 4090), (4096, "regrole", 4097),
    (4191, "regcollation", 4192), (4451, "int4multirange", 6150), (4532, "nummultirange", 6151),
    (4533, "tsmultirange", 6152), (4534, "tstzmultirange", 6153), (4535, "datemultirange", 6155),
    (4536, "int8multirange", 6157), (5038, "pg_snapshot", 5039), (5069, "xid8", 271),
)
# fmt: on


def _builtin_types() -> dict[int, PgType]:
    types: dict[int, PgType] = {}
    for oid, name, array_oid in _BUILTIN_ROWS:
        typtype = "m" if name.endswith("multirange") else "r" if name.endswith("range") else "b"
        types[oid] = PgType(oid, name, typtype)
        types[array_oid] = PgType(array_oid, "_" + name, "b", element_oid=oid)
    return types


BUILTIN_TYPES: Mapping[int, PgType] = _builtin_types()


class TypeRegistry(Mapping[int, PgType]):
    """OID → :class:`PgType`: the built-in types plus the database's user types (``add``)."""

    def __init__(self, types: Mapping[int, PgType] | None = None) -> None:
        self._types: dict[int, PgType] = dict(BUILTIN_TYPES)
        if types:
            self._types.update(types)

    def add(self, pg_type: PgType) -> None:
        self._types[pg_type.oid] = pg_type

    def __getitem__(self, oid: int) -> PgType:
        return self._types[oid]

    def __iter__(self) -> Iterator[int]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    def resolve(self, oid: int, typmod: int) -> tuple[PgType | None, int]:
        """Follow domains down to their base type; a domain's own typmod applies when the column has none."""
        pg_type = self._types.get(oid)
        while pg_type is not None and pg_type.typtype == "d" and pg_type.base_oid:
            typmod = typmod if typmod >= 0 else pg_type.base_typmod
            pg_type = self._types.get(pg_type.base_oid)
        return pg_type, typmod


# --------------------------------------------------------------------------- scalar parsers

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_SPECIALS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def _float(text: str) -> Any:
    # Jackson (JsonConverter) writes NaN and infinities as strings (WRITE_NAN_AS_STRINGS).
    special = _FLOAT_SPECIALS.get(text)
    return special if special is not None else float(text)


def _bool(text: str) -> bool:
    return text == "t"


def _days(text: str) -> int:
    if len(text) == 10:  # 'YYYY-MM-DD': years 1-9999 AD
        return date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL
    if text == "infinity":
        return DATE_POSITIVE_INFINITY
    if text == "-infinity":
        return DATE_NEGATIVE_INFINITY
    return parse_pg_datetime(text)[0]  # BC or after 9999


def _time_micros(text: str) -> int:
    """``HH:MM:SS[.ffffff]`` → microseconds of the day (``24:00:00`` allowed)."""
    hours, minutes, seconds = text.split(":")
    whole, _, fraction = seconds.partition(".")
    micros = int((fraction + "000000")[:6]) if fraction else 0
    return ((int(hours) * 60 + int(minutes)) * 60 + int(whole)) * 1_000_000 + micros


def _timestamp_micros(text: str) -> int:
    """Microseconds since 1970; beyond 64 bits (after 294247 AD) the exact, larger number."""
    if text == "infinity":
        return TIMESTAMP_POSITIVE_INFINITY_US
    if text == "-infinity":
        return TIMESTAMP_NEGATIVE_INFINITY_US
    if text[4:5] != "-" or text.endswith(" BC"):
        days, micros = parse_pg_datetime(text)
        return days * US_PER_DAY + micros
    moment = datetime.fromisoformat(text)
    day_us = (moment.toordinal() - _EPOCH_ORDINAL) * US_PER_DAY
    return day_us + ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000 + moment.microsecond


def _timestamp_millis(text: str) -> int:
    return _timestamp_micros(text) // 1000


def _zoned_timestamp(fraction_digits: int) -> Converter:
    """io.debezium.time.ZonedTimestamp: UTC, ``Z``, as many fraction digits as the column's precision."""

    # Length of 'YYYY-MM-DD HH:MM:SS.f…+00' when the server printed exactly the wanted fraction digits.
    exact = 23 + fraction_digits if 0 < fraction_digits <= 9 else -1

    def convert(text: str) -> str:
        # The session's TimeZone is UTC: 'YYYY-MM-DD HH:MM:SS[.ffffff]+00' needs no date arithmetic.
        if (
            len(text) == exact
            and text[-3:] == "+00"
            and text[10] == " "
            and text[19] == "."
            and text[4] == "-"
        ):
            return f"{text[:10]}T{text[11:-3]}Z"
        if text[-3:] == "+00" and len(text) >= 22 and text[10] == " " and text[4] == "-":
            fraction = text[20:-3] if text[19] == "." else ""
            head = text[:10] + "T" + text[11:19]
            if fraction_digits <= 0 or fraction_digits > 9:
                return head + (f".{fraction}".rstrip("0").rstrip(".") if fraction else "") + "Z"
            return f"{head}.{fraction.ljust(fraction_digits, '0')[:fraction_digits]}Z"
        if text in ("infinity", "-infinity"):
            return text
        # Another offset, BC or a year after 9999: calendar arithmetic, java.time's year format.
        days, of_day = parse_pg_datetime(text)
        year, month, day = civil_from_days(days)
        seconds, micros = divmod(of_day, 1_000_000)
        head = (
            f"{iso_year(year)}-{month:02d}-{day:02d}"
            f"T{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        )
        if fraction_digits <= 0 or fraction_digits > 9:
            return head + _trimmed_fraction(micros) + "Z"
        return f"{head}.{f'{micros:06d}'.ljust(fraction_digits, '0')[:fraction_digits]}Z"

    return utc_timestamp_fast_path(fraction_digits, convert)


def utc_timestamp_fast_path_py(fraction_digits: int, convert: Converter) -> Converter:
    """A :func:`_zoned_timestamp` converter with its UTC branches compiled: the pure twin is ``convert``.

    The compiled one converts the texts of those branches itself and hands every other text to
    ``convert``."""
    return convert


utc_timestamp_fast_path: Final = accel.pick(utc_timestamp_fast_path_py)


def _trimmed_fraction(micros: int) -> str:
    # java.time's ISO formatters print the fraction without trailing zeros, nothing when zero.
    return f".{micros:06d}".rstrip("0") if micros else ""


_TIMETZ = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?([+-])(\d{2})(?::(\d{2}))?(?::(\d{2}))?$")


def _zoned_time(text: str) -> str:
    """io.debezium.time.ZonedTime: the time shifted to UTC, ISO_OFFSET_TIME (``08:15:30.5Z``)."""
    match = _TIMETZ.match(text)
    if match is None:
        raise ValueError(f"not a time with time zone: {text!r}")
    hour, minute, second, fraction, sign, off_h, off_m, off_s = match.groups()
    micros = int((fraction or "").ljust(6, "0"))
    if int(hour) == 24:
        return (
            "24:00:00Z"
            if text.endswith(("+00", "+00:00"))
            else _shift_time(0, 0, 0, 0, sign, off_h, off_m, off_s)
        )
    return _shift_time(int(hour), int(minute), int(second), micros, sign, off_h, off_m, off_s)


def _shift_time(
    hour: int,
    minute: int,
    second: int,
    micros: int,
    sign: str,
    off_h: str,
    off_m: str | None,
    off_s: str | None,
) -> str:
    offset = int(off_h) * 3600 + int(off_m or 0) * 60 + int(off_s or 0)
    seconds = (hour * 3600 + minute * 60 + second - (offset if sign == "+" else -offset)) % 86_400
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}{_trimmed_fraction(micros)}Z"


# Debezium's MicroDuration.DAYS_PER_MONTH_AVG = 365.25 / 12 = 30.4375 days per month.
_DAYS_PER_MONTH = 365.25 / 12.0
_INTERVAL_UNIT = re.compile(r"([+-]?\d+) (year|mon|day)s?")
_INTERVAL_TIME = re.compile(r"([+-])?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
_INTERVAL_ISO = re.compile(
    r"P(?:([+-]?\d+)Y)?(?:([+-]?\d+)M)?(?:([+-]?\d+)D)?"
    r"(?:T(?:([+-]?\d+)H)?(?:([+-]?\d+)M)?(?:([+-]?\d+(?:\.\d+)?)S)?)?$"
)


def _interval_parts(text: str) -> tuple[int, int, int, int, int, float]:
    """(years, months, days, hours, minutes, seconds) as pgjdbc's PGInterval reads them."""
    if text.startswith(("P", "-P")):
        return _iso_interval_parts(text)
    years = months = days = hours = minutes = 0
    seconds = 0.0
    for amount, unit in _INTERVAL_UNIT.findall(text):
        if unit == "year":
            years = int(amount)
        elif unit == "mon":
            months = int(amount)
        else:
            days = int(amount)
    clock = _INTERVAL_TIME.search(text)
    if clock is not None:
        sign = -1 if clock.group(1) == "-" else 1
        hours, minutes = sign * int(clock.group(2)), sign * int(clock.group(3))
        seconds = sign * float(clock.group(4))
    return years, months, days, hours, minutes, seconds


def _iso_interval_parts(text: str) -> tuple[int, int, int, int, int, float]:
    match = _INTERVAL_ISO.match(text)
    if match is None:
        raise ValueError(f"not an interval: {text!r}")
    y, mo, d, h, mi, s = (g or "0" for g in match.groups())
    return int(y), int(mo), int(d), int(h), int(mi), float(s)


def _interval_micros(text: str) -> int:
    years, months, days, hours, minutes, seconds = _interval_parts(text)
    total_days = (years * 12 + months) * _DAYS_PER_MONTH + days
    total_seconds = ((total_days * 24 + hours) * 60 + minutes) * 60 + seconds
    # Debezium computes in double and casts to long, which saturates: so do we.
    return max(_INT64_MIN, min(_INT64_MAX, int(total_seconds * 1e6)))


def _interval_iso(text: str) -> str:
    """io.debezium.time.Interval: ``PnYnMnDTnHnMnS`` with seconds as a plain decimal."""
    years, months, days, hours, minutes, seconds = _interval_parts(text)
    secs = Decimal(repr(seconds)).normalize() + 0  # BigDecimal has no negative zero
    return f"P{years}Y{months}M{days}DT{hours}H{minutes}M{secs:f}S"


def _bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    raise ValueError("bytea text is not in hex format: the session must set bytea_output=hex")


_BINARY_ENCODERS: dict[str, Callable[[bytes], str]] = {
    "bytes": lambda raw: base64.b64encode(raw).decode(),
    "base64": lambda raw: base64.b64encode(raw).decode(),
    "base64-url-safe": lambda raw: base64.urlsafe_b64encode(raw).decode(),
    "hex": lambda raw: raw.hex(),
}


_HSTORE_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"=>(?:NULL|"((?:[^"\\]|\\.)*)")')
_BACKSLASHED = re.compile(r"\\(.)")


def _hstore_json(text: str) -> str:
    """hstore text → Debezium's ``hstore.handling.mode=json``: a JSON object (text) of text or null values."""
    pairs = {}
    for match in _HSTORE_PAIR.finditer(text):
        key, value = match.group(1), match.group(2)
        pairs[_BACKSLASHED.sub(r"\1", key)] = None if value is None else _BACKSLASHED.sub(r"\1", value)
    if not pairs and text.strip():
        raise ValueError(f"not an hstore value: {text[:40]!r}")
    return orjson.dumps(pairs).decode()


def _bits(text: str) -> str:
    # io.debezium.data.Bits: little-endian bytes of the bit string, as few as its highest set bit needs.
    number = int(text, 2)
    return base64.b64encode(number.to_bytes((number.bit_length() + 7) // 8, "little")).decode()


# --------------------------------------------------------------------------- decimals


def _numeric_typmod(typmod: int) -> tuple[int, int] | None:
    """(precision, scale) of ``numeric(p, s)``; None for unconstrained numeric."""
    if typmod < 4:
        return None
    return ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF


def _unscaled_b64(unscaled: int) -> str:
    """Java BigInteger.toByteArray(): minimal big-endian two's complement, then base64."""
    size = (unscaled if unscaled >= 0 else ~unscaled).bit_length() // 8 + 1
    return base64.b64encode(unscaled.to_bytes(size, "big", signed=True)).decode()


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise DecodeError(f"not a numeric value: {text!r}") from None


# numeric holds up to 147,455 digits; the default context (28 digits) would round them silently.
_EXACT = Context(prec=150_000, rounding=ROUND_HALF_UP)


def _precise_fixed(scale: int) -> Converter:
    quantum = Decimal(1).scaleb(-scale)

    def convert(text: str) -> str:
        special = NUMERIC_SPECIALS.get(text)
        if special is not None:  # Debezium writes null; walbridge its string-mode name (edge_values)
            return special
        value = _decimal(text).quantize(quantum, context=_EXACT)
        return _unscaled_b64(int(value.scaleb(scale, _EXACT)))

    return convert


def _precise_variable(text: str) -> dict[str, Any] | str:
    # io.debezium.data.VariableScaleDecimal: trailing zeros stripped, never a negative scale.
    special = NUMERIC_SPECIALS.get(text)
    if special is not None:  # Debezium writes null; walbridge its string-mode name (edge_values)
        return special
    value = _decimal(text).normalize(_EXACT)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    scale = max(0, -exponent)
    unscaled = int(value.scaleb(scale, _EXACT))
    return {"scale": scale, "value": _unscaled_b64(unscaled)}


def _decimal_double(text: str) -> Any:
    # NaN and ±Infinity as Jackson's strings, like float8; so is a numeric beyond the double range
    # (1e400 → Infinity, as BigDecimal.doubleValue() gives), which orjson would write as null.
    value = _float(text)
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _decimal_string(text: str) -> str:
    # Debezium's SpecialValueDecimal names NaN and the infinities (NAN, POSITIVE_INFINITY, ...).
    return NUMERIC_SPECIALS.get(text, text)


def _money_decimal(text: str) -> Decimal:
    # Debezium's PostgresMoney.parse: drop currency symbol and group separators.
    negative = text.startswith("-") or text.startswith("(")
    cleaned = "".join(ch for ch in text if ch.isdigit() or ch == ".")
    value = Decimal(cleaned)
    return -value if negative else value


def _money_precise(text: str) -> str:
    value = _money_decimal(text).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return _unscaled_b64(int(value.scaleb(2)))


def _money_string(text: str) -> str:
    return f"{_money_decimal(text):f}"


def _money_double(text: str) -> float:
    return float(_money_decimal(text))


# --------------------------------------------------------------------------- per-type plans

_TEXT_TYPES = frozenset(
    {
        "text", "varchar", "bpchar", "char", "name", "uuid", "json", "jsonb", "xml", "inet", "cidr",
        "macaddr", "macaddr8", "int4range", "int8range", "numrange", "tsrange", "tstzrange", "daterange",
        "tsvector", "tsquery", "pg_lsn", "jsonpath", "point", "lseg", "path", "box", "polygon", "line",
        "circle", "regproc", "tid", "xid", "cid", "aclitem", "refcursor", "regprocedure", "regoper",
        "regoperator", "regclass", "regtype", "txid_snapshot", "regconfig", "regdictionary", "regnamespace",
        "regrole", "regcollation", "int4multirange", "nummultirange", "tsmultirange", "tstzmultirange",
        "datemultirange", "int8multirange", "pg_snapshot", "xid8",
    }
)  # fmt: skip
_STRING_SCHEMA_NAMES = {"uuid": "io.debezium.data.Uuid", "json": "io.debezium.data.Json",
                        "jsonb": "io.debezium.data.Json", "xml": "io.debezium.data.Xml"}  # fmt: skip
_INT_SCHEMAS = {"int2": "int16", "int4": "int32", "int8": "int64", "oid": "int64"}
# Array element types Debezium has no converter for; kept as lists of text here (money: of decimals).
_TEXT_ELEMENT_FALLBACK = frozenset({"interval", "varbit", "point"})


def _identity(text: str) -> str:
    return text


def is_passthrough(convert: Converter) -> bool:
    """True when the converter returns the text unchanged (callers may skip calling it)."""
    return convert is _identity


def _time_precision(typmod: int) -> int:
    return typmod if typmod >= 0 else 6


def _named(kind: str, name: str, **extra: Any) -> Schema:
    return {"type": kind, "name": name, "version": 1, **extra}


@dataclass(frozen=True, slots=True)
class _Plan:
    schema: Schema
    convert: Converter
    element: _Plan | None = field(default=None)


_EXTENSION_PLANS = {
    "citext": _Plan({"type": "string"}, _identity),
    "ltree": _Plan(_named("string", "io.debezium.data.Ltree"), _identity),
    "hstore": _Plan(_named("string", "io.debezium.data.Json"), _hstore_json),
}


def _temporal_plan(name: str, typmod: int, opts: ValueOptions) -> _Plan:
    mode, precision = opts.time_precision_mode, _time_precision(typmod)
    if name == "date":
        schema_name = "org.apache.kafka.connect.data.Date" if mode == "connect" else "io.debezium.time.Date"
        return _Plan(_named("int32", schema_name), _days)
    if name == "time":
        if mode == "connect":
            return _Plan(
                _named("int32", "org.apache.kafka.connect.data.Time"), lambda t: _time_micros(t) // 1000
            )
        if mode == "adaptive" and precision <= 3:
            return _Plan(_named("int32", "io.debezium.time.Time"), lambda t: _time_micros(t) // 1000)
        return _Plan(_named("int64", "io.debezium.time.MicroTime"), _time_micros)
    if name == "timestamp":
        if mode == "connect":
            return _Plan(_named("int64", "org.apache.kafka.connect.data.Timestamp"), _timestamp_millis)
        if precision <= 3:
            return _Plan(_named("int64", "io.debezium.time.Timestamp"), _timestamp_millis)
        return _Plan(_named("int64", "io.debezium.time.MicroTimestamp"), _timestamp_micros)
    if name == "timestamptz":
        return _Plan(_named("string", "io.debezium.time.ZonedTimestamp"), _zoned_timestamp(precision))
    if name == "timetz":
        return _Plan(_named("string", "io.debezium.time.ZonedTime"), _zoned_time)
    if opts.interval_handling_mode == "string":
        return _Plan(_named("string", "io.debezium.time.Interval"), _interval_iso)
    return _Plan(_named("int64", "io.debezium.time.MicroDuration"), _interval_micros)


def _numeric_plan(typmod: int, opts: ValueOptions) -> _Plan:
    mode, constraint = opts.decimal_handling_mode, _numeric_typmod(typmod)
    if mode == "string":
        return _Plan({"type": "string"}, _decimal_string)
    if mode == "double":
        return _Plan({"type": "double"}, _decimal_double)
    if constraint is None:
        schema = _named(
            "struct",
            "io.debezium.data.VariableScaleDecimal",
            doc="Variable scaled decimal",
            fields=[
                {"type": "int32", "optional": False, "field": "scale"},
                {"type": "bytes", "optional": False, "field": "value"},
            ],
        )
        return _Plan(schema, _precise_variable)
    precision, scale = constraint
    params = {"scale": str(scale), "connect.decimal.precision": str(precision)}
    return _Plan(
        _named("bytes", "org.apache.kafka.connect.data.Decimal", parameters=params), _precise_fixed(scale)
    )


def _money_plan(opts: ValueOptions) -> _Plan:
    mode = opts.decimal_handling_mode
    if mode == "string":
        return _Plan({"type": "string"}, _money_string)
    if mode == "double":
        return _Plan({"type": "double"}, _money_double)
    params = {"scale": "2"}
    return _Plan(_named("bytes", "org.apache.kafka.connect.data.Decimal", parameters=params), _money_precise)


def _binary_plan(opts: ValueOptions) -> _Plan:
    encode = _BINARY_ENCODERS[opts.binary_handling_mode]
    schema: Schema = {"type": "bytes"} if opts.binary_handling_mode == "bytes" else {"type": "string"}
    return _Plan(schema, lambda text: encode(_bytea(text)))


def _bit_plan(name: str, typmod: int) -> _Plan:
    length = typmod if typmod > 0 else (1 if name == "bit" else 0)
    if length == 1:
        return _Plan({"type": "boolean"}, lambda text: text == "1")
    return _Plan(_named("bytes", "io.debezium.data.Bits", parameters={"length": str(length)}), _bits)


def _base_plan(pg_type: PgType, typmod: int, opts: ValueOptions) -> _Plan | None:
    name = pg_type.name
    if pg_type.typtype == "e":
        allowed = ",".join(pg_type.enum_values)
        return _Plan(_named("string", "io.debezium.data.Enum", parameters={"allowed": allowed}), _identity)
    if name in _INT_SCHEMAS:
        return _Plan({"type": _INT_SCHEMAS[name]}, int)
    if name in _TEXT_TYPES:
        schema_name = _STRING_SCHEMA_NAMES.get(name)
        return _Plan(_named("string", schema_name) if schema_name else {"type": "string"}, _identity)
    if name == "bool":
        return _Plan({"type": "boolean"}, _bool)
    if name in _EXTENSION_PLANS:  # extension types Debezium knows (their OIDs differ per database)
        return _EXTENSION_PLANS[name]
    if name in ("float4", "float8"):
        return _Plan({"type": "float" if name == "float4" else "double"}, _float)
    if name in ("date", "time", "timestamp", "timestamptz", "timetz", "interval"):
        return _temporal_plan(name, typmod, opts)
    if name == "numeric":
        return _numeric_plan(typmod, opts)
    if name == "money":
        return _money_plan(opts)
    if name == "bytea":
        return _binary_plan(opts)
    if name in ("bit", "varbit"):
        return _bit_plan(name, typmod)
    return None


_warned: set[tuple[int, str]] = set()


def _unknown_plan(oid: int, name: str) -> _Plan:
    if (oid, name) not in _warned:
        _warned.add((oid, name))
        log.warning("no converter for PostgreSQL type %s (oid %d): its values are sent as text", name, oid)
    return _Plan({"type": "string"}, _identity)


def _plan(type_oid: int, typmod: int, registry: Mapping[int, PgType], opts: ValueOptions) -> _Plan:
    resolve = registry.resolve if isinstance(registry, TypeRegistry) else TypeRegistry(registry).resolve
    pg_type, typmod = resolve(type_oid, typmod)
    if pg_type is None:
        return _unknown_plan(type_oid, f"oid {type_oid}")
    if pg_type.is_array:
        return _array_plan(pg_type, typmod, registry, opts)
    plan = _base_plan(pg_type, typmod, opts)
    return plan if plan is not None else _unknown_plan(pg_type.oid, pg_type.name)


def _array_plan(pg_type: PgType, typmod: int, registry: Mapping[int, PgType], opts: ValueOptions) -> _Plan:
    element_type = registry.get(pg_type.element_oid)
    if element_type is not None and element_type.name == "money":
        element = _Plan({"type": "string"}, _money_string)  # plain decimals: any lc_monetary reads them
    elif element_type is not None and element_type.name in _TEXT_ELEMENT_FALLBACK:
        element = _unknown_plan(pg_type.oid, pg_type.name)
    else:
        element = _plan(pg_type.element_oid, typmod, registry, opts)
    # Debezium's array items are optional, except enum items (built without .optional()).
    is_enum = element_type is not None and element_type.typtype == "e"
    items = {**element.schema, "optional": not is_enum}
    convert_element = element.convert

    def convert(text: str) -> list[Any]:
        return _map_nested(parse_array_literal(text), convert_element)

    return _Plan({"type": "array", "items": _ordered(items)}, convert, element)


def _map_nested(values: list[Any], convert: Converter) -> list[Any]:
    return [
        None if v is None else _map_nested(v, convert) if isinstance(v, list) else convert(v) for v in values
    ]


def _ordered(schema: Schema) -> Schema:
    """Key order of JsonConverter's schema output: type, optional, name, version, doc, parameters, ..."""
    order = ("type", "items", "fields", "optional", "name", "version", "doc", "parameters")
    return {key: schema[key] for key in (*order, *schema) if key in schema} if schema else schema


def converter_for(
    type_oid: int, typmod: int, registry: Mapping[int, PgType], options: ValueOptions
) -> Converter:
    """The text → JSON value function for one column; build it once per column."""
    return _plan(type_oid, typmod, registry, options).convert


def column_schema(
    name: str,
    type_oid: int,
    typmod: int,
    optional: bool,
    registry: Mapping[int, PgType],
    options: ValueOptions,
) -> ColumnSchema:
    """The column's Kafka Connect field schema, named as Debezium names it."""
    schema = _plan(type_oid, typmod, registry, options).schema
    return ColumnSchema(name, _ordered({**schema, "optional": optional}))


# --------------------------------------------------------------------------- text formats


def parse_array_literal(text: str) -> list[Any]:
    """PostgreSQL array text (``{1,NULL,"a,b",{2}}``) → nested lists of ``str | None``."""
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    if not text.startswith("{"):
        raise ValueError(f"not an array literal: {text[:40]!r}")
    values, end = _array_items(text, 1)
    if text[end:].strip():
        raise ValueError(f"trailing text after array literal: {text[end:][:40]!r}")
    return values


def _array_items(text: str, pos: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    size = len(text)
    while pos < size:
        ch = text[pos]
        if ch == "}":
            return items, pos + 1
        if ch in ", \t\n":
            pos += 1
        elif ch == "{":
            nested, pos = _array_items(text, pos + 1)
            items.append(nested)
        elif ch == '"':
            value, pos = _quoted(text, pos + 1)
            items.append(value)
        else:
            end = pos
            while end < size and text[end] not in ",}":
                end += 1
            token = text[pos:end].strip()
            items.append(None if token == "NULL" else token.replace("\\", ""))
            pos = end
    raise ValueError("unterminated array literal")


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """Read a double-quoted element or field starting after the quote; ``\\x`` and ``""`` escape."""
    out: list[str] = []
    size = len(text)
    while pos < size:
        ch = text[pos]
        if ch == "\\" and pos + 1 < size:
            out.append(text[pos + 1])
            pos += 2
        elif ch == '"':
            if pos + 1 < size and text[pos + 1] == '"':
                out.append('"')
                pos += 2
            else:
                return "".join(out), pos + 1
        else:
            out.append(ch)
            pos += 1
    raise ValueError("unterminated quoted value")


def parse_record_literal(text: str) -> list[str | None]:
    """Composite/row text output (``(1,"a b",,"x""y")``) → fields; an empty unquoted field is NULL."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ValueError(f"not a record literal: {text[:40]!r}")
    fields: list[str | None] = []
    pos, end = 1, len(text) - 1
    while True:
        if pos < end and text[pos] == '"':
            value: str | None
            value, pos = _quoted_field(text, pos + 1, end)
        else:
            stop = text.find(",", pos, end)
            stop = end if stop < 0 else stop
            value = text[pos:stop] or None
            pos = stop
        fields.append(value)
        if pos >= end:
            return fields
        pos += 1  # the comma


def _quoted_field(text: str, pos: int, end: int) -> tuple[str, int]:
    value, pos = _quoted(text, pos)
    # Record output may quote only part of a field; glue any unquoted rest.
    stop = text.find(",", pos, end)
    stop = end if stop < 0 else stop
    return value + text[pos:stop], stop
