"""The one table reader (walbridge.pgcatalog) shared by capture, the PostgreSQL sink, setup --sink, verify."""

from __future__ import annotations

import psycopg

from walbridge import pgcatalog
from walbridge.capture.catalog import resolve_tables
from walbridge.sinks.pg_create import table_ddl
from walbridge.sinks.pg_types import read_table

SCHEMA_SQL = """
CREATE SCHEMA shop;
CREATE DOMAIN shop.price AS numeric(10, 2);
CREATE TABLE shop.items (
    id int PRIMARY KEY, code varchar(20) NOT NULL UNIQUE, amount shop.price, tags int[],
    at timestamptz(3), doubled int GENERATED ALWAYS AS (id * 2) STORED);
CREATE UNIQUE INDEX items_lower_code ON shop.items (lower(code));
"""


def test_one_description_for_capture_sink_and_setup(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        rel = pgcatalog.read_table(conn, "shop", "items")
        assert pgcatalog.read_table(conn, "shop", "missing") is None
        (captured,) = resolve_tables(conn, ["shop.items"])
        sink_view = read_table(conn, "shop", "items")
        ddl, user_types = table_ddl(captured, ("copy", "items"))
        ddl_text = ddl.as_string(conn)
    assert rel == captured
    assert rel is not None and rel.primary_key == ("id",) and rel.key_columns == ("id",)
    assert set(rel.unique_keys) == {("id",), ("code",)}  # the expression index matches no row by columns
    by_name = {c.name: c for c in rel.columns}
    assert (by_name["amount"].type_name, by_name["amount"].base_type) == ("price", "numeric")
    assert (by_name["tags"].element, by_name["code"].type_text) == ("int4", "character varying(20)")
    assert by_name["doubled"].generated and by_name["doubled"].expression == "(id * 2)"
    assert sink_view is not None and sink_view.generated == {"doubled"} and "doubled" not in sink_view.columns
    assert sink_view.columns["at"].precision == 3 and sink_view.key == ("id",)
    assert frozenset({"code"}) in sink_view.unique_keys
    assert user_types == [("shop", "price")]
    assert "GENERATED ALWAYS AS ((id * 2)) STORED" in ddl_text
    assert "character varying(20) NOT NULL" in ddl_text
