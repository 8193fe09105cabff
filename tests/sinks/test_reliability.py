"""Crashes and outages: SIGKILL of sink processes, two members in a group, destination down.

Double applies are detected by a trigger logging every applied (emp_id, salary) into a table
without a unique key: every event carries a new salary per key, so a logged pair twice means
an event was applied twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml
from pg_support import Pipeline, change, employee, rows

from helpers import wait_until
from walbridge.dev.devstack import PostgresServer
from walbridge.sinks.dlq import read_dlq
from walbridge.verify import verify_tables

KEYS = 300

LOG_DDL = """
CREATE TABLE applied (emp_id int, salary int);
CREATE FUNCTION log_apply() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO applied VALUES (NEW.emp_id, NEW.salary); RETURN NULL; END $$;
CREATE TRIGGER log_apply AFTER INSERT OR UPDATE ON employees FOR EACH ROW EXECUTE FUNCTION log_apply();
CREATE SCHEMA src;
CREATE TABLE src.employees (LIKE public.employees INCLUDING ALL);
"""


def load(pipeline: Pipeline, dsn: str, versions: int, start_version: int = 1) -> None:
    """``versions`` rounds of one change per key (insert first, then updates, some deletes)."""
    state: dict[int, int | None] = {}
    events = []
    for version in range(start_version, start_version + versions):
        for key in range(KEYS):
            if version == 1:
                events.append(change("c", None, employee(key, salary=version)))
                state[key] = version
            elif key % 50 == 0 and version % 7 == 0 and state.get(key) is not None:
                events.append(change("d", employee(key, salary=state[key] or 0), None))
                state[key] = None
            else:
                events.append(change("u" if state.get(key) else "c", None, employee(key, salary=version)))
                state[key] = version
    pipeline.send(*events)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE src.employees")
        with conn.cursor().copy(
            "COPY src.employees (emp_id, first_name, last_name, dob, city, salary) FROM STDIN"
        ) as cp:
            for key, salary in state.items():
                if salary is not None:
                    cp.write_row((key, "F", "L", "1990-01-01", "C", salary))


def assert_exactly_once(dsn: str) -> None:
    dupes = rows(
        dsn, "SELECT emp_id, salary, count(*) FROM applied GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 5"
    )
    assert dupes == [], f"double applies: {dupes}"
    (diff,) = verify_tables(dsn, dsn, [("src.employees", "public.employees")])
    assert diff.clean, diff


def converged(dsn: str) -> bool:
    (diff,) = verify_tables(dsn, dsn, [("src.employees", "public.employees")])
    return diff.clean


def sink_process(pipeline: Pipeline, tmp_path: Path, dsn: str, batch_size: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "sink.yaml"
    if not config.exists():
        settings = pipeline.settings.model_dump(mode="json", exclude={"sinks"})
        sink = pipeline.sink_settings.model_dump(mode="json")
        sink.update(dsn="env:WALBRIDGE_TEST_DEST_DSN", batch_size=batch_size)
        settings["sinks"] = [sink]
        config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "WALBRIDGE_TEST_DEST_DSN": dsn}
    return subprocess.Popen(
        [sys.executable, "-m", "walbridge.cli", "sink", "postgres", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def applied_count(dsn: str) -> int:
    return int(rows(dsn, "SELECT count(*) FROM applied")[0][0])


@pytest.fixture
def logged_db(employees_db: str) -> str:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute(LOG_DDL)
    return employees_db


def test_sigkill_mid_batch_repeated(pipeline: Pipeline, logged_db: str, tmp_path: Path) -> None:
    load(pipeline, logged_db, versions=20)  # 6,000 events pre-loaded
    rng = random.Random(7)
    for _ in range(3):
        before = applied_count(logged_db)
        proc = sink_process(pipeline, tmp_path, logged_db, batch_size=50)
        try:
            wait_until(
                lambda b=before: applied_count(logged_db) > b + rng.randint(50, 400) or converged(logged_db),
                timeout_s=40,
                interval_s=0.05,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    proc = sink_process(pipeline, tmp_path, logged_db, batch_size=50)
    try:
        wait_until(lambda: converged(logged_db), timeout_s=60, interval_s=0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    assert_exactly_once(logged_db)
    assert read_dlq(pipeline.settings, [pipeline.topic + ".dlq"]) == []


def test_two_sinks_in_a_group_one_killed(pipeline: Pipeline, logged_db: str, tmp_path: Path) -> None:
    load(pipeline, logged_db, versions=30)
    first = sink_process(pipeline, tmp_path, logged_db, batch_size=50)
    second = sink_process(pipeline, tmp_path, logged_db, batch_size=50)
    try:
        wait_until(lambda: applied_count(logged_db) > 1500, timeout_s=40, interval_s=0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        wait_until(lambda: converged(logged_db), timeout_s=60, interval_s=0.5)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    assert_exactly_once(logged_db)


def test_destination_down_30s_under_load(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "dest", fsync=False, synchronous_commit=False, full_page_writes=False)
    server.start()
    try:
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            from pg_support import EMPLOYEES_DDL

            conn.execute(EMPLOYEES_DDL)
            conn.execute(LOG_DDL)
        pipeline = Pipeline(kafka_bootstrap, topic_prefix, dsn)
        try:
            pipeline.start()
            load(pipeline, dsn, versions=5)
            wait_until(lambda: applied_count(dsn) > 0, timeout_s=30)
            server.stop("fast")
            down_until = time.monotonic() + 30
            version = 6
            while time.monotonic() < down_until:  # keep producing while the destination is down
                state = {k: version for k in range(KEYS)}
                pipeline.send(*(change("u", None, employee(k, salary=s)) for k, s in state.items()))
                version += 1
                time.sleep(3)
            server.start()
            final = [(k, "F", "L", "1990-01-01", "C", version - 1) for k in range(KEYS)]
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE src.employees")
                with conn.cursor().copy("COPY src.employees FROM STDIN") as cp:
                    for row in final:
                        cp.write_row(row)
            wait_until(lambda: converged(dsn), timeout_s=60, interval_s=0.5)
            assert_exactly_once(dsn)
            assert read_dlq(pipeline.settings, [pipeline.topic + ".dlq"]) == []
        finally:
            pipeline.stop()
    finally:
        server.stop("immediate")
