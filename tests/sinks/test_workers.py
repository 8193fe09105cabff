"""``walbridge sink postgres --workers N``: N processes share the partitions, a killed worker is
restarted, nothing is applied twice or lost, and a worker's error stops the command with exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from pg_support import Pipeline
from test_reliability import LOG_DDL, applied_count, assert_exactly_once, converged, load

from helpers import wait_until


def consecutive_free_ports(count: int) -> int:
    """A port p with p … p+count-1 all free (the parent and each worker serve one)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports")


def start_workers(
    pipeline: Pipeline, tmp_path: Path, dsn: str, workers: int, port: int, **kafka_options: Any
) -> subprocess.Popen[bytes]:
    settings = pipeline.settings.model_dump(mode="json", exclude={"sinks"})
    settings["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": port}
    settings["kafka"]["options"].update(kafka_options)
    sink = pipeline.sink_settings.model_dump(mode="json")
    sink.update(dsn="env:WALBRIDGE_TEST_DEST_DSN", batch_size=50)
    settings["sinks"] = [sink]
    config = tmp_path / "workers.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = ["sink", "postgres", "--config", str(config), "--workers", str(workers)]
    return subprocess.Popen(
        [sys.executable, "-m", "walbridge.cli", *command],
        env={**os.environ, "WALBRIDGE_TEST_DEST_DSN": dsn},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.log").open("w"),  # a file: a full pipe would block the workers
    )


def stopped(parent: subprocess.Popen[bytes], tmp_path: Path, timeout_s: float = 60) -> int:
    """The parent's exit code; its log in the failure when it does not exit in time."""
    try:
        return parent.wait(timeout_s)
    except subprocess.TimeoutExpired:
        parent.kill()
        parent.wait(10)
        raise AssertionError(
            f"the command did not stop in {timeout_s}s:\n{(tmp_path / 'stderr.log').read_text()[-3000:]}"
        ) from None


def still_running(pids: list[int]) -> list[int]:
    """The processes of ``pids`` that exist."""
    running = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        running.append(pid)
    return running


def status(port: int) -> Any:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/status", timeout=2).json()
    except httpx.HTTPError:
        return None


def test_two_workers_share_partitions_and_survive_a_sigkill(
    pipeline: Pipeline, employees_db: str, tmp_path: Path
) -> None:
    with psycopg.connect(employees_db, autocommit=True) as conn:
        conn.execute(LOG_DDL)
    load(pipeline, employees_db, versions=40)  # 12,000 events over 3 partitions
    port = consecutive_free_ports(3)
    parent = start_workers(pipeline, tmp_path, employees_db, workers=2, port=port)
    try:
        # Both workers are members of the group: each one holds at least one partition.
        def both_assigned() -> bool:
            per_worker = [status(port + i) for i in (1, 2)]
            return all(s is not None and s["assigned"] for s in per_worker)

        wait_until(both_assigned, timeout_s=60, interval_s=0.2)
        assigned = [set(status(port + i)["assigned"]) for i in (1, 2)]
        assert not (assigned[0] & assigned[1]), assigned

        wait_until(lambda: applied_count(employees_db) > 500, timeout_s=60, interval_s=0.05)
        victim = next(w for w in status(port)["workers"] if w["worker"] == 1)
        os.kill(victim["pid"], signal.SIGKILL)

        def restarted() -> bool:
            workers = (status(port) or {}).get("workers", [])
            return any(w["worker"] == 1 and w["restarts"] == 1 and w["alive"] for w in workers)

        wait_until(restarted, timeout_s=30, interval_s=0.2)
        wait_until(lambda: converged(employees_db), timeout_s=90, interval_s=0.5)
        pids = [w["pid"] for w in status(port)["workers"]]
        assert victim["pid"] not in pids
    finally:
        parent.send_signal(signal.SIGTERM)
        code = stopped(parent, tmp_path)
    assert code == 0, (tmp_path / "stderr.log").read_text()
    left = still_running(pids)
    assert left == [], f"workers {left} still running after the parent stopped"
    assert_exactly_once(employees_db)


def test_a_worker_error_stops_the_command_with_exit_2(
    pipeline: Pipeline, employees_db: str, tmp_path: Path
) -> None:
    port = consecutive_free_ports(3)
    parent = start_workers(
        pipeline, tmp_path, employees_db, workers=2, port=port, **{"no.such.property": "1"}
    )
    code = stopped(parent, tmp_path, timeout_s=90)
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 2, stderr
    assert "invalid Kafka client setting" in stderr
    assert "no.such.property" in stderr


def test_workers_stop_when_the_parent_is_killed(
    pipeline: Pipeline, employees_db: str, tmp_path: Path
) -> None:
    port = consecutive_free_ports(3)
    parent = start_workers(pipeline, tmp_path, employees_db, workers=2, port=port)
    try:

        def alive_pids() -> list[int]:
            pids = [w["pid"] for w in (status(port) or {}).get("workers", []) if w["alive"]]
            return pids if len(pids) == 2 else []

        workers = wait_until(alive_pids, timeout_s=30)
    finally:
        parent.kill()
        parent.wait(10)

    wait_until(lambda: not still_running(workers), timeout_s=30, interval_s=0.2)
