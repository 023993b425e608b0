"""The agent loop's pure decisions (temporal/loop_decisions.py): how a step's
attempts end it, tool calls' arguments and approvals, the bounded record."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agentexec.temporal.attempts import Kind
from agentexec.temporal.loop_decisions import (
    MAX_DETAIL,
    MAX_RECORDS,
    LoopEnded,
    StepFailed,
    add_record,
    build_approval_record,
    build_refusal,
    build_step_ending,
    build_step_result,
    build_timeout_decision,
    find_tool_clash,
    needs_approval,
    parse_arguments,
)
from agentexec.temporal.steps import (
    APPROVAL_TIMEOUT,
    APPROVE,
    FAIL,
    REJECT,
    TOOLS_UNAVAILABLE,
    ApprovalDecision,
    ApprovalPolicy,
    ListToolsResult,
    StepRecord,
    Tool,
    ToolCallResult,
    ToolServer,
)
from agentexec.temporal.types import (
    DISRUPTED,
    NO_RUNNER,
    PROVIDER_REJECTED,
    RATE_LIMITED,
    RUNNER_FAILED,
    TIMEOUT,
    ExecutionResult,
)

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
TOOL = Tool(server="calc", name="add")


@pytest.mark.parametrize(
    ("reason", "kind", "ends_the_loop"),
    [
        (RATE_LIMITED, Kind.FAILED, False),  # the caller decides (onError for a tool)
        (PROVIDER_REJECTED, Kind.FATAL, False),
        (TIMEOUT, Kind.FAILED, True),  # the loop's endings, whatever the step
        (DISRUPTED, Kind.DISRUPTED, True),
        (NO_RUNNER, Kind.FAILED, True),
        (RATE_LIMITED, Kind.STOPPED, True),  # not a failure of the step
        (None, Kind.DEADLINE, True),
    ],
)
def test_a_steps_attempts_end_the_step_or_the_loop(
    reason: str | None, kind: Kind, ends_the_loop: bool
) -> None:
    finish = ExecutionResult("Failed", reason=reason, message="it broke")
    ending = build_step_ending(finish, kind, "step 2's model call")
    assert isinstance(ending, LoopEnded if ends_the_loop else StepFailed)
    assert (ending.reason, ending.message) == (
        reason or RUNNER_FAILED,
        "step 2's model call: it broke",
    )


def test_a_steps_result_that_is_not_its_type_fails_the_step() -> None:
    listed = build_step_result({"tools": []}, ListToolsResult, "agent_list_tools", "listing")
    assert listed == ListToolsResult(tools=[])
    with pytest.raises(StepFailed, match="result is not a ListToolsResult") as failed:
        build_step_result(None, ListToolsResult, "agent_list_tools", "listing")
    assert failed.value.reason == RUNNER_FAILED


def test_two_servers_offering_one_tool_name_stop_the_loop() -> None:
    assert find_tool_clash([TOOL, Tool(server="calc", name="sub")]) is None
    clash = find_tool_clash([TOOL, Tool(server="other", name="add")])
    assert clash is not None
    assert clash.reason == TOOLS_UNAVAILABLE
    assert "'calc' and 'other'" in clash.message


@pytest.mark.parametrize(
    ("raw", "told"),
    [('{"a": 1}', None), ("[1]", "not an object"), ("{nope", "not a JSON object")],
)
def test_a_tool_calls_arguments_are_a_json_object_or_the_model_is_told(
    raw: str, told: str | None
) -> None:
    parsed = parse_arguments(raw)
    if told is None:
        assert parsed == {"a": 1}
    else:
        assert isinstance(parsed, ToolCallResult)
        assert parsed.is_error
        assert told in parsed.content


@pytest.mark.parametrize(
    ("require", "policy", "step", "used", "needed"),
    [
        ([], ApprovalPolicy(), 9, 9999, False),
        (["*"], ApprovalPolicy(), 1, 0, True),
        (["add"], ApprovalPolicy(), 1, 0, True),
        (["sub"], ApprovalPolicy(), 1, 0, False),
        ([], ApprovalPolicy(after_steps=2), 2, 0, False),
        ([], ApprovalPolicy(after_steps=2), 3, 0, True),
        ([], ApprovalPolicy(after_tokens=100), 1, 100, False),
        ([], ApprovalPolicy(after_tokens=100), 1, 101, True),
    ],
)
def test_a_tool_call_waits_for_a_person_where_the_agent_says(
    require: list[str], policy: ApprovalPolicy, step: int, used: int, needed: bool
) -> None:
    server = ToolServer(name="calc", url="http://calc", require_approval=require)
    assert needs_approval(policy, server, TOOL, step, used) is needed


def test_an_approval_nobody_gave_becomes_its_on_timeout() -> None:
    for on_timeout, approved in ((APPROVE, True), (REJECT, False)):
        policy = ApprovalPolicy(timeout_seconds=30, on_timeout=on_timeout)
        decision = build_timeout_decision("2-0", policy, 2, TOOL)
        assert isinstance(decision, ApprovalDecision)
        assert (decision.id, decision.approve, decision.approver) == ("2-0", approved, "")
        assert build_refusal(decision) == (
            None
            if approved
            else "error: the call was rejected by the approval timeout: "
            "no decision within 30s (onTimeout: Reject)"
        )
    ended = build_timeout_decision("2-0", ApprovalPolicy(on_timeout=FAIL), 2, TOOL)
    assert isinstance(ended, LoopEnded)
    assert ended.reason == APPROVAL_TIMEOUT


def test_a_refusal_names_who_refused_and_why() -> None:
    refused = ApprovalDecision(id="1-0", approve=False, approver="alice", reason="too risky")
    assert build_refusal(refused) == "error: the call was rejected by alice: too risky"
    record = build_approval_record(1, TOOL, refused, NOW)
    assert (record.kind, record.name, record.error, record.at) == (
        "approval",
        "add",
        True,
        "2026-12-03T12:00:00Z",
    )
    assert record.detail == "rejected by alice: too risky"


def test_the_record_keeps_the_latest_steps_each_bounded() -> None:
    records: list[StepRecord] = []
    for step in range(MAX_RECORDS + 5):
        records = add_record(records, StepRecord(step=step, kind="model"))
    assert [r.step for r in records] == list(range(5, MAX_RECORDS + 5))
    long = ApprovalDecision(id="1-0", approve=True, approver="bob", reason="x" * 500)
    assert len(build_approval_record(1, TOOL, long, NOW).detail) == MAX_DETAIL
