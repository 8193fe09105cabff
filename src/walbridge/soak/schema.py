"""The soak's tables: the seed's e-commerce schema and employees, plus tables of awkward types.

Contract: :func:`create_source` (re)creates every table of :data:`TABLES` in the source (dropping what a
previous soak left). The destination's tables are made by ``walbridge setup --sink`` as a user's would be
(columns and keys only: a PK change travels as a delete and an insert in two partitions, so secondary unique
constraints there could refuse rows); :func:`stamp_destination` then adds a ``soak_applied`` column that a
trigger stamps with the time the row was written there. Every
table carries ``soak_ts`` (set by the load to the writing statement's clock time) and ``soak_rev`` (a
value unique to each write), so latency is ``soak_applied - soak_ts`` and an event names the write it
carries. The soak is for scratch databases: it drops and recreates these tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from walbridge.dev.samples import ECOMMERCE_SCHEMA, EMPLOYEES_SCHEMA

__all__ = [
    "APPLIED_COLUMN",
    "SALESFORCE_TABLE",
    "TABLES",
    "TableSpec",
    "create_source",
    "drop_destination",
    "stamp_destination",
    "table_names",
]

APPLIED_COLUMN = "soak_applied"
SALESFORCE_TABLE = "inventory.customers"
"""The one table the Salesforce sink publishes: the handler emulation maps ``customers`` to Accounts."""


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: tuple[str, ...]


TABLES: tuple[TableSpec, ...] = (
    TableSpec("inventory.customers", ("id",)),
    TableSpec("inventory.orders", ("id",)),
    TableSpec("public.employees", ("emp_id",)),
    TableSpec("soak.documents", ("id",)),
    TableSpec("soak.typed", ("id",)),
    TableSpec("soak.events_part", ("id", "region")),
)

_SOAK_COLUMNS = "ADD COLUMN IF NOT EXISTS soak_ts timestamptz, ADD COLUMN IF NOT EXISTS soak_rev bigint"

_AWKWARD = """
CREATE SCHEMA IF NOT EXISTS soak;
CREATE TABLE soak.documents (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text,                    -- large: TOASTed out of line, often left unchanged by updates
    version int NOT NULL DEFAULT 1,
    soak_ts timestamptz, soak_rev bigint
);
-- FULL: a key change of a row whose body is unchanged carries the body only in the old row image (with
-- DEFAULT, the sink dead-letters that create: it cannot invent the value); capture fills it from there.
ALTER TABLE soak.documents REPLICA IDENTITY FULL;
CREATE TABLE soak.typed (
    id bigint PRIMARY KEY,
    tags text[],
    scores integer[],
    flags boolean[],
    doc jsonb,
    amount numeric(20,6),
    ratio numeric,
    big numeric(38,10),
    soak_ts timestamptz, soak_rev bigint
);
CREATE TABLE soak.events_part (
    id bigint NOT NULL,
    region text NOT NULL,
    payload jsonb,
    qty integer,
    soak_ts timestamptz, soak_rev bigint,
    PRIMARY KEY (id, region)
) PARTITION BY LIST (region);
CREATE TABLE soak.events_part_eu PARTITION OF soak.events_part FOR VALUES IN ('eu');
CREATE TABLE soak.events_part_us PARTITION OF soak.events_part FOR VALUES IN ('us');
CREATE TABLE soak.events_part_other PARTITION OF soak.events_part DEFAULT;
"""

_DROP = """
DROP TABLE IF EXISTS inventory.orders, inventory.customers, public.employees CASCADE;
DROP SCHEMA IF EXISTS soak CASCADE;
"""

_STAMP_FUNCTION = f"""
CREATE OR REPLACE FUNCTION soak.stamp_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.{APPLIED_COLUMN} := clock_timestamp();
    RETURN NEW;
END $$;
"""


def table_names() -> list[str]:
    return [t.name for t in TABLES]


def _employees() -> str:
    return EMPLOYEES_SCHEMA.replace("employees", "public.employees", 1)


def create_source(dsn: str) -> None:
    """Drop what an earlier soak left, create the tables, add the soak columns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DROP)
        conn.execute(ECOMMERCE_SCHEMA + _employees() + _AWKWARD)
        for table in ("inventory.customers", "inventory.orders", "public.employees"):
            conn.execute(f"ALTER TABLE {table} {_SOAK_COLUMNS}")


def drop_destination(dsn: str) -> None:
    """Remove what an earlier soak left in the destination (``walbridge setup --sink`` creates the tables)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_DROP)


def stamp_destination(dsn: str) -> None:
    """Give each destination table the column and trigger that record when a row was written there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_STAMP_FUNCTION)
        for spec in TABLES:
            conn.execute(f"ALTER TABLE {spec.name} ADD COLUMN IF NOT EXISTS {APPLIED_COLUMN} timestamptz")
            conn.execute(
                f"CREATE TRIGGER soak_stamp BEFORE INSERT OR UPDATE ON {spec.name} "
                "FOR EACH ROW EXECUTE FUNCTION soak.stamp_applied()"
            )
