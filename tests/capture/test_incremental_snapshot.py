"""Incremental snapshots (logical mode): watermark chunks beside the stream, against writers hammering
the chunked keys, a restart in the middle, and a table added to a running pipeline. Each test ends
with the destination compared with the source by SQL (capture → Kafka, 3 partitions → PostgreSQL sink).
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from typer.testing import CliRunner

from capture_support import RunningCapture, write_config
from helpers import consume_all, json_or_none, wait_until
from pipeline_support import capture_settings, running_sink, wait_same_rows
from walbridge.capture import state
from walbridge.capture.logical import LogicalCapture
from walbridge.capture.signals import EXECUTE, send_signal
from walbridge.capture.trigger import TriggerCapture
from walbridge.cli import app
from walbridge.cli_capture import setup_logical, setup_trigger
from walbridge.kafka import make_producer

SIGNAL = "public.wb_signal"
TABLE_DDL = "CREATE TABLE public.{name} (id int PRIMARY KEY, grp int NOT NULL, v int NOT NULL, note text)"


@pytest.fixture
def dest_dsn(dest_dsn: str) -> str:
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        for name in ("items", "extra"):
            conn.execute(TABLE_DDL.format(name=name))  # type: ignore[arg-type]
    return dest_dsn


def _source(dsn: str, rows: int, *names: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names:
            conn.execute(TABLE_DDL.format(name=name))  # type: ignore[arg-type]
            conn.execute(
                f"INSERT INTO public.{name} SELECT g, g % 7, g, md5(g::text) "  # type: ignore[arg-type]
                f"FROM generate_series(1, {rows}) g"
            )


def _settings(
    pg_dsn: str, bootstrap: str, prefix: str, tmp_path: Path, tables: list[str], mode: str = "logical"
) -> Any:
    options = {"snapshot": "incremental", "signal_table": SIGNAL, "incremental_chunk_size": 100}
    return capture_settings(mode, pg_dsn, bootstrap, prefix, tmp_path, tables, **options)


def _setup(settings: Any) -> list[str]:
    return setup_trigger(settings) if settings.source.mode == "trigger" else setup_logical(settings)


def _capture(settings: Any) -> Any:
    return TriggerCapture(settings) if settings.source.mode == "trigger" else LogicalCapture(settings)


def _snapshot_events(bootstrap: str, topic: str, min_count: int) -> list[dict[str, Any]]:
    records = consume_all(bootstrap, [topic], min_count=min_count)
    values = [json_or_none(record.value()) for record in records]
    return [v for v in values if v is not None and v["op"] == "r"]


class Hammer:
    """Writers on the table while its snapshot runs: updates, deletes, inserts, primary-key changes,
    half of them aimed at the keys of the chunks being read next."""

    def __init__(self, dsn: str, capture: Any, threads: int = 3) -> None:
        self.dsn = dsn
        self.capture = capture
        self.stop = threading.Event()
        self.count = 0
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        assert not self.errors, self.errors

    def _near(self, rng: random.Random) -> int:
        inc = self.capture.incremental
        tasks = inc.progress.tables if inc is not None else []
        last = tasks[0].last_key if tasks and tasks[0].last_key else ["0"]
        return int(last[0] or 0) + rng.randint(1, 250)  # the chunk waiting for its close, and the next

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    key = self._near(rng) if rng.random() < 0.5 else rng.randint(1, 3200)
                    roll = rng.random()
                    if roll < 0.45:
                        conn.execute(
                            "UPDATE public.items SET v = v + 1, note = now()::text WHERE id = %s", (key,)
                        )
                    elif roll < 0.6:
                        conn.execute("DELETE FROM public.items WHERE id = %s", (key,))
                    elif roll < 0.8:
                        conn.execute(
                            "INSERT INTO public.items VALUES (%s, 1, 1, 'new') "
                            "ON CONFLICT (id) DO UPDATE SET v = public.items.v + 100",
                            (key,),
                        )
                    elif roll < 0.9:
                        with conn.transaction():  # several keys in one transaction
                            conn.execute(
                                "UPDATE public.items SET v = -v WHERE id BETWEEN %s AND %s", (key, key + 5)
                            )
                            conn.execute("DELETE FROM public.items WHERE id = %s", (key + 6,))
                    else:
                        conn.execute(
                            "UPDATE public.items SET id = id + 100000 WHERE id = %s "
                            "AND NOT EXISTS (SELECT 1 FROM public.items WHERE id = %s + 100000)",
                            (key, key),
                        )
                    self.count += 1
        except psycopg.errors.DeadlockDetected:
            self._run(seed + 100)  # writers locking the same keys in two orders: go on
        except BaseException as exc:
            self.errors.append(exc)


@pytest.fixture
def sink_for(kafka_bootstrap: str, dest_dsn: str, topic_prefix: str) -> Iterator[Any]:
    def start(*tables: str) -> Any:
        topics = [f"{topic_prefix}.{table}" for table in tables]
        return running_sink(kafka_bootstrap, dest_dsn, topics, f"g-{topic_prefix}-{len(tables)}")

    yield start


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_concurrent_writers_during_incremental_snapshot(
    mode: str,
    tmp_path: Path,
    pg_dsn: str,
    dest_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    sink_for: Any,
) -> None:
    _source(pg_dsn, 3000, "items")
    settings = _settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"], mode)
    _setup(settings)
    capture = _capture(settings)
    # The writers start first: the snapshot (a second or so) runs under them from its first chunk; the
    # capture goes on streaming after they stop.
    with sink_for("public.items"), contextlib.ExitStack() as running:
        with Hammer(pg_dsn, capture) as hammer:
            wait_until(lambda: hammer.count > 100)
            running.enter_context(RunningCapture(capture))
            wait_until(lambda: capture.incremental is not None and not capture.incremental.active, 120)
            assert hammer.count > 200, hammer.count
        # The writers delete and move keys out of the snapshot's range while it runs, so how many chunks
        # the table takes depends on the machine's speed: ~30 on a quiet one, fewer on a loaded one.
        chunks = capture.incremental.progress.chunks
        assert chunks >= 10, chunks
        wait_same_rows(pg_dsn, dest_dsn, ["public.items"])
    snapshot = _snapshot_events(kafka_bootstrap, f"{topic_prefix}.public.items", 2000)
    assert snapshot and {e["source"]["snapshot"] for e in snapshot} == {"incremental"}
    with psycopg.connect(pg_dsn) as conn:  # the watermarks went to the signal table, not to Kafka
        windows = conn.execute("SELECT count(*) FROM public.wb_signal WHERE type = 'snapshot-window-close'")
        assert windows.fetchone()[0] >= chunks  # type: ignore[index]


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_restart_resumes_from_the_last_chunk(
    mode: str,
    tmp_path: Path,
    pg_dsn: str,
    dest_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    sink_for: Any,
) -> None:
    rows = 20_000  # 200 chunks: capture is stopped in the middle, whatever the machine's speed
    _source(pg_dsn, rows, "items")
    settings = _settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"], mode)
    _setup(settings)

    def persisted() -> dict[str, Any]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return state.load_incremental(conn, settings.source.slot) or {}

    with sink_for("public.items"):
        first = _capture(settings)
        with RunningCapture(first):
            wait_until(lambda: persisted().get("chunks", 0) >= 5, timeout_s=60)
        stopped_at = persisted()
        assert stopped_at["tables"] and stopped_at["tables"][0]["last_key"] is not None
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.items SET v = -v WHERE id % 10 = 0")
            conn.execute("DELETE FROM public.items WHERE id % 13 = 0")
        second = _capture(settings)
        with RunningCapture(second):
            wait_until(lambda: second.incremental is not None and not second.incremental.active, timeout_s=60)
            wait_same_rows(pg_dsn, dest_dsn, ["public.items"])
    assert persisted()["tables"] == []
    snapshot = _snapshot_events(kafka_bootstrap, f"{topic_prefix}.public.items", rows)
    # Resumed, not started over: at most the chunks read after the last recorded one come twice.
    assert len(snapshot) < rows + 5 * 100, len(snapshot)


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_table_added_to_a_running_pipeline_is_snapshotted_alone(
    mode: str,
    tmp_path: Path,
    pg_dsn: str,
    dest_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    sink_for: Any,
) -> None:
    _source(pg_dsn, 300, "items", "extra")
    settings = _settings(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"], mode)
    _setup(settings)
    capture = _capture(settings)
    with sink_for("public.items"), RunningCapture(capture):
        wait_until(lambda: capture.incremental is not None and not capture.incremental.active, timeout_s=60)
        wait_same_rows(pg_dsn, dest_dsn, ["public.items"])
        grown = _settings(
            pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items", "public.extra"], mode
        )
        done = _setup(grown)
        assert any("incremental snapshot of public.extra requested" in line for line in done), done
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("UPDATE public.extra SET v = 0 WHERE id <= 10")
        with sink_for("public.items", "public.extra"):  # the new table's topic exists once it joined
            wait_same_rows(pg_dsn, dest_dsn, ["public.items", "public.extra"])
    items = _snapshot_events(kafka_bootstrap, f"{topic_prefix}.public.items", 300)
    assert len(items) == 300  # the table already captured was not read again


def test_snapshot_command_sends_signals(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str, sink_for: Any
) -> None:
    """``walbridge snapshot``: pause, execute with --where (queued while paused), status, resume."""
    _source(pg_dsn, 1000, "items")
    settings = capture_settings(
        "logical",
        pg_dsn,
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        ["public.items"],
        snapshot="never",
        signal_table=SIGNAL,
        incremental_chunk_size=100,
    )
    setup_logical(settings)
    config = write_config(
        tmp_path / "walbridge.yaml",
        kafka_bootstrap,
        topic_prefix,
        ["public.items"],
        tmp_path / "state",
        signal_table=SIGNAL,
    )
    env = {"SRC_DSN": pg_dsn}
    monkeypatch.setattr("walbridge.cli.configure_logging", lambda *args: None)  # pytest's logging stays

    def cli(*args: str) -> str:  # in this process: a subprocess per command costs seconds
        result = CliRunner().invoke(app, ["snapshot", *args, "--config", str(config)], env=env)
        assert result.exit_code == 0, result.output
        return result.stdout

    capture = LogicalCapture(settings)
    with sink_for("public.items"), RunningCapture(capture):
        inc = capture.incremental
        assert inc is not None
        cli("pause")
        wait_until(lambda: inc.progress.paused)
        cli("--table", "public.items", "--where", "grp = 1")
        wait_until(lambda: [task.filter for task in inc.progress.tables] == ["grp = 1"])

        def recorded() -> dict[str, Any]:
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                return state.load_incremental(conn, settings.source.slot) or {}

        wait_until(lambda: recorded().get("paused") and recorded().get("tables"))  # once confirmed
        assert "incremental snapshot paused" in cli("status")
        cli("resume")
        wait_until(lambda: inc.progress.chunks > 0 and not inc.active, timeout_s=60)
        with psycopg.connect(dest_dsn) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM public.items").fetchone() == (143,))
            dest = conn.execute("SELECT * FROM public.items ORDER BY id").fetchall()
        with psycopg.connect(pg_dsn) as conn:
            assert dest == conn.execute("SELECT * FROM public.items WHERE grp = 1 ORDER BY id").fetchall()
    assert "no incremental snapshot in progress (143 rows in 2 chunks)" in cli("status")


def test_kafka_signal_topic(
    tmp_path: Path, pg_dsn: str, dest_dsn: str, kafka_bootstrap: str, topic_prefix: str, sink_for: Any
) -> None:
    """Debezium's Kafka signal channel: a record keyed by the topic prefix is acted on, another key is not."""
    _source(pg_dsn, 400, "items")
    settings = capture_settings(
        "logical",
        pg_dsn,
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        ["public.items"],
        snapshot="never",
        signal_table=SIGNAL,
        signal_topic=f"{topic_prefix}-signal",
        incremental_chunk_size=100,
    )
    setup_logical(settings)
    capture = LogicalCapture(settings)
    data = {"data-collections": ["public.items"], "type": "incremental"}
    with sink_for("public.items"), RunningCapture(capture):
        producer = make_producer(settings.kafka)
        signal = {"type": "execute-snapshot", "data": data}
        producer.produce(f"{topic_prefix}-signal", orjson.dumps(signal), b"another-connector")
        only_some = {
            **data,
            "additional-conditions": [{"data-collection": "public.items", "filter": "id <= 50"}],
        }
        producer.produce(
            f"{topic_prefix}-signal",
            orjson.dumps({"type": "execute-snapshot", "data": only_some}),
            topic_prefix.encode(),
        )
        producer.flush(10)
        inc = capture.incremental
        assert inc is not None
        wait_until(lambda: inc.progress.chunks > 0 and not inc.active, timeout_s=60)
        with psycopg.connect(dest_dsn) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM public.items").fetchone() == (50,))
            dest = conn.execute("SELECT * FROM public.items ORDER BY id").fetchall()
        with psycopg.connect(pg_dsn) as conn:
            assert dest == conn.execute("SELECT * FROM public.items WHERE id <= 50 ORDER BY id").fetchall()
            relayed = conn.execute("SELECT count(*) FROM public.wb_signal WHERE type = 'execute-snapshot'")
            assert relayed.fetchone() == (1,)


@pytest.mark.parametrize(
    "bad_filter",
    [
        "no_such_column = 1",
        # A filter is one SQL expression: text that closes the query and begins another is refused too,
        # and nothing of it runs.
        "true ORDER BY 1 LIMIT 1; CREATE TABLE public.sneaked (); SELECT 1 WHERE (true",
    ],
    ids=["refused", "adds-statements"],
)
def test_a_filter_the_server_refuses_skips_that_snapshot_only(
    bad_filter: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    pg_dsn: str,
    dest_dsn: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    sink_for: Any,
) -> None:
    _source(pg_dsn, 300, "items")
    settings = capture_settings(
        "logical", pg_dsn, kafka_bootstrap, topic_prefix, tmp_path, ["public.items"], snapshot="never",
        signal_table=SIGNAL, incremental_chunk_size=100,
    )  # fmt: skip
    setup_logical(settings)
    capture = LogicalCapture(settings)
    bad = [{"data-collection": "public.items", "filter": bad_filter}]
    with sink_for("public.items"), RunningCapture(capture) as running:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            send_signal(
                conn, SIGNAL, EXECUTE, {"data-collections": ["public.items"], "additional-conditions": bad}
            )
            wait_until(lambda: f"public.items where {bad_filter} skipped" in caplog.text)
            send_signal(conn, SIGNAL, EXECUTE, {"data-collections": ["public.items"]})
        inc = capture.incremental
        wait_until(lambda: inc.progress.rows == 300 and not inc.active, timeout_s=60)
        wait_same_rows(pg_dsn, dest_dsn, ["public.items"])
        assert running.error is None
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.sneaked')").fetchone() == (None,)
