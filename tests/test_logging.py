"""Logging a user sees: JSON lines on request, librdkafka's retries summarised, no secret ever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from walbridge.logs import redact

SECRET = "hunter2-log-secret"


def test_redact_masks_every_form_of_secret() -> None:
    for text in (
        f"postgresql://bob:{SECRET}@db:5432/x",
        f"host=db password={SECRET} dbname=x",
        f"postgresql://bob@db/x?sslmode=require&password={SECRET}",
        f'{{"client_secret": "{SECRET}"}}',
        f"Authorization: Bearer {SECRET}",
    ):
        cleaned = redact(text)
        assert SECRET not in cleaned and "***" in cleaned, cleaned
    assert redact("postgresql://bob@db/x") == "postgresql://bob@db/x"


def _run_sink(tmp_path: Path, bootstrap: str, dsn: str, marker: str, linger_s: float) -> list[str]:
    """``walbridge --log-format json sink postgres`` until ``marker`` appears plus ``linger_s``; its lines."""
    config = tmp_path / "walbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": bootstrap},
                "sinks": [{"type": "postgres", "dsn": "env:LOG_TEST_DSN", "topics": ["x.public.t"]}],
                "metrics": {"enabled": False},
            }
        )
    )
    command = ["--log-format", "json", "sink", "postgres", "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "walbridge.cli", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LOG_TEST_DSN": dsn},
    )
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert seen.wait(60), lines
        time.sleep(linger_s)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return lines


def test_unreachable_broker_is_a_few_json_lines(tmp_path: Path, pg_dsn: str) -> None:
    # librdkafka retries every ~50-100 ms, the runner every 10 s: without throttling, hundreds of lines.
    lines = _run_sink(tmp_path, "127.0.0.1:1", pg_dsn, "kafka.bootstrap_servers is 127.0.0.1:1", 12)
    records = [json.loads(line) for line in lines if line.strip()]
    kafka_lines = [r for r in records if r["logger"].startswith("walbridge.kafka.client")]
    assert 1 <= len(kafka_lines) <= 3, kafka_lines
    assert "check kafka.bootstrap_servers" in kafka_lines[0]["message"]
    runner = [r for r in records if r["logger"] == "walbridge.sinks.runner"]
    runner_warnings = [r for r in runner if r["level"] == "warning"]
    assert len(runner_warnings) == 1, runner_warnings
    assert all({"ts", "level", "logger", "stage", "message"} <= r.keys() for r in records)
    assert {r["stage"] for r in runner} == {"sink"} and kafka_lines[0]["stage"] == "kafka"


def test_no_secret_in_any_log_line(tmp_path: Path, kafka_bootstrap: str) -> None:
    dsn = f"postgresql://bob:{SECRET}@127.0.0.1:1/db"
    lines = _run_sink(tmp_path, kafka_bootstrap, dsn, "destination", 1)
    assert all(json.loads(line)["message"] for line in lines if line.strip())
    assert not any(SECRET in line for line in lines)
