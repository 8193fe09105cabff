"""The operations endpoints of running processes (capture, PostgreSQL sink, Salesforce sink), scraped.

- Each process exports only its own role's metrics, and every metric the Grafana dashboard, the
  Prometheus rules and the docs query is emitted by a process of the role that owns it.
- ``/healthz`` means "making progress, or idle with nothing to do": a sink whose destination is down
  turns unhealthy while its lag (read from the broker on a timer) grows; capture whose broker is
  unreachable turns unhealthy while the slot's retained WAL (read on a timer from its own connection)
  grows. Both recover when the dependency is back, and the destination ends equal to the source.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource
from psycopg.conninfo import make_conninfo

from helpers import free_port, wait_until
from pipeline_support import wait_same_rows
from walbridge.dev.devstack import KafkaBroker
from walbridge.emulator import DEFAULT_APP, EmulatorConfig, EmulatorServer
from walbridge.soak.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]
ITEMS = "CREATE TABLE public.items (id bigint PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0)"
# The destination refuses one label: that row's record goes to the DLQ (a record's own data).
DEST_ITEMS = ITEMS.replace("DEFAULT 0)", "DEFAULT 0, CHECK (label <> 'poison'))")
METRIC = re.compile(r"\bwalbridge_(?:capture|sink|salesforce)_[a-z0-9_]+\b")
SUFFIXES = ("_total", "_bucket", "_count", "_sum")
OWNERS = {
    "walbridge_capture_": {"capture"},
    "walbridge_sink_": {"sink-postgres", "sink-salesforce"},
    "walbridge_salesforce_": {"sink-salesforce"},
}
CONDITIONAL = {
    "walbridge_capture_errors": "only after a capture error",
    "walbridge_capture_value_fallbacks": "only for a value no converter reads",
    "walbridge_sink_retries": "only after a transient failure",
    "walbridge_salesforce_paused": "only once an allocation was checked",
}

UNUSED = {("sink-salesforce", "walbridge_sink_dlq_records"): "the org accepts every record here"}


# --------------------------------------------------------------------------- processes


class Scrape:
    """One ``/metrics`` answer: declared families and the samples' names."""

    def __init__(self, text: str) -> None:
        self.families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
        self.samples: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if match and not line.startswith("#"):
                self.samples[match[1] + (match[2] or "")] = float(match[3])
        self.sample_names = {key.split("{", 1)[0] for key in self.samples}

    def declares(self, name: str) -> bool:
        return any(_family(name) == _family(family) for family in self.families)

    def emits(self, name: str) -> bool:
        return any(n in self.sample_names for n in (name, *(name + s for s in SUFFIXES)))

    def total(self, name: str) -> float:
        return sum(v for key, v in self.samples.items() if key.split("{", 1)[0] == name)


class Process:
    """``python -m walbridge ARGS`` with its output in a file, its ops endpoint on ``port``."""

    def __init__(self, role: str, args: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.role, self.port, self.log = role, port, log
        self._out = log.open("w")
        command = [sys.executable, "-m", "walbridge", "--log-format", "plain", *args]
        self.popen = subprocess.Popen(
            [*command, "--metrics-port", str(port)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )

    def get(self, path: str) -> httpx.Response | None:
        assert self.popen.poll() is None, f"{self.role} exited: {self.tail()}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        except httpx.HTTPError:
            return None

    def scrape(self) -> Scrape:
        answer = wait_until(lambda: self.get("/metrics"), timeout_s=30)
        return Scrape(answer.text)

    def health(self, path: str = "/healthz") -> int:
        answer = self.get(path)
        return 0 if answer is None else answer.status_code

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        self._out.close()


@contextmanager
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()


def _config(path: Path, prefix: str, bootstrap: str, sf_url: str | None = None) -> tuple[Path, str]:
    """Capture + PostgreSQL sink (+ Salesforce sink) of ``public.items``; DSNs from the environment."""
    ident = prefix.replace("-", "_")
    topic = f"{prefix}.public.items"
    sinks: list[dict[str, Any]] = [
        {"type": "postgres", "dsn": "env:OPS_DST_DSN", "topics": [topic], "group_id": f"{prefix}-pg"}
    ]
    if sf_url:
        sinks.append(
            {
                "type": "salesforce",
                "instance_url": sf_url,
                "client_id": DEFAULT_APP.client_id,
                "client_secret": "env:OPS_SF_SECRET",
                "topics": [topic],
                "group_id": f"{prefix}-sf",
            }
        )
    for sink in sinks:
        sink["linger_ms"] = 50
    doc = {
        "source": {
            "dsn": "env:OPS_SRC_DSN",
            "tables": ["public.items"],
            "slot": ident,
            "heartbeat_ms": 1000,
        },
        "events": {"topic_prefix": prefix},
        "kafka": {"bootstrap_servers": bootstrap, "partitions": 3, "session_timeout_ms": 6000},
        "sinks": sinks,
        "dlq": {"max_attempts": 1, "backoff_initial_s": 0.1, "backoff_max_s": 0.5},
        "metrics": {"refresh_s": 0.5, "stall_s": 4},
        "state_dir": str(path.parent / "state"),
    }
    path.write_text(yaml.safe_dump(doc))
    return path, topic


def _env(src: str, dst: str) -> dict[str, str]:
    return {"OPS_SRC_DSN": src, "OPS_DST_DSN": dst, "OPS_SF_SECRET": DEFAULT_APP.client_secret}


@pytest.fixture
def items_dbs(pg_dsn: str, dest_dsn: str) -> tuple[str, str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(ITEMS)
        conn.execute("INSERT INTO public.items SELECT g, 'snap' || g FROM generate_series(1, 25) g")
    with psycopg.connect(dest_dsn, autocommit=True) as conn:
        conn.execute(DEST_ITEMS)
    return pg_dsn, dest_dsn


# --------------------------------------------------------------------------- what is queried


def _queried() -> set[str]:
    """Every walbridge metric the dashboard, the Prometheus rules and the docs query or name."""
    texts = [(ROOT / "README.md").read_text(), *(p.read_text() for p in (ROOT / "docs").glob("*.md"))]
    for path in (ROOT / "deploy" / "prometheus").glob("*.y*ml"):
        texts.append(path.read_text())
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "walbridge.json").read_text())
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            texts += [t["expr"] for t in inner.get("targets", []) if "expr" in t]
    return {name for text in texts for name in METRIC.findall(text)}


def _owners(name: str) -> set[str]:
    return next(roles for prefix, roles in OWNERS.items() if name.startswith(prefix))


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _streaming(capture: Process) -> bool:
    answer = capture.get("/status")
    return answer is not None and bool(answer.json().get("streaming"))


def _change_rows(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items SELECT g, 'new' || g FROM generate_series(100, 140) g")
        conn.execute("UPDATE public.items SET qty = qty + 1 WHERE id % 3 = 0")
        conn.execute("DELETE FROM public.items WHERE id % 7 = 0")
        conn.execute("INSERT INTO public.items VALUES (999, 'poison', 1)")


# --------------------------------------------------------------------------- tests


def test_each_process_exports_its_own_metrics_and_every_queried_one(
    tmp_path: Path, items_dbs: tuple[str, str], kafka_bootstrap: str, topic_prefix: str
) -> None:
    src, dst = items_dbs
    emulator = EmulatorServer(EmulatorConfig()).start()
    config, topic = _config(tmp_path / "walbridge.yaml", topic_prefix, kafka_bootstrap, emulator.url)
    env = _env(src, dst)
    with ExitStack() as stack, processes() as running:
        stack.callback(emulator.stop)
        for role, args in {
            "capture": ["capture"],
            "sink-postgres": ["sink", "postgres"],
            "sink-salesforce": ["sink", "salesforce"],
        }.items():
            running.append(
                Process(role, [*args, "--config", str(config)], free_port(), env, tmp_path / f"{role}.log")
            )
        by_role = {p.role: p for p in running}
        wait_until(lambda: _streaming(by_role["capture"]), 60)  # the snapshot is taken: 25 rows
        _change_rows(src)
        # The refused row reached the DLQ; then the source drops it too (its delete is a no-op there).
        wait_until(lambda: by_role["sink-postgres"].scrape().emits("walbridge_sink_dlq_records"), 60)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute("DELETE FROM public.items WHERE label = 'poison'")
        wait_same_rows(src, dst, ["public.items"])

        queried = _queried()
        assert {"walbridge_capture_snapshot_rows", "walbridge_sink_lag"} <= {_family(n) for n in queried}
        wanted = {role: {n for n in queried if role in _owners(n)} for role in by_role}
        must_emit = {
            role: {n for n in names if _family(n) not in CONDITIONAL and (role, _family(n)) not in UNUSED}
            for role, names in wanted.items()
        }

        def scrapes() -> dict[str, Scrape] | None:
            got = {role: p.scrape() for role, p in by_role.items()}
            missing = {role: sorted(n for n in must_emit[role] if not got[role].emits(n)) for role in got}
            return got if not any(missing.values()) else None

        try:
            got = wait_until(scrapes, timeout_s=60, interval_s=1)
        except AssertionError:
            got = {role: p.scrape() for role, p in by_role.items()}
            missing = {role: sorted(n for n in must_emit[role] if not got[role].emits(n)) for role in got}
            raise AssertionError(f"not emitted by a running process: {missing}") from None
        for role, scrape in got.items():
            assert all(scrape.declares(name) for name in wanted[role]), role
            foreign = sorted(
                f for f in scrape.families if f.startswith("walbridge_") and role not in _owners(f)
            )
            assert not foreign, f"{role} exports other roles' metrics: {foreign}"
        assert got["capture"].total("walbridge_capture_snapshot_rows_total") == 25
        keep = got["capture"].total("walbridge_capture_max_slot_wal_keep_size_bytes")
        safe = got["capture"].total("walbridge_capture_slot_safe_wal_size_bytes")
        assert (keep == -1 and math.isnan(safe)) or (keep > 0 and safe > 0), (keep, safe)
        assert all(p.health() == 200 for p in running), {p.role: p.health() for p in running}

    # Dead letters are kept until deleted, whatever the broker's default retention.
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, f"{topic}.dlq")
    configs = admin.describe_configs([resource])[resource].result(10)
    assert configs["retention.ms"].value == "-1"


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[TcpProxy]:
    """A dedicated broker reachable only through a proxy the test can cut."""
    broker_port = free_port()
    proxy = TcpProxy(broker_port)
    broker = KafkaBroker(tmp_path / "kafka", port=broker_port, advertised_port=proxy.port)
    broker.start()
    try:
        yield proxy
    finally:
        proxy.close()
        broker.stop()


@pytest.fixture
def wal_keep_cap(pg_admin_dsn: str) -> Iterator[int]:
    """``max_slot_wal_keep_size`` set on the server for the test (reloadable), reset after."""
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            yield 1 << 30
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def _insert_one(dsn: str, key: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.items VALUES (%s, 'late', 0)", (key,))


def test_health_and_gauges_follow_progress_while_a_dependency_is_down(
    tmp_path: Path, items_dbs: tuple[str, str], proxied_broker: TcpProxy, topic_prefix: str, wal_keep_cap: int
) -> None:
    src, dst = items_dbs
    with psycopg.connect(dst) as conn:
        dest_port = int(conn.info.port)
    dest_proxy = TcpProxy(dest_port)
    proxied_dst = make_conninfo(dst, host="127.0.0.1", port=str(dest_proxy.port))
    kafka = proxied_broker
    config, _topic = _config(tmp_path / "walbridge.yaml", topic_prefix, f"127.0.0.1:{kafka.port}")
    env = _env(src, proxied_dst)
    with processes() as running:
        capture = Process(
            "capture", ["capture", "--config", str(config)], free_port(), env, tmp_path / "c.log"
        )
        running.append(capture)
        sink_args = ["sink", "postgres", "--config", str(config)]
        sink = Process("sink-postgres", sink_args, free_port(), env, tmp_path / "s.log")
        running.append(sink)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute("INSERT INTO public.items SELECT g, 'a' || g FROM generate_series(100, 120) g")
        wait_same_rows(src, dst, ["public.items"])
        wait_until(lambda: capture.health() == 200 and sink.health() == 200, 30)
        assert capture.health("/readyz") == 200 and sink.health("/readyz") == 200

        # Destination down: the sink stops progressing, its lag grows, it turns unhealthy.
        dest_proxy.cut()
        _insert_one(src, 1001)
        wait_until(lambda: sink.health() == 503, 30)
        assert sink.health("/readyz") == 503
        first = wait_until(lambda: sink.scrape().total("walbridge_sink_lag"), 30)
        _insert_one(src, 1002)
        _insert_one(src, 1003)
        wait_until(lambda: sink.scrape().total("walbridge_sink_lag") > first, 30)
        assert sink.scrape().total("walbridge_sink_last_progress_age_seconds") >= 4
        assert capture.health() == 200, "capture still makes progress (or idles)"
        dest_proxy.restore()
        wait_same_rows(src, dst, ["public.items"])
        wait_until(lambda: sink.health() == 200, 30)
        wait_until(lambda: sink.scrape().total("walbridge_sink_lag") == 0, 30)

        # Broker unreachable: capture's backlog is not acknowledged, the slot's retained WAL keeps
        # growing on the gauge, and capture turns unhealthy.
        retained = "walbridge_capture_slot_retained_wal_bytes"
        kafka.cut()
        before = wait_until(lambda: capture.scrape().total(retained), 30)
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO public.items SELECT g, repeat('x', 200) FROM generate_series(2000, 4000) g"
            )
        wait_until(lambda: capture.scrape().total(retained) > before + 100_000, 30)
        wait_until(lambda: capture.health() == 503, 30)
        scrape = capture.scrape()
        assert scrape.total("walbridge_capture_last_progress_age_seconds") >= 4
        assert scrape.samples['walbridge_capture_slot_wal_status{status="reserved"}'] == 1
        assert scrape.total("walbridge_capture_max_slot_wal_keep_size_bytes") == wal_keep_cap
        assert scrape.total("walbridge_capture_source_wal_dir_bytes") >= scrape.total(retained) > 0
        # PostgreSQL counts in whole WAL segments: up to one segment above the cap.
        assert 0 < scrape.total("walbridge_capture_slot_safe_wal_size_bytes") <= wal_keep_cap + (64 << 20)
        kafka.restore()
        wait_until(lambda: capture.health() == 200, 60)
        wait_same_rows(src, dst, ["public.items"], timeout_s=90)
    dest_proxy.close()
