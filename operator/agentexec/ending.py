"""How an execution's life ends, for decide() (planner.py). Pure.

The decision that writes its end (``finish``, ``from_result`` for what its
workflow said), what a finished execution still needs (its finalizer, its
TTL delete), and deleting one: its workflow cancelled by ID before the
finalizer goes, since a start whose answer nobody heard may have landed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from agentexec import lifecycle
from agentexec.approvals import plan_loop_status
from agentexec.conditions import (
    CANCELLED,
    DELETION_BLOCKED,
    FORCE_DELETED,
    INVALID_ARGUMENT,
    SUCCEEDED,
    TEMPORAL_UNAVAILABLE,
    TERMINAL,
)
from agentexec.decisions import Cancel, Decision, Event, Observed, TakeDeleteSlot, own_workflow_id
from agentexec.policy import tokens_spent
from agentexec.status import (
    FORCE_DELETE,
    StatusPatch,
    expiry_of,
    has_finalizer,
    is_terminal,
    meta_of,
    plan_report,
    recorded_workflow,
)
from agentexec.temporal.types import ExecutionResult, Outcome


def _end_event(phase: str, patch: Mapping[str, Any]) -> Event:
    if phase == SUCCEEDED:
        return Event("Normal", SUCCEEDED, "the agent finished")
    error = patch.get("error") or {}
    return Event("Warning", str(error.get("reason", phase)), str(error.get("message", "")))


def finish(
    o: Observed, phase: str, patch: StatusPatch | None, outcome: str, *, closed: bool
) -> Decision:
    """The execution ends with ``patch``. ``closed``: its workflow is known to
    be closed, so the finalizer goes now; otherwise a start may have been sent
    whose outcome is unknown, and the next pass cancels by ID first."""
    ours = has_finalizer(o.body)
    return Decision(
        status=patch,
        remove_finalizer=ours and closed,
        requeue_after=0.0 if ours and not closed else None,
        events=(_end_event(phase, patch),) if patch is not None else (),
        report_done=o.report is not None,
        # Counted once: when the status that ends it is written.
        charge=tokens_spent(patch) if patch is not None and not is_terminal(o.body) else 0,
        outcome=outcome,
    )


def from_result(o: Observed, result: ExecutionResult, workflow: Mapping[str, str]) -> Decision:
    message = result.message
    if result.phase == CANCELLED and not meta_of(o.body).get("deletionTimestamp"):
        # The workflow says "deleted" for any cancellation; this one was
        # cancelled in Temporal (UI, CLI), the AgentExecution still exists.
        message = "the workflow was cancelled in Temporal, not by deleting the AgentExecution"
    patch = plan_report(
        o.body,
        o.now,
        phase=result.phase,
        workflow=workflow,
        conn=o.conn,
        output=result.output,
        reason=result.reason,
        message=message,
    )
    events: tuple[Event, ...] = ()
    if patch is not None:
        patch.update(lifecycle.build_run_status(result))
        progress = o.report.progress if o.report is not None else None
        if progress is not None:  # an agent loop's last word on its steps
            loop, events = plan_loop_status(o.body, progress, o.now, patch["conditions"])
            patch.update(loop)
    decision = finish(o, result.phase, patch, f"finished: {result.phase}", closed=True)
    return replace(decision, events=(*events, *decision.events))


def decide_finished(o: Observed, ours: bool) -> Decision:
    """Finished: nothing writes status again. The finalizer goes, unless a
    start may have been sent that nobody saw answered (no workflow recorded):
    then only once Temporal says no workflow of its ID runs. Past its TTL it
    is deleted."""
    done = o.report is not None
    if ours and not recorded_workflow(o.body).get("id"):
        released = _release(o)
        if released.request is not None or not released.remove_finalizer:
            return replace(released, report_done=done)
    expiry = expiry_of(o.body, o.config.finished_ttl)
    if expiry is None:
        return Decision(remove_finalizer=ours, report_done=done, outcome="terminal")
    left = (expiry - o.now).total_seconds()
    if left > 0:
        return Decision(
            remove_finalizer=ours, requeue_after=left, report_done=done, outcome="terminal"
        )
    if o.delete_slot is None:
        return Decision(request=TakeDeleteSlot())
    if o.delete_slot > 0:
        return Decision(
            remove_finalizer=ours,
            requeue_after=o.delete_slot,
            report_done=done,
            outcome="ttl-expired-waits-its-turn",
        )
    return Decision(remove_finalizer=ours, delete=True, report_done=done, outcome="ttl-expired")


def _release(o: Observed) -> Decision:
    """Make sure no workflow of the execution's ID runs, by cancelling it by ID;
    Temporal answering "cancel requested", "not found" or "closed" releases
    the finalizer."""
    answer = o.answer
    if answer is None:
        return Decision(
            request=Cancel(own_workflow_id(o.body), recorded_workflow(o.body).get("namespace"))
        )
    none_there = answer.outcome in (Outcome.NOT_FOUND,) or (
        answer.outcome == Outcome.REJECTED and answer.reason == INVALID_ARGUMENT
    )
    in_flight = o.unanswered_start is not None and o.unanswered_start < o.config.start_in_flight
    if none_there and in_flight:
        # A start we sent may still land (the SDK retries it): ask again after.
        assert o.unanswered_start is not None
        return Decision(
            requeue_after=o.config.start_in_flight - o.unanswered_start,
            outcome="release-waits-for-a-late-start",
        )
    if none_there or answer.outcome in (Outcome.CANCEL_REQUESTED, Outcome.CLOSED):
        return Decision(remove_finalizer=True, outcome="released")
    if answer.outcome == Outcome.UNAVAILABLE and not o.conn.connected:
        # Temporal coming back enqueues it (it waits for Temporal).
        return Decision(outcome="release-waits-for-temporal")
    return Decision(backoff=answer.reason or TEMPORAL_UNAVAILABLE, outcome="release-failed")


def decide_delete(o: Observed, ours: bool) -> Decision:
    body, answer = o.body, o.answer
    done = o.report is not None
    if not ours:
        return Decision(report_done=done, outcome="deleting")
    annotations = meta_of(body).get("annotations")
    if isinstance(annotations, Mapping) and annotations.get(FORCE_DELETE) == "true":
        return Decision(
            remove_finalizer=True,
            events=(
                Event(
                    "Warning",
                    FORCE_DELETED,
                    f"{FORCE_DELETE}=true: finalizer removed without cancelling the workflow; "
                    "it may still run in Temporal",
                ),
            ),
            report_done=done,
            outcome="force-deleted",
        )
    closed = is_terminal(body) and bool(recorded_workflow(body).get("id"))
    reported_end = o.report is not None and o.report.result.phase in TERMINAL
    if closed or reported_end:
        return Decision(remove_finalizer=True, report_done=done, outcome="deleted")
    # Running, or a start may have been sent: cancel by ID.
    released = _release(o)
    if released.request is not None:
        return released
    if released.remove_finalizer:
        return replace(released, report_done=done, outcome="cancelled")
    if released.requeue_after is not None:
        return replace(released, report_done=done)  # a late start may still land
    assert answer is not None
    return Decision(
        events=(
            Event(
                "Warning",
                DELETION_BLOCKED,
                f"cannot cancel the workflow yet ({answer.message}); the finalizer stays until "
                f"Temporal answers. Annotate {FORCE_DELETE}=true to remove it anyway.",
            ),
        ),
        backoff=answer.reason or TEMPORAL_UNAVAILABLE,
        report_done=done,
        outcome="delete-waiting",
    )
