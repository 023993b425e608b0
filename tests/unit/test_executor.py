"""The executor: each request made as asked, each decision applied, a verdict back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentexec.agents import AgentCache
from agentexec.approvals import ApprovalCache
from agentexec.cache import ExecutionCache
from agentexec.decisions import (
    AddFinalizer,
    Cancel,
    Config,
    Decision,
    Event,
    Observed,
    ReadAgent,
    ReadExecution,
    Start,
    TakeStartSlot,
    build_input,
)
from agentexec.events import EventRecorder
from agentexec.executor import Executor
from agentexec.metrics import Metrics
from agentexec.status import FINALIZER, Connection
from agentexec.temporal.types import Answer, Outcome
from agentexec.workqueue import DONE, Verdict
from tests.unit.fakes import FakeGateway, FakeKube, execution

UP = Connection(True, "Connected", "connected")
DOWN = Connection(False, "TemporalUnavailable", "down")
KEY = ("ns", "a")


def make(start_rate: float = 100.0) -> tuple[Executor, FakeKube, FakeGateway, dict[str, Any]]:
    kube, gateway = FakeKube(), FakeGateway()
    conn = {"now": UP}
    executor = Executor(
        kube,  # type: ignore[arg-type]
        gateway,  # type: ignore[arg-type]
        EventRecorder(kube),  # type: ignore[arg-type]
        ExecutionCache(),
        AgentCache(),
        ApprovalCache(),
        Metrics(),
        lambda: conn["now"],
        start_rate=start_rate,
        delete_rate=100.0,
    )
    return executor, kube, gateway, conn


def observed(body: dict[str, Any]) -> Observed:
    return Observed(body=body, conn=UP, now=datetime.now(UTC), config=Config())


async def test_adding_the_finalizer_writes_on_the_version_seen_and_caches_the_answer() -> None:
    executor, kube, _, _ = make()
    body = kube.hold(execution())
    o = await executor.call(KEY, AddFinalizer(), observed(body))
    assert o is not None
    assert o.body["metadata"]["finalizers"] == [FINALIZER]
    assert executor.cache.get(KEY) == o.body
    assert kube.writes() == [("finalizers", "a")]


async def test_a_start_answer_comes_back_with_the_connection_as_it_is_after_the_call() -> None:
    executor, kube, gateway, conn = make()
    body = kube.hold(execution())
    gateway.answers["start"] = Answer(Outcome.UNAVAILABLE, reason="TemporalUnavailable")
    conn["now"] = DOWN  # Temporal went away during the call
    o = await executor.call(KEY, Start("wid", build_input(body, Config())), observed(body))
    assert o is not None
    assert o.answer is not None
    assert o.answer.outcome == Outcome.UNAVAILABLE
    assert o.conn == DOWN
    assert gateway.calls == [("start", "wid")]


async def test_start_turns_never_wait_they_say_when() -> None:
    executor, kube, _, _ = make(start_rate=1.0)
    first = await executor.call(KEY, TakeStartSlot(), observed(kube.hold(execution())))
    second = await executor.call(("ns", "b"), TakeStartSlot(), observed(execution("b")))
    assert first is not None
    assert second is not None
    assert first.start_slot == 0
    assert second.start_slot == pytest.approx(1.0, abs=0.05)
    assert executor.tracked() == 1  # "b" holds its turn


async def test_reads_of_the_execution_and_of_an_agent() -> None:
    executor, kube, _, _ = make()
    body = kube.hold(execution())
    o = await executor.call(KEY, ReadExecution(), observed(body))
    assert o is not None
    assert o.refreshed
    kube.objects.clear()
    assert await executor.call(KEY, ReadExecution(), observed(body)) is None  # gone
    kube.agents[("ns", "echo")] = {"metadata": {"name": "echo", "namespace": "ns", "uid": "g"}}
    o = await executor.call(KEY, ReadAgent("echo"), observed(body))
    assert o is not None
    assert o.agent_read
    assert o.agent is not None
    assert executor.agents.get("ns", "echo") is not None


async def test_apply_writes_only_what_changed_then_the_finalizer_and_says_when_to_look_again() -> (
    None
):
    executor, kube, _, _ = make()
    body = kube.hold({**execution(), "status": {"phase": "Running"}})
    body["metadata"]["finalizers"] = [FINALIZER]
    kube.hold(body)
    same = Decision(status={"phase": "Running"}, requeue_after=5.0)
    assert await executor.apply(KEY, observed(body), same) == Verdict(after=5.0)
    assert kube.writes() == []  # nothing differed
    done = Decision(
        status={"phase": "Succeeded", "completionTime": "2026-12-01T00:00:01Z"},
        remove_finalizer=True,
        events=(Event("Normal", "Succeeded", "the agent finished"),),
    )
    assert await executor.apply(KEY, observed(body), done) == DONE
    assert kube.writes() == [("status", "a"), ("finalizers", "a")]
    assert kube.objects[KEY]["metadata"]["finalizers"] == []
    assert [e["reason"] for e in kube.events] == ["Succeeded"]


async def test_a_decision_that_backs_off_is_a_backoff_verdict() -> None:
    executor, kube, _, _ = make()
    body = kube.hold(execution())
    verdict = await executor.apply(KEY, observed(body), Decision(backoff="InvalidArgument"))
    assert verdict == Verdict(backoff="InvalidArgument")


async def test_cancel_goes_to_the_gateway_by_id_and_namespace() -> None:
    executor, kube, gateway, _ = make()
    body = kube.hold(execution())
    o = await executor.call(KEY, Cancel("wid", "other"), observed(body))
    assert o is not None
    assert o.answer == Answer(Outcome.CANCEL_REQUESTED)
    assert gateway.calls == [("cancel", "wid")]
