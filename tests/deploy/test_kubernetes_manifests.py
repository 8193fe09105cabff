"""deploy/kubernetes/ renders with kustomize and is valid Kubernetes, checked offline.

kubectl (Debian's kubernetes-client, kustomize v2.0 inside; any newer one renders the same) renders the
base and the staging overlay; kubernetes-validate checks every built-in resource against the Kubernetes JSON
schemas, strictly (an unknown field fails). The Prometheus Operator's PodMonitor and the Strimzi example have
no schema offline: their cross-references (labels, ports, Secret and service names) are checked instead.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from deploy_tools import DEPLOY, load_yaml, load_yaml_all, program

from walbridge.config import load_settings

KUBE = DEPLOY / "kubernetes"
OVERLAYS = ["base", "staging"]
OPERATOR_KINDS = {"PodMonitor"}
WALBRIDGE_COMMANDS = {"capture", "sink"}


@cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [program("kubectl", "kubernetes-client"), "kustomize", str(KUBE / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return tuple(load_yaml_all(out.stdout))


def _of_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in _render(overlay) if doc["kind"] == kind}


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _walbridge_containers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(deployment, container) of every long-running capture or sink container."""
    return [
        (deployment, container)
        for deployment in _of_kind(overlay, "Deployment").values()
        for container in deployment["spec"]["template"]["spec"]["containers"]
        if set(container["args"]) & WALBRIDGE_COMMANDS
    ]


def _config_map(overlay: str) -> dict[str, Any]:
    (config,) = _of_kind(overlay, "ConfigMap").values()
    return config


def _strimzi() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in load_yaml_all((KUBE / "strimzi" / "kafka.yaml").read_text())}


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_pass_the_kubernetes_schemas(overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in _render(overlay):
        kinds.add(doc["kind"])
        if doc["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert {"Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget", "PodMonitor"} <= kinds


def test_the_schema_check_refuses_an_unknown_field() -> None:
    deployment = dict(_of_kind("base", "Deployment")["capture"])
    deployment["spec"] = {**deployment["spec"], "replica": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


# --------------------------------------------------------------------------- workloads


def test_capture_is_one_replica_replaced_not_rolled() -> None:
    capture = _of_kind("base", "Deployment")["capture"]
    assert capture["spec"]["replicas"] == 1
    assert capture["spec"]["strategy"] == {"type": "Recreate"}, "two captures would fight over the slot"
    (setup,) = capture["spec"]["template"]["spec"]["initContainers"]
    assert "setup" in setup["args"]
    volumes = {v["name"]: v for v in capture["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["state"], "the snapshot decision lives in the source: no volume to keep"


def test_sinks_have_disruption_budgets_over_a_shared_group() -> None:
    deployments = _of_kind("base", "Deployment")
    budgets = _of_kind("base", "PodDisruptionBudget")
    for name in ("sink-postgres", "sink-salesforce"):
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        selector = budgets[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels.items(), name
    assert deployments["sink-postgres"]["spec"]["replicas"] >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_runs_as_the_image_user(overlay: str) -> None:
    for deployment in _of_kind(overlay, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
        for container in _containers(deployment):
            resources = container["resources"]
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"]), where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where


def test_walbridge_containers_are_probed_on_their_metrics_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = _config_map("base")["data"]
    for deployment, container in _walbridge_containers("base"):
        config = container["args"][container["args"].index("--config") + 1]
        port = _load(data[Path(config).name], container, monkeypatch, tmp_path).metrics.port
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= 90, "a Salesforce call in flight (60 s) and the commit"


def test_walbridge_logs_are_json_lines() -> None:
    for deployment in _of_kind("staging", "Deployment").values():
        for container in _containers(deployment):
            assert container["args"][:2] == ["--log-format", "json"], deployment["metadata"]["name"]


# --------------------------------------------------------------------------- configs and secrets


def _load(text: str, container: dict[str, Any], patch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """A config of the ConfigMap, loaded with (dummy values of) exactly the variables the container gets."""
    for name in [n for n in os.environ if n.startswith("WALBRIDGE_")]:
        patch.delenv(name)
    for env in container.get("env", []):
        name = env["name"]
        value = "postgresql://user@db.example:5432/db" if name.endswith("_DSN") else "dummy"
        patch.setenv(name, "https://x.example.com" if name.endswith("_URL") else value)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_settings(path)


def test_configs_load_with_the_environment_their_containers_get(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config_map = _config_map("base")
    for deployment in _of_kind("base", "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
        for container in _containers(deployment):
            config = Path(container["args"][container["args"].index("--config") + 1]).name
            with monkeypatch.context() as patch:
                settings = _load(config_map["data"][config], container, patch, tmp_path)
            assert settings.metrics.host == "0.0.0.0"
            assert settings.kafka.options["security.protocol"] == "SASL_SSL"
            assert settings.kafka.client_options()["sasl.password"] == "dummy"


# --------------------------------------------------------------------------- monitoring and Kafka


def test_the_pod_monitor_scrapes_every_walbridge_pod() -> None:
    (monitor,) = _of_kind("base", "PodMonitor").values()
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    pod_name = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    service = {"sourceLabels": [pod_name], "targetLabel": "service"}
    assert service in endpoint["relabelings"], "deploy/prometheus/rules.yml keys its alerts on `service`"
    for deployment, _ in _walbridge_containers("base"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]


def test_the_strimzi_example_has_the_names_the_manifests_use() -> None:
    strimzi = _strimzi()
    kafka, pool, user = strimzi["Kafka"], strimzi["KafkaNodePool"], strimzi["KafkaUser"]
    assert pool["spec"]["replicas"] == 3 and set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert kafka["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"
    cluster = kafka["metadata"]["name"]
    for member in (pool, user):
        assert member["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    for text in _config_map("base")["data"].values():
        kafka_settings = load_yaml_text(text)["kafka"]
        assert kafka_settings["bootstrap_servers"] == f"{cluster}-kafka-bootstrap:{listener['port']}"
        assert kafka_settings["replication_factor"] == 3
        assert kafka_settings["options"]["sasl.username"] == user["metadata"]["name"]
    for deployment in _of_kind("base", "Deployment").values():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["kafka-ca"]["secret"]["secretName"] == f"{cluster}-cluster-ca-cert"
    for _, container in _walbridge_containers("base"):
        refs = [env["valueFrom"]["secretKeyRef"] for env in container["env"]]
        assert {"name": user["metadata"]["name"], "key": "password"} in refs


def load_yaml_text(text: str) -> Any:
    (doc,) = load_yaml_all(text)
    return doc


def test_the_strimzi_file_is_not_part_of_the_kustomization() -> None:
    kustomization = load_yaml(KUBE / "base" / "kustomization.yaml")
    assert not any("strimzi" in r for r in kustomization["resources"])
