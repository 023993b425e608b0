"""The status vocabulary: phases, condition types and reasons, and the
conditions list in the Kubernetes convention. Pure, and imports nothing of
ours, so every layer (the planner, the Temporal gateway and connection state,
the controller) names a reason from here instead of spelling it again.

Reasons are CamelCase (the API convention) and a contract: alerts, runbooks
(docs/operations.md) and users' scripts match on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Body = Mapping[str, Any]

# status.phase
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELLED = "Cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# Condition types.
TEMPORAL_CONNECTED = "TemporalConnected"
WORKFLOW_STARTED = "WorkflowStarted"
SUCCEEDED_CONDITION = "Succeeded"  # Unknown while running, True/False once finished
# True once the execution finished, whichever way (reason: the phase), so that
# `kubectl wait --for=condition=Completed` returns for a success and a failure
# alike. Argo Workflows' name for it; a Job's "Complete" means success only
# (a failed Job says "Failed"), and Succeeded stays the Tekton-style outcome.
COMPLETED_CONDITION = "Completed"
AGENT_RESOLVED = "AgentResolved"
SUSPENDED_CONDITION = "Suspended"  # True while spec.suspend is applied
AWAITING_APPROVAL = "AwaitingApproval"  # an agent loop's tool call waits for a person

# TemporalConnected reasons (the connection as the manager sees it).
CONNECTED = "Connected"
TEMPORAL_UNAVAILABLE = "TemporalUnavailable"
CIRCUIT_OPEN = "CircuitOpen"
NAMESPACE_NOT_FOUND = "NamespaceNotFound"

# WorkflowStarted reasons.
STARTED = "Started"
QUEUED = "Queued"  # waits its turn at the start rate
WAITING_FOR_TEMPORAL = "WaitingForTemporal"
START_FAILED = "StartFailed"  # an attempt failed (refused, or no answer): retried with backoff
START_REJECTED = "StartRejected"  # refused past the retry budget or the queue TTL: final
QUEUE_TIMEOUT = "QueueTimeout"
AGENT_NOT_FOUND = "AgentNotFound"  # also an AgentResolved reason
TASK_QUEUE_NOT_ALLOWED = "TaskQueueNotAllowed"

# AgentResolved reasons (besides AgentNotFound).
RESOLVED = "Resolved"

# Suspended reasons (Suspended is also a WorkflowStarted and Succeeded=Unknown
# reason before the start, and a progress report's reason).
SUSPENDED = "Suspended"
RESUMED = "Resumed"

# AwaitingApproval reasons: a call waits, nothing waits (yet), or the last
# decision (Approved, Rejected: the loop's words).
APPROVAL_REQUESTED = "ApprovalRequested"
NOT_WAITING = "NotWaiting"

# An AgentApproval's own condition (the operator says what came of it), and
# its reasons.
APPLIED = "Applied"
RELAYED = "Relayed"  # sent to the waiting loop (or the loop already took it)
ALREADY_DECIDED = "AlreadyDecided"  # another AgentApproval decided the call first
NOT_PENDING = "NotPending"  # the execution finished; the call was never waited for

# Succeeded=Unknown reasons while not finished; error reasons once finished.
WAITING = PENDING  # Succeeded=Unknown/Pending: not started yet
AGENT_RUNNING = RUNNING  # Succeeded=Unknown/Running
# Reasons the workflow gives (temporal/types.py re-exports them for the
# workflow code): how an execution ended (status.error.reason and the
# Succeeded condition), and, while it runs, where it is (progress reports:
# the Succeeded=Unknown condition and an event).
AGENT_FAILED = "AgentFailed"
RUNNER_FAILED = "RunnerFailed"
TIMEOUT = "Timeout"
HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
DISRUPTED = "Disrupted"
NO_RUNNER = "NoRunner"
UNKNOWN_AGENT = "UnknownAgent"  # also the ApplicationError type a runner raises
WAITING_FOR_RUNNER = "WaitingForRunner"
ATTEMPT_FAILED = "AttemptFailed"
ATTEMPT_DISRUPTED = "AttemptDisrupted"
# How an agent loop can end besides (temporal/steps.py re-exports them).
BUDGET_EXCEEDED = "BudgetExceeded"
TOOL_FAILED = "ToolFailed"
APPROVAL_TIMEOUT = "ApprovalTimeout"
TOOLS_UNAVAILABLE = "ToolsUnavailable"
# How a workflow closed in Temporal without its report (or was closed there
# by someone else: terminated, cancelled).
TERMINATED = "Terminated"
WORKFLOW_FAILED = "WorkflowFailed"
WORKFLOW_CANCELLED = CANCELLED
CONTINUED_AS_NEW = "ContinuedAsNew"
WORKFLOW_LOST = "WorkflowLost"  # the recorded workflow no longer exists in Temporal

# How the gateway names a refusal (Answer.reason with Outcome.REJECTED; the
# gRPC status, temporal/gateway.py). An ID the server refuses as invalid can
# name no workflow there.
INVALID_ARGUMENT = "InvalidArgument"
# A signal (spec.suspend, an approval) found no running workflow: it ended meanwhile.
WORKFLOW_NOT_RUNNING = "WorkflowNotRunning"

# Event reasons (Kubernetes Events on the execution) besides the above.
DELETION_BLOCKED = "DeletionBlocked"
FORCE_DELETED = "ForceDeleted"
DESCRIBE_FAILED = "DescribeFailed"
SIGNAL_FAILED = "SignalFailed"  # spec.suspend could not be told to the workflow

# A condition message is cut to this many characters.
MAX_MESSAGE = 4 * 1024


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str = ""


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def status_of(body: Body) -> Mapping[str, Any]:
    status = body.get("status")
    return status if isinstance(status, Mapping) else {}


def generation_of(body: Body) -> int:
    meta = body.get("metadata")
    gen = meta.get("generation") if isinstance(meta, Mapping) else None
    return gen if isinstance(gen, int) else 1


def condition_of(body: Body, ctype: str) -> Mapping[str, Any] | None:
    conditions = status_of(body).get("conditions")
    if not isinstance(conditions, list):
        return None
    for cond in conditions:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return None


def build_conditions(
    body: Body, updates: Iterable[Condition], now: datetime
) -> list[dict[str, Any]]:
    """The full conditions list with ``updates`` upserted by type.

    ``lastTransitionTime`` changes only when a condition's status flips;
    other conditions (someone else's types included) are kept as they are.
    """
    generation = generation_of(body)
    existing = status_of(body).get("conditions")
    result: list[dict[str, Any]] = (
        [dict(c) for c in existing if isinstance(c, Mapping) and isinstance(c.get("type"), str)]
        if isinstance(existing, list)
        else []
    )
    for update in updates:
        new = {
            "type": update.type,
            "status": update.status,
            "reason": update.reason,
            "message": update.message[:MAX_MESSAGE],
            "observedGeneration": generation,
            "lastTransitionTime": timestamp(now),
        }
        for i, old in enumerate(result):
            if old["type"] == update.type:
                if old.get("status") == update.status and old.get("lastTransitionTime"):
                    new["lastTransitionTime"] = old["lastTransitionTime"]
                result[i] = new
                break
        else:
            result.append(new)
    return result
