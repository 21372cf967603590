"""The Grafana dashboard and the alert rules ask only for what the service exports,
and the alert rules behave as their promtool unit tests say."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import Api

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "storefront.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    "sum", "rate", "increase", "irate", "histogram_quantile", "avg", "max", "min", "count", "by",
    "without", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "time", "abs",
    "clamp_min", "clamp_max", "delta", "deriv", "topk", "bottomk", "vector", "scalar", "offset",
}  # fmt: skip
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"(?<![\w$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in _PROMQL_WORDS}


def exported_series(metrics_text: str) -> set[str]:
    """Every series name the exposition can hold, including families with no sample yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, str]]:
    rules: list[dict[str, str]] = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    return rules


async def _exported(api: Api) -> set[str]:
    await api.call("GET", "/api/products")  # at least one request observed
    reply = await api.call("GET", "/metrics")
    assert reply.status == 200, reply
    return exported_series(reply.body.decode())


def test_metric_names_are_read_from_expressions() -> None:
    expr = 'sum by (route, le) (rate(http_request_duration_seconds_bucket{status=~"5.."}[5m])) / sum(up)'
    assert metric_names(expr) == {"http_request_duration_seconds_bucket", "up"}


async def test_every_dashboard_query_names_a_metric_the_service_exports(api: Api) -> None:
    exported = await _exported(api)
    queries = dashboard_queries()
    assert len(queries) >= 10
    unknown = {name for expr in queries for name in metric_names(expr)} - exported
    assert unknown == set()


async def test_every_alert_names_a_metric_the_service_exports(api: Api) -> None:
    exported = await _exported(api)
    unknown = {name for rule in alert_rules() for name in metric_names(rule["expr"])} - exported
    assert unknown == set()


def test_every_alert_has_a_runbook_entry() -> None:
    doc = OPERATIONS_DOC.read_text()
    headings = {line.removeprefix("### ").strip() for line in doc.splitlines() if line.startswith("### ")}
    assert {rule["alert"] for rule in alert_rules()} <= headings


def test_every_alert_has_a_firing_and_a_silent_promtool_case() -> None:
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    silent = {t["alertname"] for case in cases for t in case["alert_rule_test"] if not t["exp_alerts"]}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts == firing == silent


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI (.ci/run installs Debian's prometheus package)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
