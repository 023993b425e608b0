"""The data that crosses Temporal: workflow and activity inputs and results.

Plain dataclasses only: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from temporalio.converter import value_to_type


@dataclass(frozen=True)
class ExecutionRef:
    """Which AgentExecution a workflow runs for."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class AgentSpec:
    """A snapshot of an ``Agent`` resource, taken when the execution's workflow
    is started and carried in its input: editing or deleting the Agent later
    never changes an execution already started.

    ``parameters`` are already merged (the Agent's defaults, overridden key by
    key by the execution's ``spec.parameters``); ``task_queue`` and
    ``timeout_seconds`` are the Agent's own values (the workflow input says
    which queue and timeout the run actually uses). No credentials here:
    ``provider`` names a provider configured where the runner runs.
    """

    name: str  # the Agent resource (in the execution's namespace)
    type: str  # chat, or echo (also the built-in agent the runner dispatches to)
    model: str | None = None
    system_prompt: str | None = None
    provider: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    task_queue: str | None = None
    timeout_seconds: int | None = None
    uid: str | None = None  # which Agent object was snapshotted
    generation: int | None = None  # and which version of its spec


@dataclass(frozen=True)
class ExecutionInput:
    ref: ExecutionRef
    agent: str
    message: str
    runner_task_queue: str
    timeout_seconds: int
    session_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # Fields added after v0.1.0 have defaults: inputs recorded in running
    # workflows' histories still decode (see docs/operations.md, upgrades).
    no_runner_seconds: int = 60  # say NoRunner when no runner took the agent by then
    report_timeout_seconds: int = 3600  # give up writing the report; the operator reads it later
    # The Agent resource the execution named, as it was at start (None: a
    # built-in agent name, or an execution from before Agents existed).
    agent_spec: AgentSpec | None = None
    # A runner that stops heartbeating this long is taken for dead and the agent
    # retried elsewhere. 30 is what every workflow before this field used.
    heartbeat_timeout_seconds: int = 30
    # spec.limits.maxTokens: the most tokens the agent may use (None: no limit).
    max_tokens: int | None = None


@dataclass(frozen=True)
class AgentRequest:
    """What a runner's ``run_agent`` activity receives."""

    agent: str
    message: str
    session_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    execution: ExecutionRef | None = None
    # The Agent snapshot when the execution named an Agent resource; then
    # ``agent`` is its type (the agent the runner dispatches to) and
    # ``parameters`` are the merged ones. Older runners ignore it.
    agent_spec: AgentSpec | None = None
    # The execution's spec.limits.maxTokens: the runner stops the agent before
    # a call would go past it (agentexec.runner.context().budget).
    max_tokens: int | None = None


@dataclass(frozen=True)
class Usage:
    """Tokens one agent run used, counted as OpenAI-compatible APIs count them.

    Every field has a default: a runner that reports only some still decodes.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


def usage_from(value: Any) -> Usage | None:
    """A Usage from what a runner sent (a decoded JSON object), or None."""
    if isinstance(value, Usage):
        return value
    if not isinstance(value, dict):
        return None
    counts = {
        k: v
        for k, v in value.items()
        if k in ("prompt_tokens", "completion_tokens", "total_tokens")
        and isinstance(v, int)
        and not isinstance(v, bool)
    }
    return Usage(**counts)


@dataclass(frozen=True)
class AgentResult:
    output: str
    # Added after v0.1.0 with a default: results of older runners still decode.
    usage: Usage | None = None


def agent_result_from(value: Any) -> AgentResult:
    """A runner's decoded JSON result as an AgentResult, or ValueError saying
    what the runner sent (a runner of another version, or a broken one)."""
    try:
        result = value_to_type(AgentResult, value)
    except TypeError as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        problem = f"{exc}{cause}"
    else:
        if isinstance(result, AgentResult):
            return result
        problem = "no result"
    sent = json.dumps(value, default=repr)[:200]
    raise ValueError(
        f"the runner's {RUN_AGENT_ACTIVITY} result is not an AgentResult: {problem}; it sent {sent}"
    )


@dataclass(frozen=True)
class ExecutionResult:
    """How the execution ended; also what the workflow reports to the resource."""

    phase: str  # Running (a progress report), Succeeded, Failed or Cancelled
    output: str | None = None
    reason: str | None = None
    message: str | None = None
    usage: Usage | None = None  # what the agent reported it used, when Succeeded


@dataclass(frozen=True)
class StatusReport:
    """The workflow's report to the resource, written by ``report_status``."""

    ref: ExecutionRef
    result: ExecutionResult
    workflow_id: str
    run_id: str
    namespace: str | None = None
    task_queue: str | None = None


class Outcome(enum.Enum):
    """What reconciliation learned from Temporal (see temporal/gateway.py)."""

    STARTED = "started"  # the workflow runs (new, or the one already there)
    RUNNING = "running"
    CLOSED = "closed"  # finished; ``result`` says how
    CANCEL_REQUESTED = "cancel_requested"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"  # Temporal did not answer: wait for it
    REJECTED = "rejected"  # Temporal answered no: back off, say why


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    workflow: dict[str, str] | None = None  # id, runId, namespace, taskQueue
    result: ExecutionResult | None = None  # when CLOSED
    agent_started: bool | None = None  # when RUNNING: a runner picked the agent up
    reason: str = ""  # when UNAVAILABLE or REJECTED: a condition reason
    message: str = ""


# Names that tie the workflow to its activities and runners. An external
# runner in any language registers an activity named RUN_AGENT_ACTIVITY.
WORKFLOW_TYPE = "AgentExecution"
RUN_AGENT_ACTIVITY = "run_agent"
REPORT_STATUS_ACTIVITY = "report_status"
# ApplicationError types that retrying cannot fix.
AGENT_ERROR = "AgentError"
UNKNOWN_AGENT = "UnknownAgent"
# ApplicationError types a runner raises about the model provider an agent
# calls; the execution fails with the type as its reason (when retries, if
# any, ran out). Unavailable is retried (down, slow, 5xx, 429); the others are
# raised non-retryable (a 4xx, or a 2xx that is no answer: retrying the same
# request cannot help).
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
PROVIDER_REJECTED = "ProviderRejected"
PROVIDER_INVALID_RESPONSE = "ProviderInvalidResponse"
# The agent would have gone past spec.limits.maxTokens: not retried; the
# error's first detail is the Usage spent until then.
BUDGET_EXCEEDED = "BudgetExceeded"
AGENT_FAILURE_REASONS = (PROVIDER_UNAVAILABLE, PROVIDER_REJECTED, PROVIDER_INVALID_RESPONSE)
# The type of the error a workflow ends with when its agent failed; its first
# detail is the ExecutionResult (Temporal's UI and metrics see the failure).
EXECUTION_FAILED = "AgentExecutionFailed"
