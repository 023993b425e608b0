"""The alert rules only use metrics the code exports: a renamed metric breaks this."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agentexec.metrics import Metrics

ALERTS = Path(__file__).resolve().parents[2] / "charts/agentexec-operator/files/alerts.yaml"
PROMQL_WORDS = {
    "max", "sum", "rate", "by", "and", "or", "unless", "without", "on", "absent",
    "histogram_quantile", "increase",
}  # fmt: skip


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", expr)  # drop label lists
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # drop range selectors
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # drop label matchers
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {t for t in tokens if t not in PROMQL_WORDS and "_" in t}


def test_every_alert_uses_exported_metrics() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {
        "AgentExecTemporalDisconnected",
        "AgentExecTemporalCircuitOpen",
        "AgentExecExecutionsWaitingForTemporal",
        "AgentExecReconcileErrors",
        "AgentExecOperatorAbsent",
        "AgentExecExecutionsFailing",
        "AgentExecRunnerAbsent",
        "AgentExecRunnerAgentsFailing",
        "AgentExecNamespaceBudgetNearlySpent",
        "AgentExecInstallsCrossing",
        "AgentExecForeignReports",
    }
    exported = exported_names()
    for rule in rules:
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, f"{rule['alert']} uses unknown metrics {used - exported}"
        # Every alert names its runbook section, and that section exists.
        assert f"#{rule['annotations']['runbook']}" in rule["annotations"]["description"]


def test_runbook_sections_exist_in_the_operations_guide() -> None:
    guide = (ALERTS.parents[3] / "docs" / "operations.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in guide.splitlines()
        if line.startswith("#")
    }
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["annotations"]["runbook"] for r in rules} <= anchors


def test_disconnected_alert_is_per_replica() -> None:
    rules = {
        r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    }
    assert "by" not in rules["AgentExecTemporalDisconnected"]["expr"]


def test_the_contract_metric_names_are_exported() -> None:
    exported = exported_names()
    for name in (
        "temporal_connection_status",
        "temporal_reconnection_attempts_total",
        "temporal_connection_duration_seconds_bucket",
        "temporal_workers_running",
        "temporal_circuit_open",
        "temporal_health_probe_duration_seconds_bucket",
        "temporal_health_probe_failures_total",
        "agentexec_executions",
        "agentexec_workflow_starts_total",
        "agentexec_waiting_for_temporal",
        "agentexec_reconcile_duration_seconds_bucket",
        "agentexec_executions_finished_total",
        "agentexec_execution_duration_seconds_bucket",
        "agentexec_build_info",
        "agentexec_runner_agents_running",
        "agentexec_runner_agent_attempts_total",
        "agentexec_tokens_total",
        "agentexec_namespace_token_budget",
        "agentexec_namespace_tokens_used",
        "agentexec_foreign_pollers",
        "agentexec_foreign_reports_total",
    ):
        assert name in exported, name


ALERT_TESTS = ALERTS.parents[3] / "tests" / "alerts"


def test_each_alert_group_has_promtool_tests_that_see_each_alert_fire_and_stay_silent() -> None:
    """`make lint` runs `promtool test rules tests/alerts/*.test.yaml`; this
    keeps one file per group, each proving both sides of each of its alerts."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    files = {p.name for p in ALERT_TESTS.glob("*.test.yaml")}
    assert files == {f"{g['name']}.test.yaml" for g in groups}
    for group in groups:
        tests = yaml.safe_load((ALERT_TESTS / f"{group['name']}.test.yaml").read_text())
        assert tests["rule_files"] == ["../../charts/agentexec-operator/files/alerts.yaml"]
        cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
        for rule in group["rules"]:
            seen = [c for c in cases if c["alertname"] == rule["alert"]]
            assert any(c.get("exp_alerts") for c in seen), f"{rule['alert']} never fires"
            assert any(not c.get("exp_alerts") for c in seen), f"{rule['alert']} never silent"
        others = {c["alertname"] for c in cases} - {r["alert"] for r in group["rules"]}
        assert not others, f"{group['name']}: tests alerts of other groups {others}"


def test_the_operator_absent_alert_does_not_count_runner_series() -> None:
    rules = {
        r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    }
    assert rules["AgentExecOperatorAbsent"]["expr"] == (
        'absent(agentexec_build_info{component!="runner"})'
    )
