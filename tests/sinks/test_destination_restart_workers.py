"""Two sink workers whose shared destination restarts (found by the soak, issue 12).

Both workers lost their connections at once and both left the consumer group; on the test broker a
member leaving while the group rebalances stays the group's leader, so the group never assigned
partitions again. Members now wait for the destination paused in the group (``LEAVE_AFTER_S``) before
leaving: a restart costs no rebalance.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml
from pg_support import EMPLOYEES_DDL, Pipeline, change, employee, rows

from helpers import wait_until
from walbridge.dev.devstack import PostgresServer


def test_two_workers_resume_after_their_destination_restarts(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    server = PostgresServer(tmp_path / "dest", fsync=False)
    server.start()
    process: subprocess.Popen[bytes] | None = None
    log = tmp_path / "sink.log"
    try:
        dest = server.dsn()
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute(EMPLOYEES_DDL)
        pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
        settings = pipeline.settings.model_dump(mode="json", exclude={"sinks"})
        sink = pipeline.sink_settings.model_dump(mode="json")
        sink.update(dsn="env:TEST_DEST_DSN", batch_size=50)
        config = tmp_path / "sink.yaml"
        config.write_text(yaml.safe_dump({**settings, "sinks": [sink]}))
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "walbridge.cli",
                "sink",
                "postgres",
                "--workers",
                "2",
                "--config",
                str(config),
            ],
            env={**os.environ, "TEST_DEST_DSN": dest, "COLUMNS": "300"},
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        pipeline.send(*(change("c", None, employee(i)) for i in range(1, 101)))
        wait_until(lambda: len(rows(dest)) == 100, timeout_s=90)
        server.stop("fast")
        pipeline.send(*(change("c", None, employee(i)) for i in range(101, 201)))
        wait_until(lambda: log.read_text().count("destination unavailable") >= 1, timeout_s=30)
        server.start()
        wait_until(lambda: len(rows(dest)) == 200, timeout_s=60)
        assert [row[0] for row in rows(dest)] == list(range(1, 201))
        assert process.poll() is None
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        server.stop()
    text = log.read_text()
    assert "Traceback" not in text
    assert "waiting for it in the consumer group" in text
    assert "leaving the consumer group" not in text  # no rebalance for a restart
