"""The deployment files and the settings reference agree with the code.

No Docker here: instead of running the compose stack, check what would break it. The walbridge
config files load with :func:`walbridge.config.load_settings`; the compose file references files
that exist, gives every service a healthcheck and takes its secrets from ``.env``; Prometheus
scrapes each walbridge service on its ``metrics.port``; every metric the Grafana dashboard queries
is defined in :mod:`walbridge.metrics`; ``docs/configuration.md`` lists every settings field with
its true default.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from walbridge import config
from walbridge.config import Settings, load_settings
from walbridge.metrics import CAPTURE, SALESFORCE, SINK

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONFIGS = sorted((DEPLOY / "config").glob("*.yaml"))
CONTAINER_CONFIG_DIR = "/etc/walbridge"
ENV_REF = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")
METRIC = re.compile(r"\bwalbridge_[a-z0-9_]+\b")
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = _yaml(DEPLOY / "docker-compose.yml")
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _walbridge_services(compose: dict[str, Any]) -> dict[str, list[str]]:
    """Services running the walbridge image with a config file: name -> command."""
    return {
        name: svc["command"]
        for name, svc in compose["services"].items()
        if svc.get("image", "").startswith("walbridge") and "--config" in svc.get("command", [])
    }


def _config_of(command: list[str]) -> Path:
    container_path = command[command.index("--config") + 1]
    assert container_path.startswith(CONTAINER_CONFIG_DIR + "/"), container_path
    return DEPLOY / "config" / container_path.removeprefix(CONTAINER_CONFIG_DIR + "/")


def _env_refs(data: Any) -> set[str]:
    """The variables named by ``env:NAME`` values (comments do not count)."""
    if isinstance(data, dict):
        return set().union(*(_env_refs(v) for v in data.values()))
    if isinstance(data, list):
        return set().union(*(_env_refs(v) for v in data))
    match = ENV_REF.match(data) if isinstance(data, str) else None
    return {match.group(1)} if match else set()


def _load_with_dummy_env(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in _env_refs(_yaml(path)):
        value = "postgresql://user@db.example:5432/db" if name.endswith("_DSN") else f"dummy-{name.lower()}"
        if name.endswith("_URL"):
            value = "https://dummy.example.com"
        monkeypatch.setenv(name, value)
    return load_settings(path)


def _long_running(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: command
        for name, command in _walbridge_services(compose).items()
        if compose["services"][name].get("restart") != "no"
    }


# --------------------------------------------------------------------------- walbridge config files


def test_there_are_config_files() -> None:
    assert {p.name for p in CONFIGS} >= {"capture.yaml", "sink-postgres.yaml", "sink-salesforce.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_loads_with_the_settings_model(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with_dummy_env(path, monkeypatch)
    assert settings.metrics.enabled
    assert settings.metrics.host == "0.0.0.0", (
        "inside a container the metrics port must listen on every interface"
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_secrets_come_from_the_environment(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_with_dummy_env(path, monkeypatch)
    for sink in settings.sinks:
        if sink.type == "salesforce":
            assert sink.client_secret is not None
            assert sink.client_secret.get_secret_value().startswith("dummy-")


# --------------------------------------------------------------------------- compose


def test_compose_references_existing_files(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"


def test_compose_walbridge_services_use_existing_config_files(compose: dict[str, Any]) -> None:
    services = _walbridge_services(compose)
    assert {"capture", "sink-postgres", "sink-salesforce"} <= set(services)
    for name, command in services.items():
        assert _config_of(command).is_file(), name
        mounts = [v.split(":")[:2] for v in compose["services"][name]["volumes"]]
        assert ["./config", CONTAINER_CONFIG_DIR] in mounts, name


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):
            assert svc.get("restart") == "no", f"{name}: only one-shot services may go without a healthcheck"
        else:
            assert check.get("test"), name


def test_compose_source_is_configured_for_logical_decoding(compose: dict[str, Any]) -> None:
    source = compose["services"]["postgres-source"]
    assert source["image"].startswith("postgres:16")
    assert "wal_level=logical" in source["command"]
    assert any("docker-entrypoint-initdb.d" in v for v in source["volumes"])


def test_compose_uses_apache_kafka_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]


def test_compose_secrets_are_documented_in_env_example(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = (DEPLOY / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.MULTILINE))
    assert used <= documented, used - documented


def test_compose_passes_every_env_reference_of_a_config(compose: dict[str, Any]) -> None:
    for name, command in _walbridge_services(compose).items():
        needed = _env_refs(_yaml(_config_of(command)))
        given = set(compose["services"][name].get("environment", {}))
        assert needed <= given, f"{name} misses {needed - given}"


# --------------------------------------------------------------------------- Prometheus


def _scrape_targets() -> set[str]:
    prom = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets: set[str] = set()
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{host}:{dns['port']}" for host in dns["names"])
    return targets


def _metrics_port(command: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    port = _load_with_dummy_env(_config_of(command), monkeypatch).metrics.port
    if "--metrics-port" in command:
        assert int(command[command.index("--metrics-port") + 1]) == port, (
            "--metrics-port differs from the config"
        )
    return port


def test_prometheus_scrapes_every_walbridge_service(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = _scrape_targets()
    for name, command in _long_running(compose).items():
        if compose["services"][name].get("profiles"):
            continue
        assert f"{name}:{_metrics_port(command, monkeypatch)}" in targets, name


def test_healthchecks_ask_the_metrics_port(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, command in _long_running(compose).items():
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f":{_metrics_port(command, monkeypatch)}/healthz" in test, name


# --------------------------------------------------------------------------- Grafana


def _defined_samples() -> set[str]:
    names: set[str] = set()
    for family in [*CAPTURE.collect(), *SINK.collect(), *SALESFORCE.collect()]:
        names.add(family.name)
        names.update(family.name + suffix for suffix in SAMPLE_SUFFIXES.get(family.type, ()))
    return names


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "walbridge.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", []) if "expr" in t]
    return exprs


def test_dashboard_queries_only_defined_metrics() -> None:
    defined = _defined_samples()
    used = {name for expr in _dashboard_exprs() for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no walbridge metric"
    assert used <= defined, used - defined


def test_dashboard_shows_the_key_metrics() -> None:
    used = {name for expr in _dashboard_exprs() for name in METRIC.findall(expr)}
    wanted = {
        "walbridge_capture_events_total",
        "walbridge_capture_ms_behind_source",
        "walbridge_capture_slot_retained_wal_bytes",
        "walbridge_capture_producer_queue_depth",
        "walbridge_sink_records_total",
        "walbridge_sink_dlq_records_total",
        "walbridge_sink_batch_seconds_bucket",
        "walbridge_salesforce_api_usage",
    }
    assert wanted <= used, wanted - used


def test_grafana_provisioning_points_at_the_dashboards(compose: dict[str, Any]) -> None:
    provider = _yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "walbridge.yml")
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in compose["services"]["grafana"]["volumes"]
    datasource = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "walbridge.json").read_text())
    uids = {
        t["datasource"]["uid"] for expr_panel in dashboard["panels"] for t in expr_panel.get("targets", [])
    }
    assert uids == {datasource["datasources"][0]["uid"]}


# --------------------------------------------------------------------------- Debezium connector


def test_debezium_connector_config() -> None:
    connector = json.loads((DEPLOY / "debezium" / "ecommerce-connector.json").read_text())["config"]
    assert connector["connector.class"] == "io.debezium.connector.postgresql.PostgresConnector"
    assert connector["plugin.name"] == "pgoutput"
    assert connector["transforms.unwrap.delete.tombstone.handling.mode"] == "rewrite-with-tombstone"
    assert connector["database.password"].startswith("${"), "the password must come from a config provider"


# --------------------------------------------------------------------------- docs/configuration.md

SECTIONS: dict[str, type[BaseModel]] = {
    "source": config.SourceSettings,
    "events": config.EventSettings,
    "kafka": config.KafkaSettings,
    "sinks (type: postgres)": config.PostgresSinkSettings,
    "sinks (type: salesforce)": config.SalesforceSinkSettings,
    "dlq": config.DlqSettings,
    "metrics": config.MetricsSettings,
    "top level": Settings,
}


def _doc_rows(section: str) -> dict[str, list[str]]:
    """``key -> cells`` of the table rows under the ``## `section` `` heading."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    match = re.search(rf"^## `{re.escape(section)}`.*?$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"docs/configuration.md has no section ## `{section}`"
    rows = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def _documented_default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        return json.dumps(value.model_dump() if isinstance(value, BaseModel) else value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default)


@pytest.mark.parametrize("section", SECTIONS)
def test_configuration_doc_lists_every_field_with_its_default(section: str) -> None:
    model = SECTIONS[section]
    rows = _doc_rows(section)
    for name, field in model.model_fields.items():
        if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel):
            continue  # a nested section: documented under its own heading
        if name == "sinks":
            assert "sinks" in rows
            continue
        assert name in rows, f"{section}.{name} is missing from docs/configuration.md"
        assert rows[name][2].strip("`") == _documented_default(field), f"{section}.{name}: default"
    extra = set(rows) - set(model.model_fields)
    assert not extra, f"docs/configuration.md documents unknown keys in {section}: {extra}"
