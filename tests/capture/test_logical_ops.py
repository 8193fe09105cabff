"""Operating logical capture: setup/teardown, idle-slot advance (heartbeats), the metrics endpoint."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import httpx
import psycopg

from capture_support import RunningCapture, make_settings, write_config
from helpers import consume_all, free_port, json_or_none, run_cli, wait_until
from walbridge.capture.logical import LogicalCapture
from walbridge.cli_capture import run_capture
from walbridge.lsn import Lsn

ITEMS = "CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL)"


def slot_row(dsn: str, slot: str) -> tuple | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()


def test_setup_capture_teardown(tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
        conn.execute("INSERT INTO public.items VALUES (1, 'before setup')")
    env = {**os.environ, "SRC_DSN": pg_dsn}
    cfg = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        topic_prefix,
        ["public.items"],
        tmp_path / "s",
        replica_identity_full=True,
    )
    slot = topic_prefix.replace("-", "_")
    code, out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0, err
    assert "publication" in out and "replication slot" in out and "REPLICA IDENTITY FULL" in out
    code, out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0 and "nothing to do" in out, out + err
    assert slot_row(pg_dsn, slot) is not None
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items VALUES (2, 'between setup and capture')")

    # capture after setup: the snapshot is still owed and is taken consistently (slot recreated with it)
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
    settings.state_dir = str(tmp_path / "s")
    with RunningCapture(LogicalCapture(settings)):
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET label = 'streamed' WHERE id = 1")
        messages = consume_all(kafka_bootstrap, [f"{topic_prefix}.public.items"], min_count=3)
    ops = sorted((json_or_none(m.key())["id"], json_or_none(m.value())["op"]) for m in messages)
    assert ops == [(1, "r"), (1, "u"), (2, "r")]
    update = next(json_or_none(m.value()) for m in messages if json_or_none(m.value())["op"] == "u")
    assert update["before"]["label"] == "before setup"  # REPLICA IDENTITY FULL was set by setup

    code, out, err = run_cli("teardown", "--config", str(cfg), env=env)
    assert code == 0, err
    assert "dropped replication slot" in out and "dropped publication" in out
    assert slot_row(pg_dsn, slot) is None


def test_idle_and_filtered_database_advances_the_slot(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
        conn.execute("CREATE TABLE public.noise (id serial PRIMARY KEY, payload text)")
    settings = make_settings(
        pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"], heartbeat_ms=500
    )
    slot = topic_prefix.replace("-", "_")
    with RunningCapture(LogicalCapture(settings)), psycopg.connect(pg_dsn, autocommit=True) as conn:
        for _ in range(5):
            conn.execute(
                "INSERT INTO public.noise (payload) SELECT repeat('x', 500) FROM generate_series(1, 2000)"
            )
        target = Lsn.parse(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])

        def advanced() -> bool:
            row = slot_row(pg_dsn, slot)
            return row is not None and Lsn.parse(row[0]) >= target

        wait_until(advanced, timeout_s=30)


def test_metrics_health_and_status(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.metered (id bigint PRIMARY KEY, label text)")
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.metered"])
    port = free_port()
    settings.metrics.enabled = True
    settings.metrics.port = port
    stop = threading.Event()
    thread = threading.Thread(target=run_capture, args=(settings, stop), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/status").json()["streaming"], timeout_s=60, interval_s=0.3)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.metered VALUES (1, 'a'), (2, 'b')")
        wait_until(
            lambda: (
                'walbridge_capture_events_total{op="c",table="public.metered"} 2.0'
                in httpx.get(f"{base}/metrics").text
            ),
            timeout_s=30,
        )
        metrics_text = httpx.get(f"{base}/metrics").text
        for name in (
            "walbridge_capture_confirmed_lsn",
            "walbridge_capture_ms_behind_source",
            "walbridge_capture_producer_queue_depth",
            "walbridge_capture_slot_retained_wal_bytes",
        ):
            assert name in metrics_text
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert httpx.get(f"{base}/readyz").text == "ready\n"
        status = httpx.get(f"{base}/status").json()
        assert status["mode"] == "logical" and status["confirmed"] > 0
    finally:
        stop.set()
        thread.join(30)
