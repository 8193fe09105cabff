"""PostgreSQL's edge values in Debezium's encodings: the one home shared by capture and the PostgreSQL sink.

Capture (:mod:`walbridge.capture.values`) encodes with these, the sink (:mod:`walbridge.sinks.pg_types`)
and the event decoder (:mod:`walbridge.events`) recognise them, so both sides cannot drift.

- Infinite ``date``: the numbers Debezium 3.6's streaming path emits (PostgreSQL's internal
  ``±infinity`` day numbers shifted from the 2000 to the 1970 epoch in 32-bit arithmetic). No real
  date is that far from 1970, so they are unambiguous. (Debezium's snapshot path emits other,
  meaningless numbers for the same values.)
- Infinite ``timestamp``: pgjdbc's ``DATE_POSITIVE/NEGATIVE_INFINITY`` read as epoch microseconds
  (milliseconds for ``timestamp(0-3)``), as Debezium emits them.
- ``numeric`` ``NaN``/``±Infinity``: the names Debezium writes in ``decimal.handling.mode=string``
  (``NAN``, ``POSITIVE_INFINITY``, ``NEGATIVE_INFINITY``); walbridge uses the same names in ``precise``
  mode, where Debezium writes ``null``. None of them is valid padded base64, so a ``precise`` value
  can never be mistaken for one.
- Days and microseconds on the proleptic Gregorian calendar with astronomical years (year 0 is
  1 BC), the calendar of PostgreSQL, ``java.time`` and Debezium, valid far beyond Python's
  ``datetime`` range (PostgreSQL's ``date`` reaches 4713 BC to 5874897 AD).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

__all__ = [
    "DATE_NEGATIVE_INFINITY",
    "DATE_POSITIVE_INFINITY",
    "NUMERIC_SPECIALS",
    "NUMERIC_SPECIAL_VALUES",
    "TIMESTAMP_NEGATIVE_INFINITY_US",
    "TIMESTAMP_POSITIVE_INFINITY_US",
    "US_PER_DAY",
    "civil_days",
    "civil_from_days",
    "date_text",
    "iso_year",
    "parse_pg_datetime",
    "timestamp_text",
    "zoned_iso_to_pg",
]

DATE_POSITIVE_INFINITY: Final = -2_147_472_692
DATE_NEGATIVE_INFINITY: Final = -2_147_472_691
TIMESTAMP_POSITIVE_INFINITY_US: Final = 9_223_372_036_825_200_000
TIMESTAMP_NEGATIVE_INFINITY_US: Final = -9_223_372_036_832_400_000
US_PER_DAY: Final = 86_400_000_000

NUMERIC_SPECIALS: Final = {"NaN": "NAN", "Infinity": "POSITIVE_INFINITY", "-Infinity": "NEGATIVE_INFINITY"}
"""PostgreSQL's text of a special numeric → Debezium's name for it."""
NUMERIC_SPECIAL_VALUES: Final = {name: Decimal(text) for text, name in NUMERIC_SPECIALS.items()}
"""Debezium's name of a special numeric → its ``Decimal``."""


def civil_days(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (astronomical year: 0 is 1 BC)."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    """The inverse of :func:`civil_days`: (astronomical year, month, day)."""
    days += 719_468
    era = days // 146_097
    doe = days - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


_PG_DATETIME = re.compile(
    r"(\d+)-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?)?"
    r"(?:([+-])(\d\d)(?::?(\d\d))?(?::(\d\d))?)?( BC)?$"
)


def parse_pg_datetime(text: str) -> tuple[int, int]:
    """PostgreSQL's ISO text of a date/timestamp[tz] (any year, ``BC``) → (days since 1970, µs of the day).

    An offset (``+05:30``) is applied: the result is UTC.
    """
    match = _PG_DATETIME.match(text)
    if match is None:
        raise ValueError(f"not a PostgreSQL date/time: {text!r}")
    y, mo, d, h, mi, s, frac, sign, oh, om, osec, bc = match.groups()
    year = 1 - int(y) if bc else int(y)
    micros = ((int(h or 0) * 60 + int(mi or 0)) * 60 + int(s or 0)) * 1_000_000
    micros += int((frac or "").ljust(6, "0"))
    if sign:
        offset = (int(oh) * 3600 + int(om or 0) * 60 + int(osec or 0)) * 1_000_000
        micros -= offset if sign == "+" else -offset
    extra, micros = divmod(micros, US_PER_DAY)
    return civil_days(year, int(mo), int(d)) + extra, micros


def iso_year(year: int) -> str:
    """``java.time``'s ISO year: four digits, a sign outside 0000-9999 (``+10000``, ``-0044``)."""
    if 0 <= year <= 9999:
        return f"{year:04d}"
    return f"+{year}" if year > 0 else f"-{-year:04d}"


def date_text(days: int) -> str:
    """PostgreSQL's input text of a date given as days since 1970 (``0044-03-15 BC`` for year -43)."""
    year, month, day = civil_from_days(days)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def timestamp_text(micros: int, zone: str = "") -> str:
    """PostgreSQL's input text of a timestamp given as µs since 1970 (``zone``: e.g. ``+00``)."""
    days, of_day = divmod(micros, US_PER_DAY)
    seconds, fraction = divmod(of_day, 1_000_000)
    date_part = date_text(days)
    era = ""
    if date_part.endswith(" BC"):
        date_part, era = date_part[:-3], " BC"
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{fraction:06d}"
    return f"{date_part} {clock}{zone}{era}"


_ISO_ZONED = re.compile(r"([+-]?\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$")


def zoned_iso_to_pg(text: str) -> str | None:
    """A ``ZonedTimestamp`` string with a year PostgreSQL cannot read in ISO form (year 0, negative,
    ``+`` sign) → PostgreSQL text; None for any other string (PostgreSQL reads it as it is)."""
    match = _ISO_ZONED.match(text)
    if match is None or not (text.startswith(("+", "-", "0000"))):
        return None
    y, mo, d, h, mi, s, frac = match.groups()
    micros = ((int(h) * 60 + int(mi)) * 60 + int(s)) * 1_000_000 + int((frac or "")[:6].ljust(6, "0"))
    return timestamp_text(civil_days(int(y), int(mo), int(d)) * US_PER_DAY + micros, "+00")
