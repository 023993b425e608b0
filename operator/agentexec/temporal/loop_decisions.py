"""What the agent loop decides without asking the world (temporal/loop.py):
how a step's attempts end the step or the loop, what a tool call's arguments
are, whether the call waits for a person and what a wait that nobody
answered becomes, what the model is told instead of a result, and what each
step leaves in the record `kubectl agentexec steps` shows.

Pure, as temporal/attempts.py: no I/O and no workflow calls, the time is an
argument (the workflow's ``workflow.now()``), so replays stay deterministic.
The workflow imports it passed through its sandbox.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TypeVar

from temporalio.converter import value_to_type

from agentexec.temporal.attempts import AttemptBook, Kind
from agentexec.temporal.steps import (
    APPROVAL,
    APPROVAL_TIMEOUT,
    APPROVE,
    BUDGET_EXCEEDED,
    FAIL,
    MODEL,
    TOOL,
    TOOLS_UNAVAILABLE,
    ApprovalDecision,
    ApprovalPolicy,
    ModelCallResult,
    PendingApproval,
    StepRecord,
    Tool,
    ToolCallResult,
    ToolServer,
)
from agentexec.temporal.types import (
    DISRUPTED,
    NO_RUNNER,
    RUNNER_FAILED,
    TIMEOUT,
    ExecutionResult,
)

MAX_RECORDS = 100  # steps the query shows (earlier ones are in earlier runs' histories)
MAX_DETAIL = 200  # characters of a step's detail
# Endings of a step's attempts that end the whole loop, whatever the step
# (a tool's onError does not apply): the deadline, too many disruptions, no
# runner at all.
LOOP_ENDINGS = frozenset({TIMEOUT, DISRUPTED, NO_RUNNER})

R = TypeVar("R")


class LoopEnded(Exception):
    """The loop ends Failed with this reason and message (usage and attempts
    come from the book)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class StepFailed(Exception):
    """A step's attempts failed beyond its backoffLimit, or in a way retrying
    cannot fix: the caller decides (a model call ends the loop, a tool's
    failure is reported to the model or ends it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def build_step_result(out: Any, result_type: type[R], activity: str, what: str) -> R:
    """A succeeded attempt's result as the step's type, or StepFailed."""
    try:
        decoded = value_to_type(result_type, out)
    except (TypeError, ValueError) as exc:
        raise StepFailed(
            RUNNER_FAILED,
            f"{what}: the runner's {activity} result is not a {result_type.__name__}: {exc}",
        ) from None
    if isinstance(decoded, result_type):
        return decoded
    raise StepFailed(RUNNER_FAILED, f"{what}: the runner's {activity} sent nothing")


def build_step_ending(finish: ExecutionResult, kind: Kind, what: str) -> LoopEnded | StepFailed:
    """The attempts of ``what`` are over (``finish``, the last one ended as
    ``kind``): the loop ends, or the step failed and its caller decides."""
    reason = finish.reason or RUNNER_FAILED
    message = f"{what}: {finish.message}"
    if reason in LOOP_ENDINGS or kind not in (Kind.FAILED, Kind.FATAL):
        return LoopEnded(reason, message)
    return StepFailed(reason, message)


def tokens_used(book: AttemptBook) -> int:
    return book.usage.total_tokens if book.usage else 0


def build_over_budget(book: AttemptBook, steps: int, budget: int) -> LoopEnded:
    return LoopEnded(
        BUDGET_EXCEEDED,
        f"the loop used {tokens_used(book)} tokens in {steps} steps; "
        f"spec.limits.maxTokens is {budget}",
    )


def find_tool_clash(tools: list[Tool]) -> LoopEnded | None:
    """Two MCP servers offer a tool of the same name: the loop cannot start."""
    seen: dict[str, str] = {}
    for tool in tools:
        if tool.name in seen:
            return LoopEnded(
                TOOLS_UNAVAILABLE,
                f"tool {tool.name!r} is offered by MCP servers {seen[tool.name]!r} "
                f"and {tool.server!r}: name the one to use in spec.tools[].allow",
            )
        seen[tool.name] = tool.server
    return None


def parse_arguments(raw: str) -> dict[str, Any] | ToolCallResult:
    """A tool call's arguments as the model wrote them (JSON), or what the
    model is told when they are not a JSON object."""
    try:
        arguments = json.loads(raw)
        if not isinstance(arguments, dict):
            raise TypeError("not an object")
    except (ValueError, TypeError) as exc:
        return ToolCallResult(
            content=f"error: the arguments are not a JSON object ({exc})", is_error=True
        )
    return arguments


def needs_approval(
    policy: ApprovalPolicy, server: ToolServer, tool: Tool, step: int, used: int
) -> bool:
    """Whether a call of ``tool`` at ``step``, ``used`` tokens spent, waits
    for a person (the server's requireApproval, the Agent's approval)."""
    return (
        "*" in server.require_approval
        or tool.name in server.require_approval
        or (policy.after_steps is not None and step > policy.after_steps)
        or (policy.after_tokens is not None and used > policy.after_tokens)
    )


def build_pending(
    approval_id: str,
    policy: ApprovalPolicy,
    step: int,
    tool: Tool,
    server: ToolServer,
    raw: str,
    now: datetime,
) -> PendingApproval:
    return PendingApproval(
        id=approval_id,
        step=step,
        tool=tool.name,
        server=server.name,
        arguments=raw[:2000],
        since=iso(now),
        timeout_seconds=policy.timeout_seconds,
        on_timeout=policy.on_timeout,
    )


def build_timeout_decision(
    approval_id: str, policy: ApprovalPolicy, step: int, tool: Tool
) -> ApprovalDecision | LoopEnded:
    """Nobody decided within the timeout: what ``onTimeout`` makes of it."""
    if policy.on_timeout == FAIL:
        return LoopEnded(
            APPROVAL_TIMEOUT,
            f"step {step}: nobody approved tool {tool.name!r} within "
            f"{policy.timeout_seconds}s (onTimeout: Fail)",
        )
    return ApprovalDecision(
        id=approval_id,
        approve=policy.on_timeout == APPROVE,
        approver="",
        reason=f"no decision within {policy.timeout_seconds}s (onTimeout: {policy.on_timeout})",
    )


def build_refusal(decision: ApprovalDecision) -> str | None:
    """None: the call goes ahead; else what the model is told instead of the
    tool's result."""
    if decision.approve:
        return None
    who = decision.approver or "the approval timeout"
    return f"error: the call was rejected by {who}" + (
        f": {decision.reason}" if decision.reason else ""
    )


def add_record(records: list[StepRecord], record: StepRecord) -> list[StepRecord]:
    return [*records, record][-MAX_RECORDS:]


def build_model_record(step: int, answer: ModelCallResult, now: datetime) -> StepRecord:
    return StepRecord(
        step=step,
        kind=MODEL,
        detail=_answer_detail(answer.message),
        tokens=answer.usage.total_tokens if answer.usage else 0,
        at=iso(now),
    )


def build_tool_record(
    step: int, name: str, raw: str, result: ToolCallResult, now: datetime
) -> StepRecord:
    return StepRecord(
        step=step,
        kind=TOOL,
        name=name,
        detail=f"{raw[:80]} -> {result.content}"[:MAX_DETAIL],
        error=result.is_error,
        at=iso(now),
    )


def build_approval_record(
    step: int, tool: Tool, decision: ApprovalDecision, now: datetime
) -> StepRecord:
    return StepRecord(
        step=step,
        kind=APPROVAL,
        name=tool.name,
        detail=f"{'approved' if decision.approve else 'rejected'} by "
        f"{decision.approver or 'timeout'}: {decision.reason}"[:MAX_DETAIL],
        error=not decision.approve,
        at=iso(now),
    )


def _answer_detail(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls") or []
    if calls:
        names = ", ".join(str((c.get("function") or {}).get("name", "")) for c in calls)
        return f"calls {names}"
    return str(message.get("content") or "")[:MAX_DETAIL]


def iso(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
