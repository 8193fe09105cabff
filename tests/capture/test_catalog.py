"""Catalog lookups against the suite's real PostgreSQL (``pg_dsn`` fixture from tests/conftest.py)."""

from __future__ import annotations

import psycopg

from walbridge.capture.catalog import check_logical_capture, load_type_registry, resolve_tables
from walbridge.capture.values import ValueOptions, column_schema, converter_for

SCHEMA_SQL = """
CREATE SCHEMA inventory;
CREATE TYPE inventory.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN inventory.price AS numeric(10, 2);
CREATE TABLE inventory.orders (
    region text, id int, amount inventory.price NOT NULL, moods inventory.mood[],
    PRIMARY KEY (region, id));
CREATE TABLE inventory.orders_archive (id int);
CREATE TABLE inventory.notes (body text);
ALTER TABLE inventory.notes REPLICA IDENTITY FULL;
"""


def test_resolve_tables_with_wildcards_keys_and_identity(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        found = resolve_tables(conn, ["inventory.*"], ["inventory.*_archive"])
    assert [rel.qualified_name for rel in found] == ["inventory.notes", "inventory.orders"]
    notes, orders = found
    assert notes.replica_identity == "f" and notes.key_columns == ()
    assert orders.key_columns == ("region", "id")
    assert [(c.name, c.attnum, c.not_null) for c in orders.columns] == [
        ("region", 1, True), ("id", 2, True), ("amount", 3, True), ("moods", 4, False),
    ]  # fmt: skip


def test_type_registry_resolves_enums_domains_and_their_arrays(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        registry = load_type_registry(conn)
        (orders,) = resolve_tables(conn, ["inventory.orders"])
    by_name = {c.name: c for c in orders.columns}
    opts = ValueOptions(decimal_handling_mode="precise")
    amount, moods = by_name["amount"], by_name["moods"]
    assert converter_for(amount.type_oid, amount.typmod, registry, opts)("199.99") == "Th8="
    assert converter_for(moods.type_oid, moods.typmod, registry, opts)("{ok,NULL}") == ["ok", None]
    moods_schema = column_schema("moods", moods.type_oid, moods.typmod, True, registry, opts).connect
    assert moods_schema["items"]["parameters"] == {"allowed": "sad,ok,happy"}


def test_check_logical_capture_reports_missing_privileges(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        tables = resolve_tables(conn, ["inventory.orders"])
        as_superuser = {p.setting for p in check_logical_capture(conn, tables)}
        assert "replication privilege" not in as_superuser
        assert not any(s.startswith("SELECT on") for s in as_superuser)
        conn.execute("DROP ROLE IF EXISTS wb_plain; CREATE ROLE wb_plain LOGIN")
        conn.execute("SET ROLE wb_plain")
        try:
            problems = check_logical_capture(conn, tables)
        finally:
            conn.execute("RESET ROLE")
            conn.execute("DROP ROLE wb_plain")
    settings = {p.setting for p in problems}
    assert {"replication privilege", "SELECT on inventory.orders"} <= settings
    assert all(str(p) for p in problems)
