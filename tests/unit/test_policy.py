"""ExecutionPolicy decisions (issue #22), pure: allow-lists on what an
execution resolves to, quotas, budgets per period."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentexec.policy import (
    PolicyCache,
    budget_exhausted,
    build_policy,
    build_uses,
    max_running,
    period_bounds,
    plan_charge,
    policy_denial,
    token_limit,
    used_now,
)
from agentexec.temporal.types import AgentSpec

NOW = datetime(2026, 12, 3, 14, 30, 5, tzinfo=UTC)  # a Thursday
DEFAULT_QUEUE = "ns.aex-runner"


def body(name: str = "team-a", namespace: str = "a", status: Any = None, **spec: Any) -> Any:
    return {
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
        "spec": spec,
        **({"status": status} if status else {}),
    }


def execution(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x", "namespace": "a"}, "spec": {"message": "hi", **spec}}


TEAM_A = build_policy(
    body(allowed={"providers": ["pa"], "models": ["ma"], "agentTypes": ["chat", "echo"],
                  "taskQueues": ["qa"]})
)  # fmt: skip


@pytest.mark.parametrize(
    ("exe", "agent", "denied"),
    [
        (execution(agent="echo"), None, None),
        (execution(agent="chat", parameters={"provider": "pa", "model": "ma"}), None, None),
        (execution(agent="echo", taskQueue=DEFAULT_QUEUE), None, None),
        (
            execution(agent="chat", parameters={"provider": "pb", "model": "ma"}),
            None,
            "ExecutionPolicy 'team-a': allowed.providers does not include provider 'pb' "
            "(from the execution; allowed: pa)",
        ),
        (
            execution(agent="shell"),
            None,
            "allowed.agentTypes does not include agent type 'shell' (from the execution; "
            "allowed: chat, echo)",
        ),
        (
            execution(agent="chat", parameters={"model": "ma"}),
            None,
            "a chat agent must name its provider while allowed.providers is set",
        ),
        (
            execution(agent="echo", taskQueue="qb"),
            None,
            "allowed.taskQueues does not include task queue 'qb'",
        ),
        # What the Agent says counts, though the execution named none of it.
        (
            execution(agent="helper"),
            AgentSpec(name="helper", type="chat", model="mb", provider="pa"),
            "allowed.models does not include model 'mb' (from Agent 'helper'; allowed: ma)",
        ),
        (
            execution(agent="helper"),
            AgentSpec(name="helper", type="echo", task_queue="qb"),
            "allowed.taskQueues does not include task queue 'qb' (from Agent 'helper'",
        ),
        (execution(agent="helper"), AgentSpec(name="helper", type="echo", task_queue="qa"), None),
    ],
)
def test_what_an_execution_resolves_to_is_checked(
    exe: dict[str, Any], agent: AgentSpec | None, denied: str | None
) -> None:
    found = policy_denial([TEAM_A], build_uses(exe, agent), DEFAULT_QUEUE)
    if denied is None:
        assert found is None
    else:
        assert found is not None
        assert denied in found


def test_no_policy_or_no_list_allows_anything() -> None:
    anything = build_uses(
        execution(agent="shell", taskQueue="q", parameters={"provider": "p"}), None
    )
    assert policy_denial([], anything, DEFAULT_QUEUE) is None
    assert policy_denial([build_policy(body())], anything, DEFAULT_QUEUE) is None
    # An empty list allows nothing.
    none = build_policy(body(allowed={"agentTypes": []}))
    assert "allowed: none" in str(policy_denial([none], anything, DEFAULT_QUEUE))


def test_every_policy_of_the_namespace_applies() -> None:
    wide = build_policy(body(name="wide", allowed={"providers": ["pa", "pb"]}))
    narrow = build_policy(body(name="narrow", allowed={"providers": ["pa"]}))
    uses = build_uses(execution(agent="chat", parameters={"provider": "pb"}), None)
    assert "ExecutionPolicy 'narrow'" in str(policy_denial([wide, narrow], uses, DEFAULT_QUEUE))
    assert max_running([build_policy(body(concurrency={"maxRunning": 5})),
                        build_policy(body(name="b", concurrency={"maxRunning": 3})),
                        wide]) == 3  # fmt: skip
    assert max_running([wide]) is None


def test_the_cache_holds_each_namespace_s_policies() -> None:
    cache = PolicyCache()
    cache.put(body(name="b"))
    cache.put(body(name="a"))
    cache.put(body(name="c", namespace="other"))
    assert [p.name for p in cache.of("a")] == ["a", "b"]
    cache.remove(body(name="a"))
    assert [p.name for p in cache.of("a")] == ["b"]
    assert cache.of("none") == []
    assert len(cache) == 2


@pytest.mark.parametrize(
    ("period", "start", "end"),
    [
        ("Hour", "2026-12-03T14:00:00", "2026-12-03T15:00:00"),
        ("Day", "2026-12-03T00:00:00", "2026-12-04T00:00:00"),
        ("Week", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("Month", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_periods_are_utc_calendar_periods(period: str, start: str, end: str) -> None:
    got = period_bounds(period, NOW)
    assert tuple(t.strftime("%Y-%m-%dT%H:%M:%S") for t in got) == (start, end)


def test_a_spent_budget_holds_new_executions_until_the_period_rolls_over() -> None:
    status = {"budget": {"periodStart": "2026-12-03T00:00:00Z", "used": 1000, "executions": 4}}
    spent = build_policy(body(budget={"tokens": 1000, "period": "Day"}, status=status))
    held = budget_exhausted([spent], NOW)
    assert held is not None
    assert "spent 1000 of its 1000 tokens this day" in held.message
    assert "2026-12-04T00:00:00Z" in held.message
    assert held.retry_after == pytest.approx(9 * 3600 + 29 * 60 + 55 + 0.5)
    # Raised: it goes.
    raised = build_policy(body(budget={"tokens": 5000, "period": "Day"}, status=status))
    assert budget_exhausted([raised], NOW) is None
    # The next day: spending starts from zero.
    tomorrow = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)
    assert used_now(spent, tomorrow) == 0
    assert budget_exhausted([spent], tomorrow) is None


def test_charging_adds_in_the_period_and_starts_again_in_the_next() -> None:
    status = {"budget": {"periodStart": "2026-12-03T00:00:00Z", "used": 100, "executions": 1}}
    policy = build_policy(body(budget={"tokens": 1000, "period": "Day"}, status=status))
    assert plan_charge(policy, 50, NOW) == {
        "budget": {"periodStart": "2026-12-03T00:00:00Z", "used": 150, "executions": 2}
    }
    later = datetime(2026, 12, 5, 1, tzinfo=UTC)
    assert plan_charge(policy, 50, later) == {
        "budget": {"periodStart": "2026-12-05T00:00:00Z", "used": 50, "executions": 1}
    }
    assert plan_charge(build_policy(body()), 50, NOW) is None


def test_token_limit_reads_spec_limits_max_tokens() -> None:
    assert token_limit({"limits": {"maxTokens": 500}}) == 500
    assert token_limit({"limits": {"maxTokens": True}}) is None
    assert token_limit({"limits": {}}) is None
    assert token_limit({}) is None
    assert token_limit(None) is None


def test_budgets_are_exported_as_of_the_scrape() -> None:
    from agentexec.metrics import Metrics

    cache = PolicyCache()
    today = datetime.now(UTC).strftime("%Y-%m-%dT00:00:00Z")
    cache.put(body(budget={"tokens": 1000, "period": "Day"},
                   status={"budget": {"periodStart": today, "used": 250}}))  # fmt: skip
    long_ago = {"budget": {"periodStart": "2020-01-01T00:00:00Z", "used": 9}}
    cache.put(body(name="old", namespace="b", budget={"tokens": 10, "period": "Day"},
                   status=long_ago))  # fmt: skip
    cache.put(body(name="no-budget", namespace="c", concurrency={"maxRunning": 2}))
    metrics = Metrics()
    metrics.budgets = cache.all
    sample = metrics.registry.get_sample_value
    labels = {"execution_namespace": "a", "policy": "team-a", "period": "Day"}
    assert sample("agentexec_namespace_token_budget", labels) == 1000
    assert sample("agentexec_namespace_tokens_used", labels) == 250
    # A period that rolled over reads 0 before the operator writes anything.
    old = {"execution_namespace": "b", "policy": "old", "period": "Day"}
    assert sample("agentexec_namespace_tokens_used", old) == 0
    assert sample("agentexec_namespace_token_budget", {**old, "execution_namespace": "c"}) is None
