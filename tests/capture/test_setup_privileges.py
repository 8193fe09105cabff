"""Setup and teardown by a capture role that owns nothing: one clear line each, nothing half done, and
the SQL an owner can run instead (``setup --print-sql``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import yaml

from helpers import run_cli


def test_non_owner_setup_and_teardown(pg_dsn: str, tmp_path: Path) -> None:
    role = f"cap_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY, total numeric)")
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'capture-pw'")
        conn.execute(f"GRANT SELECT ON public.orders TO {role}")
        dbname = conn.info.dbname
        host, port = conn.info.host, conn.info.port
    capture_dsn = f"postgresql://{role}@{host}:{port}/{dbname}"
    config = tmp_path / "walbridge.yaml"
    slot = f"s_{role}"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "dsn": "env:CAP_DSN",
                    "tables": ["public.orders"],
                    "slot": slot,
                    "replica_identity_full": True,
                },
                "metrics": {"enabled": False},
            }
        )
    )
    env = {"CAP_DSN": capture_dsn, "PGPASSWORD": "capture-pw"}

    code, out, err = run_cli("check", "--config", str(config), env=env)
    assert code == 2 and 'ALTER TABLE "public"."orders" REPLICA IDENTITY FULL' in err, (out, err)
    assert "walbridge setup --print-sql" in err and "Traceback" not in err
    code, out, err = run_cli("setup", "--config", str(config), env=env)
    assert code == 2 and "CREATE PUBLICATION" in err and "Traceback" not in err, (out, err)
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    with psycopg.connect(pg_dsn) as conn:  # nothing was done
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone() == (0,)

    code, owner_sql, err = run_cli("setup", "--config", str(config), "--print-sql", env=env)
    assert code == 0, err
    assert 'ALTER TABLE "public"."orders" REPLICA IDENTITY FULL;' in owner_sql
    assert (
        f'CREATE PUBLICATION "{slot}" FOR TABLE "public"."orders" WITH (publish_via_partition_root = true);'
        in owner_sql
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the owner runs it
        conn.execute(owner_sql.replace("<capture role>", role))
    code, out, err = run_cli("setup", "--config", str(config), env=env)
    assert code == 0, err
    assert f"replication slot {slot}" in out
    code, out, err = run_cli("check", "--config", str(config), env=env)
    assert code == 0, (out, err)

    code, out, err = run_cli("teardown", "--config", str(config), env=env)
    assert (code == 2 and f'DROP PUBLICATION "{slot}";' in err) or f"DROP PUBLICATION {slot};" in err, (
        out,
        err,
    )
    assert "nothing was dropped" in err and "Traceback" not in err
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone() == (1,)
        conn.execute(f"DROP PUBLICATION {slot}")
        conn.commit()
    code, out, err = run_cli("teardown", "--config", str(config), env=env)
    assert code == 0, err
    assert f"dropped replication slot {slot}" in out
