"""Pure decisions about an AgentExecution's status.

Each ``plan_*`` function takes the resource as last read (a plain dict), what
was observed, and ``now``; it returns the status fields to write (a merge
patch for ``status``), or None when nothing needs writing. No I/O here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agentexec import agents, lifecycle
from agentexec.agents import AgentPolicy
from agentexec.temporal.types import (
    SUSPENDED,
    WORKFLOW_NOT_RUNNING,
    AgentSpec,
    Answer,
    ExecutionResult,
    Outcome,
    StatusReport,
)

PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Cancelled",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

FINALIZER = "agentexec.io/cancel-workflow"
FORCE_DELETE = "agentexec.io/force-delete"

TEMPORAL_CONNECTED = "TemporalConnected"
WORKFLOW_STARTED = "WorkflowStarted"
SUCCEEDED_CONDITION = "Succeeded"
# True once the execution finished, whichever way (reason: the phase), so that
# `kubectl wait --for=condition=Completed` returns for a success and a failure
# alike. Argo Workflows' name for it; a Job's "Complete" means success only
# (a failed Job says "Failed"), and Succeeded stays the Tekton-style outcome.
COMPLETED_CONDITION = "Completed"
AGENT_RESOLVED = "AgentResolved"
AWAITING_APPROVAL = "AwaitingApproval"

# Fields of status we cap so a huge agent output cannot make the object
# unwritable (etcd's default request limit is 1.5 MiB, and the spec's message
# alone may take 1 MiB of it). The output is bounded in UTF-8 bytes, which is
# what etcd stores: every watcher receives it again with each later write of
# the object, so it is kept small (a Pod's termination message allows 4 KiB);
# the whole result stays in the workflow's result in Temporal.
MAX_OUTPUT_BYTES = 32 * 1024
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


def plan_waiting(
    body: Body, conn: Connection, now: datetime, ttl: float, attempted: bool = True
) -> StatusPatch | None:
    """Temporal is unavailable: Pending with the reason, or QueueTimeout past the TTL.

    Only called while Temporal is unavailable, so the TTL never fails an
    execution while Temporal is connected and the queue drains.
    """
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
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "queuedTime": timestamp(queued),
        "startAttempts": attempts + (1 if attempted else 0),
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


def plan_queued(body: Body, conn: Connection, now: datetime, message: str) -> StatusPatch | None:
    """A new execution whose start waits its turn (the start rate, a backlog
    after an outage): say so before waiting, unless its status already says
    where it is."""
    if is_terminal(body) or status_of(body).get("conditions"):
        return None
    return {
        "phase": PENDING,
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "queuedTime": timestamp(now),
        "startAttempts": 0,
        "conditions": build_conditions(
            body,
            [
                _connection_condition(conn),
                Condition(WORKFLOW_STARTED, "False", "Queued", message),
                Condition(SUCCEEDED_CONDITION, "Unknown", "Pending", "waiting for its start"),
            ],
            now,
        ),
    }


def plan_agent_missing(
    body: Body, conn: Connection, now: datetime, ttl: float, message: str
) -> StatusPatch | None:
    """spec.agent names no Agent (yet): Pending, saying which; AgentNotFound past the TTL.

    The queue TTL counts here whether Temporal is up or not: nothing but the
    Agent appearing can start the execution.
    """
    if is_terminal(body):
        return None
    status = status_of(body)
    queued = parse_time(status.get("queuedTime")) or now
    waited = (now - queued).total_seconds()
    if waited > ttl:
        return plan_terminal(
            body,
            FAILED,
            now,
            reason="AgentNotFound",
            message=f"waited {int(waited)}s, longer than the queue TTL of {int(ttl)}s: {message}",
            started_reason="AgentNotFound",
            conn=conn,
        )
    attempts = status.get("startAttempts")
    return {
        "phase": PENDING,
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "queuedTime": timestamp(queued),
        "startAttempts": attempts if isinstance(attempts, int) else 0,
        "conditions": build_conditions(
            body,
            [
                _connection_condition(conn),
                Condition(AGENT_RESOLVED, "False", "AgentNotFound", message),
                Condition(WORKFLOW_STARTED, "False", "AgentNotFound", message),
                Condition(SUCCEEDED_CONDITION, "Unknown", "Pending", "waiting for the Agent"),
            ],
            now,
        ),
    }


def plan_start_failed(
    body: Body, now: datetime, message: str, conn: Connection | None = None
) -> StatusPatch | None:
    """Temporal answered but refused the start (not an outage)."""
    if is_terminal(body):
        return None
    attempts = status_of(body).get("startAttempts")
    patch: StatusPatch = {
        "phase": PENDING,
        "observedGeneration": generation_of(body),
        "startAttempts": (attempts if isinstance(attempts, int) else 0) + 1,
        "conditions": build_conditions(
            body,
            [
                *([_connection_condition(conn)] if conn is not None else []),
                Condition(WORKFLOW_STARTED, "False", "StartFailed", message),
            ],
            now,
        ),
    }
    if conn is not None:
        patch["temporalConnection"] = conn.reason
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
    attempts = status.get("startAttempts")
    attempts = attempts if isinstance(attempts, int) else 0
    patch: StatusPatch = {
        "temporalConnection": conn.reason,
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
        ),
        Condition(COMPLETED_CONDITION, "True", phase, f"the execution finished: {phase}"),
    ]
    if started_reason is not None:
        updates.append(Condition(WORKFLOW_STARTED, "False", started_reason, message or ""))
    if conn is not None:
        updates.append(_connection_condition(conn))
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
        and status_of(body).get("temporalConnection") == conn.reason
    ):
        return None
    return {
        "temporalConnection": conn.reason,
        "conditions": build_conditions(body, [_connection_condition(conn)], now),
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
                _connection_condition(conn),
                Condition(SUCCEEDED_CONDITION, "Unknown", reason, message),
            ],
            now,
        ),
    }


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


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def plan_loop_status(
    body: Body, fields: Mapping[str, Any], now: datetime, conditions: list[dict[str, Any]]
) -> tuple[StatusPatch, tuple[Event, ...]]:
    """An agent loop's report (status.progress, pendingApproval, lastApproval)
    as status fields, the AwaitingApproval condition upserted into
    ``conditions`` (a patch's full list), and the events it is news for: a
    call that began waiting, a decision (with who gave it)."""
    status = status_of(body)
    patch: StatusPatch = {
        k: fields[k] for k in ("progress", "pendingApproval", "lastApproval") if k in fields
    }
    pending, last = fields.get("pendingApproval"), fields.get("lastApproval")
    was, had = _mapping(status.get("pendingApproval")), _mapping(status.get("lastApproval"))
    events: list[Event] = []
    name = str(_meta(body).get("name", ""))
    if isinstance(pending, Mapping):
        message = (
            f"step {pending.get('step')}: tool {pending.get('tool')!r} waits for approval "
            f"(call {pending.get('id')}, {pending.get('timeoutSeconds')}s, then "
            f"{pending.get('onTimeout')}): kubectl agentexec approve {name} (or reject)"
        )
        update = Condition(AWAITING_APPROVAL, "True", "ApprovalRequested", message)
        if pending.get("id") != was.get("id"):
            events.append(Event("Normal", "ApprovalRequested", message))
    else:
        decided = str(_mapping(last).get("decision") or "NotWaiting")
        update = Condition(AWAITING_APPROVAL, "False", decided, "no tool call waits for approval")
    if isinstance(last, Mapping) and last.get("id") != had.get("id"):
        who = last.get("approver") or "the approval timeout"
        reason = f": {last.get('reason')}" if last.get("reason") else ""
        events.append(
            Event(
                "Normal",
                str(last.get("decision") or "Decided"),
                f"call {last.get('id')} {str(last.get('decision')).lower()} by {who}{reason}",
            )
        )
    if isinstance(pending, Mapping) or condition_of(body, AWAITING_APPROVAL) is not None:
        patch["conditions"] = _upsert(body, conditions, update, now)
    return patch, tuple(events)


# ----- the decision: given what is true now, what to do --------------------------


class Call(enum.Enum):
    """The Temporal call a decision needs before it can finish deciding."""

    NONE = "none"
    START = "start"
    DESCRIBE = "describe"
    CANCEL = "cancel"
    SIGNAL_SUSPEND = "signal-suspend"  # tell a running workflow spec.suspend changed


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Observed:
    """Everything a decision depends on, read fresh for each reconcile."""

    body: Body  # the execution as the watch (or our last write) has it
    conn: Connection
    now: datetime
    queue_ttl: float
    report: StatusReport | None = None  # what the workflow reported, not yet applied
    answer: Answer | None = None  # Temporal's answer to the call decided before
    check: bool = False  # verify a started execution against Temporal (sweep, resume)
    finished_ttl: float | None = None  # default ttlSecondsAfterFinished (None: keep)
    agent: Body | None = None  # the Agent that spec.agent names, as cached (None: none)
    policy: AgentPolicy = field(default_factory=AgentPolicy)  # built-in names, allowed queues


@dataclass(frozen=True)
class Decision:
    call: Call = Call.NONE  # ask Temporal, then decide again with its answer
    add_finalizer: bool = False  # first: then decide again on the object as written
    status: StatusPatch | None = None
    remove_finalizer: bool = False  # after the status write
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    delete: bool = False  # delete the execution (its TTL after finishing ran out)
    report_done: bool = False  # the pending report is applied (or moot)
    backoff: str | None = None  # not done: retry with per-key backoff (why)
    outcome: str = ""  # what happened, for logs and metrics
    agent_spec: AgentSpec | None = None  # with START: the Agent snapshot for the input
    suspend: bool = False  # with SIGNAL_SUSPEND: the value to tell the workflow


def _uid(body: Body) -> str:
    meta = body.get("metadata")
    return str(meta.get("uid", "")) if isinstance(meta, Mapping) else ""


def _meta(body: Body) -> Mapping[str, Any]:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _end_event(phase: str, patch: Mapping[str, Any]) -> Event:
    if phase == SUCCEEDED:
        return Event("Normal", SUCCEEDED, "the agent finished")
    error = patch.get("error") or {}
    return Event("Warning", str(error.get("reason", phase)), str(error.get("message", "")))


def _finish(
    o: Observed, result_phase: str, patch: StatusPatch | None, outcome: str, ours: bool
) -> Decision:
    events = (_end_event(result_phase, patch),) if patch is not None else ()
    return Decision(
        status=patch,
        remove_finalizer=ours,
        events=events,
        report_done=o.report is not None,
        outcome=outcome,
    )


def _from_result(
    o: Observed, result: ExecutionResult, workflow: Mapping[str, str], ours: bool
) -> Decision:
    patch = plan_report(
        o.body,
        o.now,
        phase=result.phase,
        workflow=workflow,
        conn=o.conn,
        output=result.output,
        reason=result.reason,
        message=result.message,
    )
    if patch is not None:
        patch.update(lifecycle.build_run_status(result))
    report = o.report
    if patch is not None and report is not None and report.progress is not None:
        loop, events = plan_loop_status(o.body, report.progress, o.now, patch["conditions"])
        patch.update(loop)
        decision = _finish(o, result.phase, patch, f"finished: {result.phase}", ours)
        return replace(decision, events=(*events, *decision.events))
    return _finish(o, result.phase, patch, f"finished: {result.phase}", ours)


def decide(o: Observed) -> Decision:
    """What to do with one execution now. Pure: the reconcile loop does the I/O."""
    decision = _decide(o)
    patch = decision.status
    if patch is not None and patch.get("phase") in TERMINAL and decision.requeue_after is None:
        # Finishing now: look again when its TTL runs out (nothing else would:
        # the watch's echo of our own write is not news).
        finished = {**o.body, "status": {**status_of(o.body), **patch}}
        expiry = expiry_of(finished, o.finished_ttl)
        if expiry is not None:
            decision = replace(decision, requeue_after=max(0.0, (expiry - o.now).total_seconds()))
    return decision


def _decide(o: Observed) -> Decision:
    body, meta, now = o.body, _meta(o.body), o.now
    finalizers = meta.get("finalizers")
    ours = isinstance(finalizers, list) and FINALIZER in finalizers
    report = o.report if o.report is not None and o.report.ref.uid == _uid(body) else None
    report_moot = o.report is not None and report is None
    phase = phase_of(body)
    answer = o.answer

    if meta.get("deletionTimestamp"):
        return _decide_delete(o, ours)
    if phase in TERMINAL:
        return _decide_finished(o, ours)
    if report is not None and report.result.phase in TERMINAL:
        workflow = {
            "id": report.workflow_id,
            "runId": report.run_id,
            "namespace": report.namespace or _recorded(body).get("namespace", ""),
            "taskQueue": report.task_queue or _recorded(body).get("taskQueue", ""),
        }
        return _from_result(o, report.result, workflow, ours)
    recorded = _recorded(body)
    # Resolved on every pass until the workflow starts (never after: a started
    # execution keeps the snapshot its workflow input holds).
    resolved = agents.Resolved() if recorded.get("id") else agents.resolve(body, o.agent, o.policy)
    if resolved.refused is not None:
        # Before any workflow, and before the finalizer: nothing to cancel.
        patch = plan_terminal(
            body,
            FAILED,
            now,
            reason="TaskQueueNotAllowed",
            message=resolved.refused,
            started_reason="TaskQueueNotAllowed",
            conn=o.conn,
        )
        return _finish(o, FAILED, patch, "task-queue-not-allowed", ours)
    if not ours:
        return Decision(add_finalizer=True, outcome="finalizer")

    if recorded.get("id"):
        return _decide_started(o, recorded, report, report_moot)

    # Not started yet.
    if resolved.missing is not None:
        return _agent_missing(o, resolved.missing, report_moot)
    if answer is None and lifecycle.suspend_wanted(body):
        # As a suspended Job: nothing starts until spec.suspend is false.
        return Decision(
            status=plan_suspended(body, o.conn, now), report_done=report_moot, outcome="suspended"
        )
    if answer is None:
        if not o.conn.connected:
            waiting = _waiting(o, o.conn, attempted=False, report_moot=report_moot)
            said = condition_of(body, AGENT_RESOLVED) or {}
            if resolved.spec is not None and said.get("status") == "False" and waiting.status:
                # The Agent came while Temporal is away: say it is no longer missing.
                conditions = waiting.status.get("conditions", [])
                waiting.status["conditions"] = _upsert(
                    body, conditions, _resolved(resolved.spec), now
                )
            return waiting
        return Decision(call=Call.START, agent_spec=resolved.spec, report_done=report_moot)
    if answer.outcome == Outcome.STARTED and answer.workflow is not None:
        patch = plan_started(body, now, workflow=answer.workflow, conn=o.conn)
        if patch is not None and resolved.spec is not None:
            patch["conditions"] = _upsert(body, patch["conditions"], _resolved(resolved.spec), now)
        if patch is not None and _suspend_applied(body):
            patch["conditions"] = _upsert(body, patch["conditions"], _suspension(False), now)
        return Decision(status=patch, report_done=report_moot, outcome="started")
    if answer.outcome == Outcome.CLOSED and answer.result is not None:
        return _from_result(o, answer.result, answer.workflow or {}, ours)
    if answer.outcome == Outcome.UNAVAILABLE:
        conn = Connection(False, answer.reason or "TemporalUnavailable", answer.message)
        return _waiting(o, conn, attempted=True, report_moot=report_moot)
    # Rejected (or an answer that makes no sense for a start): say why, back off.
    message = f"Temporal refused to start the workflow ({answer.reason}): {answer.message}"
    return Decision(
        status=plan_start_failed(body, now, message, o.conn),
        events=(Event("Warning", "StartFailed", message),),
        backoff=answer.reason or "StartFailed",
        report_done=report_moot,
        outcome="start-refused",
    )


def plan_suspended(body: Body, conn: Connection, now: datetime) -> StatusPatch | None:
    """spec.suspend before the workflow started: Pending, and why."""
    if is_terminal(body):
        return None
    status = status_of(body)
    attempts = status.get("startAttempts")
    message = "spec.suspend is true: the workflow starts once it is false"
    return {
        "phase": PENDING,
        "temporalConnection": conn.reason,
        "observedGeneration": generation_of(body),
        "queuedTime": status.get("queuedTime") or timestamp(now),
        "startAttempts": attempts if isinstance(attempts, int) else 0,
        "conditions": build_conditions(
            body,
            [
                _connection_condition(conn),
                _suspension(True),
                Condition(WORKFLOW_STARTED, "False", SUSPENDED, message),
                Condition(SUCCEEDED_CONDITION, "Unknown", SUSPENDED, message),
            ],
            now,
        ),
    }


def _suspend_applied(body: Body) -> bool:
    return (condition_of(body, lifecycle.SUSPENDED_CONDITION) or {}).get("status") == "True"


def _suspension(suspended: bool) -> Condition:
    if suspended:
        return Condition(
            lifecycle.SUSPENDED_CONDITION,
            "True",
            SUSPENDED,
            "spec.suspend is true: no attempt runs; a running one stops at its last checkpoint",
        )
    return Condition(
        lifecycle.SUSPENDED_CONDITION,
        "False",
        lifecycle.RESUMED,
        "spec.suspend is false: the agent runs (on from its last checkpoint)",
    )


def _conditions(body: Body) -> list[dict[str, Any]]:
    existing = status_of(body).get("conditions")
    return (
        [dict(c) for c in existing if isinstance(c, Mapping)] if isinstance(existing, list) else []
    )


def _recorded(body: Body) -> Mapping[str, Any]:
    workflow = status_of(body).get("workflow")
    return workflow if isinstance(workflow, Mapping) else {}


def _resolved(spec: AgentSpec) -> Condition:
    return Condition(
        AGENT_RESOLVED,
        "True",
        "Resolved",
        f"Agent {spec.name!r} (generation {spec.generation}) snapshotted into the workflow input",
    )


def _upsert(
    body: Body, conditions: list[dict[str, Any]], update: Condition, now: datetime
) -> list[dict[str, Any]]:
    """``conditions`` (a patch's full list) with one more condition upserted."""
    return build_conditions(
        {"metadata": _meta(body), "status": {"conditions": conditions}}, [update], now
    )


def _agent_missing(o: Observed, message: str, report_moot: bool) -> Decision:
    patch = plan_agent_missing(o.body, o.conn, o.now, o.queue_ttl, message)
    if patch is not None and patch.get("phase") == FAILED:
        return Decision(
            status=patch,
            events=(_end_event(FAILED, patch),),
            remove_finalizer=True,
            report_done=report_moot,
            outcome="agent-not-found",
        )
    said = condition_of(o.body, AGENT_RESOLVED) or {}
    first = said.get("reason") != "AgentNotFound"
    return Decision(
        status=patch,
        events=(Event("Warning", "AgentNotFound", message),) if first else (),
        # The Agent appearing enqueues the execution; this is the TTL's deadline.
        requeue_after=max(0.5, ttl_left(o.body, o.now, o.queue_ttl) + 0.5),
        report_done=report_moot,
        outcome="waiting-for-agent",
    )


def _waiting(o: Observed, conn: Connection, *, attempted: bool, report_moot: bool) -> Decision:
    patch = plan_waiting(o.body, conn, o.now, o.queue_ttl, attempted=attempted)
    if patch is not None and patch.get("phase") == FAILED:
        return Decision(
            status=patch,
            events=(_end_event(FAILED, patch),),
            remove_finalizer=True,
            report_done=report_moot,
            outcome="queue-timeout",
        )
    events: tuple[Event, ...] = ()
    if patch is not None and attempted:
        events = (
            Event(
                "Warning",
                "WaitingForTemporal",
                f"workflow not started; it starts when Temporal is available: {conn.message}",
            ),
        )
    return Decision(
        status=patch,
        events=events,
        # Look again when the TTL runs out (Temporal coming back wakes it sooner).
        requeue_after=max(0.5, ttl_left(o.body, o.now, o.queue_ttl) + 0.5),
        report_done=report_moot,
        outcome="waiting",
    )


def _decide_started(
    o: Observed, recorded: Mapping[str, Any], report: StatusReport | None, report_moot: bool
) -> Decision:
    body, now, answer = o.body, o.now, o.answer
    if report is not None:  # a progress report, e.g. NoRunner, AttemptFailed
        reason = report.result.reason or RUNNING
        message = report.result.message or ""
        patch = plan_progress(body, now, reason=reason, message=message, conn=o.conn)
        if patch is not None:
            patch.update(lifecycle.build_run_status(report.result))
        kind = "Normal" if reason in lifecycle.NORMAL_PROGRESS else "Warning"
        events: tuple[Event, ...] = (
            () if reason in lifecycle.QUIET_PROGRESS else (Event(kind, reason, message),)
        )
        if patch is not None and report.progress is not None:
            loop, more = plan_loop_status(body, report.progress, now, patch["conditions"])
            patch.update(loop)
            events = (*events, *more)
        return Decision(
            status=patch,
            events=events,
            report_done=True,
            outcome=f"progress: {reason}",
        )
    suspend = lifecycle.suspend_wanted(body)
    if answer is None:
        if o.check and o.conn.connected:
            return Decision(call=Call.DESCRIBE, report_done=report_moot)
        if suspend != _suspend_applied(body) and o.conn.connected:
            return Decision(call=Call.SIGNAL_SUSPEND, suspend=suspend, report_done=report_moot)
        return Decision(
            status=plan_connection(body, o.conn, now), report_done=report_moot, outcome="running"
        )
    if answer.outcome == Outcome.SIGNALLED:
        condition = _suspension(suspend)
        return Decision(
            status={"conditions": build_conditions(body, [condition], now)},
            events=(Event("Normal", condition.reason, condition.message),),
            report_done=report_moot,
            outcome=f"suspend: {suspend}",
        )
    if answer.reason == WORKFLOW_NOT_RUNNING:
        # Ended meanwhile: its report (or the sweep's describe) settles it.
        return Decision(backoff=answer.reason, report_done=report_moot, outcome="signal-missed")
    if answer.outcome == Outcome.RUNNING:
        succeeded = condition_of(body, SUCCEEDED_CONDITION) or {}
        if answer.agent_started and succeeded.get("reason") == "NoRunner":
            patch = plan_progress(
                body, now, reason=RUNNING, message="a runner took the agent", conn=o.conn
            )
        else:
            patch = plan_connection(body, o.conn, now)
        return Decision(status=patch, report_done=report_moot, outcome="running")
    if answer.outcome == Outcome.CLOSED and answer.result is not None:
        return _from_result(o, answer.result, answer.workflow or dict(recorded), ours=True)
    if answer.outcome == Outcome.NOT_FOUND:
        message = (
            f"workflow {recorded.get('id')} no longer exists in Temporal namespace "
            f"{recorded.get('namespace')!r} (retention expired, deleted, or the namespace "
            "changed); it is not run again"
        )
        patch = plan_terminal(
            body, FAILED, now, reason="WorkflowLost", message=message, conn=o.conn
        )
        return _finish(o, FAILED, patch, "workflow-lost", ours=True)
    if answer.outcome == Outcome.UNAVAILABLE:
        conn = Connection(False, answer.reason or "TemporalUnavailable", answer.message)
        return Decision(
            status=plan_connection(body, conn, now), report_done=report_moot, outcome="unknown"
        )
    return Decision(
        events=(Event("Warning", "DescribeFailed", answer.message),),
        backoff=answer.reason or "DescribeFailed",
        report_done=report_moot,
        outcome="describe-refused",
    )


def _decide_finished(o: Observed, ours: bool) -> Decision:
    """Finished: the finalizer has no job left, and nothing writes status again.
    Past its TTL it is deleted; Temporal is never asked (so never waited on)."""
    done = o.report is not None
    expiry = expiry_of(o.body, o.finished_ttl)
    if expiry is None:
        return Decision(remove_finalizer=ours, report_done=done, outcome="terminal")
    left = (expiry - o.now).total_seconds()
    if left > 0:
        return Decision(
            remove_finalizer=ours, requeue_after=left, report_done=done, outcome="terminal"
        )
    return Decision(remove_finalizer=ours, delete=True, report_done=done, outcome="ttl-expired")


def _decide_delete(o: Observed, ours: bool) -> Decision:
    body, answer = o.body, o.answer
    done = o.report is not None
    if not ours:
        return Decision(report_done=done, outcome="deleting")
    annotations = _meta(body).get("annotations")
    if isinstance(annotations, Mapping) and annotations.get(FORCE_DELETE) == "true":
        return Decision(
            remove_finalizer=True,
            events=(
                Event(
                    "Warning",
                    "ForceDeleted",
                    f"{FORCE_DELETE}=true: finalizer removed without cancelling the workflow; "
                    "it may still run in Temporal",
                ),
            ),
            report_done=done,
            outcome="force-deleted",
        )
    reported_end = o.report is not None and o.report.result.phase in TERMINAL
    if is_terminal(body) or reported_end:
        return Decision(remove_finalizer=True, report_done=done, outcome="deleted")
    if answer is None:
        return Decision(call=Call.CANCEL, report_done=done)
    if answer.outcome in (Outcome.CANCEL_REQUESTED, Outcome.NOT_FOUND, Outcome.CLOSED):
        return Decision(remove_finalizer=True, report_done=done, outcome="cancelled")
    return Decision(
        events=(
            Event(
                "Warning",
                "DeletionBlocked",
                f"cannot cancel the workflow yet ({answer.message}); the finalizer stays until "
                f"Temporal answers. Annotate {FORCE_DELETE}=true to remove it anyway.",
            ),
        ),
        backoff=answer.reason or "TemporalUnavailable",
        report_done=done,
        outcome="delete-waiting",
    )
