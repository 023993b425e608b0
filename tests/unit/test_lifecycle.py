"""The run-control fields (deadline, backoffLimit, suspend) and how attempts
read on status: lifecycle.py, and the planner's decisions about them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentexec import lifecycle, planner
from agentexec.conditions import WORKFLOW_NOT_RUNNING
from agentexec.controller import build_config
from agentexec.decisions import (
    Config,
    Decision,
    Describe,
    Observed,
    SignalSuspend,
    Start,
    TakeStartSlot,
    build_input,
    build_start_input,
)
from agentexec.settings import load_settings
from agentexec.status import FINALIZER, Connection
from agentexec.temporal.steps import LoopInput
from agentexec.temporal.types import (
    AgentSpec,
    Answer,
    AttemptEnd,
    Attempts,
    ExecutionRef,
    ExecutionResult,
    Outcome,
    StatusReport,
    Usage,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
UP = Connection(True, "Connected", "connected to t:7233")
DOWN = Connection(False, "TemporalUnavailable", "Temporal at t:7233 is unavailable")
WF = {"id": "agentexec/ns/a/u1", "runId": "r1", "namespace": "default", "taskQueue": "q"}
AGENT = AgentSpec(name="helper", type="echo", timeout_seconds=900)
CRD = Path(__file__).resolve().parents[2] / "crds" / "agentexecutions.agentexec.io.yaml"


@pytest.mark.parametrize(
    ("spec", "agent", "deadline"),
    [
        ({"activeDeadlineSeconds": 60}, AGENT, (60, "activeDeadlineSeconds")),
        ({"timeoutSeconds": 70}, AGENT, (70, "timeoutSeconds")),
        ({}, AGENT, (900, "Agent.spec.timeoutSeconds")),
        ({}, None, (3600, "activeDeadlineSeconds")),
        (
            {"timeoutSeconds": 0, "activeDeadlineSeconds": True},
            None,
            (3600, "activeDeadlineSeconds"),
        ),
    ],
)
def test_the_deadline_is_active_deadline_then_its_older_name_then_the_agents(
    spec: dict[str, Any], agent: AgentSpec | None, deadline: tuple[int, str]
) -> None:
    assert lifecycle.deadline_of(spec, agent) == deadline


def test_the_workflow_input_carries_the_deadline_the_budgets_and_which_field() -> None:
    settings = load_settings({"AGENTEXEC_MAX_DISRUPTIONS": "4"})
    body = {
        "metadata": {"namespace": "ns", "name": "a", "uid": "u1"},
        "spec": {"agent": "echo", "message": "hi", "activeDeadlineSeconds": 120, "backoffLimit": 0},
    }
    config = build_config(settings, Config().policy)
    inp = build_input(body, config)
    assert (inp.timeout_seconds, inp.deadline_field) == (120, "activeDeadlineSeconds")
    assert (inp.backoff_limit, inp.max_disruptions) == (0, 4)
    older = build_input({**body, "spec": {"agent": "echo", "message": "hi"}}, config)
    assert (older.timeout_seconds, older.backoff_limit) == (3600, 2)  # read without defaults


def test_attempts_and_usage_read_in_the_apis_casing() -> None:
    result = ExecutionResult(
        "Failed",
        usage=Usage(10, 5, 15, requests=3, resent_requests=2),
        attempts=Attempts(
            count=3,
            failed=1,
            disrupted=1,
            last_failure=AttemptEnd("RunnerFailed", "boom", "2026-12-03T12:00:00Z"),
            last_disruption=AttemptEnd("RunnerShutdown", "bye"),
            runner_wait_seconds=40,
        ),
    )
    assert lifecycle.build_run_status(result) == {
        "usage": {
            "promptTokens": 10,
            "completionTokens": 5,
            "totalTokens": 15,
            "requests": 3,
            "resentRequests": 2,
        },
        "attempts": {
            "count": 3,
            "failed": 1,
            "disrupted": 1,
            "runnerWaitSeconds": 40,
            "lastFailure": {
                "reason": "RunnerFailed",
                "message": "boom",
                "time": "2026-12-03T12:00:00Z",
            },
            "lastDisruption": {"reason": "RunnerShutdown", "message": "bye"},
        },
    }
    # A result of a workflow from before #19: neither field.
    assert lifecycle.build_run_status(ExecutionResult("Succeeded", output="x")) == {}


def obj(
    *, suspend: bool | None = None, workflow: bool = False, suspended: bool | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"agent": "echo", "message": "hi"}
    if suspend is not None:
        spec["suspend"] = suspend
    status: dict[str, Any] = {}
    if workflow:
        status.update(phase="Running", workflow=dict(WF))
    if suspended is not None:
        status["conditions"] = [
            {"type": "Suspended", "status": "True" if suspended else "False", "reason": "x"}
        ]
    meta = {
        "name": "a",
        "namespace": "ns",
        "uid": "u1",
        "resourceVersion": "7",
        "finalizers": [FINALIZER],
    }
    return {"metadata": meta, "spec": spec, "status": status}


def observed(body: dict[str, Any], **kw: Any) -> Observed:
    return Observed(body=body, conn=kw.pop("conn", UP), now=T0, config=Config(queue_ttl=60), **kw)


def request(d: Decision) -> type | None:
    return None if d.request is None else type(d.request)


def condition(patch: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    assert patch is not None
    return next(c for c in patch["conditions"] if c["type"] == ctype)


@pytest.mark.parametrize("conn", [UP, DOWN], ids=["connected", "temporal-down"])
def test_a_suspended_execution_does_not_start(conn: Connection) -> None:
    decision = planner.decide(observed(obj(suspend=True), conn=conn))
    assert decision.request is None
    assert decision.status is not None
    assert decision.status["phase"] == "Pending"
    assert condition(decision.status, "Suspended")["status"] == "True"
    assert condition(decision.status, "WorkflowStarted")["reason"] == "Suspended"
    assert condition(decision.status, "Succeeded")["reason"] == "Suspended"
    assert decision.requeue_after is None  # spec.suspend changing is a watch event


def test_resumed_before_it_started_it_starts_and_says_resumed() -> None:
    body = obj(suspend=False, suspended=True)
    assert request(planner.decide(observed(body, agent_read=True))) is TakeStartSlot
    assert request(planner.decide(observed(body, agent_read=True, start_slot=0.0))) is Start
    started = planner.decide(
        observed(body, agent_read=True, start_slot=0.0, answer=Answer(Outcome.STARTED, workflow=WF))
    )
    assert started.status is not None
    assert started.status["phase"] == "Running"
    assert condition(started.status, "Suspended")["reason"] == "Resumed"


@pytest.mark.parametrize(
    ("suspend", "applied", "told"),
    [(True, None, True), (True, False, True), (False, True, False)],
    ids=["suspend", "suspend-again", "resume"],
)
def test_a_running_execution_is_told_when_spec_suspend_changes(
    suspend: bool, applied: bool | None, told: bool
) -> None:
    body = obj(suspend=suspend, workflow=True, suspended=applied)
    decision = planner.decide(observed(body))
    assert isinstance(decision.request, SignalSuspend)
    assert (decision.request.workflow_id, decision.request.suspend) == (WF["id"], told)
    done = planner.decide(observed(body, suspend_answer=Answer(Outcome.SIGNALLED)))
    said = condition(done.status, "Suspended")
    assert said["status"] == ("True" if told else "False")
    assert [(e.type, e.reason) for e in done.events] == [
        ("Normal", "Suspended" if told else "Resumed")
    ]


def test_a_check_that_finds_it_running_tells_it_too() -> None:
    body = obj(suspend=True, workflow=True)
    assert request(planner.decide(observed(body, check=True))) is Describe
    running = Answer(Outcome.RUNNING, workflow=WF)
    decision = planner.decide(observed(body, check=True, answer=running))
    assert isinstance(decision.request, SignalSuspend)
    done = planner.decide(
        observed(body, check=True, answer=running, suspend_answer=Answer(Outcome.SIGNALLED))
    )
    assert condition(done.status, "Suspended")["status"] == "True"
    assert done.check_done


@pytest.mark.parametrize(
    "body",
    [obj(workflow=True), obj(suspend=True, workflow=True, suspended=True)],
    ids=["never-suspended", "already-suspended"],
)
def test_nothing_is_said_to_a_workflow_that_already_knows(body: dict[str, Any]) -> None:
    assert planner.decide(observed(body)).request is None


def test_a_suspend_waits_for_temporal_and_a_missed_one_is_not_a_lost_workflow() -> None:
    body = obj(suspend=True, workflow=True)
    assert planner.decide(observed(body, conn=DOWN)).request is None
    gone = Answer(Outcome.REJECTED, reason=WORKFLOW_NOT_RUNNING, message="workflow completed")
    # The signal found it ended: how is asked of Temporal at once.
    decision = planner.decide(observed(body, suspend_answer=gone))
    assert request(decision) is Describe
    closed = Answer(Outcome.CLOSED, workflow=WF, result=ExecutionResult("Succeeded", output="done"))
    ended = planner.decide(observed(body, suspend_answer=gone, answer=closed))
    assert ended.status is not None
    assert ended.status["phase"] == "Succeeded"


def test_a_suspend_signal_that_fails_backs_off_with_a_warning() -> None:
    body = obj(suspend=True, workflow=True)
    refused = Answer(Outcome.REJECTED, reason="PermissionDenied", message="no")
    decision = planner.decide(observed(body, suspend_answer=refused))
    assert decision.backoff == "PermissionDenied"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "SignalFailed")]
    assert decision.status is None


def report(result: ExecutionResult) -> StatusReport:
    return StatusReport(ExecutionRef("ns", "a", "u1"), result, WF["id"], "r1", "default", "q")


@pytest.mark.parametrize(
    ("reason", "event"),
    [
        ("AttemptFailed", "Warning"),
        ("AttemptDisrupted", "Warning"),
        ("NoRunner", "Warning"),
        ("WaitingForRunner", "Normal"),
        ("Suspended", "Normal"),
        ("Running", None),
    ],
)
def test_progress_reports_write_the_attempts_and_say_each_step(
    reason: str, event: str | None
) -> None:
    attempts = Attempts(count=2, disrupted=1, last_disruption=AttemptEnd("RunnerShutdown", "bye"))
    result = ExecutionResult("Running", reason=reason, message="said", attempts=attempts)
    decision = planner.decide(observed(obj(workflow=True), report=report(result)))
    assert decision.status is not None
    assert decision.status["attempts"]["disrupted"] == 1
    assert condition(decision.status, "Succeeded")["reason"] == reason
    assert [e.type for e in decision.events] == ([event] if event else [])


def test_a_failed_execution_keeps_its_bill_and_its_attempts() -> None:
    result = ExecutionResult(
        "Failed",
        reason="RateLimited",
        message="429",
        usage=Usage(requests=6, resent_requests=5),
        attempts=Attempts(count=1),
    )
    decision = planner.decide(observed(obj(workflow=True), report=report(result)))
    assert decision.status is not None
    assert decision.status["error"] == {"reason": "RateLimited", "message": "429"}
    assert decision.status["usage"]["requests"] == 6
    assert decision.status["attempts"]["count"] == 1


def test_the_immutability_rule_names_every_spec_field_but_suspend() -> None:
    """CEL has no "all but one field": a field added to the spec and not to
    the rule would be silently mutable."""
    crd = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = spec["x-kubernetes-validations"][0]["rule"]
    for field in spec["properties"]:
        named = f"self.{field} == oldSelf.{field}" in rule
        assert named is (field != "suspend"), field


def test_an_assistants_execution_starts_the_loop_with_its_token_limit() -> None:
    body = {
        "metadata": {"namespace": "ns", "name": "a", "uid": "u1"},
        "spec": {"agent": "helper", "message": "hi", "limits": {"maxTokens": 300}},
    }
    config = Config(progress_interval=7.0)
    assistant = AgentSpec(name="helper", type="assistant", loop={"maxSteps": 4})
    loop = build_start_input(body, config, assistant)
    assert isinstance(loop, LoopInput)
    assert (loop.loop.max_steps, loop.loop.max_tokens) == (4, 300)
    assert loop.execution.max_tokens == 300
    assert loop.progress_interval_seconds == 7.0
    plain = build_start_input(body, config, AGENT)
    assert not isinstance(plain, LoopInput)
    assert plain.max_tokens == 300
