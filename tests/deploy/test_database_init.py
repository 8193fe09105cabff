"""The compose stack's database init scripts on a real PostgreSQL, and the sink writing as its own role.

deploy/postgres/{source-init.sh,source-schema.sql} make the source and destination-{init.sh,init.sql} the
destination, run by psql as the postgres image runs them; then capture → Kafka (3 partitions) → the
PostgreSQL sink connected as ``walbridge_sink`` (not a superuser) applies inserts, updates, deletes and a
TRUNCATE, and the destination equals the source row for row.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from deploy_tools import DEPLOY
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pipeline_support import capture_settings, running_capture, running_sink, wait_same_rows
from walbridge.dev.pgbinaries import find_pg_binaries

TABLES = ["inventory.customers", "inventory.orders"]
SINK_PASSWORD = "sink-secret-1"


def _run_init(script: Path, dsn: str, **env: str) -> None:
    """``script`` as the image's entry point runs it: psql on PATH, POSTGRES_USER / POSTGRES_DB set."""
    params = conninfo_to_dict(dsn)
    psql = Path(find_pg_binaries().program("psql"))
    environ = {
        **os.environ,
        "PATH": f"{psql.parent}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": str(params.get("host", "")),
        "PGPORT": str(params.get("port", "")),
        "PGPASSWORD": str(params.get("password", "")),
        "POSTGRES_USER": str(params["user"]),
        "POSTGRES_DB": str(params["dbname"]),
        **env,
    }
    if script.suffix == ".sh":
        argv = ["bash", str(script)]
    else:
        argv = [str(psql), "-v", "ON_ERROR_STOP=1", "-q", "-U", environ["POSTGRES_USER"], "-d",
                environ["POSTGRES_DB"], "-f", str(script)]
    out = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{script.name}: {out.stderr}"


@pytest.fixture
def sink_role_dsn(dest_dsn: str) -> Iterator[str]:
    """The destination made by its init scripts; the DSN of the sink's role. The role is dropped after."""
    _run_init(DEPLOY / "postgres" / "destination-init.sh", dest_dsn, WALBRIDGE_SINK_PASSWORD=SINK_PASSWORD)
    _run_init(DEPLOY / "postgres" / "destination-init.sql", dest_dsn)
    try:
        yield make_conninfo(dest_dsn, user="walbridge_sink", password=SINK_PASSWORD)
    finally:
        with psycopg.connect(dest_dsn, autocommit=True) as conn:
            conn.execute("DROP OWNED BY walbridge_sink")
            conn.execute("DROP ROLE walbridge_sink")


def test_the_sink_applies_changes_as_its_own_role(
    tmp_path: Path, pg_dsn: str, dest_dsn: str, sink_role_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    _run_init(DEPLOY / "postgres" / "source-init.sh", pg_dsn, WALBRIDGE_CAPTURE_PASSWORD="capture-secret-1")
    _run_init(DEPLOY / "postgres" / "source-schema.sql", pg_dsn)
    with psycopg.connect(sink_role_dsn) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert superuser == (False,)

    settings = capture_settings("logical", pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, TABLES)
    topics = [f"{topic_prefix}.{table}" for table in TABLES]
    with running_sink(kafka_bootstrap, sink_role_dsn, topics, f"{topic_prefix}-g"), running_capture(settings):
        wait_same_rows(pg_dsn, dest_dsn, TABLES)  # the snapshot of the sample rows
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO inventory.customers (customer_code, first_name, last_name, email) "
                "SELECT 'C' || g, 'F' || g, 'L' || g, 'e' || g || '@example.com' "
                "FROM generate_series(10, 40) g"
            )
            conn.execute(
                "INSERT INTO inventory.orders (order_number, customer_id, total_amount) "
                "SELECT 'O-' || g, 1, g * 1.5 FROM generate_series(1, 30) g"
            )
            conn.execute("UPDATE inventory.customers SET status = 'vip' WHERE id % 3 = 0")
            conn.execute("DELETE FROM inventory.customers WHERE id % 7 = 0 AND id > 2")
        wait_same_rows(pg_dsn, dest_dsn, TABLES)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE inventory.orders")
            conn.execute(
                "INSERT INTO inventory.orders (order_number, customer_id, total_amount) "
                "SELECT 'P-' || g, 2, g FROM generate_series(1, 5) g"
            )
        wait_same_rows(pg_dsn, dest_dsn, TABLES)

    with psycopg.connect(dest_dsn) as conn:
        owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'walbridge'")
        assert owner.fetchone() == ("walbridge_sink",), "the sink made its own schema with the role's rights"
