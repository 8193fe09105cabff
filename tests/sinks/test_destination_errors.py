"""Destination problems that affect every record, through ``walbridge sink postgres`` as a user runs it:
a missing or dropped table and a missing privilege stop the sink with one line and exit code 2; a
read-only destination is waited for with one warning; none of them sends anything to the DLQ. A sink
whose destination does not answer stays out of the consumer group, so a healthy member gets every
partition."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest
import yaml
from pg_support import EMPLOYEES_DDL, Pipeline, change, employee, rows

from helpers import consume_all, scratch_database, wait_until, with_dbname
from walbridge.kafka import make_admin
from walbridge.sinks.postgres import PostgresSink
from walbridge.sinks.runner import SinkRunner
from walbridge.soak.tcp_proxy import TcpProxy


@pytest.fixture
def dest(pg_admin_dsn: str):  # type: ignore[no-untyped-def]
    with scratch_database(pg_admin_dsn, "dest") as dsn:
        yield dsn


def start_sink(pipeline: Pipeline, tmp_path: Path, dsn: str) -> tuple[subprocess.Popen[bytes], Path]:
    settings = pipeline.settings.model_dump(mode="json", exclude={"sinks"})
    settings["metrics"] = {"enabled": False}
    sink = pipeline.sink_settings.model_dump(mode="json")
    sink.update(dsn="env:WALBRIDGE_TEST_DEST_DSN", batch_size=50)
    settings["sinks"] = [sink]
    config = tmp_path / "sink.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = tmp_path / "sink.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "walbridge.cli", "sink", "postgres", "--config", str(config)],
        env={**os.environ, "WALBRIDGE_TEST_DEST_DSN": dsn, "COLUMNS": "300"},
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    return process, log


def exit_code(process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> int:
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise AssertionError(f"the sink did not stop:\n{log.read_text()[-3000:]}") from None


def dead_letters(bootstrap: str, topic: str) -> int:
    dlq = f"{topic}.dlq"
    if dlq not in make_admin_topics(bootstrap):
        return 0
    return len(consume_all(bootstrap, [dlq], idle_s=1.0, timeout_s=10))


def make_admin_topics(bootstrap: str) -> set[str]:
    from walbridge.config import KafkaSettings

    return set(make_admin(KafkaSettings(bootstrap_servers=bootstrap)).list_topics(timeout=10).topics)


def send_employees(pipeline: Pipeline, first: int, count: int) -> None:
    pipeline.send(*(change("c", None, employee(i)) for i in range(first, first + count)))


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("error:")]


def test_missing_table_stops_with_one_line_and_no_dead_letters(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    send_employees(pipeline, 1, 200)
    process, log = start_sink(pipeline, tmp_path, dest)
    assert exit_code(process, log) == 2
    text = log.read_text()
    assert error_lines(log) == [
        "error: destination table public.employees does not exist: create it, map the source table to "
        "another one with table_map, or set auto_create: true"
    ], text
    assert "Traceback" not in text and len(text.splitlines()) < 30, text
    assert dead_letters(kafka_bootstrap, pipeline.topic) == 0


def test_table_dropped_while_running_stops_the_sink(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    process, log = start_sink(pipeline, tmp_path, dest)
    try:
        send_employees(pipeline, 1, 100)
        wait_until(lambda: len(rows(dest)) == 100, timeout_s=60)
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute("DROP TABLE public.employees")
        send_employees(pipeline, 101, 300)
        assert exit_code(process, log) == 2
    finally:
        if process.poll() is None:
            process.kill()
    lines = error_lines(log)
    assert len(lines) == 1 and "does not exist" in lines[0] and "create the table" in lines[0], lines
    assert "Traceback" not in log.read_text()
    assert dead_letters(kafka_bootstrap, pipeline.topic) == 0
    with psycopg.connect(dest) as conn:  # nothing past the last applied batch was skipped
        stored = conn.execute("SELECT sum(next_offset) FROM walbridge.offsets").fetchone()
    assert stored == (100,)


def test_missing_privilege_stops_with_one_line(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    role = f"ro_{topic_prefix}".replace("-", "_")
    database = dest.rsplit("/", 1)[1]
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        conn.execute(f"GRANT CREATE, CONNECT, TEMP ON DATABASE {database} TO {role}")
        conn.execute(f"GRANT SELECT ON public.employees TO {role}")
    limited = with_dbname(dest, database).replace("postgres:postgres@", f"{role}:pw@")
    try:
        pipeline = Pipeline(kafka_bootstrap, topic_prefix, limited)
        send_employees(pipeline, 1, 120)
        process, log = start_sink(pipeline, tmp_path, limited)
        assert exit_code(process, log) == 2
        lines = error_lines(log)
        assert len(lines) == 1 and "permission denied" in lines[0] and "grant" in lines[0], log.read_text()
        assert dead_letters(kafka_bootstrap, pipeline.topic) == 0
        assert rows(dest) == []
    finally:
        with psycopg.connect(dest, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_read_only_destination_is_waited_for_with_one_warning(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    database = dest.rsplit("/", 1)[1]
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
        conn.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    send_employees(pipeline, 1, 150)
    process, log = start_sink(pipeline, tmp_path, dest)
    try:
        wait_until(lambda: "read-only transaction" in log.read_text(), timeout_s=60)
        with psycopg.connect(dest, autocommit=True, options="-c default_transaction_read_only=off") as conn:
            conn.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        wait_until(lambda: len(rows(dest)) == 150, timeout_s=60)
    finally:
        process.terminate()
        process.wait(30)
    text = log.read_text()
    warnings = [line for line in text.splitlines() if "WARNING" in line and "read-only" in line]
    assert len(warnings) == 1, text
    assert [row[0] for row in rows(dest)] == list(range(1, 151))
    assert dead_letters(kafka_bootstrap, pipeline.topic) == 0


def test_unreachable_destination_keeps_no_partitions(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    down = "postgresql://postgres@127.0.0.1:1/nowhere"
    process, log = start_sink(pipeline, tmp_path, down)
    try:
        wait_until(lambda: "destination unavailable" in log.read_text(), timeout_s=60)
        pipeline.start()  # a healthy member of the same group
        send_employees(pipeline, 1, 300)
        wait_until(lambda: len(rows(dest)) == 300, timeout_s=60)
        assert process.poll() is None  # still waiting for its destination, not crashed
    finally:
        process.terminate()
        process.wait(30)
        pipeline.stop()
    assert "assigned" not in log.read_text()


def test_member_whose_destination_goes_down_leaves_the_group(
    kafka_bootstrap: str, topic_prefix: str, dest: str
) -> None:
    """Two members; one loses its destination mid-run: it leaves the group, the other applies every
    partition; once its destination answers again it rejoins."""
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute(EMPLOYEES_DDL)
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    proxy = TcpProxy(int(psycopg.conninfo.conninfo_to_dict(dest)["port"]))
    proxied = dest.replace(f":{psycopg.conninfo.conninfo_to_dict(dest)['port']}/", f":{proxy.port}/")
    settings = pipeline.sink_settings.model_copy(update={"dsn": proxied})
    stop = threading.Event()
    runner = SinkRunner(PostgresSink(settings), pipeline.settings, settings)
    runner.leave_after_s = 3.0  # the production default waits a minute in the group first
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: runner.status()["assigned"], timeout_s=60)
        healthy = SinkRunner(PostgresSink(pipeline.sink_settings), pipeline.settings, pipeline.sink_settings)
        other = threading.Thread(target=healthy.run, args=(stop,), daemon=True)
        other.start()
        # both members hold partitions before the cut (this broker stalls a join a member leaves during)
        wait_until(lambda: healthy.status()["assigned"] and runner.status()["assigned"], timeout_s=60)
        send_employees(pipeline, 1, 60)
        wait_until(lambda: len(rows(dest)) == 60, timeout_s=60)
        proxy.cut()
        send_employees(pipeline, 61, 240)
        wait_until(lambda: len(rows(dest)) == 300, timeout_s=90)
        assert len(healthy.status()["assigned"]) == 3
        assert runner.status()["assigned"] == [] and thread.is_alive()
        proxy.restore()
        wait_until(lambda: runner.status()["assigned"], timeout_s=60)
        send_employees(pipeline, 301, 60)
        wait_until(lambda: len(rows(dest)) == 360, timeout_s=60)
    finally:
        stop.set()
        thread.join(30)
        other.join(30)
        proxy.close()
    assert [row[0] for row in rows(dest)] == list(range(1, 361))
    assert dead_letters(kafka_bootstrap, pipeline.topic) == 0


def test_wrong_password_stops_before_joining_the_group(
    kafka_bootstrap: str, topic_prefix: str, dest: str, tmp_path: Path
) -> None:
    pipeline = Pipeline(kafka_bootstrap, topic_prefix, dest)
    process, log = start_sink(pipeline, tmp_path, dest.replace("postgres:postgres@", "postgres:wrong@"))
    assert exit_code(process, log) == 2
    lines = error_lines(log)
    assert len(lines) == 1 and "password authentication failed" in lines[0], log.read_text()
    assert "wrong" not in log.read_text()  # the DSN's password is never printed
    assert "assigned" not in log.read_text()
