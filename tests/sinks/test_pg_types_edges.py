"""The PostgreSQL sink writes back values at the edge of their type, on both of its paths: Python
converters (:func:`converter`) and the SQL of the JSON fast path (:func:`sql_expr`), each checked against
the text PostgreSQL gives for the source value. Inputs are the encodings capture emits (see
tests/capture/test_values.py, which pins them to Debezium's)."""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from walbridge.sinks.pg_types import converter, read_table, sql_expr

# (destination type, encoded value as it arrives in the event, the source value's text)
CASES: tuple[tuple[str, Any, str], ...] = (
    ("date", -2_147_472_692, "infinity"),
    ("date", -2_147_472_691, "-infinity"),
    ("date", -719_528, "0001-01-01 BC"),
    ("date", -2_440_550, "4713-01-01 BC"),
    ("date", 2_145_042_905, "5874897-12-31"),
    ("date", 2_932_897, "10000-01-01"),
    ("date", "infinity", "infinity"),
    ("timestamp", 9_223_372_036_825_200_000, "infinity"),
    ("timestamp", -9_223_372_036_832_400_000, "-infinity"),
    ("timestamp", -62_167_219_200_000_000, "0001-01-01 00:00:00 BC"),
    ("timestamp", -210_866_803_200_000_000 + 1, "4714-11-24 00:00:00.000001 BC"),
    ("timestamp", 9_224_318_015_999_999_999, "294276-12-31 23:59:59.999999"),
    ("timestamp", 253_402_300_800_000_001, "10000-01-01 00:00:00.000001"),
    ("timestamp(3)", -63_517_780_799_877, "0044-03-15 12:00:00.123 BC"),
    ("timestamp(3)", 9_223_372_036_825_200, "infinity"),
    ("timestamp(3)", -9_223_372_036_832_400, "-infinity"),
    ("timestamptz", "infinity", "infinity"),
    ("timestamptz", "-infinity", "-infinity"),
    ("timestamptz", "0000-12-31T23:59:59.999999Z", "0001-12-31 23:59:59.999999+00 BC"),
    ("timestamptz", "+294276-12-31T23:59:59.999999Z", "294276-12-31 23:59:59.999999+00"),
    ("timestamptz(3)", "-4712-01-01T00:00:00.000Z", "4713-01-01 00:00:00+00 BC"),
    ("timestamptz(3)", "+10000-01-01T00:00:00.000Z", "10000-01-01 00:00:00+00"),
    ("time", 86_400_000_000, "24:00:00"),
    ("time(3)", 86_399_999_000, "23:59:59.999"),
    ("timetz", "24:00:00Z", "24:00:00+00"),
    ("numeric", "NAN", "NaN"),
    ("numeric", "POSITIVE_INFINITY", "Infinity"),
    ("numeric", "NEGATIVE_INFINITY", "-Infinity"),
    ("numeric", "-Infinity", "-Infinity"),  # double mode
    ("numeric(10,2)", "NAN", "NaN"),
    ("numeric", "123456789012345678901234567890.123456789012345678901234567890",
     "123456789012345678901234567890.123456789012345678901234567890"),
    ("float8", "NaN", "NaN"),
    ("float8", -0.0, "-0"),
    ("float4", "-Infinity", "-Infinity"),
    ("float8", 5e-324, "5e-324"),
    ("interval", 2**63 - 1, "106751991 days 04:00:54.775807"),
    ("interval", -1, "-1 days +23:59:59.999999"),
    ("interval", "P178000000Y0M2147483647DT2562047788H0M54.775807S",
     "178000000 years 2147483647 days 2562047788:00:54.775807"),
    ("interval", "P-178000000Y0M-2147483648DT-2562047788H0M-54.775808S",
     "-178000000 years -2147483648 days -2562047788:00:54.775808"),
    ("money", "-92233720368547758.08", "-$92,233,720,368,547,758.08"),
    ("money", "92233720368547758.07", "$92,233,720,368,547,758.07"),
    ("hstore", '{"a":"1","b":null,"q\\"x":"back\\\\slash"}', '"a"=>"1", "b"=>NULL, "q\\"x"=>"back\\\\slash"'),
    ("char(5)", "abcde", "abcde"),  # the SQL path once cast to format_type's "character": char(1)
    ("bit(8)", "BQ==", "00000101"),
    ("bit(1)", True, "1"),
    ("varbit", "BQ==", "101"),
    ("date[]", [-2_147_472_692, 0, -719_528], "{infinity,1970-01-01,\"0001-01-01 BC\"}"),
    ("timestamptz[]", ["infinity", "2024-01-01T00:00:00.000000Z"], '{infinity,"2024-01-01 00:00:00+00"}'),
    ("numeric[]", ["NAN", "1.5"], "{NaN,1.5}"),
    ("money[]", ["1.50", "-2.00"], '{$1.50,-$2.00}'),
)  # fmt: skip


@pytest.fixture
def table(pg_dsn: str) -> tuple[str, Any]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
        columns = ", ".join(f"c{i} {typ}" for i, (typ, _, _) in enumerate(CASES))
        conn.execute(f"CREATE TABLE public.edges (id int PRIMARY KEY, {columns})")
        info = read_table(conn, "public", "edges")
    assert info is not None
    return pg_dsn, info


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{t}:{v!r}"[:60] for t, v, _ in CASES])
def test_python_and_sql_paths_write_the_source_value(table: tuple[str, Any], index: int) -> None:
    dsn, info = table
    typ, encoded, expected = CASES[index]
    column = info.columns[f"c{index}"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lc_monetary = 'C'")
        name = sql.Identifier(column.name)
        conn.execute(
            sql.SQL("INSERT INTO public.edges (id, {}) VALUES (1, %s)").format(name),
            (converter(column)(encoded),),
        )
        got = conn.execute(sql.SQL("SELECT {}::text FROM public.edges").format(name)).fetchone()
        assert got == (expected,), "Python path"
        expr = sql_expr(column, sql.Identifier("x", "v"))
        if expr is None:
            return  # this type always takes the Python path
        text = encoded if isinstance(encoded, str) else orjson.dumps(encoded).decode()
        query = sql.SQL("SELECT (CAST({} AS {}))::text FROM (SELECT %s::text AS v) AS x").format(
            expr, sql.SQL(typ)
        )
        if isinstance(encoded, int) and not -(2**63) <= encoded < 2**63:
            # beyond 64 bits the SQL refuses the value: the sink converts that batch in Python instead
            with pytest.raises(psycopg.errors.NumericValueOutOfRange):
                conn.execute(query, (text,))
            return
        assert conn.execute(query, (text,)).fetchone() == (expected,), "SQL path"
