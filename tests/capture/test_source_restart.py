"""Logical capture across a restart of the source PostgreSQL (found by the soak, issue 12).

A fast shutdown ends the replication stream; psycopg2 then raises ``DatabaseError: no COPY in progress``
(not an ``OperationalError``), which capture used to let through as a traceback and exit 1. It is a lost
connection: capture waits, reconnects, and resumes from the slot's confirmed position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from capture_support import RunningCapture, make_settings
from helpers import consume_all, json_or_none, wait_until
from walbridge.capture import catalog
from walbridge.capture.logical import LogicalCapture
from walbridge.dev.devstack import PostgresServer


def test_capture_survives_a_restart_of_the_source(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    server = PostgresServer(tmp_path / "pg", fsync=False)
    server.start()
    try:
        dsn = server.dsn()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL)")
        settings = make_settings(dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
        with RunningCapture(LogicalCapture(settings)) as running:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO public.items SELECT g, 'a' FROM generate_series(1, 100) g")
            server.restart()
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO public.items SELECT g, 'b' FROM generate_series(101, 200) g")
            topic = f"{topic_prefix}.public.items"
            messages = consume_all(kafka_bootstrap, [topic], min_count=200, timeout_s=60)
            wait_until(lambda: running.capture.ready.is_set() or running.error is not None, timeout_s=30)
            assert running.error is None, f"capture stopped: {running.error!r}"
            assert running.thread.is_alive()
        assert {json_or_none(m.key())["id"] for m in messages} == set(range(1, 201))
    finally:
        server.stop()


def test_capture_starts_when_the_source_restarts_during_its_checks(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source restarting while capture checks it at startup (the soak's source restart right after a
    capture kill) ended capture with a traceback; it tries again."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL)")
    real = catalog.check_logical_capture
    calls: list[int] = []

    def restarting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        return real(*args, **kwargs)

    monkeypatch.setattr(catalog, "check_logical_capture", restarting)
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
    with RunningCapture(LogicalCapture(settings)) as running:
        assert running.error is None and len(calls) == 2
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO public.items VALUES (1, 'a')")
        messages = consume_all(kafka_bootstrap, [f"{topic_prefix}.public.items"], min_count=1, timeout_s=30)
    assert [json_or_none(m.key())["id"] for m in messages] == [1]
