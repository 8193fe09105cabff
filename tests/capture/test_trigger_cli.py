"""Trigger mode through the command line: setup, capture, teardown (issue 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg

from capture_support import write_config
from helpers import consume_all, json_or_none, run_cli
from walbridge.dev.samples import EMPLOYEES_SCHEMA


def test_setup_capture_teardown_via_cli(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(EMPLOYEES_SCHEMA)
        conn.execute("INSERT INTO employees VALUES (100, 'Test', 'User', '1990-01-01', 'Test City', 50000)")
    env = {**os.environ, "SRC_DSN": pg_dsn}
    cfg = write_config(
        tmp_path / "c.yaml",
        kafka_bootstrap,
        topic_prefix,
        ["public.employees"],
        tmp_path / "s",
        mode="trigger",
        poll_interval_ms=100,
    )
    code, out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0, err
    code, out, err = run_cli("check", "--config", str(cfg), env=env)
    assert code == 0 and "ready for trigger capture" in out, out + err
    log = (tmp_path / "capture.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "walbridge", "capture", "--config", str(cfg)], env=env, stdout=log, stderr=log
    )
    try:
        # the snapshot row first: changes made before it would be folded into the snapshot
        consume_all(
            kafka_bootstrap, [f"{topic_prefix}.public.employees"], min_count=1, idle_s=0.1, timeout_s=60
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO employees VALUES (101, 'Alice', 'Smith', '1985-05-15', 'New York', 75000)"
            )
            conn.execute("UPDATE employees SET salary = 80000, city = 'Boston' WHERE emp_id = 101")
            conn.execute("DELETE FROM employees WHERE emp_id = 101")
        messages = consume_all(
            kafka_bootstrap, [f"{topic_prefix}.public.employees"], min_count=5, timeout_s=60
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)  # a graceful stop waits up to 30 s for Kafka to acknowledge
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        log.close()
        assert code == 0, (tmp_path / "capture.log").read_text()
    # order is guaranteed per key (one partition per key), not across keys
    by_key: dict[int, list[dict | None]] = {}
    for m in messages:
        by_key.setdefault(json_or_none(m.key())["emp_id"], []).append(json_or_none(m.value()))
    ops = {key: [v["op"] if v else None for v in values] for key, values in by_key.items()}
    assert ops == {100: ["r"], 101: ["c", "u", "d", None]}
    snapshot, (created, updated, _deleted, _tombstone) = by_key[100][0], by_key[101]
    assert snapshot["source"]["connector"] == "postgresql-trigger"
    assert created["after"]["dob"] == 5613  # days since 1970-01-01, as in logical mode
    assert updated["before"]["salary"] == 75000 and updated["after"]["city"] == "Boston"
    code, out, err = run_cli("teardown", "--config", str(cfg), env=env)
    assert code == 0, err
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()[0] == 0
