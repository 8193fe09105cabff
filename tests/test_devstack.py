"""The dev stack against the real services: PostgreSQL settings, auth, crash recovery; broker round-trip."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from helpers import consume_all, json_or_none, wait_until, with_dbname
from walbridge.dev.devstack import DevStack, KafkaBroker, PostgresServer, find_pg_binaries, pid_alive


def _binaries_available(kind: str) -> bool:
    try:
        find_pg_binaries(kind)
    except Exception:
        return False
    return True


def _scalar(dsn: str, query: str) -> object:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


# The embedded wheel is what a fresh CI machine gets; "system" is skipped only where none is installed.
@pytest.fixture(scope="module", params=["embedded", "system"])
def own_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> PostgresServer:
    kind = str(request.param)
    if kind == "system" and not _binaries_available("system"):
        pytest.skip("no system PostgreSQL binaries on this machine")
    server = PostgresServer(tmp_path_factory.mktemp(f"pg-{kind}"), binaries=kind, fsync=False)
    began = time.monotonic()
    server.start()
    print(f"\n{kind} PostgreSQL {server.binaries.version()}: first start {time.monotonic() - began:.2f}s")
    request.addfinalizer(lambda: server.stop("immediate"))
    return server


def test_server_is_configured_for_logical_replication(own_server: PostgresServer) -> None:
    dsn = own_server.dsn()
    assert _scalar(dsn, "SHOW wal_level") == "logical"
    assert _scalar(dsn, "SHOW max_replication_slots") == "20"
    assert _scalar(dsn, "SHOW max_wal_senders") == "20"
    assert _scalar(dsn, "SHOW fsync") == "off"
    assert _scalar(dsn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True


def test_wrong_password_is_rejected(own_server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(own_server.dsn(password="not-the-password"), connect_timeout=5)


def test_replication_connection_over_tcp(own_server: PostgresServer) -> None:
    with psycopg.connect(own_server.dsn() + "?replication=database", autocommit=True) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None and row[0]


def test_create_database_returns_a_working_dsn(own_server: PostgresServer) -> None:
    dsn = own_server.create_database("made_here")
    try:
        assert _scalar(dsn, "SELECT current_database()") == "made_here"
    finally:
        own_server.drop_database("made_here")


def test_kill_then_start_recovers_committed_data(own_server: PostgresServer) -> None:
    dsn = own_server.create_database("crash")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    old_pid, port = own_server.pid, own_server.port
    assert old_pid is not None
    own_server.kill()
    assert not pid_alive(old_pid)
    assert not own_server.is_running()
    began = time.monotonic()
    own_server.start()
    print(f"\nrestart after SIGKILL (crash recovery): {time.monotonic() - began:.2f}s")
    assert own_server.port == port
    assert _scalar(dsn, "SELECT count(*) FROM t") == 1000


def test_restart_reuses_the_data_dir(own_server: PostgresServer) -> None:
    dsn = own_server.create_database("kept")
    own_server.restart()
    assert _scalar(dsn, "SELECT current_database()") == "kept"


def test_pg_dsn_fixture_gives_an_empty_database(pg_dsn: str) -> None:
    assert str(_scalar(pg_dsn, "SELECT current_database()")).startswith("test_")
    assert _scalar(pg_dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0


def test_with_dbname_handles_both_dsn_forms() -> None:
    assert (
        with_dbname("postgresql://u:p@h:5/a?sslmode=disable", "b") == "postgresql://u:p@h:5/b?sslmode=disable"
    )
    assert "dbname=b" in with_dbname("host=h dbname=a", "b")


def test_broker_round_trip(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.roundtrip"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=10)
    wait_until(lambda: topic in admin.list_topics(timeout=5).topics, timeout_s=10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    errors: list[object] = []

    def on_delivery(error: object, message: object) -> None:
        if error is not None:
            errors.append(error)

    for i in range(300):
        producer.produce(topic, key=f'{{"id": {i}}}', value=f'{{"n": {i}}}', on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert errors == []
    messages = consume_all(kafka_bootstrap, [topic], min_count=300, idle_s=0.5, timeout_s=30)
    assert sorted(json_or_none(m.value())["n"] for m in messages) == list(range(300))
    assert {m.partition() for m in messages} == {0, 1, 2}
    for message in messages:  # same key, same partition, in order
        assert json_or_none(message.key())["id"] == json_or_none(message.value())["n"]


def test_broker_start_stop(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path)
    began = time.monotonic()
    broker.start()
    print(f"\nKafka broker start: {time.monotonic() - began:.2f}s")
    pid = broker.pid
    assert pid is not None and broker.is_running()
    broker.stop()
    assert not pid_alive(pid)
    assert (tmp_path / "kafka.log").exists()


def test_devstack_writes_state_and_cleans_up(tmp_path: Path) -> None:
    with DevStack(tmp_path / "stack", durable=False) as stack:
        state = stack.read_state()
        assert set(state["services"]) >= {"postgres", "kafka"}
        assert _scalar(state["services"]["postgres"]["dsn"], "SELECT 1") == 1
        pids = [row["pid"] for row in stack.status()]
        assert all(row["running"] for row in stack.status())
    assert not any(pid_alive(p) for p in pids)
    assert not stack.state_path.exists()


def test_devstack_up_prints_the_settings_for_its_stack(tmp_path: Path) -> None:
    from helpers import run_cli

    state_dir = str(tmp_path / "stack")
    code, out, err = run_cli("devstack", "up", "--detach", "--state-dir", state_dir, env={"COLUMNS": "200"})
    try:
        assert code == 0, err
        bootstrap = DevStack(Path(state_dir)).read_state()["services"]["kafka"]["bootstrap"]
        assert f"kafka: {{bootstrap_servers: {bootstrap}, session_timeout_ms: 6000}}" in out + err
    finally:
        assert run_cli("devstack", "down", "--state-dir", state_dir)[0] == 0
