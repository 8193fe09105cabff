"""Snapshot progress a user sees: rows of the estimated total per table, log lines when not on a
terminal, the ``walbridge_capture_snapshot_rows`` metric and ``/status``."""

from __future__ import annotations

from pathlib import Path

import psycopg

from capture_support import write_config
from helpers import run_cli
from walbridge import metrics
from walbridge.capture.logical import LogicalCapture
from walbridge.cli_capture import SnapshotProgress
from walbridge.config import load_settings

ROWS = 12_000


def _table(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{name} (id int PRIMARY KEY, v text)")
        conn.execute(f"INSERT INTO public.{name} SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g")
        conn.execute(f"ANALYZE public.{name}")


def test_snapshot_progress_lines_when_not_a_terminal(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    _table(pg_dsn, "big")
    config = write_config(tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.big"], tmp_path / "s")
    env = {"SRC_DSN": pg_dsn}
    assert run_cli("setup", "--config", str(config), env=env)[0] == 0
    code, _, err = run_cli("capture", "--config", str(config), "--snapshot", "initial_only", env=env)
    assert code == 0, err
    assert f"snapshot public.big: 0 rows of ~{ROWS:,} (started)" in err
    assert f"snapshot public.big: {ROWS:,} rows of ~{ROWS:,} (done)" in err


def test_snapshot_progress_feeds_the_metric_and_status(
    pg_dsn: str, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    _table(pg_dsn, "counted")
    ident = topic_prefix.replace("-", "_")
    settings = load_settings(
        source={"dsn": pg_dsn, "tables": ["public.counted"], "slot": ident, "snapshot": "initial_only"},
        events={"topic_prefix": topic_prefix},
        kafka={"bootstrap_servers": kafka_bootstrap, "partitions": 3},
        metrics={"enabled": False},
        state_dir=str(tmp_path / "state"),
    )
    seen: list[tuple[int, int | None, bool]] = []
    progress = SnapshotProgress(interactive=False)
    record = progress.__call__

    def spy(table: str, rows: int, estimate: int | None, done: bool) -> None:
        seen.append((rows, estimate, done))
        record(table, rows, estimate, done)

    rows = metrics.capture.snapshot_rows.labels(table="public.counted")
    before = rows._value.get()
    import threading

    LogicalCapture(settings, progress=spy).run(threading.Event())
    assert rows._value.get() - before == ROWS
    assert progress.tables["public.counted"] == {"rows": ROWS, "estimate": ROWS, "done": True}
    assert seen[0] == (0, ROWS, False) and any(0 < n < ROWS and not done for n, _, done in seen[1:-1])
