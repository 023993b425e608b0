"""The Grafana dashboard (charts/.../files/dashboard.json): a data source and
a namespace to choose, and no count doubled by a second replica (#21)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.unit.test_alerts import exported_names, metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "charts/agentexec-operator/files/dashboard.json"
# Gauges each replica reports alike (from its own cache of every execution).
SAME_ON_EVERY_REPLICA = ("agentexec_executions", "agentexec_waiting_for_temporal")


def panels() -> list[dict]:  # type: ignore[type-arg]
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_the_data_source_and_the_namespace_are_variables() -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert (
        variables["namespace"]["query"]["query"] == "label_values(agentexec_build_info, namespace)"
    )
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            # Every selector is scoped to the chosen namespace.
            selectors = re.findall(r"[a-z_:]+\{([^}]*)\}", target["expr"])
            assert selectors, panel["title"]
            assert all('namespace="$namespace"' in s for s in selectors), target["expr"]


def test_gauges_every_replica_reports_are_never_summed_across_replicas() -> None:
    for panel in panels():
        for target in panel["targets"]:
            for name in SAME_ON_EVERY_REPLICA:
                if re.search(rf"\b{name}\b(?!_)", target["expr"]):
                    assert not target["expr"].startswith(("sum", "count")), target["expr"]


def test_the_dashboard_uses_exported_metrics() -> None:
    exported = exported_names()
    for panel in panels():
        for target in panel["targets"]:
            used = metric_names(target["expr"]) - {"histogram_quantile"}
            assert used, panel["title"]
            assert used <= exported, f"{panel['title']}: {used - exported}"


def test_the_dashboard_shows_token_spend_per_namespace_and_against_budgets() -> None:
    exprs = {p["title"]: p["targets"][0]["expr"] for p in panels()}
    spend = exprs["Tokens spent per hour by namespace (runners)"]
    assert spend.startswith("sum by (execution_namespace) (rate(agentexec_tokens_total")
    assert (
        "agentexec_namespace_token_budget"
        in exprs["Token budget spent this period (ExecutionPolicy)"]
    )
