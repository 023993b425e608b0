"""The agent loop (Agents of type assistant) against real servers: llama.cpp's
OpenAI-compatible server (the tiny random-weights model, made to call a tool
by grammar-constrained function calling: ``tool_choice`` naming the tool),
the MCP fixture server (the ``mcp`` SDK's server side), a Temporal dev server,
and the runner as its own process where it is killed.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from agentexec.runner.chat import ChatAgent
from agentexec.runner.providers import Provider, dump_providers
from agentexec.runner.steps import StepActivities
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
    REPORT_STATUS_ACTIVITY,
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
from tests.support.waiting import eventually

# Deterministic and short: the grammar makes the tool call, maxTokens bounds
# the final answer of random weights.
PARAMS = {"temperature": 0, "seed": 7, "maxTokens": 64}


@pytest.fixture(scope="module")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    server = OpenAIServer(tmp_path_factory.mktemp("openai"), n_ctx=2048)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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
        self, mcp: MCPServerProcess, heartbeat_timeout: int = 30, **loop: Any
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
                ),
                loop=LoopSpec(tools=tools, tool_choice="add", **loop),
                progress_interval_seconds=0.5,
            ),
            id=f"loop-{uuid.uuid4()}",
            task_queue=self.task_queue,
        )


@pytest.fixture
async def loops(temporal: TemporalDevServer, task_queue: str) -> AsyncIterator[Loops]:
    client = await Client.connect(temporal.address)
    ex = Loops(client, task_queue)

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(report: StatusReport) -> None:
        ex.reports.append(report)

    async with Worker(
        client, task_queue=task_queue, workflows=[AgentLoopWorkflow], activities=[report_status]
    ):
        yield ex


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
    async with Worker(
        loops.client, task_queue=loops.runner_queue, activities=StepActivities(chat).all()
    ):
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


async def test_an_approval_decides_a_tool_call(
    loops: Loops, mcp_server: MCPServerProcess, openai_server: OpenAIServer, tmp_path: Path
) -> None:
    chat = ChatAgent(providers_file(tmp_path, openai_server.base_url))
    tools = [ToolServer(name="fixture", url=mcp_server.url, require_approval=["add"])]
    async with Worker(
        loops.client, task_queue=loops.runner_queue, activities=StepActivities(chat).all()
    ):
        handle = await loops.start(
            mcp_server,
            max_steps=3,
            tools=tools,
            approval=ApprovalPolicy(timeout_seconds=2, on_timeout="Reject"),
        )

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
