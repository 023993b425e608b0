"""The agent loop's pure pieces: the loop spec from an Agent, which
AgentApprovals are relayed, and what a loop report writes."""

from __future__ import annotations

from datetime import UTC, datetime

from agentexec.approvals import plan_approvals
from agentexec.planner import plan_loop_status
from agentexec.temporal.steps import ApprovalPolicy, ToolServer, build_loop_spec

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_the_loop_spec_resolves_services_and_defaults() -> None:
    spec = build_loop_spec(
        {
            "tools": [
                {"name": "a", "url": "http://x/mcp", "requireApproval": ["rm"], "onError": "Fail"},
                {"name": "b", "service": {"name": "tools", "port": 8080}},
            ],
            "approval": {"onTimeout": "Bogus", "afterSteps": 3},
        },
        "team",
        max_tokens=500,
        tool_choice="add",
    )
    assert spec.tools == [
        ToolServer("a", "http://x/mcp", require_approval=["rm"], on_error="Fail"),
        ToolServer("b", "http://tools.team.svc:8080/mcp"),
    ]
    assert spec.approval == ApprovalPolicy(after_steps=3, on_timeout="Reject")
    assert (spec.max_steps, spec.max_tokens, spec.tool_choice) == (20, 500, "add")


def approval(name: str, call: str, applied: bool = False) -> dict[str, object]:
    status = {"conditions": [{"type": "Applied", "status": "True"}]} if applied else {}
    return {
        "metadata": {"name": name},
        "spec": {"execution": "ask", "id": call, "decision": "Approve", "approver": "alice"},
        "status": status,
    }


def test_only_the_call_waited_for_is_relayed() -> None:
    execution = {
        "status": {
            "pendingApproval": {"id": "2-0", "tool": "add"},
            "lastApproval": {"id": "1-0", "approval": "first", "decision": "Approved"},
        }
    }
    relays = plan_approvals(
        execution,
        [
            approval("now", "2-0"),
            approval("late", "1-0"),
            approval("ahead", "3-0"),
            approval("done", "2-0", applied=True),
        ],
        terminal=False,
    )
    assert [(r.name, r.signal is not None, r.applied, r.reason) for r in relays] == [
        ("now", True, True, "Relayed"),
        ("late", False, False, "AlreadyDecided"),
    ]
    assert relays[0].signal is not None
    assert relays[0].signal.approver == "alice"
    ended = plan_approvals({"status": {}}, [approval("ahead", "3-0")], terminal=True)
    assert [(r.name, r.reason) for r in ended] == [("ahead", "NotPending")]


def test_a_loop_report_says_what_waits_and_who_decided() -> None:
    body = {"metadata": {"name": "ask"}, "status": {}}
    pending = {"id": "1-0", "step": 1, "tool": "add", "timeoutSeconds": 60, "onTimeout": "Reject"}
    patch, events = plan_loop_status(body, {"progress": {}, "pendingApproval": pending}, NOW, [])
    assert patch["conditions"][0]["type"] == "AwaitingApproval"
    assert patch["conditions"][0]["status"] == "True"
    assert [e.reason for e in events] == ["ApprovalRequested"]
    waited = {"metadata": {"name": "ask"}, "status": {**patch}}
    last = {"id": "1-0", "decision": "Approved", "approver": "alice"}
    patch, events = plan_loop_status(
        waited, {"pendingApproval": None, "lastApproval": last}, NOW, patch["conditions"]
    )
    assert patch["conditions"][0]["status"] == "False"
    assert patch["conditions"][0]["reason"] == "Approved"
    assert [(e.reason, "alice" in e.message) for e in events] == [("Approved", True)]
    # The same report again is no news.
    again = {"metadata": {"name": "ask"}, "status": {**patch}}
    assert plan_loop_status(again, {"lastApproval": last}, NOW, patch["conditions"])[1] == ()
