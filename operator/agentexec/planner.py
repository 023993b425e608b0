"""decide(): what to do with one execution now. Pure.

Reconcile is observe → decide ⇄ call → apply. Reconcile hands ``decide``
everything it observed (``Observed``); ``decide`` answers with either

- a **request**: one call to the world whose result it needs before it can
  finish deciding (add the finalizer, read an Agent or the execution itself,
  take a turn at a rate limit, start / describe / cancel the workflow, signal
  it that spec.suspend changed or that an AgentApproval decided a call). The
  executor makes it, and ``decide`` runs again on what came of it; or
- the final **decision**: the one status patch to write, events, the
  AgentApprovals' statuses, the finalizer's removal, a TTL delete, and when
  to look again (or back off).

How an execution ends (its end written, its finalizer, its TTL, its
deletion) is ending.py. Status patches are built in status.py (an agent
loop's in approvals.py); condition reasons live in conditions.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from agentexec import agents, lifecycle
from agentexec.approvals import plan_loop_status, plan_relays
from agentexec.conditions import (
    AGENT_NOT_FOUND,
    AGENT_RESOLVED,
    AGENT_RUNNING,
    BUDGET_EXHAUSTED,
    DESCRIBE_FAILED,
    FAILED,
    NO_RUNNER,
    POLICY_DENIED,
    QUOTA_EXCEEDED,
    RESOLVED,
    SIGNAL_FAILED,
    START_FAILED,
    START_REJECTED,
    SUCCEEDED_CONDITION,
    TASK_QUEUE_NOT_ALLOWED,
    TEMPORAL_UNAVAILABLE,
    TERMINAL,
    WAITING_FOR_TEMPORAL,
    WORKFLOW_LOST,
    WORKFLOW_NOT_RUNNING,
    Body,
    Condition,
    build_conditions,
    condition_of,
)
from agentexec.decisions import (
    AddFinalizer,
    Decision,
    Describe,
    Event,
    Observed,
    ReadAgent,
    ReadExecution,
    SignalSuspend,
    Start,
    TakeStartSlot,
    build_start_input,
    own_workflow_id,
)
from agentexec.ending import decide_delete, decide_finished, finish, from_result
from agentexec.policy import budget_exhausted, build_uses, policy_denial
from agentexec.status import (
    Connection,
    expiry_of,
    has_finalizer,
    is_terminal,
    meta_of,
    plan_agent_missing,
    plan_connection,
    plan_held,
    plan_progress,
    plan_queued,
    plan_start_failed,
    plan_started,
    plan_suspended,
    plan_terminal,
    plan_waiting,
    recorded_workflow,
    suspend_applied,
    suspension,
    ttl_left,
    uid_of,
)
from agentexec.temporal.types import AgentSpec, Answer, Outcome, StatusReport


def decide(o: Observed) -> Decision:
    """What to do with one execution now: a request to make first, or the decision."""
    if o.stale and not o.refreshed:
        return Decision(request=ReadExecution())
    report = o.report if o.report is not None and o.report.ref.uid == uid_of(o.body) else None
    if o.report is not None and report is None and not o.refreshed:
        # A report of another object of this name: ours may be the stale view.
        return Decision(request=ReadExecution())
    decision = _decide(o, report)
    if decision.request is not None:
        return decision
    if o.report is not None and report is None:
        # The object the report is about is gone: nothing to write it to.
        decision = replace(decision, report_done=True)
    patch = decision.status
    if patch is not None and patch.get("phase") in TERMINAL and decision.requeue_after is None:
        # Finishing now: look again when its TTL runs out (nothing else would:
        # the watch's echo of our own write is not news).
        finished = {**o.body, "status": {**(o.body.get("status") or {}), **patch}}
        expiry = expiry_of(finished, o.config.finished_ttl)
        if expiry is not None:
            decision = replace(decision, requeue_after=max(0.0, (expiry - o.now).total_seconds()))
    return plan_relays(o, decision)


def _decide(o: Observed, report: StatusReport | None) -> Decision:
    ours = has_finalizer(o.body)
    if meta_of(o.body).get("deletionTimestamp"):
        return decide_delete(o, ours)
    if is_terminal(o.body):
        return decide_finished(o, ours)
    if report is not None and report.result.phase in TERMINAL:
        recorded = recorded_workflow(o.body)
        workflow = {
            "id": report.workflow_id,
            "runId": report.run_id,
            "namespace": report.namespace or recorded.get("namespace", ""),
            "taskQueue": report.task_queue or recorded.get("taskQueue", ""),
        }
        return from_result(o, report.result, workflow)
    recorded = recorded_workflow(o.body)
    if recorded.get("id"):
        if not ours:
            return Decision(request=AddFinalizer())  # removed by hand while it runs
        return _decide_started(o, recorded, report)
    return _decide_unstarted(o, ours)


def _resolved(spec: AgentSpec) -> Condition:
    return Condition(
        AGENT_RESOLVED,
        "True",
        RESOLVED,
        f"Agent {spec.name!r} (generation {spec.generation}) snapshotted into the workflow input",
    )


def _upsert(
    body: Body, conditions: list[dict[str, Any]], update: Condition, now: datetime
) -> list[dict[str, Any]]:
    """``conditions`` (a patch's full list) with one more condition upserted."""
    return build_conditions(
        {"metadata": meta_of(body), "status": {"conditions": conditions}}, [update], now
    )


def _shadows_builtin(o: Observed) -> str | None:
    """The spec's agent name, when it is a built-in one that an Agent of the
    same name (not cached yet) would shadow; None when there is nothing to read."""
    spec = o.body.get("spec")
    name = str(spec.get("agent", "")) if isinstance(spec, Mapping) else ""
    builtin = o.config.policy.builtin_agents or frozenset()
    if o.agent is None and not o.agent_read and name in builtin:
        return name
    return None


def _decide_unstarted(o: Observed, ours: bool) -> Decision:
    body, now, answer = o.body, o.now, o.answer
    resolved = agents.resolve(body, o.agent, o.config.policy)
    if resolved.refused is not None:
        patch = plan_terminal(
            body,
            FAILED,
            now,
            reason=TASK_QUEUE_NOT_ALLOWED,
            message=resolved.refused,
            started_reason=TASK_QUEUE_NOT_ALLOWED,
            conn=o.conn,
        )
        return finish(o, FAILED, patch, "task-queue-not-allowed", closed=False)
    if resolved.missing is not None:
        return _agent_missing(o, resolved.missing)
    if answer is None and lifecycle.suspend_wanted(body):
        # As a suspended Job: nothing starts until spec.suspend is false.
        return Decision(status=plan_suspended(body, o.conn, now), outcome="suspended")
    if answer is None:
        if not o.conn.connected:
            waiting = _waiting(o, o.conn, attempted=False)
            said = condition_of(body, AGENT_RESOLVED) or {}
            if resolved.spec is not None and said.get("status") == "False" and waiting.status:
                # The Agent came while Temporal is away: say it is no longer missing.
                conditions = waiting.status.get("conditions", [])
                waiting.status["conditions"] = _upsert(
                    body, conditions, _resolved(resolved.spec), now
                )
            return waiting
        shadowed = _shadows_builtin(o)
        if shadowed is not None:
            return Decision(request=ReadAgent(shadowed))
        # What it resolved to (the Agent just read included) against its
        # namespace's ExecutionPolicies, before any workflow: admission may
        # have been bypassed, or the policy or the Agent came later.
        denied = policy_denial(
            o.policies, build_uses(body, resolved.spec), o.config.runner_task_queue
        )
        if denied is not None:
            patch = plan_terminal(
                body, FAILED, now, reason=POLICY_DENIED, message=denied,
                started_reason=POLICY_DENIED, conn=o.conn,
            )  # fmt: skip
            return finish(o, FAILED, patch, "policy-denied", closed=False)
        held = _held(o)
        if held is not None:
            return held
        if o.start_slot is None:
            return Decision(request=TakeStartSlot())
        if o.start_slot > 0:
            # Its turn may take seconds (a backlog at the start rate): a new
            # execution says where it is before it waits.
            return Decision(
                status=plan_queued(
                    body,
                    o.conn,
                    now,
                    f"queued for its start ({o.config.start_rate:g} starts per second, "
                    "AGENTEXEC_START_RATE)",
                ),
                requeue_after=o.start_slot,
                outcome="queued",
            )
        if not ours:
            return Decision(request=AddFinalizer())
        return Decision(
            request=Start(own_workflow_id(body), build_start_input(body, o.config, resolved.spec))
        )
    if answer.outcome == Outcome.STARTED and answer.workflow is not None:
        patch = plan_started(body, now, workflow=answer.workflow, conn=o.conn)
        if patch is not None and resolved.spec is not None:
            patch["conditions"] = _upsert(body, patch["conditions"], _resolved(resolved.spec), now)
        if patch is not None and suspend_applied(body):
            patch["conditions"] = _upsert(body, patch["conditions"], suspension(False), now)
        return Decision(status=patch, outcome="started")
    if answer.outcome == Outcome.CLOSED and answer.result is not None:
        return from_result(o, answer.result, answer.workflow or {})
    past_ttl = ttl_left(body, now, o.config.queue_ttl) < 0
    if answer.outcome == Outcome.UNAVAILABLE and not o.conn.connected:
        conn = Connection(False, answer.reason or TEMPORAL_UNAVAILABLE, answer.message)
        return _waiting(o, conn, attempted=True)
    if answer.outcome == Outcome.UNAVAILABLE:
        # The start got no answer while the probe says Temporal is there (a
        # timeout, a restart in between): retry this key with backoff; the
        # connection condition stays what is true.
        message = f"the start got no answer from Temporal ({answer.message}); retrying"
        if past_ttl:
            return _waiting(o, Connection(False, answer.reason, message), attempted=True)
        return Decision(
            status=plan_start_failed(body, now, message, o.conn),
            events=(Event("Warning", START_FAILED, message),),
            backoff=answer.reason or START_FAILED,
            outcome="start-unanswered",
        )
    # Refused (or an answer that makes no sense for a start).
    words = f"Temporal refused to start the workflow ({answer.reason}): {answer.message}"
    if past_ttl or o.retries + 1 >= o.config.start_refused_budget:
        patch = plan_terminal(
            body,
            FAILED,
            now,
            reason=START_REJECTED,
            message=f"{words}; gave up after {o.retries + 1} attempts in a row"
            + (" and past the queue TTL" if past_ttl else ""),
            started_reason=START_REJECTED,
            conn=o.conn,
        )
        return finish(o, FAILED, patch, "start-rejected", closed=False)
    return Decision(
        status=plan_start_failed(body, now, words, o.conn),
        events=(Event("Warning", START_FAILED, words),),
        backoff=answer.reason or START_FAILED,
        outcome="start-refused",
    )


# How soon an execution with room in its quota looks again while older ones
# of its namespace are still starting.
AFTER_OLDER = 0.1


def _held(o: Observed) -> Decision | None:
    """Held back by the namespace's ExecutionPolicy: its running quota is full
    (counting older executions that wait first: they start in the order
    created), or its token budget for the period is spent. A slot freeing and
    a policy changing enqueue it; a period rolling over is its requeue."""
    quota = o.quota
    if quota is not None and quota.running + quota.ahead >= quota.limit:
        message = (
            f"the namespace runs at most {quota.limit} executions at once "
            "(ExecutionPolicy concurrency.maxRunning); this one starts when one finishes, "
            "in the order they were created"
        )
        return Decision(
            status=plan_held(o.body, o.conn, o.now, QUOTA_EXCEEDED, message),
            outcome="quota-exceeded",
        )
    if quota is not None and (quota.ahead > 0 or quota.in_flight > 0):
        # Room for it too, but older ones are on their way to their start:
        # it goes right after them (creation order), saying nothing meanwhile.
        return Decision(requeue_after=AFTER_OLDER, outcome="after-older")
    exhausted = budget_exhausted(o.policies, o.now)
    if exhausted is not None:
        return Decision(
            status=plan_held(o.body, o.conn, o.now, BUDGET_EXHAUSTED, exhausted.message),
            requeue_after=exhausted.retry_after,
            outcome="budget-exhausted",
        )
    return None


def _agent_missing(o: Observed, message: str) -> Decision:
    patch = plan_agent_missing(o.body, o.conn, o.now, o.config.queue_ttl, message)
    if patch is not None and patch.get("phase") == FAILED:
        return finish(o, FAILED, patch, "agent-not-found", closed=False)
    said = condition_of(o.body, AGENT_RESOLVED) or {}
    first = said.get("reason") != AGENT_NOT_FOUND
    return Decision(
        status=patch,
        events=(Event("Warning", AGENT_NOT_FOUND, message),) if first else (),
        # The Agent appearing enqueues the execution; this is the TTL's deadline.
        requeue_after=max(0.5, ttl_left(o.body, o.now, o.config.queue_ttl) + 0.5),
        outcome="waiting-for-agent",
    )


def _waiting(o: Observed, conn: Connection, *, attempted: bool) -> Decision:
    patch = plan_waiting(o.body, conn, o.now, o.config.queue_ttl, attempted=attempted)
    if patch is not None and patch.get("phase") == FAILED:
        return finish(o, FAILED, patch, "queue-timeout", closed=False)
    events: tuple[Event, ...] = ()
    if patch is not None and attempted:
        events = (
            Event(
                "Warning",
                WAITING_FOR_TEMPORAL,
                f"workflow not started; it starts when Temporal is available: {conn.message}",
            ),
        )
    return Decision(
        status=patch,
        events=events,
        # Look again when the TTL runs out (Temporal coming back wakes it sooner).
        requeue_after=max(0.5, ttl_left(o.body, o.now, o.config.queue_ttl) + 0.5),
        outcome="waiting",
    )


def _decide_started(
    o: Observed, recorded: Mapping[str, Any], report: StatusReport | None
) -> Decision:
    body, now, answer = o.body, o.now, o.answer
    if report is not None:  # a progress report, e.g. NoRunner, AttemptFailed, a loop's step
        return _progress(o, report)
    if answer is None and o.check and o.conn.connected:
        return Decision(request=Describe(recorded))
    suspend = lifecycle.suspend_wanted(body)
    told = o.suspend_answer
    running = answer is None or answer.outcome == Outcome.RUNNING
    if told is None and running and suspend != suspend_applied(body) and o.conn.connected:
        # Tell the workflow (after a describe that found it running, too).
        return Decision(
            request=SignalSuspend(str(recorded.get("id")), recorded.get("namespace"), suspend)
        )
    missed = told is not None and told.reason == WORKFLOW_NOT_RUNNING
    if missed and answer is None:
        # The signal found no running workflow: it ended meanwhile; ask how.
        return Decision(request=Describe(recorded))
    if told is not None and not missed:
        return _suspend_told(o, told, suspend)
    if answer is None:
        return Decision(
            status=plan_connection(body, o.conn, now), check_done=not o.check, outcome="running"
        )
    if answer.outcome == Outcome.RUNNING:
        succeeded = condition_of(body, SUCCEEDED_CONDITION) or {}
        if answer.agent_started and succeeded.get("reason") == NO_RUNNER:
            patch = plan_progress(
                body, now, reason=AGENT_RUNNING, message="a runner took the agent", conn=o.conn
            )
        else:
            patch = plan_connection(body, o.conn, now)
        return Decision(status=patch, outcome="running")
    if answer.outcome == Outcome.CLOSED and answer.result is not None:
        return from_result(o, answer.result, answer.workflow or dict(recorded))
    if answer.outcome == Outcome.NOT_FOUND:
        message = (
            f"workflow {recorded.get('id')} no longer exists in Temporal namespace "
            f"{recorded.get('namespace')!r} (retention expired, deleted, or the namespace "
            "changed); it is not run again"
        )
        patch = plan_terminal(body, FAILED, now, reason=WORKFLOW_LOST, message=message, conn=o.conn)
        return finish(o, FAILED, patch, "workflow-lost", closed=True)
    return _not_answered(o, answer, DESCRIBE_FAILED)


def _suspend_told(o: Observed, told: Answer, suspend: bool) -> Decision:
    """What came of telling the workflow that spec.suspend changed."""
    body, now = o.body, o.now
    if told.outcome == Outcome.SIGNALLED:
        condition = suspension(suspend)
        patch = plan_connection(body, o.conn, now) or {}
        patch["conditions"] = _upsert(
            body, patch.get("conditions") or _conditions(body), condition, now
        )
        return Decision(
            status=patch,
            events=(Event("Normal", condition.reason, condition.message),),
            outcome=f"suspend: {suspend}",
        )
    return _not_answered(o, told, SIGNAL_FAILED)


def _not_answered(o: Observed, answer: Answer, failed: str) -> Decision:
    """A describe or a suspend signal that got no use: while Temporal is away,
    say so (coming back enqueues it, and the call is made then); otherwise a
    Warning with Temporal's words, and backoff. A check stays owed."""
    if answer.outcome == Outcome.UNAVAILABLE and not o.conn.connected:
        return Decision(
            status=plan_connection(o.body, o.conn, o.now), check_done=False, outcome="unknown"
        )
    return Decision(
        events=(Event("Warning", failed, answer.message),),
        backoff=answer.reason or failed,
        check_done=False,
        outcome=failed,
    )


def _progress(o: Observed, report: StatusReport) -> Decision:
    """A running workflow's progress report: the Succeeded=Unknown condition
    with where it is, the attempts and usage so far, an agent loop's steps
    and approvals, and the events that are news."""
    body, now = o.body, o.now
    reason = report.result.reason or AGENT_RUNNING
    message = report.result.message or ""
    patch = plan_progress(body, now, reason=reason, message=message, conn=o.conn)
    kind = "Normal" if reason in lifecycle.NORMAL_PROGRESS else "Warning"
    events: tuple[Event, ...] = (
        () if reason in lifecycle.QUIET_PROGRESS else (Event(kind, reason, message),)
    )
    if patch is not None:
        patch.update(lifecycle.build_run_status(report.result))
        if report.progress is not None:
            loop, more = plan_loop_status(body, report.progress, now, patch["conditions"])
            patch.update(loop)
            events = (*events, *more)
    return Decision(
        status=patch,
        events=events,
        report_done=True,
        check_done=not o.check,
        outcome=f"progress: {reason}",
    )


def _conditions(body: Body) -> list[dict[str, Any]]:
    existing = (body.get("status") or {}).get("conditions")
    return (
        [dict(c) for c in existing if isinstance(c, Mapping)] if isinstance(existing, list) else []
    )
