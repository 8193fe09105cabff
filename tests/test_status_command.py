"""``walbridge status``: one screen for the pipeline, first with nothing running, then with capture and a
sink running as the processes a user starts (their /status found on each role's default port)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from helpers import run_cli, wait_until


def _rows(dsn: str) -> list[tuple[int, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, v FROM public.t ORDER BY id").fetchall()


def test_status_of_a_running_pipeline(
    pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    for dsn in (pg_dsn, dest_dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.t SELECT g, 'v' || g FROM generate_series(1, 30) g")
    slot = topic_prefix.replace("-", "_")
    topic = f"{topic_prefix}.public.t"
    config = tmp_path / "walbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"dsn": "env:SRC_DSN", "tables": ["public.t"], "slot": slot},
                "events": {"topic_prefix": topic_prefix},
                "kafka": {"bootstrap_servers": kafka_bootstrap, "partitions": 3, "session_timeout_ms": 6000},
                "sinks": [{"type": "postgres", "dsn": "env:DEST_DSN", "topics": [topic], "group_id": slot}],
                "state_dir": str(tmp_path / "state"),
            }
        )
    )
    env = {"SRC_DSN": pg_dsn, "DEST_DSN": dest_dsn}
    code, out, err = run_cli("status", "--config", str(config), "--json", env=env)
    assert code == 1, err
    report = json.loads(out)
    assert f"replication slot {slot} does not exist" in report["warnings"]
    assert [p["running"] for p in report["processes"]] == [False, False]

    assert run_cli("setup", "--config", str(config), env=env)[0] == 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "walbridge.cli", *command, "--config", str(config)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for command in (["capture"], ["sink", "postgres"])
    ]
    try:
        wait_until(lambda: len(_rows(dest_dsn)) == 30, 90)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.t SET v = 'changed' WHERE id <= 5")
        wait_until(lambda: _rows(dest_dsn) == _rows(pg_dsn), 60)

        def settled() -> dict | None:
            code, out, _ = run_cli("status", "--config", str(config), "--json", env=env)
            doc = json.loads(out)
            return doc if code == 0 and doc["sinks"][0].get("lag") == 0 else None

        report = wait_until(settled, 60, interval_s=1.0)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
    assert report["source"]["slot"] == slot and report["source"]["active"] is True
    assert report["source"]["retained_wal_bytes"] >= 0 and report["source"]["lag_bytes"] >= 0
    [sink] = report["sinks"]
    assert sink["group"] == slot and sorted(p["partition"] for p in sink["partitions"]) == [0, 1, 2]
    assert sum(p["committed"] or 0 for p in sink["partitions"]) >= 35
    assert [(p["process"], p["running"]) for p in report["processes"]] == [
        ("capture", True),
        ("postgres", True),
    ]
    assert report["processes"][0]["status"]["mode"] == "logical"
    assert report["dlq"] == {f"{topic}.dlq": 0}  # only this pipeline's DLQ, not every one on the broker
    code, out, _ = run_cli("status", "--config", str(config), env={**env, "COLUMNS": "200"})
    assert "capture source" in out and f"group {slot}" in out and "processes" in out
