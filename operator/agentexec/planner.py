"""Pure decisions about an AgentExecution's status.

Each ``plan_*`` function takes the resource as last read (a plain dict), what
was observed, and ``now``; it returns the status fields to write (a merge
patch for ``status``), or None when nothing needs writing. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Cancelled",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

TEMPORAL_CONNECTED = "TemporalConnected"
WORKFLOW_STARTED = "WorkflowStarted"
SUCCEEDED_CONDITION = "Succeeded"

# Fields of status we cap so a huge agent output cannot make the object
# unwritable (etcd's default request limit is 1.5 MiB).
MAX_OUTPUT = 256 * 1024
MAX_MESSAGE = 4 * 1024

Body = Mapping[str, Any]
StatusPatch = dict[str, Any]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Connection:
    """The Temporal connection as the manager sees it now."""

    connected: bool
    reason: str  # Connected, TemporalUnavailable or CircuitOpen
    message: str


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def workflow_id(namespace: str, name: str, uid: str) -> str:
    """One workflow per resource: the same ID on every retry, restart and replica.

    The UID makes a re-created resource of the same name a new execution.
    """
    return f"agentexec/{namespace}/{name}/{uid}"


def status_of(body: Body) -> Mapping[str, Any]:
    status = body.get("status")
    return status if isinstance(status, Mapping) else {}


def phase_of(body: Body) -> str | None:
    phase = status_of(body).get("phase")
    return phase if isinstance(phase, str) else None


def is_terminal(body: Body) -> bool:
    return phase_of(body) in TERMINAL


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


def _connection_condition(conn: Connection) -> Condition:
    return Condition(
        TEMPORAL_CONNECTED, "True" if conn.connected else "False", conn.reason, conn.message
    )


def plan_waiting(body: Body, conn: Connection, now: datetime, ttl: float) -> StatusPatch | None:
    """Temporal is unavailable: Pending with the reason, or QueueTimeout past the TTL."""
    if is_terminal(body):
        return None
    status = status_of(body)
    queued = parse_time(status.get("queuedTime")) or now
    attempts = status.get("startAttempts")
    attempts = attempts if isinstance(attempts, int) else 0
    if (now - queued).total_seconds() > ttl:
        return plan_terminal(
            body,
            FAILED,
            now,
            reason="QueueTimeout",
            message=f"waited {int((now - queued).total_seconds())}s for Temporal, longer than "
            f"the queue TTL of {int(ttl)}s: {conn.message}",
            started_reason="QueueTimeout",
            conn=conn,
        )
    return {
        "phase": PENDING,
        "observedGeneration": generation_of(body),
        "queuedTime": timestamp(queued),
        "startAttempts": attempts + 1,
        "conditions": build_conditions(
            body,
            [
                _connection_condition(conn),
                Condition(
                    WORKFLOW_STARTED,
                    "False",
                    "WaitingForTemporal",
                    f"queued; the workflow starts when Temporal is available ({conn.message})",
                ),
                Condition(SUCCEEDED_CONDITION, "Unknown", "Pending", "waiting for Temporal"),
            ],
            now,
        ),
    }


def plan_start_failed(body: Body, now: datetime, message: str) -> StatusPatch | None:
    """Temporal answered but refused the start (not an outage)."""
    if is_terminal(body):
        return None
    attempts = status_of(body).get("startAttempts")
    return {
        "phase": PENDING,
        "observedGeneration": generation_of(body),
        "startAttempts": (attempts if isinstance(attempts, int) else 0) + 1,
        "conditions": build_conditions(
            body, [Condition(WORKFLOW_STARTED, "False", "StartFailed", message)], now
        ),
    }


def plan_started(
    body: Body,
    now: datetime,
    *,
    workflow: Mapping[str, str],
    conn: Connection,
    counted_attempt: bool = True,
) -> StatusPatch | None:
    """The workflow exists: Running (unless a report already moved it on)."""
    if is_terminal(body):
        return None
    status = status_of(body)
    attempts = status.get("startAttempts")
    attempts = attempts if isinstance(attempts, int) else 0
    patch: StatusPatch = {
        "observedGeneration": generation_of(body),
        "workflow": dict(workflow),
        "startAttempts": attempts + (1 if counted_attempt else 0),
        "conditions": build_conditions(
            body,
            [
                _connection_condition(conn),
                Condition(WORKFLOW_STARTED, "True", "Started", f"workflow {workflow['id']}"),
                Condition(SUCCEEDED_CONDITION, "Unknown", "Running", "the agent is running"),
            ],
            now,
        ),
    }
    if status.get("phase") != RUNNING:
        patch["phase"] = RUNNING
    if not status.get("queuedTime"):
        patch["queuedTime"] = timestamp(now)
    if not status.get("startTime"):
        patch["startTime"] = timestamp(now)
    return patch


def plan_terminal(
    body: Body,
    phase: str,
    now: datetime,
    *,
    output: str | None = None,
    reason: str | None = None,
    message: str | None = None,
    started_reason: str | None = None,
    conn: Connection | None = None,
) -> StatusPatch | None:
    """Succeeded, Failed or Cancelled. A terminal phase is never changed again."""
    if is_terminal(body):
        return None
    updates = [
        Condition(
            SUCCEEDED_CONDITION,
            "True" if phase == SUCCEEDED else "False",
            phase if phase == SUCCEEDED else (reason or phase),
            (message or "")[:MAX_MESSAGE] if phase != SUCCEEDED else "the agent finished",
        )
    ]
    if started_reason is not None:
        updates.append(Condition(WORKFLOW_STARTED, "False", started_reason, message or ""))
    if conn is not None:
        updates.append(_connection_condition(conn))
    patch: StatusPatch = {
        "phase": phase,
        "observedGeneration": generation_of(body),
        "completionTime": timestamp(now),
        "conditions": build_conditions(body, updates, now),
    }
    if output is not None:
        patch["output"] = output[:MAX_OUTPUT]
    if phase != SUCCEEDED:
        patch["error"] = {"reason": reason or phase, "message": (message or "")[:MAX_MESSAGE]}
    return patch


def plan_report(
    body: Body,
    now: datetime,
    *,
    phase: str,
    workflow: Mapping[str, str],
    conn: Connection,
    output: str | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> StatusPatch | None:
    """A report from the workflow itself (Running, then how it ended)."""
    if phase == RUNNING:
        return plan_started(body, now, workflow=workflow, conn=conn, counted_attempt=False)
    patch = plan_terminal(body, phase, now, output=output, reason=reason, message=message)
    if patch is not None:
        patch["workflow"] = dict(workflow)
        if not status_of(body).get("startTime"):
            patch["startTime"] = patch["completionTime"]
    return patch


def plan_connection(body: Body, conn: Connection, now: datetime) -> StatusPatch | None:
    """Reflect the connection on a non-terminal execution, if it changed."""
    if is_terminal(body):
        return None
    current = condition_of(body, TEMPORAL_CONNECTED)
    wanted = "True" if conn.connected else "False"
    if (
        current is not None
        and current.get("status") == wanted
        and current.get("reason") == conn.reason
    ):
        return None
    return {"conditions": build_conditions(body, [_connection_condition(conn)], now)}


# How a closed workflow that did not (or could not) report maps to a phase.
CLOSED_STATUS = {
    "FAILED": (FAILED, "WorkflowFailed"),
    "CANCELED": (CANCELLED, "Cancelled"),
    "TERMINATED": (FAILED, "Terminated"),
    "TIMED_OUT": (FAILED, "Timeout"),
    "CONTINUED_AS_NEW": (FAILED, "ContinuedAsNew"),
}
