"""The controller with plain fakes of the API server and Temporal: triggers,
leadership, uids wherever a key is resolved, and reconcile end to end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from agentexec import conditions as c
from agentexec.controller import Controller
from agentexec.kube import AGENT_PLURAL, APPROVAL_PLURAL, PLURAL
from agentexec.metrics import Metrics
from agentexec.settings import Settings
from agentexec.status import FINALIZER
from agentexec.temporal.types import (
    Answer,
    ExecutionRef,
    ExecutionResult,
    Outcome,
    StatusReport,
    Usage,
)
from agentexec.workqueue import GONE, Verdict
from tests.unit.fakes import FakeKube, FakeManager, FakeVisibility, execution, next_rv

KEY = ("ns", "a")


def make(connected: bool = True, **settings: Any) -> tuple[Controller, FakeKube, FakeVisibility]:
    kube, gateway = FakeKube(), FakeVisibility()
    controller = Controller(
        Settings(**settings),
        FakeManager(connected),  # type: ignore[arg-type]
        kube,  # type: ignore[arg-type]
        Metrics(),
    )
    controller.executor.gateway = gateway  # type: ignore[assignment]
    controller.watch.gateway = gateway  # type: ignore[assignment]
    return controller, kube, gateway


def lead(controller: Controller) -> None:
    """Leading, without queue workers: the test calls reconcile itself."""
    controller.leading = True


def created(controller: Controller, kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    held = kube.hold(body)
    controller.on_event("ADDED", held)
    return held


def report(uid: str, phase: str = "Succeeded", output: str = "done") -> StatusReport:
    return StatusReport(
        ref=ExecutionRef("ns", "a", uid),
        result=ExecutionResult(phase=phase, output=output),
        workflow_id=f"agentexec/ns/a/{uid}",
        run_id="r",
        namespace="default",
        task_queue="agentexec-executions",  # the default install's
    )


async def test_a_standby_holds_no_keys_timers_or_reports() -> None:
    controller, kube, _ = make()
    for n in range(50):
        created(controller, kube, execution(f"e{n}", uid=f"u{n}"))
    controller.check(("ns", "e1"))
    assert len(controller.cache) == 50
    assert controller.status()["tracked_keys"] == 0
    assert controller.status()["queued"] == 0
    with pytest.raises(ApplicationError, match="not the leader"):
        await controller.report_status(report("u1"))
    await controller.start_leading()
    assert controller.status()["queued"] == 50
    await controller.stop_leading()  # leadership lost: nothing stays behind
    assert controller.status()["tracked_keys"] == 0
    assert controller.status()["queued"] == 0


async def test_a_late_deletion_of_an_older_object_keeps_the_new_one() -> None:
    controller, kube, _ = make()
    lead(controller)
    old = created(controller, kube, execution(uid="old"))
    new = created(controller, kube, execution(uid="new"))
    controller.on_event("MODIFIED", old)  # a late event of the old object
    controller.on_event("DELETED", old)  # and its late deletion
    held = controller.cache.get(KEY)
    assert held is not None
    assert held["metadata"]["uid"] == "new"
    assert len(controller.queue) == 1  # the new one still waits for its reconcile
    controller.on_event("DELETED", new)
    assert controller.cache.get(KEY) is None
    assert len(controller.queue) == 0


async def test_a_report_of_a_deleted_object_is_never_taken_for_the_new_ones() -> None:
    controller, kube, _ = make()
    lead(controller)
    running = {
        "phase": "Running",
        "workflow": {"id": "agentexec/ns/a/new", "runId": "r", "namespace": "default"},
    }
    body = execution(uid="new")
    body["metadata"]["finalizers"] = [FINALIZER]
    created(controller, kube, {**body, "status": running})
    new_written = controller.reports.submit(report("new", output="the new one's"))
    old_moot = controller.reports.submit(report("old", output="the old one's"))
    for _ in range(4):
        await controller.reconciler.reconcile(KEY)
    assert await asyncio.wait_for(old_moot, 1)  # acknowledged: its object is gone
    assert await asyncio.wait_for(new_written, 1)
    assert kube.objects[KEY]["status"]["phase"] == "Succeeded"
    assert kube.objects[KEY]["status"]["output"] == "the new one's"


async def test_a_relisting_replaces_the_caches() -> None:
    controller, kube, _ = make()
    for name, uid in (("a", "u1"), ("b", "u2"), ("c", "u3")):
        created(controller, kube, execution(name, uid=uid))
    created(controller, kube, execution("x", uid="x1", namespace="elsewhere"))
    # "b" was deleted during the gap, "c" deleted and re-created (another uid).
    controller.on_listed(PLURAL, "ns", {("ns", "a"): "u1", ("ns", "c"): "u3-again"})
    assert {k for k, _ in controller.cache.items()} == {("ns", "a"), ("elsewhere", "x")}
    for name in ("helper", "gone"):
        controller.on_agent_event(
            None, {"metadata": {"name": name, "namespace": "ns", "uid": name}, "spec": {}}
        )
    controller.on_listed(AGENT_PLURAL, "ns", {("ns", "helper"): "helper"})
    assert controller.agents.get("ns", "helper") is not None
    assert controller.agents.get("ns", "gone") is None


async def test_an_execution_that_never_tried_to_start_carries_no_finalizer() -> None:
    controller, kube, gateway = make(connected=False)
    lead(controller)
    created(controller, kube, execution())
    assert await controller.reconciler.reconcile(KEY) == Verdict(after=pytest.approx(3600.5, abs=1))
    assert kube.writes() == [("status", "a")]  # Pending, WaitingForTemporal: no finalizer
    assert gateway.calls == []
    # Deleted while it waits: the API server deletes it (no finalizer), Temporal never asked.
    assert not kube.objects[KEY]["metadata"].get("finalizers")


async def test_the_finalizer_goes_on_just_before_the_start_is_sent() -> None:
    controller, kube, gateway = make()
    lead(controller)
    created(controller, kube, execution())
    await controller.reconciler.reconcile(KEY)
    assert kube.writes() == [("finalizers", "a"), ("status", "a")]
    assert gateway.calls == [("start", "agentexec/ns/a/u1")]
    assert kube.objects[KEY]["status"]["phase"] == "Running"


async def test_starts_wait_their_turn_in_the_queue_not_in_a_worker() -> None:
    controller, kube, gateway = make(start_rate=1.0)
    lead(controller)
    for name in ("a", "b", "c"):
        created(controller, kube, execution(name, uid=name))
    began = time.monotonic()
    verdicts = [await controller.reconciler.reconcile(("ns", n)) for n in ("a", "b", "c")]
    assert time.monotonic() - began < 0.5  # nobody slept for a token
    assert verdicts[0] == Verdict()
    assert [v.after for v in verdicts[1:]] == [pytest.approx(1, abs=0.1), pytest.approx(2, abs=0.1)]
    queued = c.condition_of(kube.objects[("ns", "c")], c.WORKFLOW_STARTED)
    assert queued is not None
    assert queued["reason"] == c.QUEUED
    assert gateway.calls == [("start", "agentexec/ns/a/a")]


async def test_a_vanished_object_is_gone_and_forgotten() -> None:
    controller, kube, _ = make()
    lead(controller)
    body = created(controller, kube, execution())
    kube.objects.clear()  # deleted; the watch has not said so yet
    assert await controller.reconciler.reconcile(KEY) == GONE
    assert controller.cache.get(KEY) is None
    assert controller.reconciler.tracked() == 0
    controller.on_event("DELETED", body)


async def test_a_conflict_reads_the_object_before_deciding_again() -> None:
    controller, kube, _ = make()
    lead(controller)
    body = created(controller, kube, execution())
    kube.hold(replace_rv(body, next_rv()))  # someone else wrote
    assert await controller.reconciler.reconcile(KEY) == Verdict(after=0.0)
    await controller.reconciler.reconcile(KEY)
    assert ("get", "a") in kube.calls
    assert kube.objects[KEY]["status"]["phase"] == "Running"


def replace_rv(body: dict[str, Any], rv: str) -> dict[str, Any]:
    return {**body, "metadata": {**body["metadata"], "resourceVersion": rv}}


async def test_checks_survive_a_reconcile_that_could_not_make_them() -> None:
    controller, kube, gateway = make()
    lead(controller)
    running = {"phase": "Running", "workflow": {"id": "agentexec/ns/a/u1", "namespace": "default"}}
    body = execution()
    body["metadata"]["finalizers"] = [FINALIZER]
    created(controller, kube, {**body, "status": running})
    controller.check(KEY)
    controller.manager.connected = False  # type: ignore[misc]
    await controller.reconciler.reconcile(KEY)
    assert KEY in controller.reconciler.checks  # still owed
    controller.manager.connected = True  # type: ignore[misc]
    await controller.reconciler.reconcile(KEY)
    assert ("describe", "agentexec/ns/a/u1") in gateway.calls
    assert KEY not in controller.reconciler.checks


async def test_a_report_for_an_object_not_cached_is_read_for_once_then_moot_or_written() -> None:
    controller, kube, _ = make()
    lead(controller)
    # The old object is gone and forgotten; the new one is not cached yet.
    body = execution(uid="new")
    body["metadata"]["finalizers"] = [FINALIZER]
    kube.hold({**body, "status": {"phase": "Running", "workflow": {"id": "agentexec/ns/a/new"}}})
    old = controller.reports.submit(report("old"))
    assert await controller.reconciler.reconcile(KEY) == Verdict()
    assert await asyncio.wait_for(old, 1)  # moot: its object is gone
    assert [c for c in kube.calls if c[0] == "get"] == [("get", "a")]  # read once
    assert controller.cache.get(KEY) is not None  # and the new one is held now


async def test_a_write_decided_just_before_a_flip_is_decided_again() -> None:
    """The pacer's walk of the new state may pass an execution by while its
    reconcile, decided on the old state, is still writing."""
    controller, kube, _ = make()
    lead(controller)
    running = {"phase": "Running", "workflow": {"id": "agentexec/ns/a/u1", "namespace": "d"}}
    body = execution()
    body["metadata"]["finalizers"] = [FINALIZER]
    created(controller, kube, {**body, "status": running})
    manager = controller.manager
    manager.connected = False  # type: ignore[misc]
    write = kube.write_status

    async def flip_while_writing(*args: Any) -> dict[str, Any]:
        manager.connected = True  # type: ignore[misc]
        return await write(*args)

    kube.write_status = flip_while_writing  # type: ignore[method-assign]
    assert await controller.reconciler.reconcile(KEY) == Verdict(after=0.0)
    kube.write_status = write  # type: ignore[method-assign]
    await controller.reconciler.reconcile(KEY)
    said = c.condition_of(kube.objects[KEY], c.TEMPORAL_CONNECTED)
    assert said is not None
    assert said["status"] == "True"


WID = "agentexec/ns/a/u1"


def running_loop(controller: Controller, kube: FakeKube, **status: Any) -> dict[str, Any]:
    body = execution()
    body["metadata"]["finalizers"] = [FINALIZER]
    workflow = {"id": WID, "runId": "r", "namespace": "default", "taskQueue": "q"}
    said = [{"type": c.TEMPORAL_CONNECTED, "status": "True", "reason": c.CONNECTED}]
    if status.get("pendingApproval"):
        said.append({"type": c.AWAITING_APPROVAL, "status": "True", "reason": "ApprovalRequested"})
    status.setdefault("conditions", said)
    status.setdefault("temporalConnection", c.CONNECTED)
    return created(
        controller, kube, {**body, "status": {"phase": "Running", "workflow": workflow, **status}}
    )


def approval(name: str, call: str, decision: str = "Approve", uid: str = "") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid or name,
            "resourceVersion": next_rv(),
        },
        "spec": {"execution": "a", "id": call, "decision": decision, "approver": "alice"},
    }


def applied(kube: FakeKube, name: str) -> dict[str, Any]:
    said = c.condition_of(kube.approvals[("ns", name)], c.APPLIED)
    assert said is not None
    return said


PENDING_CALL = {
    "id": "call-1",
    "tool": "rm",
    "step": 2,
    "timeoutSeconds": 60,
    "onTimeout": "Reject",
}


async def test_an_approval_for_the_call_the_loop_waits_on_is_signalled_then_said_applied() -> None:
    controller, kube, gateway = make()
    lead(controller)
    running_loop(controller, kube, pendingApproval=PENDING_CALL)
    ahead = approval("early", "call-9")  # for a call the loop has not reached: left alone
    for body in (approval("ok", "call-1"), ahead):
        kube.approvals[("ns", body["metadata"]["name"])] = body
        controller.on_approval_event("ADDED", body)
    assert len(controller.queue) == 1  # the execution both name, once
    assert await controller.reconciler.reconcile(KEY) == Verdict()
    assert gateway.calls == [("signal-approval", f"{WID}:call-1")]
    assert kube.writes() == [("approval-status", "ok")]
    said = applied(kube, "ok")
    assert (said["status"], said["reason"]) == ("True", c.RELAYED)
    assert "status" not in kube.approvals[("ns", "early")]
    # The echo of that write enqueues nothing; the relayed one is not sent again.
    controller.on_approval_event("MODIFIED", kube.approvals[("ns", "ok")])
    assert len(controller.queue) == 1
    await controller.reconciler.reconcile(KEY)
    assert gateway.calls == [("signal-approval", f"{WID}:call-1")]


async def test_an_approval_whose_loop_ended_says_so_and_one_temporal_missed_is_retried() -> None:
    controller, kube, gateway = make()
    lead(controller)
    running_loop(controller, kube, pendingApproval=PENDING_CALL)
    body = approval("ok", "call-1")
    kube.approvals[("ns", "ok")] = body
    controller.on_approval_event("ADDED", body)
    gateway.answers["signal"] = Answer(Outcome.UNAVAILABLE, reason="DeadlineExceeded", message="x")
    assert await controller.reconciler.reconcile(KEY) == Verdict(after=2.0)
    assert kube.writes() == []  # nothing said yet: it is tried again
    gateway.answers["signal"] = Answer(
        Outcome.REJECTED, reason=c.WORKFLOW_NOT_RUNNING, message="workflow completed"
    )
    await controller.reconciler.reconcile(KEY)
    said = applied(kube, "ok")
    assert (said["status"], said["reason"]) == ("False", c.WORKFLOW_NOT_RUNNING)


async def test_a_loop_report_writes_progress_and_who_decided_with_one_status_write() -> None:
    controller, kube, _ = make()
    lead(controller)
    running_loop(controller, kube, pendingApproval=PENDING_CALL)
    last = {"id": "call-1", "decision": "Approved", "approver": "alice", "approval": "ok"}
    progress = {"progress": {"step": 3}, "pendingApproval": None, "lastApproval": last}
    waiter = controller.reports.submit(
        StatusReport(
            ref=ExecutionRef("ns", "a", "u1"),
            result=ExecutionResult(phase="Running", reason="Running"),
            workflow_id=WID,
            run_id="r",
            namespace="default",
            task_queue="q",
            progress=progress,
        )
    )
    await controller.reconciler.reconcile(KEY)
    assert await asyncio.wait_for(waiter, 1)
    assert kube.writes() == [("status", "a")]
    status = kube.objects[KEY]["status"]
    assert status["progress"] == {"step": 3}
    assert "pendingApproval" not in status  # (null removes it)
    assert status["lastApproval"] == last
    waiting = c.condition_of(kube.objects[KEY], c.AWAITING_APPROVAL)
    assert waiting is not None
    assert (waiting["status"], waiting["reason"]) == ("False", "Approved")
    assert [e["reason"] for e in kube.events] == ["Approved"]


async def test_an_approval_for_a_finished_execution_is_said_not_pending() -> None:
    controller, kube, gateway = make()
    lead(controller)
    body = execution()
    created(
        controller,
        kube,
        {**body, "status": {"phase": "Failed", "completionTime": c.timestamp(datetime.now(UTC))}},
    )
    late = approval("late", "call-3", decision="Reject")
    kube.approvals[("ns", "late")] = late
    controller.on_approval_event("ADDED", late)
    assert controller.approvals.unsettled() == [KEY]  # what a new leader enqueues
    await controller.reconciler.reconcile(KEY)
    assert controller.approvals.unsettled() == []
    assert gateway.calls == []
    said = applied(kube, "late")
    assert (said["status"], said["reason"]) == ("False", c.NOT_PENDING)


async def test_approvals_deleted_while_the_watch_was_away_leave_the_cache() -> None:
    controller, _, _ = make()
    for name in ("kept", "gone"):
        controller.on_approval_event(None, approval(name, "call-1"))
    controller.on_listed(APPROVAL_PLURAL, "ns", {("ns", "kept"): "kept"})
    assert [a["metadata"]["name"] for a in controller.approvals.of(KEY)] == ["kept"]
    controller.on_approval_event("DELETED", approval("kept", "call-1"))
    assert controller.approvals.of(KEY) == ()


async def test_spec_suspend_reaches_the_running_workflow_and_is_said_once() -> None:
    controller, kube, gateway = make()
    lead(controller)
    body = running_loop(controller, kube)
    body["spec"]["suspend"] = True
    kube.hold(body)
    controller.on_event("MODIFIED", body)
    await controller.reconciler.reconcile(KEY)
    assert gateway.calls == [("signal-suspend", f"{WID}=True")]
    said = c.condition_of(kube.objects[KEY], c.SUSPENDED_CONDITION)
    assert said is not None
    assert (said["status"], said["reason"]) == ("True", c.SUSPENDED)
    await controller.reconciler.reconcile(KEY)  # told already: nothing more
    assert gateway.calls == [("signal-suspend", f"{WID}=True")]


async def test_a_report_of_another_install_s_workflow_is_refused_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #22: a report whose workflow another install started, or about a
    namespace this install does not watch, is another install's (both poll one
    task queue): refused (retried, so its own operator takes it), counted and
    logged, never acknowledged as if written."""
    controller, _, _ = make(watch_namespaces=("ns",), install="team-a.agentexec")
    lead(controller)
    other = replace(report("u1"), install="team-b.agentexec")
    with pytest.raises(ApplicationError, match=r"started by install 'team-b\.agentexec'") as err:
        await controller.report_status(other)
    assert err.value.type == "ForeignReport"
    assert not err.value.non_retryable
    unwatched = replace(report("u2"), ref=ExecutionRef("elsewhere", "a", "u2"))
    with pytest.raises(ApplicationError, match="'elsewhere' is not watched"):
        await controller.report_status(unwatched)
    sample = controller.metrics.registry.get_sample_value
    assert sample("agentexec_foreign_reports_total", {"reason": "other_install"}) == 1
    assert sample("agentexec_foreign_reports_total", {"reason": "unknown_execution"}) == 1
    assert len(controller.reports) == 0
    # Its own workflows' reports, and those of workflows started before
    # workflows said their install, are taken.
    for taken in (replace(report("u3"), install="team-a.agentexec"), report("u4")):
        waiting = asyncio.create_task(controller.report_status(taken))
        await asyncio.sleep(0)
        assert not waiting.done()
        waiting.cancel()
    assert len(controller.reports) == 2
    assert "refused a report of a workflow that is not this install's" in caplog.text


def execution_policy(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "limits", "namespace": "ns", "uid": "p", "resourceVersion": next_rv()},
        "spec": spec,
    }


def running(name: str, uid: str) -> dict[str, Any]:
    body = execution(name, uid=uid)
    body["metadata"]["finalizers"] = [FINALIZER]
    workflow = {"id": f"agentexec/ns/{name}/{uid}", "runId": "r", "namespace": "default"}
    return {**body, "status": {"phase": "Running", "workflow": workflow}}


def spent(name: str, uid: str, tokens: int) -> StatusReport:
    return StatusReport(
        ref=ExecutionRef("ns", name, uid),
        result=ExecutionResult(phase="Succeeded", output="done", usage=Usage(0, tokens, tokens)),
        workflow_id=f"agentexec/ns/{name}/{uid}",
        run_id="r",
        namespace="default",
        task_queue="agentexec-executions",
    )


async def test_a_finished_execution_s_tokens_are_counted_once_against_the_budget() -> None:
    """The status that ends an execution is written, then its tokens are added
    to its namespace's budget (the policy's status, against its
    resourceVersion: a policy changed meanwhile is read again and counted)."""
    controller, kube, _ = make()
    lead(controller)
    policy = kube.policies[("ns", "limits")] = execution_policy(
        budget={"tokens": 1000, "period": "Day"}
    )
    controller.on_policy_event("ADDED", policy)
    for name, uid in (("a", "u1"), ("b", "u2")):
        created(controller, kube, running(name, uid))
    controller.reports.submit(spent("a", "u1", 30))
    await controller.reconciler.reconcile(("ns", "a"))
    budget = kube.policies[("ns", "limits")]["status"]["budget"]
    assert (budget["used"], budget["executions"]) == (30, 1)
    await controller.reconciler.reconcile(("ns", "a"))  # ended already: not again
    # The platform team edits the policy; the cache has not seen it yet.
    kube.policies[("ns", "limits")]["metadata"]["resourceVersion"] = next_rv()
    controller.reports.submit(spent("b", "u2", 12))
    await controller.reconciler.reconcile(("ns", "b"))
    budget = kube.policies[("ns", "limits")]["status"]["budget"]
    assert (budget["used"], budget["executions"]) == (42, 2)
    charged = [w for w in kube.writes() if w[0] == "policy-status"]
    assert charged == [("policy-status", "limits")] * 3  # the 409 included
    assert controller.policies.of("ns")[0].used == 42


async def test_a_slot_freed_by_an_execution_ending_wakes_the_oldest_waiting_one() -> None:
    controller, kube, gateway = make()
    lead(controller)
    controller.on_policy_event("ADDED", execution_policy(concurrency={"maxRunning": 1}))
    created(controller, kube, running("a", "u1"))
    created(controller, kube, execution("b", uid="u2"))
    await controller.reconciler.reconcile(("ns", "b"))
    held = c.condition_of(kube.objects[("ns", "b")], c.WORKFLOW_STARTED) or {}
    assert held.get("reason") == c.QUOTA_EXCEEDED
    assert not any(call[0] == "start" for call in gateway.calls)
    controller.queue.clear()
    controller.reports.submit(spent("a", "u1", 0))
    await controller.reconciler.reconcile(("ns", "a"))
    assert len(controller.queue) == 1  # "b", woken without a timer
    await controller.reconciler.reconcile(("ns", "b"))
    assert ("start", "agentexec/ns/b/u2") in gateway.calls


async def test_a_policy_change_wakes_the_namespace_s_unstarted_ones_but_our_own_echo_does_not() -> (
    None
):
    controller, kube, _ = make()
    lead(controller)
    policy = kube.policies[("ns", "limits")] = execution_policy(
        budget={"tokens": 1000, "period": "Day"}
    )
    controller.on_policy_event("ADDED", policy)
    created(controller, kube, running("a", "u1"))
    created(controller, kube, execution("b", uid="u2"))  # not started
    controller.queue.clear()
    controller.reports.submit(spent("a", "u1", 30))
    await controller.reconciler.reconcile(("ns", "a"))
    controller.queue.clear()
    controller.on_policy_event("MODIFIED", kube.policies[("ns", "limits")])  # our write's echo
    assert len(controller.queue) == 0
    raised = kube.policies[("ns", "limits")]
    raised["spec"]["budget"]["tokens"] = 5000
    raised["metadata"]["resourceVersion"] = next_rv()
    controller.on_policy_event("MODIFIED", raised)  # the platform team's edit
    assert len(controller.queue) == 1  # "b"
    assert controller.policies.of("ns")[0].budget_tokens == 5000
