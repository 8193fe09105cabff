"""Publications and keys through the CLI: one publication per slot by default, a shared publication
never loses what another slot's capture uses, ``check`` names mismatches, wildcards matching nothing
and tables without a usable key, each as one clear line."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import yaml

from helpers import run_cli

TABLES_SQL = """
CREATE TABLE public.a (id int PRIMARY KEY, v text);
CREATE TABLE public.b (id int PRIMARY KEY, v text);
CREATE TABLE public.parted (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE public.parted_eu PARTITION OF public.parted FOR VALUES IN ('eu');
"""


def config(tmp_path: Path, name: str, tables: list[str], **source: object) -> Path:
    doc = {
        "source": {"dsn": "env:SRC_DSN", "tables": tables, "slot": name, **source},
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "metrics": {"enabled": False},
        "state_dir": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def published(dsn: str, publication: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid "
            "JOIN pg_class c ON c.oid = r.prrelid WHERE p.pubname = %s",
            (publication,),
        ).fetchall()
    return {row[0] for row in rows}


def one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_two_captures_keep_their_own_publications(tmp_path: Path, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TABLES_SQL)
    env = {**os.environ, "SRC_DSN": pg_dsn}
    first = config(tmp_path, "cap_one", ["public.a"])
    second = config(tmp_path, "cap_two", ["public.b", "public.parted*"])
    for cfg in (first, second):
        code, out, err = run_cli("setup", "--config", str(cfg), env=env)
        assert code == 0, err
    # Per slot by default; a partitioned table is published by its own name, never its partitions.
    assert published(pg_dsn, "cap_one") == {"a"}
    assert published(pg_dsn, "cap_two") == {"b", "parted"}
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = 'cap_two'").fetchone() == (
            True,
        )
    code, out, _ = run_cli("teardown", "--config", str(second), env=env)
    assert code == 0 and "dropped publication cap_two" in out
    code, out, err = run_cli("check", "--config", str(first), env=env)
    assert code == 0 and "ready" in out, out + err


def test_a_shared_publication_is_never_narrowed_or_dropped_under_another_slot(
    tmp_path: Path, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TABLES_SQL)
    env = {**os.environ, "SRC_DSN": pg_dsn}
    first = config(tmp_path, "one", ["public.a"], publication="shared")
    second = config(tmp_path, "two", ["public.b"], publication="shared")
    for cfg in (first, second):
        code, _out, err = run_cli("setup", "--config", str(cfg), env=env)
        assert code == 0, err
    assert published(pg_dsn, "shared") == {"a", "b"}  # the second setup added, removed nothing

    code, out, _ = run_cli("teardown", "--config", str(second), env=env)
    assert code == 0 and "kept publication shared: slot(s) one still use it" in out
    assert published(pg_dsn, "shared") == {"a", "b"}

    # Now alone on it, the first capture's check names the table it does not capture.
    code, _out, err = run_cli("check", "--config", str(first), env=env)
    one_line_error(code, err, "publication shared", "public.b", "walbridge setup")
    code, _out, err = run_cli("setup", "--config", str(first), env=env)
    assert code == 0, err
    assert published(pg_dsn, "shared") == {"a"}

    # A publication that lost a configured table (or vanished under an existing slot) is reported too.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER PUBLICATION shared DROP TABLE public.a")
        conn.execute("ALTER PUBLICATION shared ADD TABLE public.b")
    code, _out, err = run_cli("check", "--config", str(first), env=env)
    one_line_error(code, err, "publication shared", "missing public.a")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP PUBLICATION shared")
    code, _out, err = run_cli("check", "--config", str(first), env=env)
    one_line_error(code, err, "publication shared", "missing while replication slot one exists")
    code, out, _ = run_cli("teardown", "--config", str(first), env=env)
    assert code == 0


def test_wildcard_matching_nothing_is_one_line_everywhere(tmp_path: Path, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(TABLES_SQL)
    env = {**os.environ, "SRC_DSN": pg_dsn}
    cfg = config(tmp_path, "wild", ["public.a", "nosuch.*"])
    for command in ("check", "setup", "capture"):
        code, _out, err = run_cli(command, "--config", str(cfg), env=env)
        one_line_error(code, err, "nosuch.*", "no table")
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)


def test_check_says_what_a_table_without_a_usable_key_needs(tmp_path: Path, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.nokey (code text NOT NULL, v int)")
        conn.execute("CREATE TABLE public.silent (id int PRIMARY KEY)")
        conn.execute("ALTER TABLE public.silent REPLICA IDENTITY NOTHING")
    env = {**os.environ, "SRC_DSN": pg_dsn}
    cfg = config(tmp_path, "keys", ["public.nokey", "public.silent"])
    code, out, err = run_cli("check", "--config", str(cfg), env=env)
    one_line_error(
        code, err, "public.nokey", "no primary key", "REPLICA IDENTITY USING INDEX", "public.silent"
    )
    code, _out, err = run_cli("setup", "--config", str(cfg), env=env)
    one_line_error(code, err, "public.nokey")

    # A unique index as replica identity gives the key: check shows it and is satisfied.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE UNIQUE INDEX nokey_code ON public.nokey (code)")
        conn.execute("ALTER TABLE public.nokey REPLICA IDENTITY USING INDEX nokey_code")
        conn.execute("ALTER TABLE public.silent REPLICA IDENTITY DEFAULT")
    code, out, err = run_cli("check", "--config", str(cfg), env=env)
    assert code == 0, out + err
    assert "index (code)" in out
