"""Whether the initial snapshot is owed is decided by the source database (issue 9, case 7).

Through the CLI processes: ``setup`` and ``capture`` with different working directories and state
directories still snapshot; a capture SIGKILLed half-way through the snapshot of a larger table takes
it again on restart (both modes); ``teardown`` removes what setup created. Every pipeline ends with a
SQL comparison of destination and source (3 partitions).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from cli_pipeline import Proc, pipeline_config, table_rows
from confluent_kafka import Consumer, TopicPartition

from helpers import run_cli, wait_until

ITEMS = "CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0)"
COMPARE = "SELECT id, label, qty FROM public.items ORDER BY id"
FINGERPRINT = "SELECT count(*), sum(hashtext(id || label || qty)) FROM public.items"
STATE = "SELECT state, lsn IS NOT NULL FROM walbridge.capture_snapshot WHERE slot = %s"


@pytest.fixture
def items_dest(dest_dsn: str) -> str:
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
    return dest_dsn


def _fill(dsn: str, rows: int, width: int = 10) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
        label = "repeat(md5(g::text), %s)"
        conn.execute(
            f"INSERT INTO public.items SELECT g, {label}, g %% 7 FROM generate_series(1, %s) g", (width, rows)
        )


def _converged(source: str, dest: str) -> bool:
    """Same fingerprint (cheap, to wait on); then the row-for-row comparison."""
    if table_rows(source, FINGERPRINT) != table_rows(dest, FINGERPRINT):
        return False
    return table_rows(source, COMPARE) == table_rows(dest, COMPARE)


def _state(dsn: str, slot: str) -> tuple[str, bool] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('walbridge.capture_snapshot') IS NULL").fetchone()[0]:
            return None
        row = conn.execute(STATE, (slot,)).fetchone()
        return (row[0], row[1]) if row else None


def test_setup_elsewhere_still_snapshots_and_teardown_removes_the_state(
    tmp_path: Path, pg_dsn: str, items_dest: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    _fill(pg_dsn, 2_000, width=1)
    tables = ["public.items"]
    slot = topic_prefix.replace("-", "_")
    here, there = tmp_path / "setup-host", tmp_path / "capture-host"
    here.mkdir()
    there.mkdir()
    setup_cfg, env = pipeline_config(
        here / "c.yaml", kafka_bootstrap, topic_prefix, tables, pg_dsn, items_dest
    )
    capture_cfg, _ = pipeline_config(
        there / "c.yaml", kafka_bootstrap, topic_prefix, tables, pg_dsn, items_dest
    )
    setup = subprocess.run(
        [sys.executable, "-m", "walbridge.cli", "setup", "--config", str(setup_cfg)],
        cwd=here,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert setup.returncode == 0, setup.stderr
    assert "walbridge.capture_snapshot" in setup.stdout and "replication slot" in setup.stdout
    assert _state(pg_dsn, slot) is None  # a new slot owes its snapshot
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items VALUES (5000, 'between setup and capture', 1)")

    capture = Proc(there / "capture.log", env, "capture", "--config", str(capture_cfg))
    sink = Proc(there / "sink.log", env, "sink", "postgres", "--config", str(capture_cfg))
    try:
        wait_until(lambda: _converged(pg_dsn, items_dest), timeout_s=90, interval_s=0.5)
        assert _state(pg_dsn, slot) == ("done", True)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET qty = qty + 10 WHERE id % 3 = 0")
            conn.execute("DELETE FROM public.items WHERE id % 10 = 1")
        wait_until(lambda: _converged(pg_dsn, items_dest), timeout_s=90, interval_s=0.5)
        assert capture.running(), capture.output()
    finally:
        assert capture.stop() == 0, capture.output()
        sink.stop()
    assert table_rows(items_dest, "SELECT count(*) FROM public.items") == [(1_801,)]

    # Restarted elsewhere again: streams on, no second snapshot.
    capture = Proc(tmp_path / "capture2.log", env, "capture", "--config", str(setup_cfg))
    try:
        wait_until(lambda: "streaming from slot" in capture.output(), timeout_s=60)
        assert "snapshot finished" not in capture.output() and "recreating" not in capture.output()
    finally:
        capture.stop()

    code, out, err = run_cli("teardown", "--config", str(capture_cfg), env=env)
    assert code == 0, err
    assert "dropped walbridge.capture_snapshot" in out and "dropped schema walbridge" in out
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regnamespace('walbridge')").fetchone() == (None,)
        assert conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone() == (0,)


def _published(bootstrap: str, topic: str) -> int:
    """Records in ``topic`` (a lower bound on the test broker: its uncached watermarks under-report)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "watermarks"})
    try:
        metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in metadata.partitions
        )
    finally:
        consumer.close()


def _trigger_position(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return (
            conn.execute("SELECT 1 FROM walbridge.capture_offset WHERE name = %s", (name,)).fetchone()
            is not None
        )


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_snapshot_killed_half_way_is_taken_again(
    mode: str, tmp_path: Path, pg_dsn: str, items_dest: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    rows = 300_000
    _fill(pg_dsn, rows, width=4)
    name = topic_prefix.replace("-", "_")
    topic = f"{topic_prefix}.public.items"
    cfg, env = pipeline_config(
        tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.items"], pg_dsn, items_dest, mode=mode
    )
    code, _out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0, err

    def snapshot_finished() -> bool:
        return _state(pg_dsn, name) == ("done", mode == "logical")

    capture = Proc(tmp_path / "capture1.log", env, "capture", "--config", str(cfg))
    try:
        wait_until(lambda: _published(kafka_bootstrap, topic) > 20_000, timeout_s=90, interval_s=0.05)
        capture.kill()
    finally:
        capture.stop()
    assert not snapshot_finished(), "the snapshot finished before the kill: make the table larger"
    assert _state(pg_dsn, name) == ("pending", False)
    if mode == "trigger":  # stored before the first snapshot row: retention keeps what came after it
        assert _trigger_position(pg_dsn, name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # changes while capture is down
        conn.execute("UPDATE public.items SET qty = -1 WHERE id % 1000 = 0")
        conn.execute("DELETE FROM public.items WHERE id % 1000 = 1")
        conn.execute("INSERT INTO public.items VALUES (%s, 'new', 0)", (rows + 1,))

    sink = Proc(tmp_path / "sink.log", env, "sink", "postgres", "--config", str(cfg))
    capture = Proc(tmp_path / "capture2.log", env, "capture", "--config", str(cfg))
    try:
        wait_until(snapshot_finished, timeout_s=180, interval_s=0.5)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET label = 'streamed' WHERE id % 997 = 0")
        wait_until(lambda: _converged(pg_dsn, items_dest), timeout_s=240, interval_s=1.0)
        assert capture.running() and sink.running(), capture.output() + sink.output()
    finally:
        capture.stop()
        sink.stop()
    assert table_rows(items_dest, "SELECT count(*) FROM public.items") == [(rows + 1 - rows // 1000,)]


def test_capture_role_needs_privileges_on_the_state_table(
    tmp_path: Path, pg_dsn: str, items_dest: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Setup by the owner; capture as a REPLICATION role: one line naming the grant, then it works."""
    _fill(pg_dsn, 500, width=1)
    role = f"capt_{topic_prefix}"
    cfg, env = pipeline_config(
        tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.items"], pg_dsn, items_dest
    )
    code, _out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0, err
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'pw'")
        conn.execute(f"GRANT SELECT ON public.items TO {role}")
    _user, rest = pg_dsn.split("://", 1)[1].split("@", 1)
    capture_env = {**env, "SRC_DSN": f"postgresql://{role}:pw@{rest}"}
    try:
        code, _out, err = run_cli("capture", "--config", str(cfg), env=capture_env, timeout=60)
        assert code == 2 and "Traceback" not in err, err
        text = " ".join(err.split())
        assert "walbridge.capture_snapshot" in text and "GRANT USAGE ON SCHEMA walbridge" in text, err

        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"GRANT USAGE ON SCHEMA walbridge TO {role}")
            conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON walbridge.capture_snapshot TO {role}")
        capture = Proc(tmp_path / "capture.log", capture_env, "capture", "--config", str(cfg))
        sink = Proc(tmp_path / "sink.log", env, "sink", "postgres", "--config", str(cfg))
        try:
            wait_until(lambda: _converged(pg_dsn, items_dest), timeout_s=90, interval_s=0.5)
            assert _state(pg_dsn, topic_prefix.replace("-", "_")) == ("done", True)
        finally:
            capture.stop()
            sink.stop()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_upgrade_from_the_local_state_file_does_not_snapshot_again(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A slot whose snapshot an older walbridge recorded as finished in its local file keeps streaming."""
    import json

    from capture_support import RunningCapture, make_settings
    from walbridge.capture.logical import LogicalCapture

    _fill(pg_dsn, 10, width=1)
    settings = make_settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"])
    slot = settings.source.slot
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE PUBLICATION {slot} FOR TABLE public.items")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        dbname = conn.info.dbname
    legacy = Path(settings.state_dir) / "capture" / f"{dbname}-{slot}.json"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(json.dumps({"snapshot_pending": False}))
    with RunningCapture(LogicalCapture(settings)) as running:
        assert _state(pg_dsn, slot) == ("done", False)  # taken over from the file, no snapshot LSN
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET qty = 100 WHERE id = 3")
            end = int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])
        wait_until(lambda: running.capture.confirmed >= end, timeout_s=60)
    from helpers import consume_all, json_or_none

    messages = consume_all(kafka_bootstrap, [f"{topic_prefix}.public.items"], min_count=1)
    assert [json_or_none(m.value())["op"] for m in messages] == ["u"]  # the stream, not a snapshot


def test_two_captures_creating_the_state_table_at_once(pg_dsn: str) -> None:
    """The second creator waits for the first and finds the table (it used to fail on the schema)."""
    import threading

    from walbridge.capture import state as snapshot_state

    first = psycopg.connect(pg_dsn)  # its transaction stays open: the table exists but is not committed
    try:
        assert snapshot_state.ensure_table(first)
        outcome: list[object] = []

        def second() -> None:
            try:
                with psycopg.connect(pg_dsn, autocommit=True) as conn:
                    outcome.append(snapshot_state.ensure_table(conn))
            except Exception as exc:  # the outcome is what the test looks at
                outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        with psycopg.connect(pg_dsn, autocommit=True) as watcher:
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s"
            wait_until(lambda: watcher.execute(waiting, (first.info.backend_pid,)).fetchone()[0] == 1)
        first.commit()
        thread.join(30)
        assert outcome == [False]
    finally:
        first.close()
