"""The alert rules of deploy/prometheus/rules.yml: loaded by Prometheus, unit-tested, documented.

``promtool test rules`` runs tests/deploy/alert_rules_test.yml: for every alert, synthetic series on which it
must fire (with its labels and annotations) and a healthy look-alike on which it must stay quiet.
"""

from __future__ import annotations

import re
import subprocess

from deploy_tools import DEPLOY, ROOT, load_yaml, program
from prometheus_client import CollectorRegistry

from walbridge import metrics

RULES = DEPLOY / "prometheus" / "rules.yml"
RULE_TESTS = ROOT / "tests" / "deploy" / "alert_rules_test.yml"
METRIC = re.compile(r"\bwalbridge_[a-z0-9_]+\b")
SAMPLE_SUFFIX = re.compile(r"_(total|created|bucket|sum|count)$")


def _alerts() -> dict[str, str]:
    """alert name -> expression."""
    groups = load_yaml(RULES)["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [program("promtool", "prometheus"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_prometheus_config_loads_the_rules() -> None:
    out = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in out.stdout, out.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    out = _promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_alerts_the_issue_asks_for_exist() -> None:
    assert set(_alerts()) >= {
        "WalbridgeSlotWalRetained",
        "WalbridgeCaptureNotProgressing",
        "WalbridgeSinkLagGrowing",
        "WalbridgeSinkDeadLetters",
        "WalbridgeSalesforceApiUsageHigh",
        "WalbridgeProcessDown",
    }


def test_every_alert_has_a_firing_unit_test() -> None:
    firing = {
        case["alertname"]
        for test in load_yaml(RULE_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing == set(_alerts())


def test_every_alert_is_explained_in_the_operations_guide() -> None:
    guide = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in _alerts() if f"`{name}`" not in guide]
    assert not missing, f"docs/operations.md does not explain {missing}"


def _defined_metrics() -> set[str]:
    """Every metric family of walbridge's registries, however :mod:`walbridge.metrics` arranges them."""
    return {
        family.name
        for registry in vars(metrics).values()
        if isinstance(registry, CollectorRegistry)
        for family in registry.collect()
    }


def test_alert_rules_use_only_metrics_walbridge_defines() -> None:
    used = {SAMPLE_SUFFIX.sub("", name) for expr in _alerts().values() for name in METRIC.findall(expr)}
    assert used
    undefined = used - _defined_metrics()
    assert not undefined, undefined
