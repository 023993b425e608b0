"""The data that crosses Temporal: workflow and activity inputs and results.

Plain dataclasses only: the workflow sandbox re-imports this module.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from temporalio.converter import value_to_type

# The reasons the workflow gives (how an execution ended, where a running one
# is) are named once, with every other condition reason, in agentexec.conditions.
from agentexec.conditions import AGENT_FAILED as AGENT_FAILED
from agentexec.conditions import ATTEMPT_DISRUPTED as ATTEMPT_DISRUPTED
from agentexec.conditions import ATTEMPT_FAILED as ATTEMPT_FAILED
from agentexec.conditions import CANCELLED as CANCELLED
from agentexec.conditions import DISRUPTED as DISRUPTED
from agentexec.conditions import HEARTBEAT_TIMEOUT as HEARTBEAT_TIMEOUT
from agentexec.conditions import NO_RUNNER as NO_RUNNER
from agentexec.conditions import RUNNER_FAILED as RUNNER_FAILED
from agentexec.conditions import RUNNING as RUNNING
from agentexec.conditions import SUSPENDED as SUSPENDED
from agentexec.conditions import TIMEOUT as TIMEOUT
from agentexec.conditions import UNKNOWN_AGENT as UNKNOWN_AGENT
from agentexec.conditions import WAITING_FOR_RUNNER as WAITING_FOR_RUNNER
from agentexec.conditions import WORKFLOW_NOT_RUNNING as WORKFLOW_NOT_RUNNING


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
    # An assistant's loop settings as the Agent's spec has them (tools,
    # maxSteps, approval): see temporal/steps.py build_loop_spec.
    loop: dict[str, Any] | None = None


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
    # spec.limits.maxTokens: the most tokens the agent may use, all attempts
    # together (None: no limit).
    max_tokens: int | None = None
    # Added with the workflow's own attempt loop (issue #19). timeout_seconds
    # is then the execution's deadline: the time its agent runs, all attempts
    # together (waiting for a runner and being suspended are not counted);
    # deadline_field says which spec field set it, for messages.
    backoff_limit: int = 2  # failures of the agent or its provider retried; then Failed
    max_disruptions: int = 10  # attempts cut short by the platform; then Failed/Disrupted
    deadline_field: str = "timeoutSeconds"


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
    # What the execution's spec.limits.maxTokens leaves for this attempt (the
    # attempts before it spent the rest): the runner stops the agent before a
    # call would go past it (agentexec.runner.context().budget).
    max_tokens: int | None = None
    # Which attempt this is (1, 2, ...: failed, disrupted and suspended ones
    # counted), and the checkpoint the previous attempt left (None: none).
    # Each attempt is its own activity, so Temporal's heartbeat details do
    # not carry over by themselves: the workflow passes them on.
    attempt: int | None = None
    resume_from: Any = None


@dataclass(frozen=True)
class Usage:
    """Tokens one agent run used, counted as OpenAI-compatible APIs count them.

    Every field has a default: a runner that reports only some still decodes.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Model requests sent (each one billed), and how many of them repeated an
    # earlier one (after a stall or a retryable answer, or on a new attempt).
    requests: int = 0
    resent_requests: int = 0


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """Two counts summed (None: nothing reported on either side)."""
    if a is None or b is None:
        return a or b
    return Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.total_tokens + b.total_tokens,
        a.requests + b.requests,
        a.resent_requests + b.resent_requests,
    )


@dataclass(frozen=True)
class AttemptProgress:
    """How far a running attempt got, as the runner last heartbeated it (the
    second heartbeat detail, after the agent's checkpoint): what a disrupted
    or failed attempt used and produced is known even though it never returned.
    """

    usage: Usage | None = None  # tokens and requests of this attempt so far
    output_chars: int = 0  # characters of (partial) output produced so far


@dataclass(frozen=True)
class AttemptEnd:
    """Why an attempt ended without the agent's answer (status.attempts.last*)."""

    reason: str
    message: str = ""
    time: str | None = None  # RFC 3339, UTC


@dataclass(frozen=True)
class Attempts:
    """The execution's attempts so far (status.attempts)."""

    count: int = 0  # attempts sent to a runner queue, the running one included
    failed: int = 0  # failures of the agent or its provider: spend backoffLimit
    disrupted: int = 0  # cut short by the platform: free, up to max_disruptions
    last_failure: AttemptEnd | None = None
    last_disruption: AttemptEnd | None = None
    runner_wait_seconds: int = 0  # time attempts were seen waiting for a free runner


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
    usage: Usage | None = None  # what the agent's attempts used, all summed
    attempts: Attempts | None = None  # absent in results of workflows before #19


@dataclass(frozen=True)
class StatusReport:
    """The workflow's report to the resource, written by ``report_status``."""

    ref: ExecutionRef
    result: ExecutionResult
    workflow_id: str
    run_id: str
    namespace: str | None = None
    task_queue: str | None = None
    # The agent loop's status fields (progress, pendingApproval, lastApproval),
    # already in the resource's casing: see temporal/steps.py.
    progress: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunnerCheck:
    """What ``check_runner`` is asked: is this attempt running yet, and if not,
    does any runner poll its queue?"""

    runner_task_queue: str
    activity_id: str  # the attempt's run_agent activity in the calling workflow


@dataclass(frozen=True)
class RunnerSeen:
    """What ``check_runner`` saw."""

    started: bool  # a runner took the attempt
    started_at: float | None = None  # when (seconds since the epoch), if started
    pollers: int = 0  # runners that polled the queue lately (Temporal's poller history)


class Outcome(enum.Enum):
    """What reconciliation learned from Temporal (see temporal/gateway.py)."""

    STARTED = "started"  # the workflow runs (new, or the one already there)
    RUNNING = "running"
    CLOSED = "closed"  # finished; ``result`` says how
    CANCEL_REQUESTED = "cancel_requested"
    NOT_FOUND = "not_found"
    SIGNALLED = "signalled"  # the workflow was told (spec.suspend)
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
# The runner's own probe of a runner queue, served by the operator's worker
# on the workflow's task queue (temporal/runner_check.py).
CHECK_RUNNER_ACTIVITY = "check_runner"
# Signal: spec.suspend changed (its argument is the new value).
SUSPEND_SIGNAL = "suspend"
# ApplicationError types that retrying cannot fix.
AGENT_ERROR = "AgentError"
# ApplicationError types a runner raises about the model provider an agent
# calls; the execution fails with the type as its reason. RateLimited and
# ProviderUnavailable are retried inside the attempt (the chat agent re-sends
# until the execution's deadline) and raised non-retryable once it cannot;
# the others are raised non-retryable at once (retrying the same request
# cannot help).
RATE_LIMITED = "RateLimited"
PROVIDER_UNAVAILABLE = "ProviderUnavailable"
PROVIDER_REJECTED = "ProviderRejected"
PROVIDER_INVALID_RESPONSE = "ProviderInvalidResponse"
# The agent would have gone past spec.limits.maxTokens: not retried; the
# error's first detail is the Usage spent until then.
BUDGET_EXCEEDED = "BudgetExceeded"
CONTEXT_TOO_LONG = "ContextTooLong"
CONTENT_FILTERED = "ContentFiltered"
AGENT_FAILURE_REASONS = (
    RATE_LIMITED,
    PROVIDER_UNAVAILABLE,
    PROVIDER_REJECTED,
    PROVIDER_INVALID_RESPONSE,
    CONTEXT_TOO_LONG,
    CONTENT_FILTERED,
)
# The runner stopped the attempt: its process is shutting down (SIGTERM, a
# rollout, a drain) and the grace ran out. A disruption: retried at once,
# without spending backoffLimit.
RUNNER_SHUTDOWN = "RunnerShutdown"
# The runner's answer to a cancellation (suspend, delete): not a failure; its
# details carry the checkpoint and progress, which a cancelled activity's
# failure cannot.
AGENT_STOPPED = "AgentStopped"
# The type of the error a workflow ends with when its agent failed; its first
# detail is the ExecutionResult (Temporal's UI and metrics see the failure).
EXECUTION_FAILED = "AgentExecutionFailed"
