"""Large rows and final producer errors (issue 9, case 6), through the CLI processes a user runs.

Rows up to ``kafka.max_message_bytes`` (16 MiB by default) go through capture → Kafka (3 partitions)
→ sink postgres; a larger one stops capture with one line naming table, key, position, size and the
setting to raise, and is delivered once the setting is raised. The test broker stores topic configs
but does not enforce ``max.message.bytes``, so the refusals are driven by walbridge's own limit and by
the producer's ``message.max.bytes``.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from cli_pipeline import Proc, pipeline_config, table_rows
from confluent_kafka import KafkaError
from confluent_kafka.admin import ConfigResource

from capture_support import make_settings
from helpers import run_cli, wait_until
from walbridge.capture.publisher import EventPublisher
from walbridge.capture.reconnect import Reconnect
from walbridge.config import KafkaSettings
from walbridge.errors import PermanentError, RecordTooLarge, TransientError
from walbridge.kafka import RECORD_OVERHEAD, make_admin

DOCS = "CREATE TABLE public.docs (id bigint PRIMARY KEY, body text NOT NULL)"
COMPARE = "SELECT id, length(body), md5(body) FROM public.docs ORDER BY id"
MIB = 1024 * 1024


def text_of(size: int) -> str:
    """SQL for an incompressible text of ``size`` bytes (md5 hex of random values)."""
    agg = "string_agg(md5(random()::text || g), '')"
    return f"(SELECT left({agg}, {size}) FROM generate_series(1, {size // 32 + 1}) g)"


@pytest.fixture
def docs_source(pg_dsn: str) -> str:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(DOCS)
        conn.execute("INSERT INTO public.docs SELECT g, 'small ' || g FROM generate_series(1, 5) g")
    return pg_dsn


@pytest.fixture
def docs_dest(pg_admin_dsn: str) -> str:
    from helpers import scratch_database

    with scratch_database(pg_admin_dsn, "dst") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DOCS)
        yield dsn


def _converged(source: str, dest: str) -> bool:
    return table_rows(source, COMPARE) == table_rows(dest, COMPARE)


def _assert_one_line(output: str, *needles: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "error:" in line]
    assert len(lines) == 1, output
    text = " ".join(output[output.index("error:") :].split())
    for needle in needles:
        assert needle in text, output
    return text


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_rows_up_to_the_limit_round_trip(
    mode: str, tmp_path: Path, docs_source: str, docs_dest: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    with psycopg.connect(docs_source, autocommit=True) as conn:
        conn.execute(f"INSERT INTO public.docs VALUES (10, {text_of(3 * MIB)})")  # in the snapshot
    cfg, env = pipeline_config(
        tmp_path / "c.yaml", kafka_bootstrap, topic_prefix, ["public.docs"], docs_source, docs_dest, mode=mode
    )
    code, _out, err = run_cli("setup", "--config", str(cfg), env=env)
    assert code == 0, err
    capture = Proc(tmp_path / "capture.log", env, "capture", "--config", str(cfg))
    sink = Proc(tmp_path / "sink.log", env, "sink", "postgres", "--config", str(cfg))
    try:
        wait_until(lambda: _converged(docs_source, docs_dest), timeout_s=90, interval_s=0.5)
        with psycopg.connect(docs_source, autocommit=True) as conn:
            near_limit = 16 * MIB - 4096  # with its JSON envelope still under the 16 MiB default
            conn.execute(f"INSERT INTO public.docs VALUES (11, {text_of(near_limit)})")
            conn.execute(f"UPDATE public.docs SET body = {text_of(5 * MIB)} WHERE id = 10")
            conn.execute("UPDATE public.docs SET body = 'after' WHERE id = 1")
        wait_until(lambda: _converged(docs_source, docs_dest), timeout_s=120, interval_s=0.5)
        assert capture.running() and sink.running(), capture.output() + sink.output()
    finally:
        capture.stop()
        sink.stop()
    assert table_rows(docs_dest, "SELECT count(*), max(length(body)) FROM public.docs") == [(7, near_limit)]
    topic = f"{topic_prefix}.public.docs"
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = make_admin(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["max.message.bytes"].value == str(16 * MIB + RECORD_OVERHEAD)


@pytest.mark.parametrize("mode", ["logical", "trigger"])
def test_row_over_the_limit_stops_capture_until_the_limit_is_raised(
    mode: str, tmp_path: Path, docs_source: str, docs_dest: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    tables = ["public.docs"]
    args = (kafka_bootstrap, topic_prefix, tables, docs_source, docs_dest)
    small, _ = pipeline_config(tmp_path / "small.yaml", *args, kafka={"max_message_bytes": MIB}, mode=mode)
    client, _ = pipeline_config(
        tmp_path / "client.yaml", *args, kafka={"options": {"message.max.bytes": 1_000_000}}, mode=mode
    )
    default, env = pipeline_config(tmp_path / "default.yaml", *args, mode=mode)
    code, _out, err = run_cli("setup", "--config", str(default), env=env)
    assert code == 0, err
    sink = Proc(tmp_path / "sink.log", env, "sink", "postgres", "--config", str(default))
    capture = Proc(tmp_path / "capture1.log", env, "capture", "--config", str(small))
    try:
        wait_until(lambda: _converged(docs_source, docs_dest), timeout_s=90, interval_s=0.5)
        with psycopg.connect(docs_source, autocommit=True) as conn:
            conn.execute("INSERT INTO public.docs VALUES (6, 'before the big one')")
            conn.execute(f"INSERT INTO public.docs VALUES (7, {text_of(3 * MIB)})")
            conn.execute("INSERT INTO public.docs VALUES (8, 'after the big one')")
        wait_until(lambda: not capture.running(), timeout_s=60)
        assert capture.stop() == 2
        position = "LSN " if mode == "logical" else "change-log id "
        text = _assert_one_line(
            capture.output(), "public.docs", '{"id":7}', position, "kafka.max_message_bytes", "3,14"
        )
        assert "1,048,576" in text

        # The producer's own limit set lower: librdkafka refuses the record; the same kind of line.
        capture = Proc(tmp_path / "capture2.log", env, "capture", "--config", str(client))
        wait_until(lambda: not capture.running(), timeout_s=60)
        assert capture.stop() == 2
        _assert_one_line(capture.output(), "public.docs", '{"id":7}', position, "message.max.bytes")
        # Nothing after the refused row was skipped past: row 8 has not reached the destination.
        assert table_rows(docs_dest, "SELECT id FROM public.docs WHERE id >= 7") == []

        capture = Proc(tmp_path / "capture3.log", env, "capture", "--config", str(default))
        wait_until(lambda: _converged(docs_source, docs_dest), timeout_s=120, interval_s=0.5)
        assert capture.running(), capture.output()
    finally:
        capture.stop()
        sink.stop()
    assert table_rows(docs_dest, "SELECT count(*) FROM public.docs") == [(8,)]


# ------------------------------------------------------------------------ final vs retriable errors


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "grant"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "does not create topics"),
        (KafkaError._UNKNOWN_TOPIC, "does not create topics"),
        (KafkaError.INVALID_RECORD, "not retriable"),
    ],
)
def test_final_delivery_errors_stop_capture(
    code: int, hint: str, tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    publisher = _publisher(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path)
    publisher.tracker.fail(KafkaError(code))
    with pytest.raises(PermanentError) as caught:
        publisher.poll(0)
    assert not isinstance(caught.value, TransientError)
    assert "capture stopped" in caught.value.message and hint in caught.value.message


def test_fatal_client_error_stops_capture(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    publisher = _publisher(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path)
    publisher._on_client_error(KafkaError(KafkaError._TRANSPORT, "broker down"))  # retried by librdkafka
    publisher.poll(0)
    publisher._on_client_error(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "gap", fatal=True))
    with pytest.raises(PermanentError) as caught:
        publisher.poll(0)
    assert "fatal" in caught.value.message and "capture stopped" in caught.value.message


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError._ALL_BROKERS_DOWN,
    ],
)
def test_retriable_delivery_errors_reconnect(
    code: int, tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    publisher = _publisher(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path)
    publisher.tracker.fail(KafkaError(code))
    with pytest.raises(TransientError):
        publisher.poll(0)


def _publisher(dsn: str, bootstrap: str, prefix: str, tmp_path: Path) -> EventPublisher[int]:
    return EventPublisher(make_settings(dsn, bootstrap, prefix, tmp_path, ["public.docs"]))


def test_reconnect_backoff_resets_after_a_healthy_attempt() -> None:
    reconnect = Reconnect(initial_s=1.0, max_s=30.0)
    delays = [reconnect.next_delay(healthy=False) for _ in range(7)]
    assert 1.0 <= delays[0] <= 1.5 and 30.0 <= delays[-1] <= 45.0
    assert 1.0 <= reconnect.next_delay(healthy=True) <= 1.5
    assert 2.0 <= reconnect.next_delay(healthy=False) <= 3.0


def test_broker_refusal_names_the_row(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """A record the broker refuses (a topic created elsewhere with a smaller limit; the test broker does not
    enforce it, so the refusal is handed to the delivery report of a real record) stops with the row."""
    from confluent_kafka import Producer

    from walbridge.events import ChangeEvent, EncodingOptions, EnvelopeEncoder, Source

    source = Source("postgresql", topic_prefix, "db", "public", "docs", 1, lsn=0x1_0000_0028)
    event = ChangeEvent("c", source, {"id": 42}, None, {"id": 42, "body": "x" * 1000}, 1)
    (record,) = EnvelopeEncoder(
        EncodingOptions(topic_prefix=topic_prefix, tombstones_on_delete=False)
    ).encode(event)
    delivered = []
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(record.topic, record.value, record.key, on_delivery=lambda _e, m: delivered.append(m))
    producer.flush(30)
    publisher = _publisher(pg_dsn, kafka_bootstrap, topic_prefix, tmp_path)
    publisher.tracker.fail(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), delivered[0])
    with pytest.raises(RecordTooLarge) as caught:
        publisher.poll(0)
    text = caught.value.message
    assert "public.docs" in text and '{"id":42}' in text and "at LSN 1/28" in text, text
    assert "max.message.bytes" in text and "broker refused" in text, text
