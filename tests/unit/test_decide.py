"""planner.decide: what reconcile does for each state of an execution. Table-driven."""

# ruff: noqa: E501  (one case a line reads best as a table)

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentexec import conditions as c
from agentexec import planner, status
from agentexec.decisions import (
    AddFinalizer,
    Cancel,
    Config,
    Decision,
    Describe,
    Observed,
    ReadAgent,
    ReadExecution,
    Start,
    TakeDeleteSlot,
    TakeStartSlot,
)
from agentexec.status import Connection
from agentexec.temporal.types import (
    Answer,
    ExecutionRef,
    ExecutionResult,
    Outcome,
    StatusReport,
    Usage,
)

T0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
UP = Connection(True, "Connected", "connected to t:7233")
DOWN = Connection(False, "TemporalUnavailable", "Temporal at t:7233 is unavailable")
NS_MISSING = Connection(False, "NamespaceNotFound", "namespace 'x' does not exist")
WF = {"id": "agentexec/ns/a/u1", "runId": "r1", "namespace": "default", "taskQueue": "q"}


def obj(
    phase: str | None = None,
    *,
    finalizer: bool = True,
    deleting: bool = False,
    workflow: bool = False,
    queued: datetime | None = None,
    force: bool = False,
    extra_status: dict[str, Any] | None = None,
    finished: datetime | None = None,
    ttl: int | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}
    if finalizer:
        meta["finalizers"] = ["someone.else/keep", status.FINALIZER]
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T12:00:00Z"
    if force:
        meta["annotations"] = {status.FORCE_DELETE: "true"}
    st: dict[str, Any] = dict(extra_status or {})
    if phase:
        st["phase"] = phase
    if workflow:
        st["workflow"] = dict(WF)
    if queued:
        st["queuedTime"] = c.timestamp(queued)
    if finished:
        st["completionTime"] = c.timestamp(finished)
    spec: dict[str, Any] = {"agent": "echo", "message": "hi"}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {"metadata": meta, "spec": spec, "status": st}


def report(phase: str, reason: str | None = None, uid: str = "u1") -> StatusReport:
    return StatusReport(
        ref=ExecutionRef("ns", "a", uid),
        result=ExecutionResult(phase=phase, output="out", reason=reason, message="m"),
        workflow_id=WF["id"],
        run_id="r1",
        namespace="default",
        task_queue="q",
    )


def observed(body: dict[str, Any], **kw: Any) -> Observed:
    config = Config(
        queue_ttl=60,
        finished_ttl=kw.pop("finished_ttl", None),
        **({"policy": kw.pop("policy")} if "policy" in kw else {}),
    )
    return Observed(body=body, conn=kw.pop("conn", UP), now=kw.pop("now", T0), config=config, **kw)


def step(o: Observed) -> tuple[Decision, Observed]:
    """decide() with the calls that need no Temporal made as a plain fake
    executor would (a turn now, the finalizer added, no Agent found): the
    Temporal request it ends at, or the final decision."""
    for _ in range(8):
        d = planner.decide(o)
        if isinstance(d.request, TakeStartSlot):
            o = replace(o, start_slot=0.0)
        elif isinstance(d.request, TakeDeleteSlot):
            o = replace(o, delete_slot=0.0)
        elif isinstance(d.request, AddFinalizer):
            meta = {**o.body["metadata"], "finalizers": [status.FINALIZER]}
            o = replace(o, body={**o.body, "metadata": meta})
        elif isinstance(d.request, ReadAgent):
            o = replace(o, agent_read=True)
        elif isinstance(d.request, ReadExecution):
            o = replace(o, refreshed=True)
        else:
            return d, o
    raise AssertionError("no Temporal request nor decision in eight steps")


def kind(d: Decision) -> type | None:
    return None if d.request is None else type(d.request)


NEVER_TRIED = {"finalizer": False}  # no start was ever attempted: no finalizer


@pytest.mark.parametrize(
    ("case", "o", "asks", "finalizer_after", "remove_fin", "phase", "outcome"),
    [
        ("new, connected: a turn, the finalizer, then the start", observed(obj(**NEVER_TRIED)), Start, True, False, None, ""),
        ("new, Temporal down: wait, no attempt, no finalizer", observed(obj(**NEVER_TRIED), conn=DOWN), None, False, False, "Pending", "waiting"),
        ("new, namespace missing: wait", observed(obj(**NEVER_TRIED), conn=NS_MISSING), None, False, False, "Pending", "waiting"),
        ("started", observed(obj(), answer=Answer(Outcome.STARTED, workflow=WF)), None, True, False, "Running", "started"),
        ("start found it already closed", observed(obj(), answer=Answer(Outcome.CLOSED, workflow=WF, result=ExecutionResult("Succeeded", output="x"))), None, True, True, "Succeeded", "finished: Succeeded"),
        ("start: Temporal went away", observed(obj(), conn=DOWN, answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="gone")), None, True, False, "Pending", "waiting"),
        ("start: no answer while connected: back off", observed(obj(), answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="Timeout expired")), None, True, False, "Pending", "start-unanswered"),
        ("start refused", observed(obj(), answer=Answer(Outcome.REJECTED, reason="InvalidArgument", message="id too long")), None, True, False, "Pending", "start-refused"),
        ("running, nothing to check", observed(obj("Running", workflow=True)), None, True, False, None, "running"),
        ("running, its workflow closed in Temporal: describe", observed(obj("Running", workflow=True), check=True), Describe, True, False, None, ""),
        ("running, Temporal down: no describe", observed(obj("Running", workflow=True), check=True, conn=DOWN), None, True, False, None, "running"),
        ("running, finalizer removed by hand: back", observed(obj("Running", workflow=True, finalizer=False)), None, True, False, None, "running"),
        ("workflow lost", observed(obj("Running", workflow=True), answer=Answer(Outcome.NOT_FOUND)), None, True, True, "Failed", "workflow-lost"),
        ("closed without report", observed(obj("Running", workflow=True), answer=Answer(Outcome.CLOSED, workflow=WF, result=ExecutionResult("Failed", reason="Terminated", message="t"))), None, True, True, "Failed", "finished: Failed"),
        ("final report", observed(obj("Running", workflow=True), report=report("Succeeded")), None, True, True, "Succeeded", "finished: Succeeded"),
        ("report for an older object of the same name", observed(obj("Running", workflow=True), report=report("Succeeded", uid="old")), None, True, False, None, "running"),
        ("progress report: NoRunner", observed(obj("Running", workflow=True), report=report("Running", "NoRunner")), None, True, False, None, "progress: NoRunner"),
        ("terminal: finalizer goes, Temporal never asked", observed(obj("Succeeded", workflow=True), conn=DOWN), None, True, True, None, "terminal"),
        ("terminal without finalizer: nothing", observed(obj("Failed", finalizer=False)), None, False, False, None, "terminal"),
        ("terminal, a start may have run: cancel by ID first", observed(obj("Failed")), Cancel, True, False, None, ""),
        ("terminal, cancelled by ID: released", observed(obj("Failed"), answer=Answer(Outcome.NOT_FOUND)), None, True, True, None, "terminal"),
        ("terminal, Temporal down: the finalizer waits", observed(obj("Failed"), conn=DOWN, answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable")), None, True, False, None, "release-waits-for-temporal"),
        ("deleting a finished one: no Temporal", observed(obj("Succeeded", deleting=True, workflow=True), conn=DOWN), None, True, True, None, "deleted"),
        ("deleting a running one: cancel", observed(obj("Running", deleting=True, workflow=True)), Cancel, True, False, None, ""),
        ("deleting one that never tried to start: nothing to ask", observed(obj("Pending", deleting=True, **NEVER_TRIED), conn=DOWN), None, False, False, None, "deleting"),
        ("deleting one whose start may have been sent: cancel by ID", observed(obj("Pending", deleting=True)), Cancel, True, False, None, ""),
        ("deleting, cancelled", observed(obj("Running", deleting=True, workflow=True), answer=Answer(Outcome.CANCEL_REQUESTED)), None, True, True, None, "cancelled"),
        ("deleting, no such workflow", observed(obj("Pending", deleting=True), answer=Answer(Outcome.NOT_FOUND)), None, True, True, None, "cancelled"),
        ("deleting, Temporal down: wait, say how to force", observed(obj("Running", deleting=True, workflow=True), answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="down")), None, True, False, None, "delete-waiting"),
        ("force delete", observed(obj("Running", deleting=True, workflow=True, force=True), conn=DOWN), None, True, True, None, "force-deleted"),
        ("deleting, not ours any more", observed(obj("Running", deleting=True, finalizer=False)), None, False, False, None, "deleting"),
    ],
)  # fmt: skip
def test_decide(
    case: str,
    o: Observed,
    asks: type | None,
    finalizer_after: bool,
    remove_fin: bool,
    phase: str | None,
    outcome: str,
) -> None:
    d, seen = step(o)
    assert kind(d) == asks, (case, d)
    assert status.has_finalizer(seen.body) == finalizer_after, case
    assert d.remove_finalizer == remove_fin, case
    assert (d.status or {}).get("phase") == phase, (case, d.status)
    assert d.outcome == outcome, case


def test_a_refused_start_backs_off_with_one_warning_naming_the_reason() -> None:
    d = planner.decide(
        observed(obj(), answer=Answer(Outcome.REJECTED, reason="InvalidArgument", message="id"))
    )
    assert d.backoff == "InvalidArgument"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "StartFailed")]
    cond = c.condition_of({"status": d.status}, c.WORKFLOW_STARTED)
    assert cond is not None
    assert cond["reason"] == "StartFailed"


def test_deletion_blocked_names_the_force_delete_annotation() -> None:
    d = planner.decide(
        observed(
            obj("Running", deleting=True, workflow=True),
            answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="down"),
        )
    )
    assert d.backoff
    assert d.events[0].reason == "DeletionBlocked"
    assert status.FORCE_DELETE in d.events[0].message


def test_the_queue_ttl_counts_only_while_temporal_is_unavailable() -> None:
    long_ago = T0 - timedelta(seconds=600)  # queued 10 min ago, TTL 60 s
    # Connected and draining: started, never failed for the TTL.
    assert kind(step(observed(obj(queued=long_ago)))[0]) is Start
    # Still unavailable past the TTL: QueueTimeout. It never tried to start:
    # no finalizer, nothing to release.
    d = planner.decide(observed(obj(queued=long_ago, finalizer=False), conn=DOWN))
    assert d.status is not None
    assert d.status["phase"] == "Failed"
    assert d.status["error"]["reason"] == "QueueTimeout"
    assert not d.remove_finalizer
    # Within the TTL: look again when it runs out.
    d = planner.decide(observed(obj(queued=T0 - timedelta(seconds=20)), conn=DOWN))
    assert d.requeue_after == pytest.approx(40.5)


def test_waiting_does_not_count_attempts_it_did_not_make() -> None:
    d = planner.decide(observed(obj(), conn=DOWN))
    assert d.status is not None
    assert d.status["startAttempts"] == 0
    assert d.events == ()  # nothing was tried: no Warning
    d = planner.decide(
        observed(obj(), conn=DOWN, answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable"))
    )
    assert d.status is not None
    assert d.status["startAttempts"] == 1
    assert d.events[0].reason == "WaitingForTemporal"


def test_a_terminal_write_refreshes_the_connection_condition() -> None:
    stale = obj(
        "Running",
        workflow=True,
        extra_status={
            "conditions": [
                {"type": "TemporalConnected", "status": "False", "reason": "TemporalUnavailable"}
            ]
        },
    )
    d = planner.decide(observed(stale, report=report("Succeeded")))
    cond = c.condition_of({"status": d.status}, c.TEMPORAL_CONNECTED)
    assert cond is not None
    assert cond["status"] == "True"


def test_workflow_lost_says_which_workflow_and_namespace() -> None:
    d = planner.decide(observed(obj("Running", workflow=True), answer=Answer(Outcome.NOT_FOUND)))
    assert d.status is not None
    assert d.status["error"]["reason"] == "WorkflowLost"
    assert WF["id"] in d.status["error"]["message"]
    assert "'default'" in d.status["error"]["message"]


def test_a_runner_taking_the_agent_clears_no_runner() -> None:
    waiting = obj(
        "Running",
        workflow=True,
        extra_status={
            "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "NoRunner"}]
        },
    )
    d = planner.decide(
        observed(waiting, answer=Answer(Outcome.RUNNING, workflow=WF, agent_started=True))
    )
    cond = c.condition_of({"status": d.status}, c.SUCCEEDED_CONDITION)
    assert cond is not None
    assert cond["reason"] == "Running"


def test_the_temporal_column_is_shown_only_while_not_finished() -> None:
    waiting = planner.decide(observed(obj(), conn=DOWN))
    assert waiting.status is not None
    assert waiting.status["temporalConnection"] == "TemporalUnavailable"
    started = planner.decide(observed(obj(), answer=Answer(Outcome.STARTED, workflow=WF)))
    assert started.status is not None
    assert started.status["temporalConnection"] == "Connected"
    done = planner.decide(observed(obj("Running", workflow=True), report=report("Succeeded")))
    assert done.status is not None
    assert done.status["temporalConnection"] is None  # merge patch: removed


AGO = T0 - timedelta(seconds=100)  # finished 100 s before now


@pytest.mark.parametrize(
    ("case", "o", "delete", "requeue_after", "remove_fin", "outcome"),
    [
        ("no spec TTL, no default: kept, no timer", observed(obj("Succeeded", finished=AGO, finalizer=False)), False, None, False, "terminal"),
        ("default off, spec TTL expired: deleted", observed(obj("Succeeded", finished=AGO, ttl=60, finalizer=False)), True, None, False, "ttl-expired"),
        ("spec TTL not yet: look again when it runs out", observed(obj("Failed", finished=AGO, ttl=160, finalizer=False)), False, 60.0, False, "terminal"),
        ("default expired, spec unset: deleted", observed(obj("Cancelled", finished=AGO, finalizer=False), finished_ttl=30), True, None, False, "ttl-expired"),
        ("default not yet", observed(obj("Succeeded", finished=AGO, finalizer=False), finished_ttl=130), False, 30.0, False, "terminal"),
        ("spec overrides a shorter default", observed(obj("Succeeded", finished=AGO, ttl=300, finalizer=False), finished_ttl=10), False, 200.0, False, "terminal"),
        ("spec overrides a longer default", observed(obj("Succeeded", finished=AGO, ttl=10, finalizer=False), finished_ttl=3600), True, None, False, "ttl-expired"),
        ("spec 0: at once", observed(obj("Succeeded", finished=T0, ttl=0, finalizer=False)), True, None, False, "ttl-expired"),
        ("exactly at expiry: deleted", observed(obj("Succeeded", finished=AGO, ttl=100, finalizer=False)), True, None, False, "ttl-expired"),
        ("expired with our finalizer: both, Temporal down and never asked", observed(obj("Succeeded", workflow=True, finished=AGO, ttl=1), conn=DOWN), True, None, True, "ttl-expired"),
        ("no completionTime: never deleted (as Jobs)", observed(obj("Succeeded", ttl=0, finalizer=False)), False, None, False, "terminal"),
        ("not finished: the TTL does not apply", observed(obj("Running", workflow=True, ttl=0, finalizer=True)), False, None, False, "running"),
        ("being deleted: the delete path, not the TTL", observed(obj("Succeeded", finished=AGO, ttl=0, deleting=True, finalizer=False)), False, None, False, "deleting"),
    ],
)  # fmt: skip
def test_ttl_after_finished(
    case: str,
    o: Observed,
    delete: bool,
    requeue_after: float | None,
    remove_fin: bool,
    outcome: str,
) -> None:
    d, _ = step(o)
    assert d.delete == delete, case
    wanted = None if requeue_after is None else pytest.approx(requeue_after)
    assert d.requeue_after == wanted, case
    assert d.remove_finalizer == remove_fin, case
    assert d.outcome == outcome, case
    assert d.request is None, case
    if status.is_terminal(o.body):
        assert d.status is None, case  # a finished execution's status is never written again


@pytest.mark.parametrize(
    ("case", "o", "requeue_after"),
    [
        ("final report, spec TTL", observed(obj("Running", workflow=True, ttl=30), report=report("Succeeded")), 30.0),
        ("final report, default", observed(obj("Running", workflow=True), report=report("Failed", "RunnerFailed")), 45.0),
        ("final report, TTL 0: at once", observed(obj("Running", workflow=True, ttl=0), report=report("Succeeded")), 0.0),
        ("closed found by the sweep", observed(obj("Running", workflow=True, ttl=5), answer=Answer(Outcome.CLOSED, workflow=WF, result=ExecutionResult("Succeeded", output="x"))), 5.0),
        ("queue timeout", observed(obj(queued=T0 - timedelta(seconds=600), ttl=7, finalizer=False), conn=DOWN), 7.0),
    ],
)  # fmt: skip
def test_finishing_sets_the_ttl_timer(case: str, o: Observed, requeue_after: float) -> None:
    """The watch's echo of our own terminal write enqueues nothing: the
    decision that finishes an execution is what sets its TTL timer."""
    d = planner.decide(replace(o, config=replace(o.config, finished_ttl=45)))
    assert d.status is not None
    assert d.status["phase"] in c.TERMINAL, case
    assert d.requeue_after == pytest.approx(requeue_after), case
    assert not d.delete, case  # deleted by the next reconcile, on the object as written


def test_finishing_without_a_ttl_sets_no_timer() -> None:
    d = planner.decide(observed(obj("Running", workflow=True), report=report("Succeeded")))
    assert d.status is not None
    assert d.requeue_after is None


def test_a_long_output_is_cut_and_says_so() -> None:
    long = "x" * (status.MAX_OUTPUT_BYTES + 5)
    done = obj("Running", workflow=True)
    d = planner.decide(
        observed(
            done,
            answer=Answer(
                Outcome.CLOSED, workflow=WF, result=ExecutionResult("Succeeded", output=long)
            ),
        )
    )
    assert d.status is not None
    assert d.status["output"] == "x" * status.MAX_OUTPUT_BYTES
    assert d.status["outputTruncated"] is True
    assert d.status["outputLength"] == status.MAX_OUTPUT_BYTES + 5


def test_the_usage_an_agent_reported_is_written_to_status() -> None:
    usage = Usage(prompt_tokens=11, completion_tokens=8, total_tokens=19)
    done = StatusReport(
        ref=ExecutionRef("ns", "a", "u1"),
        result=ExecutionResult(phase="Succeeded", output="out", usage=usage),
        workflow_id=WF["id"],
        run_id="r1",
    )
    d = planner.decide(observed(obj("Running", workflow=True), report=done))
    assert d.status is not None
    assert d.status["usage"] == {"promptTokens": 11, "completionTokens": 8, "totalTokens": 19}
    # An agent that reports no usage leaves the field out.
    d = planner.decide(observed(obj("Running", workflow=True), report=report("Succeeded")))
    assert d.status is not None
    assert "usage" not in d.status


def test_a_start_that_waits_its_turn_is_said_first() -> None:
    """A new execution queued behind the start rate says so before it waits;
    one whose status already explains it is not written again."""
    new = obj()
    new.pop("status", None)
    queued = status.plan_queued(new, UP, T0, "queued for its start")
    assert queued is not None
    assert queued["phase"] == "Pending"
    conds = {c["type"]: (c["status"], c["reason"]) for c in queued["conditions"]}
    assert conds["TemporalConnected"] == ("True", UP.reason)
    assert conds["WorkflowStarted"] == ("False", "Queued")
    assert status.plan_queued({**new, "status": queued}, UP, T0, "again") is None
    assert status.plan_queued(obj("Succeeded", finished=T0), UP, T0, "x") is None


def test_a_start_that_got_no_answer_while_connected_retries_and_says_what_is_true() -> None:
    """#18 failure 4: not parked until the queue TTL, not TemporalConnected=False."""
    d = planner.decide(
        observed(
            obj(),
            answer=Answer(
                Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="Timeout expired"
            ),
        )
    )
    assert d.backoff == "TemporalUnavailable"  # per-key backoff, not the TTL's requeue
    assert d.requeue_after is None
    assert d.status is not None
    connected = c.condition_of({"status": d.status}, c.TEMPORAL_CONNECTED)
    started = c.condition_of({"status": d.status}, c.WORKFLOW_STARTED)
    assert connected is not None
    assert started is not None
    assert (connected["status"], connected["reason"]) == ("True", "Connected")
    assert (started["status"], started["reason"]) == ("False", "StartFailed")
    assert "Timeout expired" in started["message"]
    assert d.status["startAttempts"] == 1


REFUSED = Answer(
    Outcome.REJECTED, reason="PermissionDenied", message="caller may not start workflows"
)


@pytest.mark.parametrize(
    ("case", "o", "final"),
    [
        ("first refusals: retried", observed(obj(), answer=REFUSED), False),
        ("the budget's last attempt: final", observed(obj(), answer=REFUSED, retries=11), True),
        ("past the queue TTL: final", observed(obj(queued=T0 - timedelta(seconds=61)), answer=REFUSED), True),
    ],
)  # fmt: skip
def test_refused_starts_are_bounded(case: str, o: Observed, final: bool) -> None:
    """#18 failure 7: StartRejected with Temporal's words, not forever."""
    d = planner.decide(o)
    assert d.status is not None
    if not final:
        assert d.backoff == "PermissionDenied", case
        assert d.status["phase"] == "Pending", case
        return
    assert d.backoff is None, case
    assert d.status["phase"] == "Failed", case
    assert d.status["error"]["reason"] == c.START_REJECTED, case
    assert "caller may not start workflows" in d.status["error"]["message"], case
    started = c.condition_of({"status": d.status}, c.WORKFLOW_STARTED)
    assert started is not None
    assert started["reason"] == c.START_REJECTED, case
    # It held the finalizer (a start was sent): the next pass makes sure no
    # workflow of its ID runs before the finalizer goes.
    assert not d.remove_finalizer
    assert d.requeue_after == 0
    after = {**o.body, "status": {**o.body["status"], **d.status}}
    assert kind(planner.decide(observed(after))) is Cancel


def test_a_start_whose_outcome_is_unknown_is_cancelled_by_id_before_the_finalizer_goes() -> None:
    """#18 failure 3: the start was cut (Temporal died) and the outage outlasts the TTL."""
    long_ago = T0 - timedelta(seconds=600)
    cut = Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable", message="connection reset")
    timed_out = planner.decide(observed(obj(queued=long_ago), conn=DOWN, answer=cut))
    assert timed_out.status is not None
    assert timed_out.status["error"]["reason"] == c.QUEUE_TIMEOUT
    assert not timed_out.remove_finalizer  # the workflow may exist
    failed = {**obj(queued=long_ago), "status": timed_out.status}
    # Temporal still down: the finalizer waits (Temporal coming back enqueues it).
    waiting = planner.decide(
        observed(
            failed, conn=DOWN, answer=Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable")
        )
    )
    assert not waiting.remove_finalizer
    assert waiting.backoff is None
    # Temporal answers: cancel by the derived ID, then the finalizer goes.
    asked = planner.decide(observed(failed))
    assert isinstance(asked.request, Cancel)
    assert asked.request.workflow_id == "agentexec/ns/a/u1"
    released = planner.decide(observed(failed, answer=Answer(Outcome.CANCEL_REQUESTED)))
    assert released.remove_finalizer
    # Deleted instead: the same, on the delete path.
    deleting = obj("Pending", deleting=True)
    assert isinstance(planner.decide(observed(deleting)).request, Cancel)


def test_a_workflow_cancelled_in_temporal_says_so() -> None:
    """#18 failure 2: its own reason and words, not "the AgentExecution was deleted"."""
    cancelled = StatusReport(
        ref=ExecutionRef("ns", "a", "u1"),
        result=ExecutionResult(
            "Cancelled", reason="Cancelled", message="the AgentExecution was deleted"
        ),
        workflow_id=WF["id"],
        run_id="r1",
    )
    d = planner.decide(observed(obj("Running", workflow=True), report=cancelled))
    assert d.status is not None
    assert d.status["phase"] == "Cancelled"
    assert d.status["error"]["reason"] == "Cancelled"
    assert "cancelled in Temporal" in d.status["error"]["message"]


def test_no_such_workflow_is_only_believed_once_an_unanswered_start_can_no_longer_land() -> None:
    """#18 failure 3: the SDK retries a start this process gave up on; it may
    land after a cancel found nothing, and run for an object that is gone."""
    deleting = obj("Pending", deleting=True)
    nothing = Answer(Outcome.NOT_FOUND)
    early = planner.decide(observed(deleting, answer=nothing, unanswered_start=3.0))
    assert not early.remove_finalizer
    assert early.requeue_after == pytest.approx(17.0)  # start_in_flight (20 s) - 3 s
    late = planner.decide(observed(deleting, answer=nothing, unanswered_start=21.0))
    assert late.remove_finalizer
    # Found and cancelled: released at once, whatever may still be in flight
    # (a late start finds it running and changes nothing).
    found = planner.decide(
        observed(deleting, answer=Answer(Outcome.CANCEL_REQUESTED), unanswered_start=1.0)
    )
    assert found.remove_finalizer
