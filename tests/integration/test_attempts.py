"""The workflow's attempt loop on a real dev server (issue #19; #18, 10).

The operator's workflow with its real check_runner activity, and
report_status recorded in memory; runners are in-process workers, built
from the real RunnerActivities or, to act out what a crashing or foreign
runner does, plain activities of this test.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from agentexec.runner import AgentFailed, AgentFunction, AgentRequest, build_agents, context
from agentexec.runner.activity import RunnerActivities
from agentexec.runner.api import HEARTBEAT_EVERY
from agentexec.temporal.types import (
    RUN_AGENT_ACTIVITY,
    RUNNER_SHUTDOWN,
    SUSPEND_SIGNAL,
    AttemptProgress,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
    StatusReport,
    Usage,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow
from localenv.temporal import TemporalDevServer
from tests.support.waiting import eventually
from tests.support.workflows import workflow_worker


class Env:
    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.runner_queue = f"{task_queue}-runner"
        self.reports: dict[str, list[ExecutionResult]] = {}

    async def start(
        self, agent: str, message: str = "hi", **inp: Any
    ) -> WorkflowHandle[Any, ExecutionResult]:
        name = f"{agent}-{uuid.uuid4().hex[:8]}"
        fields: dict[str, Any] = {
            "runner_task_queue": self.runner_queue,
            "timeout_seconds": 120,
            **inp,
        }
        return await self.client.start_workflow(
            AgentExecutionWorkflow.run,
            ExecutionInput(
                ref=ExecutionRef("attempts", name, str(uuid.uuid4())),
                agent=agent,
                message=message,
                **fields,
            ),
            id=f"attempts-{name}",
            task_queue=self.task_queue,
        )

    def said(self, handle: WorkflowHandle[Any, Any]) -> list[ExecutionResult]:
        name = handle.id.removeprefix("attempts-")
        return self.reports.get(name, [])

    def reasons(self, handle: WorkflowHandle[Any, Any]) -> list[str | None]:
        return [r.reason for r in self.said(handle)]

    @contextlib.asynccontextmanager
    async def runner(
        self, activities: Sequence[Callable[..., Any]], grace: float = 5, slots: int = 16
    ) -> AsyncIterator[Worker]:
        worker = Worker(
            self.client,
            task_queue=self.runner_queue,
            activities=list(activities),
            max_concurrent_activities=slots,
            graceful_shutdown_timeout=timedelta(seconds=grace),
            # As the runner's workers (process.py): a cancel arrives within it.
            max_heartbeat_throttle_interval=timedelta(seconds=HEARTBEAT_EVERY),
            default_heartbeat_throttle_interval=timedelta(seconds=HEARTBEAT_EVERY),
        )
        async with worker:
            yield worker


@pytest.fixture
async def env(temporal: TemporalDevServer, task_queue: str) -> AsyncIterator[Env]:
    client = await Client.connect(temporal.address)
    env = Env(client, task_queue)

    def report(report: StatusReport) -> None:
        env.reports.setdefault(report.ref.name, []).append(report.result)

    async with workflow_worker(client, task_queue, report):
        yield env


def served(agents: dict[str, AgentFunction]) -> Callable[..., Any]:
    """The real runner activity serving ``agents``."""
    return RunnerActivities(build_agents(agents)).run_agent


async def ended(handle: WorkflowHandle[Any, ExecutionResult], timeout: float = 60) -> None:
    with contextlib.suppress(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout)


async def test_failures_spend_the_backoff_limit_and_end_with_their_reason(env: Env) -> None:
    calls: list[int | None] = []

    async def broken(request: AgentRequest) -> str:
        calls.append(request.attempt)
        raise ConnectionResetError("the agent's own dependency reset the connection")

    async with env.runner([served({"broken": broken})]):
        handle = await env.start("broken", backoff_limit=1)
        await ended(handle)
    final = env.said(handle)[-1]
    assert (final.phase, final.reason) == ("Failed", "RunnerFailed"), final
    assert "reset the connection" in (final.message or "")
    assert calls == [1, 2]  # backoffLimit 1: one retry
    attempts = final.attempts
    assert attempts is not None
    assert (attempts.count, attempts.failed, attempts.disrupted) == (2, 2, 0)
    assert attempts.last_failure is not None
    assert attempts.last_failure.reason == "RunnerFailed"
    assert env.reasons(handle) == ["AttemptFailed", "RunnerFailed"]


async def test_an_agent_that_says_it_failed_is_not_retried(env: Env) -> None:
    async def gives_up(request: AgentRequest) -> str:
        raise AgentFailed("no answer to that")

    async with env.runner([served({"gives-up": gives_up})]):
        handle = await env.start("gives-up")
        await ended(handle)
    final = env.said(handle)[-1]
    assert (final.phase, final.reason, final.message) == (
        "Failed",
        "AgentFailed",
        "no answer to that",
    )
    assert final.attempts is not None
    assert final.attempts.count == 1


async def test_disruptions_are_free_and_resume_from_the_checkpoint(env: Env) -> None:
    """A runner that stops (its grace runs out) hands the attempt over, with
    its checkpoint, to another runner; backoffLimit 0 is left untouched."""
    seen: list[tuple[int | None, Any]] = []

    async def steps(request: AgentRequest) -> str:
        ctx = context()
        seen.append((ctx.attempt, ctx.resume_from))
        done = (ctx.resume_from or {}).get("step", 0)
        for step in range(done, 6):
            ctx.checkpoint({"step": step + 1})
            await asyncio.sleep(1)
        return f"resumed at {done}"

    agents = served({"steps": steps})
    async with env.runner([agents], grace=0.5):
        handle = await env.start("steps", backoff_limit=0)
        await eventually(lambda: seen, lambda s: len(s) == 1, what="the first attempt")
        await asyncio.sleep(1.5)  # past its first checkpoint
    # That runner shut down past its grace: RunnerShutdown, carrying the checkpoint.
    async with env.runner([agents]):
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.phase == "Succeeded", result
    assert seen[0] == (1, None)
    assert seen[1][0] == 2, seen
    assert seen[1][1] in ({"step": 2}, {"step": 3}), seen
    assert result.output == f"resumed at {seen[1][1]['step']}"
    attempts = result.attempts
    assert attempts is not None
    assert (attempts.count, attempts.failed, attempts.disrupted) == (2, 0, 1)
    assert attempts.last_disruption is not None
    assert attempts.last_disruption.reason == RUNNER_SHUTDOWN
    assert env.reasons(handle) == ["AttemptDisrupted", None]


async def test_a_runner_that_dies_is_a_disruption_and_its_last_heartbeat_bills(
    env: Env,
) -> None:
    """A runner that stops heartbeating (killed, cut off) is noticed at the
    heartbeat timeout; its last heartbeat's checkpoint and usage carry over."""
    calls: list[Any] = []

    @activity.defn(name=RUN_AGENT_ACTIVITY)
    async def dies_once(request: AgentRequest) -> dict[str, Any]:
        calls.append(request.resume_from)
        if len(calls) == 1:
            progress = AttemptProgress(Usage(10, 4, 14, requests=1), output_chars=20)
            activity.heartbeat({"page": 7}, progress)
            await asyncio.sleep(3)  # no heartbeat: as a killed runner
            return {"output": "too late: the workflow moved on"}
        return {
            "output": "done",
            "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
        }

    async with env.runner([dies_once]):
        handle = await env.start("any", heartbeat_timeout_seconds=1, backoff_limit=0)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.output == "done"
    assert calls == [None, {"page": 7}]
    assert result.attempts is not None
    assert (result.attempts.failed, result.attempts.disrupted) == (0, 1)
    assert result.attempts.last_disruption is not None
    assert result.attempts.last_disruption.reason == "HeartbeatTimeout"
    # Both attempts billed: the lost one by its last heartbeat.
    assert result.usage == Usage(20, 10, 30, requests=1)
    disrupted = env.said(handle)[0]
    assert disrupted.reason == "AttemptDisrupted"
    assert "after 20 characters of output and a checkpoint" in (disrupted.message or "")


async def test_a_crash_looping_runner_ends_disrupted_at_the_bound(env: Env) -> None:
    @activity.defn(name=RUN_AGENT_ACTIVITY)
    async def always_stopping(request: AgentRequest) -> str:
        raise ApplicationError("the runner shut down", type=RUNNER_SHUTDOWN)

    async with env.runner([always_stopping]):
        handle = await env.start("any", max_disruptions=2)
        await ended(handle)
    final = env.said(handle)[-1]
    assert (final.phase, final.reason) == ("Failed", "Disrupted"), final
    assert "AGENTEXEC_MAX_DISRUPTIONS" in (final.message or "")
    assert final.attempts is not None
    assert (final.attempts.count, final.attempts.disrupted, final.attempts.failed) == (3, 3, 0)


async def test_suspend_stops_at_the_checkpoint_and_resume_continues_from_it(env: Env) -> None:
    seen: list[tuple[int | None, Any]] = []

    async def long(request: AgentRequest) -> str:
        ctx = context()
        seen.append((ctx.attempt, ctx.resume_from))
        if ctx.resume_from is None:
            ctx.checkpoint({"page": 3})
            await asyncio.sleep(3600)
        return f"from page {ctx.resume_from['page']}"

    async with env.runner([served({"long": long})]):
        handle = await env.start("long", backoff_limit=0)
        await eventually(lambda: seen, lambda s: len(s) == 1, what="the first attempt")
        await asyncio.sleep(0.5)
        await handle.signal(SUSPEND_SIGNAL, True)
        await eventually(
            lambda: env.reasons(handle), lambda r: "Suspended" in r, what="Suspended reported"
        )
        assert len(seen) == 1  # nothing runs while suspended
        await handle.signal(SUSPEND_SIGNAL, False)
        result = await asyncio.wait_for(handle.result(), 30)
    assert result.output == "from page 3", result
    assert seen == [(1, None), (2, {"page": 3})]
    assert result.attempts is not None
    assert (result.attempts.count, result.attempts.failed, result.attempts.disrupted) == (2, 0, 0)
    assert env.reasons(handle) == ["Suspended", "Running", None]
    assert "at its checkpoint" in (env.said(handle)[0].message or "")


async def test_busy_runners_are_waited_for_and_never_said_missing(env: Env) -> None:
    """#18, 10: a runner with every slot taken is not NoRunner, and the agent
    runs once however long it waits."""
    release = asyncio.Event()
    runs: list[str] = []

    async def hold(request: AgentRequest) -> str:
        runs.append(request.message)
        if request.message == "first":
            await release.wait()
        return request.message

    async with env.runner([served({"hold": hold})], slots=1):
        first = await env.start("hold", "first", no_runner_seconds=1)
        await eventually(lambda: runs, lambda r: r == ["first"], what="the first running")
        second = await env.start("hold", "second", no_runner_seconds=1, timeout_seconds=3)
        await eventually(
            lambda: env.reasons(second),
            lambda r: "WaitingForRunner" in r,
            timeout=20,
            what="WaitingForRunner",
        )
        await asyncio.sleep(4)  # longer than its deadline: waiting does not count
        release.set()
        assert (await asyncio.wait_for(second.result(), 30)).output == "second"
        await asyncio.wait_for(first.result(), 30)
    assert runs == ["first", "second"]  # each ran once
    assert "NoRunner" not in env.reasons(second)
    # (Running is said too if a look saw it start before it finished.)
    assert [r for r in env.reasons(second) if r != "Running"] == ["WaitingForRunner", None]
    said = env.said(second)[0].message or ""
    assert "1 runner polls" in said, said
    assert "all busy" in said, said
    attempts = (await second.result()).attempts
    assert attempts is not None
    assert attempts.count == 1
    assert attempts.runner_wait_seconds >= 3, attempts


async def test_no_runner_is_said_then_a_runner_that_comes_takes_the_agent(env: Env) -> None:
    async def echo(request: AgentRequest) -> str:
        return request.message

    handle = await env.start("echo", "late", no_runner_seconds=1)
    await eventually(
        lambda: env.reasons(handle), lambda r: "NoRunner" in r, timeout=20, what="NoRunner"
    )
    message = env.said(handle)[0].message or ""
    assert f"no runner polls task queue {env.runner_queue!r}" in message
    async with env.runner([served({"echo": echo})]):
        assert (await asyncio.wait_for(handle.result(), 30)).output == "late"
    assert env.reasons(handle)[-1] is None


async def test_with_no_runner_for_a_whole_deadline_it_fails_no_runner(env: Env) -> None:
    handle = await env.start("echo", no_runner_seconds=1, timeout_seconds=3)
    await ended(handle, 30)
    final = env.said(handle)[-1]
    assert (final.phase, final.reason) == ("Failed", "NoRunner"), final
    assert env.reasons(handle) == ["NoRunner", "NoRunner"]
