"""A standby as the source: `check`, `setup` and `capture` refuse it with one clear line (no loop on
``pg_current_wal_lsn()``, which fails in recovery)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from helpers import run_cli, wait_until
from walbridge.dev.devstack import PostgresServer

pytestmark = pytest.mark.timeout(180)


class _Standby(PostgresServer):
    def _apply_password(self) -> None:
        """Read-only in recovery: the password comes with the base backup."""


@pytest.fixture(scope="module")
def standby_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("replication")
    primary = PostgresServer(base / "primary", fsync=False)
    primary.start()
    standby = _Standby(base / "standby", fsync=False)
    try:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE public.items (id int PRIMARY KEY, label text)")
        standby._prepare_dirs()
        primary._run_tool(
            [
                primary.binaries.program("pg_basebackup"),
                "-D",
                str(standby.data_dir),
                "-R",
                "-X",
                "stream",
                "-d",
                primary.socket_dsn(),
            ]
        )
        standby.start()
        dsn = standby.dsn()
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        wait_until(lambda: _has_items(dsn), timeout_s=30)
        yield dsn
    finally:
        standby.stop("immediate")
        primary.stop("immediate")


def _has_items(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT to_regclass('public.items') IS NOT NULL").fetchone() == (True,)


def test_a_standby_is_refused_with_one_line(tmp_path: Path, standby_dsn: str) -> None:
    doc = {
        "source": {"dsn": "env:SRC_DSN", "tables": ["public.items"], "slot": "on_standby"},
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "metrics": {"enabled": False},
        "state_dir": str(tmp_path / "state"),
    }
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "SRC_DSN": standby_dsn}
    for command in ("check", "setup", "capture"):
        code, _out, err = run_cli(command, "--config", str(cfg), env=env, timeout=60)
        assert code != 0, command
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "standby (in recovery)" in lines[0] and "primary" in lines[0], lines[0]
