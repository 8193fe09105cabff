"""Each long-running role has its own default metrics port; a taken port stops the process with one line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import run_cli
from walbridge.config import DEFAULT_METRICS_PORTS, load_settings


def test_roles_default_to_distinct_ports() -> None:
    metrics = load_settings().metrics
    ports = {role: metrics.port_for(role) for role in ("capture", "sink-postgres", "sink-salesforce")}
    assert ports == DEFAULT_METRICS_PORTS
    assert len(set(ports.values())) == 3
    assert load_settings(metrics={"port": 9300}).metrics.port_for("sink-postgres") == 9300


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    # Nothing here is reachable: the port check must come before any connection.
    doc = {
        "source": {"dsn": "postgresql://nobody@127.0.0.1:1/none", "tables": ["public.t"]},
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "sinks": [
            {"type": "postgres", "dsn": "postgresql://nobody@127.0.0.1:1/none", "topics": ["x.public.t"]},
            {"type": "salesforce", "client_id": "id", "topics": ["x.public.t"]},
        ],
        "state_dir": str(tmp_path / "state"),
    }
    path = tmp_path / "walbridge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    "command",
    [["capture"], ["sink", "postgres"], ["sink", "postgres", "--workers", "2"], ["sink", "salesforce"]],
)
def test_taken_metrics_port_is_one_clear_line(command: list[str], config: Path, taken_port: int) -> None:
    code, out, err = run_cli(*command, "--config", str(config), "--metrics-port", str(taken_port), timeout=60)
    assert code == 2, (out, err)
    assert f"metrics port {taken_port} on 127.0.0.1 is not available" in err
    assert "--metrics-port" in err and "Traceback" not in err


def test_check_needs_only_the_capture_side_variables(pg_dsn: str, tmp_path: Path) -> None:
    """`check` reads source/kafka; the sink's unset DSN variable must not stop it."""
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.t (id int PRIMARY KEY)")
    doc = {
        "source": {"dsn": "env:OPS_TEST_SRC_DSN", "tables": ["public.t"]},
        "sinks": [{"type": "postgres", "dsn": "env:OPS_TEST_UNSET_DEST_DSN", "topics": ["x.public.t"]}],
    }
    path = tmp_path / "walbridge.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, out, err = run_cli("check", "--config", str(path), env={"OPS_TEST_SRC_DSN": pg_dsn})
    assert code == 0, (out, err)
    assert "ready for logical capture" in out
    code, out, err = run_cli("sink", "postgres", "--config", str(path), env={"OPS_TEST_SRC_DSN": pg_dsn})
    assert code == 2 and "sinks[0].dsn: environment variable OPS_TEST_UNSET_DEST_DSN is not set" in err
