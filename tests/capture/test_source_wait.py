"""``setup`` and ``capture`` wait a bounded time for a source that is not up yet, saying so once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from capture_support import write_config
from helpers import run_cli, wait_until
from walbridge.soak.tcp_proxy import TcpProxy

ITEMS = "CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL)"


def _proxied(dsn: str) -> tuple[TcpProxy, str]:
    with psycopg.connect(dsn) as conn:
        port = int(conn.info.port)
    proxy = TcpProxy(port)
    return proxy, make_conninfo(dsn, host="127.0.0.1", port=str(proxy.port))


def test_setup_waits_for_a_starting_source(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
    proxy, dsn = _proxied(pg_dsn)
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        topic_prefix,
        ["public.items"],
        tmp_path / "state",
        connect_wait_s=30,
    )
    proxy.cut()  # the server "starts" once setup said it waits for it
    log = tmp_path / "setup.log"
    with log.open("w") as out_file:
        setup = subprocess.Popen(
            [sys.executable, "-m", "walbridge", "setup", "--config", str(config)],
            stdout=out_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SRC_DSN": dsn},
        )
        try:
            wait_until(lambda: "retrying for up to" in log.read_text() or setup.poll() is not None, 60)
            proxy.restore()
            code = setup.wait(60)
        finally:
            if setup.poll() is None:
                setup.kill()
                setup.wait(10)
            proxy.close()
    out = err = log.read_text()
    assert code == 0, (out, err)
    waits = [line for line in err.splitlines() if "retrying for up to" in line]
    assert len(waits) == 1, err
    assert "source.connect_wait_s" in waits[0]
    assert "replication slot" in out


def test_setup_gives_up_after_connect_wait_s_with_one_line(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(1)  # nothing behind it
    dsn = f"postgresql://nobody@127.0.0.1:{proxy.port}/none"
    config = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        topic_prefix,
        ["public.items"],
        tmp_path / "state",
        connect_wait_s=2,
    )
    try:
        code, out, err = run_cli("setup", "--config", str(config), env={"SRC_DSN": dsn}, timeout=60)
    finally:
        proxy.close()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "retried for 2s, source.connect_wait_s" in errors[0], err
