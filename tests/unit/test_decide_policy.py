"""planner.decide with ExecutionPolicies (issue #22): denied before any
workflow, held back by the running quota in creation order, or by a spent
budget until its period rolls over."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentexec import conditions as c
from agentexec import planner
from agentexec.decisions import Quota, Start
from agentexec.policy import build_policy
from tests.unit.test_decide import DOWN, T0, obj, observed, step


def policy(**spec: Any) -> Any:
    status = spec.pop("status", None)
    return build_policy(
        {
            "metadata": {"name": "limits", "namespace": "ns", "resourceVersion": "3"},
            "spec": spec,
            **({"status": status} if status else {}),
        }
    )


def unstarted(**spec: Any) -> dict[str, Any]:
    body = obj(finalizer=False)
    body["spec"] = {**body["spec"], **spec}
    return body


def test_an_execution_breaking_a_rule_fails_policy_denied_before_any_workflow() -> None:
    o = observed(
        unstarted(agent="echo", taskQueue="elsewhere"),
        policies=(policy(allowed={"taskQueues": ["mine"]}),),
    )
    decision, _ = step(o)
    assert decision.request is None
    status = decision.status or {}
    assert status["phase"] == c.FAILED
    assert status["error"]["reason"] == c.POLICY_DENIED
    assert (
        "allowed.taskQueues does not include task queue 'elsewhere'" in status["error"]["message"]
    )
    started = c.condition_of({"status": status}, c.WORKFLOW_STARTED) or {}
    assert (started["status"], started["reason"]) == ("False", c.POLICY_DENIED)
    assert not decision.remove_finalizer  # none was added: no start was ever sent
    assert decision.events[0].reason == c.POLICY_DENIED


def test_an_allowed_execution_starts_as_without_a_policy() -> None:
    allowed = (policy(allowed={"agentTypes": ["echo"]}, concurrency={"maxRunning": 2}),)
    quota = Quota(limit=2, running=1, ahead=0)
    decision, _ = step(observed(unstarted(), policies=allowed, quota=quota))
    assert isinstance(decision.request, Start)


def test_a_full_quota_holds_it_pending_quota_exceeded_with_no_timer() -> None:
    # Two running, or one running and an older one waiting first: no room.
    for quota in (Quota(2, 2, 0), Quota(2, 1, 1)):
        decision, _ = step(observed(unstarted(), quota=quota))
        assert decision.request is None
        assert decision.outcome == "quota-exceeded"
        assert decision.requeue_after is None  # a slot freeing enqueues it
        held = c.condition_of({"status": decision.status}, c.WORKFLOW_STARTED) or {}
        assert (held["status"], held["reason"]) == ("False", c.QUOTA_EXCEEDED)
        assert "at most 2 executions at once" in held["message"]
        assert (decision.status or {})["phase"] == c.PENDING
    # Said once: the same decision on the object as written writes nothing.
    written = unstarted()
    written["status"] = decision.status
    again, _ = step(observed(written, quota=Quota(2, 2, 0)))
    assert again.status is None


def test_a_spent_budget_holds_it_until_the_period_rolls_over() -> None:
    spent = policy(
        budget={"tokens": 100, "period": "Day"},
        status={"budget": {"periodStart": "2026-11-29T00:00:00Z", "used": 120}},
    )
    decision, _ = step(observed(unstarted(), policies=(spent,)))
    assert decision.outcome == "budget-exhausted"
    held = c.condition_of({"status": decision.status}, c.WORKFLOW_STARTED) or {}
    assert held["reason"] == c.BUDGET_EXHAUSTED
    assert "spent 120 of its 100 tokens this day" in held["message"]
    assert decision.requeue_after == 12 * 3600 + 0.5  # T0 is noon; the day ends at midnight
    raised = replace(spent, budget_tokens=1000)
    assert isinstance(step(observed(unstarted(), policies=(raised,)))[0].request, Start)


def test_while_temporal_is_down_it_waits_for_temporal_first() -> None:
    decision = planner.decide(observed(unstarted(), conn=DOWN, quota=Quota(1, 1, 0), now=T0))
    held = c.condition_of({"status": decision.status}, c.WORKFLOW_STARTED) or {}
    assert held["reason"] == c.WAITING_FOR_TEMPORAL


def test_room_in_the_quota_but_older_ones_first_looks_again_without_writing() -> None:
    # Older ones waiting, or an older one's start still in flight: its own
    # start would race theirs (they start in the order created).
    for quota in (
        Quota(limit=3, running=0, ahead=2),
        Quota(limit=3, running=1, ahead=0, in_flight=1),
    ):
        decision, _ = step(observed(unstarted(), quota=quota))
        assert decision.request is None
        assert decision.status is None
        assert decision.outcome == "after-older"
        assert decision.requeue_after == planner.AFTER_OLDER
