"""Text → Debezium JSON values and Connect schemas, checked against Debezium 3.x's documented encodings.

Quotes are from Debezium's PostgreSQL connector documentation ("Data type mappings") unless a
PostgresValueConverter/debezium-core class is named.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from walbridge.capture.values import (
    PgType,
    TypeRegistry,
    ValueOptions,
    column_schema,
    converter_for,
    parse_array_literal,
    parse_record_literal,
)
from walbridge.metrics import CAPTURE

REG = TypeRegistry()
DEFAULT = ValueOptions()
PRECISE = ValueOptions(decimal_handling_mode="precise")
DOUBLE = ValueOptions(decimal_handling_mode="double")
NUMERIC_10_2 = (10 << 16 | 2) + 4


def conv(oid: int, text: str, typmod: int = -1, opts: ValueOptions = DEFAULT, reg: TypeRegistry = REG) -> Any:
    return converter_for(oid, typmod, reg, opts)(text)


def schema(
    oid: int, typmod: int = -1, opts: ValueOptions = DEFAULT, reg: TypeRegistry = REG
) -> dict[str, Any]:
    return dict(column_schema("c", oid, typmod, True, reg, opts).connect)


def test_integers_and_bool() -> None:
    assert conv(21, "-32768") == -32768 and schema(21) == {"type": "int16", "optional": True}
    assert conv(23, "7") == 7 and schema(23)["type"] == "int32"
    assert conv(20, "9223372036854775807") == 9223372036854775807 and schema(20)["type"] == "int64"
    assert conv(16, "t") is True and conv(16, "f") is False and schema(16)["type"] == "boolean"


def test_floats_and_special_values() -> None:
    assert conv(700, "1.1") == 1.1 and schema(700)["type"] == "float"
    assert conv(701, "-2.5e-05") == -2.5e-05 and schema(701)["type"] == "double"
    # JsonConverter's Jackson writes non-finite floats as strings (WRITE_NAN_AS_STRINGS).
    assert [conv(701, t) for t in ("NaN", "Infinity", "-Infinity")] == ["NaN", "Infinity", "-Infinity"]


def test_numeric_precise_fixed_scale() -> None:
    # "precise ... represents values by using java.math.BigDecimal" → base64 of the unscaled value.
    assert conv(1700, "199.99", NUMERIC_10_2, PRECISE) == "Th8="
    assert conv(1700, "-1.00", NUMERIC_10_2, PRECISE) == "nA=="  # -100 as one byte 0x9c
    assert conv(1700, "0.00", NUMERIC_10_2, PRECISE) == "AA=="
    assert schema(1700, NUMERIC_10_2, PRECISE) == {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "10"},
    }


def test_numeric_precise_variable_scale() -> None:
    # NUMERIC without precision → VariableScaleDecimal {scale, value}; trailing zeros stripped.
    assert conv(1700, "1.50", -1, PRECISE) == {"scale": 1, "value": "Dw=="}
    assert conv(1700, "100", -1, PRECISE) == {"scale": 0, "value": "ZA=="}
    assert schema(1700, -1, PRECISE)["name"] == "io.debezium.data.VariableScaleDecimal"


def test_numeric_string_and_double() -> None:
    assert conv(1700, "199.99", NUMERIC_10_2) == "199.99" and schema(1700, NUMERIC_10_2) == {
        "type": "string",
        "optional": True,
    }
    assert conv(1700, "NaN") == "NAN"  # Debezium's SpecialValueDecimal name
    assert (
        conv(1700, "199.99", NUMERIC_10_2, DOUBLE) == 199.99 and schema(1700, -1, DOUBLE)["type"] == "double"
    )


def test_money_modes() -> None:
    # PostgresValueConverter.convertMoney: Decimal with scale = money fraction digits (2).
    assert conv(790, "$1,234.56", -1, PRECISE) == "AeJA"  # 123456
    assert schema(790, -1, PRECISE)["parameters"] == {"scale": "2"}
    assert conv(790, "-$1,234.56") == "-1234.56"
    assert conv(790, "$0.10", -1, DOUBLE) == 0.1


def test_text_like_types() -> None:
    for oid, text in ((25, "héllo"), (1043, "x"), (1042, "ab   "), (19, "name"), (869, "10.0.0.1/32"),
                      (650, "10.0.0.0/8"), (829, "08:00:2b:01:02:03"), (3904, "[1,5)")):  # fmt: skip
        assert conv(oid, text) == text and schema(oid) == {"type": "string", "optional": True}


def test_uuid_json_jsonb_named_strings() -> None:
    assert conv(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11") == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert schema(2950)["name"] == "io.debezium.data.Uuid"
    assert conv(3802, '{"a": 1}') == '{"a": 1}' and schema(3802)["name"] == "io.debezium.data.Json"
    assert schema(114) == {"type": "string", "optional": True, "name": "io.debezium.data.Json", "version": 1}


def test_date() -> None:
    # "the number of days since the epoch"
    assert conv(1082, "1970-01-02") == 1 and conv(1082, "1969-12-31") == -1
    assert schema(1082) == {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1}
    assert schema(1082, -1, ValueOptions(time_precision_mode="connect"))["name"] == (
        "org.apache.kafka.connect.data.Date"
    )


def test_time_modes() -> None:
    # adaptive_time_microseconds: "TIME ... as microseconds ... io.debezium.time.MicroTime"
    assert (
        conv(1083, "10:15:30.123456") == 36930123456 and schema(1083)["name"] == "io.debezium.time.MicroTime"
    )
    assert conv(1083, "24:00:00") == 86_400_000_000
    adaptive = ValueOptions(time_precision_mode="adaptive")
    assert (
        conv(1083, "10:15:30.123", 3, adaptive) == 36930123 and schema(1083, 3, adaptive)["type"] == "int32"
    )
    connect = ValueOptions(time_precision_mode="connect")
    assert conv(1083, "00:00:01.5", -1, connect) == 1500
    assert schema(1083, -1, connect)["name"] == "org.apache.kafka.connect.data.Time"


def test_timestamp_adaptive_precision() -> None:
    # TIMESTAMP(1-3) → io.debezium.time.Timestamp (millis); TIMESTAMP(4-6) and default → MicroTimestamp.
    assert conv(1114, "2024-01-02 03:04:05.123456") == 1704164645123456
    assert schema(1114)["name"] == "io.debezium.time.MicroTimestamp"
    assert conv(1114, "2024-01-02 03:04:05.123", 3) == 1704164645123
    assert schema(1114, 3)["name"] == "io.debezium.time.Timestamp"
    assert conv(1114, "1969-12-31 23:59:59.5") == -500_000
    connect = ValueOptions(time_precision_mode="connect")
    assert conv(1114, "2024-01-02 03:04:05.123456", -1, connect) == 1704164645123
    # PostgresValueConverter maps 'infinity' to pgjdbc's DATE_POSITIVE_INFINITY (as epoch micros).
    assert conv(1114, "infinity") == 9_223_372_036_825_200_000


def test_timestamptz_iso_utc_six_digits() -> None:
    assert conv(1184, "2024-01-02 03:04:05.12+02") == "2024-01-02T01:04:05.120000Z"
    assert conv(1184, "2024-01-02 03:04:05+00") == "2024-01-02T03:04:05.000000Z"
    assert conv(1184, "2024-01-02 03:04:05.1+05:30", 3) == "2024-01-01T21:34:05.100Z"
    assert conv(1184, "2024-01-02 03:04:05+00", 0) == "2024-01-02T03:04:05Z"
    assert conv(1184, "infinity") == "infinity"
    assert schema(1184)["name"] == "io.debezium.time.ZonedTimestamp"


def test_timetz() -> None:
    # ZonedTime: "A string representation of a time value with timezone information ... in UTC".
    assert conv(1266, "10:15:30.5+02") == "08:15:30.5Z"
    assert conv(1266, "01:00:00-03:30") == "04:30:00Z"
    assert schema(1266)["name"] == "io.debezium.time.ZonedTime"


def test_interval_numeric_uses_average_month() -> None:
    # MicroDuration.DAYS_PER_MONTH_AVG = 365.25 / 12 = 30.4375 days.
    assert conv(1186, "1 mon") == int(30.4375 * 86_400_000_000)
    assert conv(1186, "1 year 2 mons 3 days 04:05:06.789") == 37091106789000
    assert conv(1186, "-1 days +02:03:00") == -86_400_000_000 + 7_380_000_000
    assert conv(1186, "00:00:00.000001") == 1
    assert schema(1186)["name"] == "io.debezium.time.MicroDuration"


def test_interval_string_mode() -> None:
    opts = ValueOptions(interval_handling_mode="string")
    assert conv(1186, "1 year 2 mons 3 days 04:05:06.789", -1, opts) == "P1Y2M3DT4H5M6.789S"
    assert conv(1186, "-1 days -02:03:00", -1, opts) == "P0Y0M-1DT-2H-3M0S"
    assert conv(1186, "P1Y2M3DT4H5M6S", -1, opts) == "P1Y2M3DT4H5M6S"
    assert schema(1186, -1, opts)["name"] == "io.debezium.time.Interval"


def test_bytea_modes() -> None:
    assert conv(17, "\\x0102ff") == "AQL/" and schema(17) == {"type": "bytes", "optional": True}
    assert conv(17, "\\x0102ff", -1, ValueOptions(binary_handling_mode="hex")) == "0102ff"
    b64 = ValueOptions(binary_handling_mode="base64")
    assert conv(17, "\\x0102ff", -1, b64) == "AQL/" and schema(17, -1, b64)["type"] == "string"


def test_bits() -> None:
    assert conv(1560, "1", 1) is True and schema(1560, 1)["type"] == "boolean"
    assert conv(1560, "00000101", 8) == "BQ=="
    assert schema(1562, 8)["name"] == "io.debezium.data.Bits"


def test_arrays() -> None:
    assert conv(1007, "{1,2,NULL}") == [1, 2, None]
    assert schema(1007) == {"type": "array", "items": {"type": "int32", "optional": True}, "optional": True}
    assert conv(1009, '{"a,b",NULL,"NULL","q\\"x"}') == ["a,b", None, "NULL", 'q"x']
    assert conv(1231, "{1.50,2.00}", NUMERIC_10_2, PRECISE) == ["AJY=", "AMg="]
    assert conv(1182, "{1970-01-02}") == [1]
    assert conv(1185, '{"2024-01-02 03:04:05+00"}') == ["2024-01-02T03:04:05.000000Z"]
    assert conv(1001, '{"\\\\x01"}') == ["AQ=="]
    assert conv(1007, "{{1,2},{3,4}}") == [[1, 2], [3, 4]]
    assert conv(1009, "{}") == []


def test_enum_domain_and_enum_array() -> None:
    reg = TypeRegistry()
    reg.add(PgType(50000, "mood", "e", enum_values=("sad", "ok", "happy")))
    reg.add(PgType(50001, "_mood", "b", element_oid=50000))
    reg.add(PgType(50002, "price", "d", base_oid=1700, base_typmod=NUMERIC_10_2))
    assert conv(50000, "ok", reg=reg) == "ok"
    assert schema(50000, reg=reg) == {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Enum",
        "version": 1,
        "parameters": {"allowed": "sad,ok,happy"},
    }
    assert conv(50001, "{sad,happy}", reg=reg) == ["sad", "happy"]
    assert schema(50001, reg=reg)["items"]["optional"] is False
    assert conv(50002, "199.99", -1, PRECISE, reg) == "Th8="
    assert schema(50002, -1, PRECISE, reg)["parameters"]["scale"] == "2"


def test_unknown_type_falls_back_to_text_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    reg = TypeRegistry()
    reg.add(PgType(60000, "ltree_like", "b"))
    with caplog.at_level(logging.WARNING):
        assert conv(60000, "a.b", reg=reg) == "a.b"
        assert conv(60000, "c", reg=reg) == "c"
        assert schema(60000, reg=reg) == {"type": "string", "optional": True}
    assert len([r for r in caplog.records if "ltree_like" in r.getMessage()]) == 1


def test_parse_array_literal() -> None:
    assert parse_array_literal('{a, "b c" ,NULL,{1}}') == ["a", "b c", None, ["1"]]
    assert parse_array_literal("[0:1]={x,y}") == ["x", "y"]
    with pytest.raises(ValueError):
        parse_array_literal("{1,2")


def test_parse_record_literal() -> None:
    assert parse_record_literal('(1,"a b",,"x""y")') == ["1", "a b", None, 'x"y']
    assert parse_record_literal('("",)') == ["", None]
    assert parse_record_literal('(1,"a\\\\b")') == ["1", "a\\b"]
    assert parse_record_literal("()") == [None]


def test_date_infinity_bc_and_beyond_9999() -> None:
    assert conv(1082, "infinity") == -2_147_472_692 and conv(1082, "-infinity") == -2_147_472_691
    assert conv(1082, "0001-01-01 BC") == -719_528  # year 0 of the proleptic calendar
    assert conv(1082, "4713-01-01 BC") == -2_440_550  # PostgreSQL's first date
    assert conv(1082, "5874897-12-31") == 2_145_042_905  # and its last
    assert conv(1082, "10000-01-01") == 2_932_897
    assert conv(1182, '{infinity,-infinity,"0001-01-01 BC"}') == [-2_147_472_692, -2_147_472_691, -719_528]


def test_timestamp_infinity_bc_and_beyond_9999() -> None:
    assert conv(1114, "-infinity") == -9_223_372_036_832_400_000
    assert conv(1114, "0001-01-01 00:00:00 BC") == -62_167_219_200_000_000
    assert conv(1114, "0044-03-15 12:00:00.123 BC", 3) == -63_517_780_799_877
    assert conv(1114, "4713-01-01 00:00:00 BC", 0) == -210_863_520_000_000
    assert conv(1114, "10000-01-01 00:00:00", 3) == 253_402_300_800_000
    assert conv(1114, "infinity", 3) == 9_223_372_036_825_200
    # After 294247 AD, µs since 1970 exceed 64 bits: Debezium wraps around, walbridge keeps the number.
    assert conv(1114, "294276-12-31 23:59:59.999999") == 9_224_318_015_999_999_999


def test_timestamptz_bc_and_years_beyond_9999_use_java_time_years() -> None:
    assert conv(1184, "-infinity") == "-infinity"
    assert conv(1184, "0001-12-31 23:59:59.999999+00 BC") == "0000-12-31T23:59:59.999999Z"
    assert conv(1184, "4713-01-01 00:00:00+00 BC", 3) == "-4712-01-01T00:00:00.000Z"
    assert conv(1184, "294276-12-31 23:59:59.999999+00") == "+294276-12-31T23:59:59.999999Z"
    assert conv(1184, "10000-01-01 00:00:00+00", 3) == "+10000-01-01T00:00:00.000Z"
    assert conv(1184, "0044-03-15 12:00:00+02 BC", 0) == "-0043-03-15T10:00:00Z"


def test_time_24_00() -> None:
    assert conv(1083, "24:00:00") == 86_400_000_000
    assert conv(1083, "24:00:00", 3, ValueOptions(time_precision_mode="connect")) == 86_400_000
    assert conv(1266, "24:00:00+00") == "24:00:00Z"  # Debezium: 00:00:00Z (a documented difference)
    assert conv(1266, "24:00:00-15:59") == "15:59:00Z"


def test_numeric_special_values_in_every_mode() -> None:
    specials = ("NaN", "Infinity", "-Infinity")
    # string: Debezium's SpecialValueDecimal names
    assert [conv(1700, t) for t in specials] == ["NAN", "POSITIVE_INFINITY", "NEGATIVE_INFINITY"]
    # precise: Debezium writes null; walbridge the same names (never valid padded base64)
    assert [conv(1700, t, -1, PRECISE) for t in specials] == ["NAN", "POSITIVE_INFINITY", "NEGATIVE_INFINITY"]
    assert conv(1700, "NaN", NUMERIC_10_2, PRECISE) == "NAN"
    assert conv(1231, "{NaN,1.5,Infinity}", -1, PRECISE) == [
        "NAN",
        {"scale": 1, "value": "Dw=="},
        "POSITIVE_INFINITY",
    ]
    # double: Jackson's strings, as for float8
    assert [conv(1700, t, -1, DOUBLE) for t in specials] == ["NaN", "Infinity", "-Infinity"]
    assert conv(1700, "-1e400", -1, DOUBLE) == "-Infinity"  # beyond double: BigDecimal.doubleValue()
    big = "123456789012345678901234567890.123456789012345678901234567890"
    assert conv(1700, big, -1, PRECISE) == {"scale": 29, "value": "Afd+5uOsaXA1hlpdOME4xULa4ZgorjmBFQ=="}
    assert conv(1700, "-0.000000000000000000001", -1, PRECISE) == {"scale": 21, "value": "/w=="}


def test_float_extremes() -> None:
    assert conv(700, "-0") == 0.0 and str(conv(701, "-0")) == "-0.0"
    assert conv(701, "1.7976931348623157e+308") == 1.7976931348623157e308
    assert conv(1022, "{NaN,-Infinity,5e-324}") == ["NaN", "-Infinity", 5e-324]


def test_interval_extremes() -> None:
    top = "178000000 years 2147483647 days 2562047788:00:54.775807"
    bottom = "-178000000 years -2147483648 days -2562047788:00:54.775808"
    # MicroDuration: Debezium computes in double and saturates at the 64-bit bounds
    assert conv(1186, top) == 2**63 - 1 and conv(1186, bottom) == -(2**63)
    string = ValueOptions(interval_handling_mode="string")
    assert conv(1186, top, -1, string) == "P178000000Y0M2147483647DT2562047788H0M54.775807S"
    assert conv(1186, bottom, -1, string) == "P-178000000Y0M-2147483648DT-2562047788H0M-54.775808S"


def test_money_extremes() -> None:
    assert conv(790, "$92,233,720,368,547,758.07", -1, PRECISE) == "f/////////8="
    assert conv(790, "-$92,233,720,368,547,758.08", -1, PRECISE) == "gAAAAAAAAAA="
    assert conv(790, "-$92,233,720,368,547,758.08") == "-92233720368547758.08"
    assert conv(790, "-$0.01", -1, PRECISE) == "/w=="


def test_extension_types_debezium_knows() -> None:
    reg = TypeRegistry()
    for oid, name in ((61000, "hstore"), (61001, "ltree"), (61002, "citext")):
        reg.add(PgType(oid, name, "b"))
    assert conv(61000, '"a"=>"1", "b"=>NULL, "q\\"x"=>"back\\\\slash"', reg=reg) == (
        '{"a":"1","b":null,"q\\"x":"back\\\\slash"}'
    )
    assert conv(61000, "", reg=reg) == "{}"
    assert schema(61000, reg=reg)["name"] == "io.debezium.data.Json"
    assert (
        conv(61001, "a.b.c", reg=reg) == "a.b.c"
        and schema(61001, reg=reg)["name"] == "io.debezium.data.Ltree"
    )
    assert conv(61002, "AbC", reg=reg) == "AbC" and schema(61002, reg=reg) == {
        "type": "string",
        "optional": True,
    }


def test_builtin_text_types_need_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert conv(4451, "{[1,3),[5,7)}") == "{[1,3),[5,7)}"  # int4multirange
        assert conv(5069, "12345") == "12345" and conv(2205, "pg_class") == "pg_class"
    assert not caplog.records


def _codec(*columns: tuple[str, int]) -> Any:
    """A codec of table ``public.t`` (metrics are per process: one test uses this table name)."""
    from walbridge.capture.catalog import ColumnInfo, RelationInfo
    from walbridge.capture.rows import RowCodec

    cols = tuple(ColumnInfo(name, oid, -1, False, i + 1) for i, (name, oid) in enumerate(columns))
    return RowCodec(RelationInfo(1, "public", "t", cols, ("id",), "d"), TypeRegistry(), DEFAULT)


def test_a_value_no_converter_expects_goes_out_as_text_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A row never stops capture: both row paths fall back per value, warn once per column, count."""
    codec = _codec(("id", 23), ("d", 1082), ("n", 23))
    with caplog.at_level(logging.WARNING):
        assert codec.row(["1", "not a date", "7"]) == {"id": 1, "d": "not a date", "n": 7}
        assert codec.row(["2", "1970-01-02", "8"]) == {"id": 2, "d": 1, "n": 8}
        assert codec.convert_text_row({"id": "3", "d": "garbage", "n": "9"}) == {
            "id": 3,
            "d": "garbage",
            "n": 9,
        }
        assert codec.row_text(["4", "1970-01-01", None]) == {"id": 4, "d": 0, "n": None}
    assert codec.fallbacks == {"d": 2}
    assert (
        CAPTURE.get_sample_value(
            "walbridge_capture_value_fallbacks_total", {"table": "public.t", "column": "d"}
        )
        == 2
    )
    assert len([r for r in caplog.records if "public.t.d" in r.getMessage()]) == 1
