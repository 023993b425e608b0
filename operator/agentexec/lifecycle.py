"""An execution's run-control fields, and how its attempts read on status. Pure.

``spec.activeDeadlineSeconds`` (``timeoutSeconds`` its older name),
``spec.backoffLimit`` and ``spec.suspend``, as a Job has them (issue #19),
become the workflow's input; the attempts the workflow reports become
``status.attempts``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentexec.conditions import RUNNING, SUSPENDED, WAITING_FOR_RUNNER
from agentexec.temporal.types import AgentSpec, AttemptEnd, Attempts, ExecutionResult, Usage

DEFAULT_DEADLINE = 3600
DEFAULT_BACKOFF_LIMIT = 2
# Progress reports that are news, not trouble: Normal events (the others,
# NoRunner, AttemptFailed, AttemptDisrupted, are Warnings; Running none).
NORMAL_PROGRESS = frozenset({WAITING_FOR_RUNNER, SUSPENDED})
QUIET_PROGRESS = frozenset({RUNNING})


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def deadline_of(spec: Mapping[str, Any], agent: AgentSpec | None) -> tuple[int, str]:
    """The execution's deadline in seconds, and the field that set it (for
    messages): activeDeadlineSeconds, else timeoutSeconds (its older name),
    else the Agent's timeoutSeconds, else an hour."""
    for field in ("activeDeadlineSeconds", "timeoutSeconds"):
        seconds = _positive(spec.get(field))
        if seconds is not None:
            return seconds, field
    if agent is not None and _positive(agent.timeout_seconds) is not None:
        return int(agent.timeout_seconds or 0), "Agent.spec.timeoutSeconds"
    return DEFAULT_DEADLINE, "activeDeadlineSeconds"


def backoff_limit_of(spec: Mapping[str, Any]) -> int:
    """spec.backoffLimit (the schema defaults it; 2 for objects read without it)."""
    limit = spec.get("backoffLimit")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        return limit
    return DEFAULT_BACKOFF_LIMIT


def suspend_wanted(body: Mapping[str, Any]) -> bool:
    spec = body.get("spec")
    return isinstance(spec, Mapping) and spec.get("suspend") is True


def build_run_status(result: ExecutionResult) -> dict[str, Any]:
    """The status fields a workflow's report carries besides its phase:
    ``usage`` and ``attempts`` (absent from workflows before #19)."""
    out: dict[str, Any] = {}
    if result.usage is not None:
        out["usage"] = build_usage(result.usage)
    if result.attempts is not None:
        out["attempts"] = build_attempts(result.attempts)
    return out


def build_usage(usage: Usage) -> dict[str, int]:
    """``status.usage`` in the API's casing; the request counts when there are any."""
    out = {
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "totalTokens": usage.total_tokens,
    }
    if usage.requests:
        out["requests"] = usage.requests
        out["resentRequests"] = usage.resent_requests
    return out


def build_attempts(attempts: Attempts) -> dict[str, Any]:
    """``status.attempts`` in the API's casing."""
    out: dict[str, Any] = {
        "count": attempts.count,
        "failed": attempts.failed,
        "disrupted": attempts.disrupted,
        "runnerWaitSeconds": attempts.runner_wait_seconds,
    }
    for key, end in (
        ("lastFailure", attempts.last_failure),
        ("lastDisruption", attempts.last_disruption),
    ):
        if end is not None:
            out[key] = _end(end)
    return out


def _end(end: AttemptEnd) -> dict[str, str]:
    out = {"reason": end.reason, "message": end.message[:4096]}
    if end.time:
        out["time"] = end.time
    return out
