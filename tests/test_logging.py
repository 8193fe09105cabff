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


def _read_lines(proc: subprocess.Popen[str], lines: list[str], done: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "kafka.bootstrap_servers is 127.0.0.1:1" in line:
            done.set()
    done.set()


def test_unreachable_broker_is_a_few_json_lines_without_secrets(tmp_path: Path) -> None:
    config = tmp_path / "walbridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},
                "sinks": [{"type": "postgres", "dsn": "env:LOG_TEST_DSN", "topics": ["x.public.t"]}],
                "metrics": {"enabled": False},
            }
        )
    )
    env = {**os.environ, "LOG_TEST_DSN": f"postgresql://bob:{SECRET}@127.0.0.1:1/db"}
    command = ["--log-format", "json", "sink", "postgres", "--config", str(config)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "walbridge.cli", *command],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    done = threading.Event()
    threading.Thread(target=_read_lines, args=(proc, lines, done), daemon=True).start()
    try:
        assert done.wait(60), lines
        time.sleep(12)  # librdkafka retries every ~50-100 ms, the runner every 10 s: hundreds of raw lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    records = [json.loads(line) for line in lines if line.strip()]
    kafka_lines = [r for r in records if r["logger"].startswith("walbridge.kafka.client")]
    assert 1 <= len(kafka_lines) <= 3, kafka_lines
    assert "check kafka.bootstrap_servers" in kafka_lines[0]["message"]
    runner_warnings = [r for r in records if r["logger"] == "walbridge.sinks.runner"]
    assert len(runner_warnings) == 1, runner_warnings
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert not any(SECRET in line for line in lines)
