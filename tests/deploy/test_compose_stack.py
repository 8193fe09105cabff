"""The compose stack behaves as an operator needs (checked offline: there is no Docker here).

Both compose files pass the compose-spec schema (check-jsonschema's copy); the databases are checked ready
over TCP; stop periods cover each program's own shutdown; every container has rotated logs and resource
limits; walbridge's logs are lines without a terminal; the Salesforce sink only runs in its profile; the
destination is written by a role that is not the superuser; Prometheus gets the alert rules.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from compose_files import BASE, TLS
from deploy_tools import DEPLOY, load_yaml

COMPOSE = load_yaml(BASE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
WALBRIDGE = {name: svc for name, svc in SERVICES.items() if svc.get("image", "").startswith("walbridge")}


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


@pytest.mark.parametrize("path", [BASE, TLS], ids=lambda p: p.name)
def test_compose_file_passes_the_compose_spec_schema(path: Path) -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_databases_are_checked_over_tcp() -> None:
    # While the image's init scripts run the server listens on its socket only: a socket check passes early.
    for name in ("postgres-source", "postgres-dest"):
        test = " ".join(SERVICES[name]["healthcheck"]["test"])
        assert "pg_isready -h 127.0.0.1" in test, name


def test_stop_grace_periods_cover_each_shutdown() -> None:
    for name, svc in WALBRIDGE.items():
        # A Salesforce call in flight (60 s HTTP timeout) or --workers' 60 s wait, then the commit.
        assert _seconds(svc["stop_grace_period"]) >= 90, name
    for name in ("postgres-source", "postgres-dest"):
        assert _seconds(SERVICES[name]["stop_grace_period"]) >= 60, name
    assert _seconds(SERVICES["kafka"]["stop_grace_period"]) >= 60


def test_walbridge_containers_have_an_init_process() -> None:
    # Without one the emulator (PID 1, no SIGTERM handler) ignores `docker compose stop` until it is killed.
    for name, svc in WALBRIDGE.items():
        assert svc.get("init") is True, name


def test_every_container_rotates_its_logs() -> None:
    for name, svc in SERVICES.items():
        logging = svc.get("logging", {})
        assert logging.get("driver") == "json-file" and logging["options"].get("max-size"), name


def test_long_running_containers_have_resource_limits() -> None:
    for name, svc in SERVICES.items():
        if svc.get("restart") == "no":
            continue
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), name


def test_walbridge_logs_are_lines_without_a_terminal() -> None:
    # Rich output is wrapped at 80 columns where there is no terminal; plain and json are one line a record.
    for name, svc in WALBRIDGE.items():
        command = svc["command"]
        assert command[:1] == ["--log-format"] and command[1] in ("plain", "json"), name


def test_salesforce_sink_runs_only_in_its_profile() -> None:
    sink = SERVICES["sink-salesforce"]
    assert sink["profiles"] == ["salesforce"], "with the example's placeholder credentials it crash-loops"
    emulator = sink["depends_on"]["sf-emulator"]
    assert emulator == {"condition": "service_healthy", "required": False}
    assert SERVICES["sf-emulator"]["profiles"] == ["emulator"]


def test_verify_is_a_one_off_service() -> None:
    verify = SERVICES["verify"]
    assert verify["restart"] == "no" and verify["profiles"] == ["tools"]
    assert "verify" in verify["command"]


def test_the_sink_does_not_write_as_the_superuser() -> None:
    example = (DEPLOY / ".env.example").read_text()
    dsn = re.search(r"^WALBRIDGE_DEST_DSN=(.*)$", example, re.MULTILINE)
    assert dsn and dsn.group(1).startswith("postgresql://walbridge_sink:")
    init = (DEPLOY / "postgres" / "destination-init.sh").read_text()
    assert "CREATE ROLE walbridge_sink WITH LOGIN PASSWORD" in init and "SUPERUSER" not in init
    mounts = SERVICES["postgres-dest"]["volumes"]
    assert "./postgres/destination-init.sh:/docker-entrypoint-initdb.d/00-destination-init.sh:ro" in mounts


def test_prometheus_loads_the_alert_rules() -> None:
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert prometheus["rule_files"] == ["rules.yml"]
    assert "./prometheus/rules.yml:/etc/prometheus/rules.yml:ro" in SERVICES["prometheus"]["volumes"]
