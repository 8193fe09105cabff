"""Logical capture under bad input and faults: clear errors, no loss (issue 2)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from capture_support import RunningCapture, history_slot, make_settings, read_history, write_config
from helpers import consume_all, free_port, json_or_none, run_cli, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.dev.devstack import KafkaBroker, PostgresServer
from walbridge.soak.tcp_proxy import TcpProxy

ITEMS = "CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0)"


@pytest.fixture
def items_db(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
    return pg_dsn


def _cli_env(dsn: str) -> dict[str, str]:
    return {**os.environ, "SRC_DSN": dsn}


def _assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr, stderr
    text = " ".join(stderr.split())
    for needle in needles:
        assert needle in text, stderr


# ---------------------------------------------------------------------------------------- bad input


def test_wal_level_not_logical(tmp_path: Path, kafka_bootstrap: str) -> None:
    server = PostgresServer(tmp_path / "pg", fsync=False, settings={"wal_level": "replica"})
    server.start()
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute(ITEMS)
        cfg = write_config(tmp_path / "c.yaml", kafka_bootstrap, "walx", ["public.items"], tmp_path / "s")
        code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(server.dsn()), timeout=60)
        _assert_one_line_error(code, err, "wal_level", "logical")
    finally:
        server.stop()


def test_missing_table_and_wrong_password(tmp_path: Path, items_db: str, kafka_bootstrap: str) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", kafka_bootstrap, "walm", ["public.items", "public.nope"], tmp_path / "s"
    )
    code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(items_db), timeout=60)
    _assert_one_line_error(code, err, "public.nope")

    cfg = write_config(tmp_path / "c2.yaml", kafka_bootstrap, "walm", ["public.items"], tmp_path / "s")
    bad = items_db.replace("postgres:postgres@", "postgres:wrong@")
    code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(bad), timeout=60)
    _assert_one_line_error(code, err, "password authentication failed")


def test_table_without_primary_key(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.nokey (a int, b text)")
    cfg = write_config(tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.nokey"], tmp_path / "s")
    code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(pg_dsn), timeout=60)
    _assert_one_line_error(code, err, "public.nokey", "no primary key", "replica_identity_full")

    # With REPLICA IDENTITY FULL the table is captured and its events have a null key (documented).
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.nokey REPLICA IDENTITY FULL")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.nokey"])
    with RunningCapture(LogicalCapture(settings)):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.nokey VALUES (1, 'x')")
            conn.execute("UPDATE public.nokey SET b = 'y'")
        messages = consume_all(kafka_bootstrap, [f"{topic_prefix}.public.nokey"], min_count=2)
    assert [m.key() for m in messages] == [None, None]
    assert [json_or_none(m.value())["op"] for m in messages] == ["c", "u"]


def test_broker_unreachable_at_start(tmp_path: Path, items_db: str) -> None:
    cfg = write_config(
        tmp_path / "c.yaml", f"127.0.0.1:{free_port()}", "walb", ["public.items"], tmp_path / "s"
    )
    code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(items_db), timeout=90)
    _assert_one_line_error(code, err, "Kafka broker at 127.0.0.1:", "did not answer")


def test_slot_held_by_another_process(
    tmp_path: Path, items_db: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = make_settings(items_db, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
    with RunningCapture(LogicalCapture(settings)):
        cfg = write_config(
            tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.items"], tmp_path / "s"
        )
        code, _out, err = run_cli("capture", "--config", str(cfg), env=_cli_env(items_db), timeout=60)
    # The holder is named as walbridge knows it (host and pid of the capture), not the server's pid.
    _assert_one_line_error(code, err, f"in use by walbridge capture {socket.gethostname()}:{os.getpid()}")


# ---------------------------------------------------------------------------------------- faults


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[KafkaBroker, TcpProxy]]:
    """A dedicated broker reachable only through a proxy that the test can cut."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    broker = KafkaBroker(tmp_path / "kafka", port=broker_port, advertised_port=proxy.port)
    broker.start()
    try:
        yield broker, proxy
    finally:
        proxy.close()
        broker.stop()


def test_broker_unreachable_mid_stream(
    tmp_path: Path, items_db: str, proxied_broker: tuple[KafkaBroker, TcpProxy], topic_prefix: str
) -> None:
    _broker, proxy = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    settings = make_settings(items_db, bootstrap, topic_prefix, tmp_path, ["public.items"])
    with (
        RunningCapture(LogicalCapture(settings)) as running,
        psycopg.connect(items_db, autocommit=True) as conn,
    ):
        conn.execute("INSERT INTO public.items SELECT g, 'a' || g FROM generate_series(1, 500) g")
        first_end = int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
        wait_until(lambda: running.capture.confirmed >= first_end, timeout_s=30)
        time.sleep(1)  # let idle keepalives settle the position before the cut
        before_cut = running.capture.confirmed
        proxy.cut()
        conn.execute("INSERT INTO public.items SELECT g, 'b' || g FROM generate_series(501, 1500) g")
        conn.execute("UPDATE public.items SET qty = 1 WHERE id <= 100")
        time.sleep(4)
        assert running.capture.confirmed == before_cut, "confirmed past records Kafka never acknowledged"
        proxy.restore()
        end = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        wait_until(
            lambda: (
                running.capture.confirmed >= int(end) - 10_000_000 and running.capture.confirmed > before_cut
            ),
            timeout_s=90,
        )
        messages = consume_all(bootstrap, [f"{topic_prefix}.public.items"], min_count=1600, timeout_s=90)
    seen = {(json_or_none(m.key())["id"], json_or_none(m.value())["op"]) for m in messages}
    expected = {(i, "c") for i in range(1, 1501)} | {(i, "u") for i in range(1, 101)}
    assert expected <= seen


def _writer(dsn: str, rows: int, done: threading.Event, progress: list[int] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for start in range(1, rows + 1, 500):
            if progress is not None:
                progress[0] = start
            end = min(start + 499, rows)
            conn.execute(
                f"INSERT INTO public.items SELECT g, 'r' || g FROM generate_series({start}, {end}) g"
            )
            conn.execute(f"UPDATE public.items SET qty = qty + 1 WHERE id BETWEEN {start} AND {start + 49}")
            if start % 5_000 == 1:
                conn.execute(f"DELETE FROM public.items WHERE id = {start}")
    done.set()


def test_sigkill_during_write_load_loses_nothing(
    tmp_path: Path, items_db: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """SIGKILL capture during a 50,000-row write load; restart; every committed change is in Kafka."""
    history_slot(items_db, f"hist_{topic_prefix.replace('-', '_')}")
    cfg = write_config(tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.items"], tmp_path / "s")
    argv = [sys.executable, "-m", "walbridge.cli", "capture", "--config", str(cfg)]
    env = _cli_env(items_db)
    done = threading.Event()
    progress = [0]
    log = (tmp_path / "capture.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        time.sleep(3)
        threading.Thread(target=_writer, args=(items_db, 50_000, done, progress), daemon=True).start()
        wait_until(lambda: progress[0] > 20_000, timeout_s=60, interval_s=0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert not done.is_set(), "the load finished before the kill: make it longer"
        time.sleep(1)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        assert done.wait(120)
        history = read_history(items_db, f"hist_{topic_prefix.replace('-', '_')}", "id")
        messages = consume_all(
            kafka_bootstrap, [f"{topic_prefix}.public.items"], min_count=len(history), idle_s=3, timeout_s=120
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    events = set()
    for m in messages:
        value = json_or_none(m.value())
        if value is not None:
            events.add(("items", json_or_none(m.key())["id"], value["op"], value["source"]["lsn"]))
    assert len(history) > 50_000
    missing = set(history) - events
    assert not missing, f"{len(missing)} committed changes missing from Kafka, e.g. {sorted(missing)[:3]}"


def test_concurrent_writes_during_snapshot(
    tmp_path: Path, items_db: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(items_db, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items SELECT g, 'pre' || g FROM generate_series(1, 60000) g")
    stop_writing = threading.Event()

    def churn() -> None:
        with psycopg.connect(items_db, autocommit=True) as conn:
            n = 0
            while not stop_writing.is_set():
                n += 1
                conn.execute(
                    "UPDATE public.items SET qty = qty + 1, label = %s WHERE id = %s", (f"u{n}", n % 60000)
                )
                conn.execute("INSERT INTO public.items VALUES (%s, 'new', 0)", (100_000 + n,))
                if n % 3 == 0:
                    conn.execute("DELETE FROM public.items WHERE id = %s", (n * 7 % 60000 + 1,))

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    settings = make_settings(items_db, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
    try:
        with RunningCapture(LogicalCapture(settings)) as running:
            time.sleep(1.5)
            stop_writing.set()
            writer.join(10)
            with psycopg.connect(items_db, autocommit=True) as conn:
                end = int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
                source = {row[0]: row for row in conn.execute("SELECT id, label, qty FROM public.items")}
            wait_until(lambda: running.capture.confirmed >= end, timeout_s=90)
    finally:
        stop_writing.set()
    messages = consume_all(
        kafka_bootstrap, [f"{topic_prefix}.public.items"], min_count=len(source), idle_s=3, timeout_s=120
    )
    final: dict[int, tuple[int, str, int] | None] = {}
    for m in messages:  # per-key order is per partition order: key = PK → one partition
        key = json_or_none(m.key())["id"]
        value = json_or_none(m.value())
        if value is None or value["op"] == "d":
            final[key] = None
        else:
            after = value["after"]
            final[key] = (after["id"], after["label"], after["qty"])
    kafka_state = {k: v for k, v in final.items() if v is not None}
    assert kafka_state == {k: tuple(v) for k, v in source.items()}
