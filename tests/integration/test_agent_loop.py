"""The agent loop (Agents of type assistant) against real servers: llama.cpp's
OpenAI-compatible server (the tiny random-weights model, made to call a tool
by grammar-constrained function calling: ``tool_choice`` naming the tool;
streamed, so the tool calls arrive in pieces), the MCP fixture server (the
``mcp`` SDK's server side), a Temporal dev server, the operator's real
workflow worker (tests/support/workflows.py) and the runner as its own
process where it is killed. Each step's attempts follow #19's policy.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.converter import value_to_type
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from agentexec.runner.chat import ChatAgent
from agentexec.runner.providers import Provider, dump_providers
from agentexec.runner.steps import StepActivities
from agentexec.runner.tools import McpServers
from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.steps import (
    APPROVAL_SIGNAL,
    MODEL_CALL_ACTIVITY,
    STEPS_QUERY,
    TOOL_CALL_ACTIVITY,
    ApprovalDecision,
    ApprovalPolicy,
    LoopInput,
    LoopSpec,
    StepsView,
    ToolServer,
)
from agentexec.temporal.types import (
    SUSPEND_SIGNAL,
    AgentSpec,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
    StatusReport,
)
from localenv.mcp_server import MCPServerProcess
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.support.operator import RunnerProcess
from tests.support.relay import ModelRelay
from tests.support.waiting import eventually
from tests.support.workflows import workflow_worker

# Deterministic and short: the grammar makes the tool call, maxTokens bounds
# the final answer of random weights.
PARAMS = {"temperature": 0, "seed": 7, "maxTokens": 64}
FIRST_TOOL_CALL = Path(__file__).parents[1] / "support" / "programs" / "first_tool_call.py"


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    with OpenAIServer(tmp_path_factory.mktemp("openai"), n_ctx=2048) as server:
        yield server


@pytest.fixture
def mcp_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MCPServerProcess]:
    delay = getattr(request, "param", 0.0)
    server = MCPServerProcess(tmp_path, delay=delay)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def providers_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "providers.json"
    path.write_text(dump_providers({"local": Provider("local", base_url, timeout_seconds=60)}))
    return path


class Loops:
    """Starts loop workflows on the test's queue; reports are recorded."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue
        self.runner_queue = f"{task_queue}-runner"
        self.reports: list[StatusReport] = []

    async def start(
        self,
        mcp: MCPServerProcess,
        heartbeat_timeout: int = 30,
        max_history_events: int = 10_000,
        execution: dict[str, Any] | None = None,
        **loop: Any,
    ) -> WorkflowHandle[Any, ExecutionResult]:
        spec = AgentSpec(
            name="helper",
            type="assistant",
            model=MODEL,
            provider="local",
            system_prompt="Use the tools.",
            parameters=PARAMS,
        )
        tools = loop.pop("tools", [ToolServer(name="fixture", url=mcp.url, allow=["add"])])
        return await self.client.start_workflow(
            AgentLoopWorkflow.run,
            LoopInput(
                execution=ExecutionInput(
                    ref=ExecutionRef("loop", self.task_queue, str(uuid.uuid4())),
                    agent="assistant",
                    message="add 2 and 3",
                    runner_task_queue=self.runner_queue,
                    timeout_seconds=300,
                    agent_spec=spec,
                    heartbeat_timeout_seconds=heartbeat_timeout,
                    **(execution or {}),
                ),
                loop=LoopSpec(tools=tools, tool_choice=loop.pop("tool_choice", "add"), **loop),
                progress_interval_seconds=0.5,
                max_history_events=max_history_events,
            ),
            id=f"loop-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )

    async def start_asking(
        self, mcp: MCPServerProcess, max_steps: int, approval: ApprovalPolicy
    ) -> WorkflowHandle[Any, ExecutionResult]:
        """A loop whose every call of the fixture's add waits for approval."""
        tools = [ToolServer(name="fixture", url=mcp.url, require_approval=["add"])]
        return await self.start(mcp, max_steps=max_steps, tools=tools, approval=approval)


@pytest.fixture
async def loops(temporal: TemporalDevServer, task_queue: str) -> AsyncIterator[Loops]:
    client = await Client.connect(temporal.address)
    ex = Loops(client, task_queue)
    async with workflow_worker(client, task_queue, ex.reports.append):
        yield ex


def runner(loops: Loops, chat: ChatAgent, servers: McpServers | None = None) -> Worker:
    """An in-process runner serving the loop's steps on the test's runner queue."""
    return Worker(
        loops.client,
        task_queue=loops.runner_queue,
        activities=StepActivities(chat, servers).all(),
    )


async def failure_of(handle: WorkflowHandle[Any, Any]) -> ExecutionResult:
    """The ExecutionResult a failed loop ends with (its error's first detail)."""
    with pytest.raises(WorkflowFailureError) as failed:
        await asyncio.wait_for(handle.result(), 120)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError), cause
    result = value_to_type(ExecutionResult, cause.details[0])
    assert isinstance(result, ExecutionResult), result
    return result


async def completed(handle: WorkflowHandle[Any, Any], activity_type: str) -> int:
    """How many activities of ``activity_type`` completed in the history."""
    scheduled: dict[int, str] = {}
    done = 0
    async for e in handle.fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = e.activity_task_completed_event_attributes
            done += scheduled.get(attrs.scheduled_event_id) == activity_type
    return done


async def keep(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """With AGENTEXEC_RECORD_LOOP_HISTORIES=DIR, write the run's history there
    (how tests/fixtures/loop-histories/ were recorded: see its README)."""
    target = os.environ.get("AGENTEXEC_RECORD_LOOP_HISTORIES")
    if target:
        write_json(Path(target) / f"{name}.json", (await handle.fetch_history()).to_json())


def write_json(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def model_requests(server: OpenAIServer) -> int:
    return server.log_text().count('"POST /v1/chat/completions HTTP/1.1" 200')


async def test_a_tool_using_agent_calls_its_mcp_server_and_succeeds(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        handle = await loops.start(mcp_server, max_steps=3)
        result = await asyncio.wait_for(handle.result(), 120)
        view: StepsView = await handle.query(STEPS_QUERY, result_type=StepsView)
    await keep(handle, "tools_succeeded")
    assert result.phase == "Succeeded", result
    assert result.usage is not None
    assert result.usage.total_tokens > 0
    # Steps 1 and 2 called the tool (forced); step 3, the last, answered.
    calls = mcp_server.calls()
    assert [c["tool"] for c in calls] == ["add", "add"], calls
    assert [(r.step, r.kind, r.name) for r in view.records] == [
        (1, "model", ""),
        (1, "tool", "add"),
        (2, "model", ""),
        (2, "tool", "add"),
        (3, "model", ""),
    ]
    final = loops.reports[-1]
    assert final.result.phase == "Succeeded"
    assert final.progress is not None
    assert final.progress["progress"]["step"] == 3
    assert final.progress["progress"]["toolCalls"] == 2
    assert final.progress["progress"]["totalTokens"] == result.usage.total_tokens
    # Each model call one request (streamed, the tool call put together from
    # its pieces), none re-sent; each step one attempt.
    assert (result.usage.requests, result.usage.resent_requests) == (3, 0)
    assert result.attempts is not None
    assert (result.attempts.count, result.attempts.failed) == (1 + 3 + 2, 0)


async def test_a_runners_first_tool_call_does_not_block_its_event_loop(
    mcp_server: MCPServerProcess,
) -> None:
    """The mcp client imports jsonschema inside its first call_tool (to check
    the result against the tool's output schema): about a second of CPU on
    the runner's event loop, while the step's heartbeats and completion
    wait. A runner that had not imported it before it polled had its first
    tool call, done but silent, timed out by the server (heartbeat timeout
    2 s) and called again: the killed-runner test below saw step 1's call,
    or the resumed step's, reach the server once more than it should."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(FIRST_TOOL_CALL), mcp_server.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["content"] == "5", seen
    imported = sorted({m.split(".")[0] for m in seen["imported"]})
    assert not {"jsonschema", "referencing"} & set(imported), (
        f"the first tool call imported {imported} on the event loop "
        f"(it could not run for {seen['stall']:.2f}s)"
    )
    # A sanity bound (about 0.05 s measured; 1-1.6 s while the call imported
    # jsonschema): nothing else the first call does holds the loop that long.
    assert seen["stall"] < 0.5, seen


@pytest.mark.parametrize("mcp_server", [1.0], indirect=True)
async def test_a_runner_killed_mid_loop_resumes_at_its_step(
    loops: Loops,
    mcp_server: MCPServerProcess,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    env = {"AGENTEXEC_PROVIDERS_FILE": str(providers_file(tmp_path, openai_server.base_url))}
    address = loops.client.service_client.config.target_host
    first = RunnerProcess(tmp_path, address, loops.runner_queue, env=env, name="first")
    second = RunnerProcess(tmp_path, address, loops.runner_queue, env=env, name="second")
    before = model_requests(openai_server)
    first.start()
    try:
        handle = await loops.start(mcp_server, heartbeat_timeout=2, max_steps=10)
        # Killed inside the fifth tool call (the server takes 1 s to answer).
        await eventually(
            mcp_server.calls, lambda c: len(c) >= 5, timeout=120, what="five tool calls"
        )
        first.kill()
        second.start()
        result = await asyncio.wait_for(handle.result(), 180)
    finally:
        first.stop()
        second.stop()
    await keep(handle, "runner_killed")
    assert result.phase == "Succeeded", result
    tool_calls = await completed(handle, TOOL_CALL_ACTIVITY)
    model_calls = await completed(handle, MODEL_CALL_ACTIVITY)
    assert (tool_calls, model_calls) == (9, 10)
    # Each completed tool call reached the server once, the interrupted one
    # (its key is the same on both attempts) twice; no step started over.
    seen: dict[str, int] = {}
    for call in mcp_server.calls():
        seen[str(call["call"])] = seen.get(str(call["call"]), 0) + 1
    assert len(seen) == 9, seen
    assert sorted(seen.values()) == [1] * 8 + [2], seen
    # The model server answered each completed model call once: none was
    # in flight at the kill, and none was sent again.
    assert model_requests(openai_server) - before == 10
    # The killed runner's step was a disruption: retried at once, free.
    assert result.attempts is not None
    assert (result.attempts.disrupted, result.attempts.failed) == (1, 0)
    assert result.attempts.last_disruption is not None
    assert result.attempts.last_disruption.reason == "HeartbeatTimeout"


async def test_an_approval_decides_a_tool_call(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        handle = await loops.start_asking(mcp_server, 3, ApprovalPolicy(timeout_seconds=2))

        def pending() -> dict[str, Any] | None:
            for report in reversed(loops.reports):
                if report.progress and report.progress.get("pendingApproval"):
                    return dict(report.progress["pendingApproval"])
            return None

        first = await eventually(pending, timeout=60, what="a pending approval reported")
        assert first["id"] == "1-0"
        assert first["tool"] == "add"
        await handle.signal(
            APPROVAL_SIGNAL, ApprovalDecision(id="1-0", approve=True, approver="alice")
        )
        # Step 2's call is left to its timeout: Reject, and the model is told.
        result = await asyncio.wait_for(handle.result(), 120)
        view: StepsView = await handle.query(STEPS_QUERY, result_type=StepsView)
    await keep(handle, "approved_then_timed_out")
    assert result.phase == "Succeeded", result
    assert [c["tool"] for c in mcp_server.calls()] == ["add"]  # the rejected one never ran
    approvals = [(r.step, r.detail.split(":")[0]) for r in view.records if r.kind == "approval"]
    assert approvals == [(1, "approved by alice"), (2, "rejected by timeout")]
    assert any(
        r.progress and (r.progress.get("lastApproval") or {}).get("approver") == "alice"
        for r in loops.reports
    )


@pytest.mark.parametrize("outcome", ["Approve", "Fail"])
async def test_an_approval_left_to_its_timeout_applies_its_outcome(
    outcome: str,
    loops: Loops,
    mcp_server: MCPServerProcess,
    openai_server: OpenAIServer,
    tmp_path: Path,
) -> None:
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        handle = await loops.start_asking(
            mcp_server, 2, ApprovalPolicy(timeout_seconds=1, on_timeout=outcome)
        )
        if outcome == "Approve":
            result = await asyncio.wait_for(handle.result(), 120)
        else:
            result = await failure_of(handle)
        view: StepsView = await handle.query(STEPS_QUERY, result_type=StepsView)
    await keep(handle, f"approval_timeout_{outcome.lower()}")
    approvals = [r.detail for r in view.records if r.kind == "approval"]
    if outcome == "Approve":
        # Nobody decided: the call was made, and the loop went on to its answer.
        assert result.phase == "Succeeded", result
        assert [c["tool"] for c in mcp_server.calls()] == ["add"]
        assert approvals == ["approved by timeout: no decision within 1s (onTimeout: Approve)"]
        assert [(r.step, r.kind) for r in view.records][-1] == (2, "model")
    else:
        # Nobody decided: the execution failed, and the tool never ran.
        assert (result.phase, result.reason) == ("Failed", "ApprovalTimeout"), result
        assert "nobody approved tool 'add' within 1s" in (result.message or "")
        assert mcp_server.calls() == []
        assert loops.reports[-1].result.reason == "ApprovalTimeout"


async def test_a_long_loop_continues_as_new_with_its_state(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """Past max_history_events the loop continues as new, carrying its
    conversation, steps, attempts and bill: nothing is redone."""
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        # A step costs about 20 events: a new run every two or three steps.
        handle = await loops.start(mcp_server, max_steps=6, max_history_events=40)
        result = await asyncio.wait_for(handle.result(), 180)
        view: StepsView = await handle.query(STEPS_QUERY, result_type=StepsView)
        first = loops.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        first_history = await first.fetch_history()
    await keep(first, "continued_as_new")  # the first run, which continued as new
    await keep(handle, "continued_last_run")
    assert result.phase == "Succeeded", result
    assert view.runs >= 3, view.runs
    closed = first_history.events[-1]
    assert closed.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    # Five tool calls, each once; six model calls in all, every step recorded
    # across the runs; the bill and the attempts carried over.
    calls = mcp_server.calls()
    assert len(calls) == 5, calls
    assert len({str(c["call"]) for c in calls}) == 5, calls
    assert [(r.step, r.kind) for r in view.records] == [
        *[(step, kind) for step in range(1, 6) for kind in ("model", "tool")],
        (6, "model"),
    ]
    assert result.usage is not None
    assert result.usage.requests == 6
    assert result.attempts is not None
    assert result.attempts.count == 1 + 6 + 5


async def test_a_rate_limited_model_call_is_resent_inside_its_step(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """429 with Retry-After: the runner waits and re-sends inside the step's
    attempt (issue #19); every request is billed, backoffLimit untouched."""
    relay = ModelRelay(openai_server.base_url, rate_limited=2, retry_after=1)
    await relay.start()
    try:
        chat = ChatAgent(providers_file(tmp_path, relay.base_url))
        async with runner(loops, chat):
            handle = await loops.start(mcp_server, max_steps=2)
            result = await asyncio.wait_for(handle.result(), 120)
    finally:
        await relay.stop()
    await keep(handle, "rate_limited")
    assert result.phase == "Succeeded", result
    assert relay.requests == 2 + 2
    assert result.usage is not None
    assert (result.usage.requests, result.usage.resent_requests) == (4, 2)
    assert result.attempts is not None
    assert (result.attempts.count, result.attempts.failed) == (1 + 2 + 1, 0)


async def test_a_refused_model_call_ends_the_loop_with_its_class(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """A 400 is ProviderRejected: retrying cannot help, so the loop ends at
    once with that reason (one attempt, no backoffLimit spent on it)."""
    relay = ModelRelay(openai_server.base_url, rate_limited=1, refuse_status=400)
    await relay.start()
    try:
        chat = ChatAgent(providers_file(tmp_path, relay.base_url))
        async with runner(loops, chat):
            handle = await loops.start(mcp_server, max_steps=3)
            result = await failure_of(handle)
    finally:
        await relay.stop()
    await keep(handle, "provider_rejected")
    assert (result.phase, result.reason) == ("Failed", "ProviderRejected"), result
    assert "step 1's model call" in (result.message or "")
    assert "HTTP 400" in (result.message or "")
    assert relay.requests == 1
    assert result.attempts is not None
    assert (result.attempts.count, result.attempts.failed) == (2, 0)
    assert mcp_server.calls() == []


async def test_a_step_past_the_token_budget_ends_the_loop_budget_exceeded(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """spec.limits.maxTokens applies per step (issue #23, 5): each model call
    is capped at what the budget leaves, and the loop ends BudgetExceeded,
    with its usage, once it is spent, though steps were left (max_steps 5)."""
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        handle = await loops.start(mcp_server, max_steps=5, max_tokens=50)
        result = await failure_of(handle)
    assert (result.phase, result.reason) == ("Failed", "BudgetExceeded"), result
    assert "spec.limits.maxTokens is 50" in (result.message or ""), result.message
    assert result.usage is not None
    # The local server streams no prompt count: completions alone, capped.
    assert result.usage.total_tokens == 50, result.usage
    steps = await completed(handle, MODEL_CALL_ACTIVITY)
    assert 1 <= steps < 5
    assert result.usage.requests == steps
    assert f"in {steps} steps" in (result.message or ""), result.message


@pytest.mark.parametrize(("on_error", "phase"), [("Report", "Succeeded"), ("Fail", "Failed")])
async def test_a_failing_tool_is_told_to_the_model_or_fails_the_loop_by_policy(
    loops: Loops,
    mcp_server: MCPServerProcess,
    openai_server: OpenAIServer,
    tmp_path: Path,
    on_error: str,
    phase: str,
) -> None:
    """The fixture's tool `fail` raises: with onError Report (the default) the
    error goes back to the model as the tool's result and the loop goes on;
    with onError Fail the loop ends ToolFailed. The server saw one call."""
    tools = [ToolServer(name="fixture", url=mcp_server.url, allow=["fail"], on_error=on_error)]
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        handle = await loops.start(mcp_server, max_steps=2, tools=tools, tool_choice="fail")
        if phase == "Failed":
            result = await failure_of(handle)
        else:
            result = await asyncio.wait_for(handle.result(), 120)
        view: StepsView = await handle.query(STEPS_QUERY, result_type=StepsView)
    assert [c["tool"] for c in mcp_server.calls()] == ["fail"]
    assert result.phase == phase, result
    if phase == "Failed":
        assert result.reason == "ToolFailed", result
        assert "tool 'fail' failed (onError: Fail)" in (result.message or ""), result.message
        assert "Error executing tool fail" in (result.message or ""), result.message
    else:
        # Step 1 called the tool, its error went back; step 2 (the last) answered.
        assert [(r.step, r.kind, r.name) for r in view.records] == [
            (1, "model", ""),
            (1, "tool", "fail"),
            (2, "model", ""),
        ]
        assert [r.error for r in view.records if r.kind == "tool"] == [True]


async def test_a_configured_tool_server_gets_its_headers_from_mounted_files(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """An Agent names a server of the runner's MCP servers file: the runner
    sends its URL the header whose value is in a file (a mounted Secret),
    read at each call; the credential never enters the workflow's history."""
    token = tmp_path / "secret" / "authorization"
    token.parent.mkdir()
    token.write_text("Bearer first-t0ken\n")
    servers_file = tmp_path / "mcp-servers.yaml"
    servers_file.write_text(
        f"servers:\n  fixture:\n    url: {mcp_server.url}\n"
        f"    headerFiles: {{Authorization: {token}}}\n"
    )
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    configured = [ToolServer(name="tools", url="", configured="fixture", allow=["add"])]
    async with runner(loops, chat, McpServers(servers_file)):
        handle = await loops.start(mcp_server, max_steps=2, tools=configured)
        result = await asyncio.wait_for(handle.result(), 120)
        token.write_text("Bearer rotated-t0ken")  # the Secret rotated
        again = await loops.start(mcp_server, max_steps=2, tools=configured)
        assert (await asyncio.wait_for(again.result(), 120)).phase == "Succeeded"
    assert result.phase == "Succeeded", result
    seen = [c["authorization"] for c in mcp_server.calls()]
    assert seen == ["Bearer first-t0ken", "Bearer rotated-t0ken"], seen
    history = (await handle.fetch_history()).to_json()
    assert "t0ken" not in history


@pytest.mark.parametrize("mcp_server", [4.0], indirect=True)
async def test_suspend_stops_the_step_in_flight_and_resume_goes_on(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    """spec.suspend mid-loop: the tool call in flight is stopped (no attempt
    spent), nothing runs while suspended, and resuming redoes that step's
    call only."""
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    async with runner(loops, chat):
        # Cancellation reaches an activity with its next heartbeat: every
        # second here (a third of the timeout), well inside the 4 s call.
        handle = await loops.start(mcp_server, heartbeat_timeout=3, max_steps=2)
        await eventually(mcp_server.calls, lambda c: len(c) == 1, timeout=60, what="a tool call")
        await handle.signal(SUSPEND_SIGNAL, True)
        suspended = await eventually(
            lambda: [r.result for r in loops.reports],
            lambda rs: any(r.reason == "Suspended" for r in rs),
            timeout=60,
            what="a Suspended report",
        )
        assert "it stopped at step 1's call of tool 'add'" in str(
            next(r.message for r in suspended if r.reason == "Suspended")
        )
        await asyncio.sleep(5)  # longer than the tool takes: nothing runs meanwhile
        assert len(mcp_server.calls()) == 1
        await handle.signal(SUSPEND_SIGNAL, False)
        result = await asyncio.wait_for(handle.result(), 120)
    await keep(handle, "suspended")
    assert result.phase == "Succeeded", result
    calls = mcp_server.calls()
    assert [c["call"] for c in calls] == [calls[0]["call"]] * 2  # the same call, redone
    assert result.attempts is not None
    assert (result.attempts.failed, result.attempts.disrupted) == (0, 0)
    assert result.attempts.count == 1 + 2 + 2  # tools, two model calls, the call twice
