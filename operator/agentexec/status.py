"""What an AgentExecution's status says: pure builders of status patches.

Each ``plan_*`` function takes the resource as last read (a plain dict), what
was observed, and ``now``; it returns the status fields to write (a merge
patch for ``status``), or None when nothing needs writing. The decision of
*which* one applies is the planner's (planner.py); no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from agentexec.conditions import (
    AGENT_NOT_FOUND,
    AGENT_RESOLVED,
    AGENT_RUNNING,
    COMPLETED_CONDITION,
    FAILED,
    MAX_MESSAGE,
    PENDING,
    QUEUE_TIMEOUT,
    QUEUED,
    RESUMED,
    RUNNING,
    START_FAILED,
    STARTED,
    SUCCEEDED,
    SUCCEEDED_CONDITION,
    SUSPENDED,
    SUSPENDED_CONDITION,
    TEMPORAL_CONNECTED,
    TERMINAL,
    WAITING,
    WAITING_FOR_TEMPORAL,
    WORKFLOW_STARTED,
    Body,
    Condition,
    build_conditions,
    condition_of,
    generation_of,
    parse_time,
    status_of,
    timestamp,
)

# Our finalizer: present from the moment a start may have been sent to
# Temporal until no workflow of the execution can run any more. An
# execution that never tried to start carries none, and is deleted without
# asking Temporal anything.
FINALIZER = "agentexec.io/cancel-workflow"
FORCE_DELETE = "agentexec.io/force-delete"

# Fields of status we cap so a huge agent output cannot make the object
# unwritable (etcd's default request limit is 1.5 MiB, and the spec's message
# alone may take 1 MiB of it). The output is bounded in UTF-8 bytes, which is
# what etcd stores: every watcher receives it again with each later write of
# the object, so it is kept small (a Pod's termination message allows 4 KiB);
# the whole result stays in the workflow's result in Temporal.
MAX_OUTPUT_BYTES = 32 * 1024

StatusPatch = dict[str, Any]


@dataclass(frozen=True)
class Connection:
    """The Temporal connection as the manager sees it now."""

    connected: bool
    reason: str  # Connected, TemporalUnavailable, CircuitOpen or NamespaceNotFound
    message: str


def workflow_id(namespace: str, name: str, uid: str) -> str:
    """One workflow per resource: the same ID on every retry, restart and replica.

    The UID makes a re-created resource of the same name a new execution.
    """
    return f"agentexec/{namespace}/{name}/{uid}"


def parse_workflow_id(wid: str) -> tuple[str, str, str] | None:
    """(namespace, name, uid) of a workflow ID of ours, or None for another's."""
    parts = wid.split("/")
    if len(parts) != 4 or parts[0] != "agentexec" or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def phase_of(body: Body) -> str | None:
    phase = status_of(body).get("phase")
    return phase if isinstance(phase, str) else None


def is_terminal(body: Body) -> bool:
    return phase_of(body) in TERMINAL


def meta_of(body: Body) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def uid_of(body: Body) -> str:
    return str(meta_of(body).get("uid", ""))


def has_finalizer(body: Body) -> bool:
    finalizers = meta_of(body).get("finalizers")
    return isinstance(finalizers, list) and FINALIZER in finalizers


def recorded_workflow(body: Body) -> Mapping[str, Any]:
    """status.workflow (id, runId, namespace, taskQueue), or {} before any start."""
    workflow = status_of(body).get("workflow")
    return workflow if isinstance(workflow, Mapping) else {}


def connection_condition(conn: Connection) -> Condition:
    return Condition(
        TEMPORAL_CONNECTED, "True" if conn.connected else "False", conn.reason, conn.message
    )


def _attempts(body: Body) -> int:
    attempts = status_of(body).get("startAttempts")
    return attempts if isinstance(attempts, int) else 0


def _pending(
    body: Body,
    conn: Connection,
    now: datetime,
    *,
    queued: str,
    attempts: int,
    why: list[Condition],
    waiting_for: str,
    succeeded: Condition | None = None,
) -> StatusPatch:
    """Pending, with the connection, why it has not started (``why``), and
    ``Succeeded=Unknown/Pending`` (or ``succeeded``)."""
    return {
        "phase": PENDING,
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "queuedTime": queued,
        "startAttempts": attempts,
        "conditions": build_conditions(
            body,
            [
                connection_condition(conn),
                *why,
                succeeded
                or Condition(SUCCEEDED_CONDITION, "Unknown", WAITING, f"waiting for {waiting_for}"),
            ],
            now,
        ),
    }


def _queued(body: Body, now: datetime) -> datetime:
    return parse_time(status_of(body).get("queuedTime")) or now


def _past_ttl(
    body: Body, now: datetime, ttl: float, conn: Connection, reason: str, why: str
) -> StatusPatch | None:
    """Failed with ``reason`` when the execution has waited longer than ``ttl``;
    ``why`` ends the message: "waited 70s<why>"."""
    waited = (now - _queued(body, now)).total_seconds()
    if waited <= ttl:
        return None
    return plan_terminal(
        body,
        FAILED,
        now,
        reason=reason,
        message=f"waited {int(waited)}s{why}",
        started_reason=reason,
        conn=conn,
    )


def plan_waiting(
    body: Body, conn: Connection, now: datetime, ttl: float, attempted: bool = True
) -> StatusPatch | None:
    """Temporal is unavailable: Pending with the reason, or QueueTimeout past the TTL.

    Only called while Temporal is unavailable, so the TTL never fails an
    execution while Temporal is connected and the queue drains.
    """
    if is_terminal(body):
        return None
    timed_out = _past_ttl(
        body,
        now,
        ttl,
        conn,
        QUEUE_TIMEOUT,
        f" for Temporal, longer than the queue TTL of {int(ttl)}s: {conn.message}",
    )
    if timed_out is not None:
        return timed_out
    return _pending(
        body,
        conn,
        now,
        queued=timestamp(_queued(body, now)),
        attempts=_attempts(body) + (1 if attempted else 0),
        why=[
            Condition(
                WORKFLOW_STARTED,
                "False",
                WAITING_FOR_TEMPORAL,
                f"queued; the workflow starts when Temporal is available ({conn.message})",
            )
        ],
        waiting_for="Temporal",
    )


def plan_queued(body: Body, conn: Connection, now: datetime, message: str) -> StatusPatch | None:
    """An execution whose start waits its turn (the start rate, a backlog after
    an outage): say so before waiting, unless its status already says where it
    is (a new one says nothing yet; one that waited for Temporal says it is
    not there, which is no longer true)."""
    if is_terminal(body):
        return None
    status = status_of(body)
    said = (condition_of(body, WORKFLOW_STARTED) or {}).get("reason")
    if (
        status.get("conditions")
        and said != WAITING_FOR_TEMPORAL
        and not connection_differs(body, conn)
    ):
        return None
    return _pending(
        body,
        conn,
        now,
        queued=timestamp(_queued(body, now)),
        attempts=_attempts(body),
        why=[Condition(WORKFLOW_STARTED, "False", QUEUED, message)],
        waiting_for="its start",
    )


def plan_agent_missing(
    body: Body, conn: Connection, now: datetime, ttl: float, message: str
) -> StatusPatch | None:
    """spec.agent names no Agent (yet): Pending, saying which; AgentNotFound past the TTL.

    The queue TTL counts here whether Temporal is up or not: nothing but the
    Agent appearing can start the execution.
    """
    if is_terminal(body):
        return None
    timed_out = _past_ttl(
        body,
        now,
        ttl,
        conn,
        AGENT_NOT_FOUND,
        f", longer than the queue TTL of {int(ttl)}s: {message}",
    )
    if timed_out is not None:
        return timed_out
    return _pending(
        body,
        conn,
        now,
        queued=timestamp(_queued(body, now)),
        attempts=_attempts(body),
        why=[
            Condition(AGENT_RESOLVED, "False", AGENT_NOT_FOUND, message),
            Condition(WORKFLOW_STARTED, "False", AGENT_NOT_FOUND, message),
        ],
        waiting_for="the Agent",
    )


def plan_start_failed(
    body: Body, now: datetime, message: str, conn: Connection
) -> StatusPatch | None:
    """A start attempt failed while Temporal is reachable (refused, or it did
    not answer in time): Pending, StartFailed with why; it is retried."""
    if is_terminal(body):
        return None
    status = status_of(body)
    patch: StatusPatch = {
        "phase": PENDING,
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "startAttempts": _attempts(body) + 1,
        "conditions": build_conditions(
            body,
            [
                connection_condition(conn),
                Condition(WORKFLOW_STARTED, "False", START_FAILED, message),
            ],
            now,
        ),
    }
    if not status.get("queuedTime"):
        patch["queuedTime"] = timestamp(now)
    return patch


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
    patch: StatusPatch = {
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "workflow": dict(workflow),
        "startAttempts": _attempts(body) + (1 if counted_attempt else 0),
        "conditions": build_conditions(
            body,
            [
                connection_condition(conn),
                Condition(WORKFLOW_STARTED, "True", STARTED, f"workflow {workflow['id']}"),
                Condition(SUCCEEDED_CONDITION, "Unknown", AGENT_RUNNING, "the agent is running"),
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
        ),
        Condition(COMPLETED_CONDITION, "True", phase, f"the execution finished: {phase}"),
    ]
    if started_reason is not None:
        updates.append(Condition(WORKFLOW_STARTED, "False", started_reason, message or ""))
    if conn is not None:
        updates.append(connection_condition(conn))
    patch: StatusPatch = {
        "phase": phase,
        # Finished: it no longer depends on Temporal (the printer column empties).
        "temporalConnection": None,
        "observedGeneration": generation_of(body),
        "completionTime": timestamp(now),
        "conditions": build_conditions(body, updates, now),
    }
    if output is not None:
        patch.update(build_output(output))
    if phase != SUCCEEDED:
        patch["error"] = {"reason": reason or phase, "message": (message or "")[:MAX_MESSAGE]}
    return patch


def build_output(output: str, limit: int = MAX_OUTPUT_BYTES) -> StatusPatch:
    """``status.output``: at most ``limit`` UTF-8 bytes, cut on a character
    boundary; a cut output says so (``outputTruncated``) and how long the whole
    was (``outputLength``, in bytes), never silently."""
    # surrogatepass: a lone surrogate (valid JSON, "\ud800") must not crash
    # the decision; the API server stores it as U+FFFD, also 3 bytes.
    encoded = output.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return {"output": output}
    end = limit
    while end > 0 and encoded[end] & 0xC0 == 0x80:  # inside a character: back off
        end -= 1
    return {
        "output": encoded[:end].decode("utf-8", "surrogatepass"),
        "outputTruncated": True,
        "outputLength": len(encoded),
    }


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
    # A terminal write refreshes the connection condition too.
    patch = plan_terminal(
        body, phase, now, output=output, reason=reason, message=message, conn=conn
    )
    if patch is not None:
        patch["workflow"] = dict(workflow)
        if not status_of(body).get("startTime"):
            patch["startTime"] = patch["completionTime"]
    return patch


def connection_differs(body: Body, conn: Connection) -> bool:
    """Whether the execution's TemporalConnected condition (or the printer
    column) says something else than ``conn``."""
    current = condition_of(body, TEMPORAL_CONNECTED)
    wanted = "True" if conn.connected else "False"
    return not (
        current is not None
        and current.get("status") == wanted
        and current.get("reason") == conn.reason
        and status_of(body).get("temporalConnection") == conn.reason
    )


def plan_connection(body: Body, conn: Connection, now: datetime) -> StatusPatch | None:
    """Reflect the connection on a non-terminal execution, if it changed."""
    if is_terminal(body) or not connection_differs(body, conn):
        return None
    return {
        "temporalConnection": conn.reason,
        "conditions": build_conditions(body, [connection_condition(conn)], now),
    }


def plan_progress(
    body: Body, now: datetime, *, reason: str, message: str, conn: Connection
) -> StatusPatch | None:
    """A running execution's progress (e.g. NoRunner) on its Succeeded condition."""
    if is_terminal(body):
        return None
    return {
        "temporalConnection": conn.reason,
        "conditions": build_conditions(
            body,
            [
                connection_condition(conn),
                Condition(SUCCEEDED_CONDITION, "Unknown", reason, message),
            ],
            now,
        ),
    }


def suspension(suspended: bool) -> Condition:
    """The Suspended condition: what spec.suspend says, as applied."""
    if suspended:
        return Condition(
            SUSPENDED_CONDITION,
            "True",
            SUSPENDED,
            "spec.suspend is true: no attempt runs; a running one stops at its last checkpoint",
        )
    return Condition(
        SUSPENDED_CONDITION,
        "False",
        RESUMED,
        "spec.suspend is false: the agent runs (on from its last checkpoint)",
    )


def suspend_applied(body: Body) -> bool:
    """Whether the execution says it is suspended (the workflow was told)."""
    return (condition_of(body, SUSPENDED_CONDITION) or {}).get("status") == "True"


def plan_suspended(body: Body, conn: Connection, now: datetime) -> StatusPatch | None:
    """spec.suspend before the workflow started: Pending, and why (as a
    suspended Job, nothing starts until it is false)."""
    if is_terminal(body):
        return None
    message = "spec.suspend is true: the workflow starts once it is false"
    return _pending(
        body,
        conn,
        now,
        queued=timestamp(_queued(body, now)),
        attempts=_attempts(body),
        why=[suspension(True), Condition(WORKFLOW_STARTED, "False", SUSPENDED, message)],
        waiting_for="spec.suspend to be false",
        succeeded=Condition(SUCCEEDED_CONDITION, "Unknown", SUSPENDED, message),
    )


def ttl_after_finished(body: Body, default: float | None) -> float | None:
    """Seconds a finished execution is kept: its spec's, else the operator's
    default; None keeps it."""
    spec = body.get("spec")
    ttl = spec.get("ttlSecondsAfterFinished") if isinstance(spec, Mapping) else None
    if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0:
        return float(ttl)
    return default


def expiry_of(body: Body, default: float | None) -> datetime | None:
    """When a finished execution is to be deleted (completionTime + its TTL),
    or None: not finished, no TTL, or no completion time to count from (as a
    Job without one is never deleted by its TTL)."""
    if not is_terminal(body):
        return None
    ttl = ttl_after_finished(body, default)
    finished = parse_time(status_of(body).get("completionTime"))
    if ttl is None or finished is None:
        return None
    return finished + timedelta(seconds=ttl)


def ttl_left(body: Body, now: datetime, ttl: float) -> float:
    queued = parse_time(status_of(body).get("queuedTime")) or now
    return ttl - (now - queued).total_seconds()
