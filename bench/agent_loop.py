"""What making an agent loop durable costs: a 10-step loop (model call, tool
call, ... final answer) as the AgentLoop workflow, with each step an activity
on a Temporal dev server, against the same calls made directly in one
process (the same request bodies, providers and MCP client code), on the
same real servers: llama.cpp's (the tiny model, the tool forced by
``tool_choice``, answers streamed) and the MCP fixture server.

    .venv/bin/python -m bench.agent_loop [--runs 5] [--steps 10]
        [--runner process|inline] [--temporal-db file|memory] [--no-stream]

The runner is ``agentexec-operator runner`` in its own process (as
deployed); the operator's workflow worker runs here, with report_status in
memory. Progress is written as in production (every 5 s at most). Beside
the loop, the same machine's floor: ``BaselineSteps``, two bare echo
activities per step (what Temporal itself costs per activity round trip:
schedule, dispatch, complete, the next workflow task).

Prints, per step (the median over runs), the direct model and tool times
and the durable step's, split into what its two activities took from
schedule to completion and the workflow tasks between them; then the
medians per step, the overhead and the ratio. The target is ratio <= 1.5
(issue #23). ``--temporal-db memory`` runs the dev server without its
SQLite file, to show how much of the overhead is the server's persistence.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from agentexec.runner import load_agents, tools
from agentexec.runner.activity import RunnerActivities
from agentexec.runner.chat import ChatAgent
from agentexec.runner.providers import Provider, dump_providers
from agentexec.runner.steps import StepActivities, build_model_body, build_model_result
from agentexec.runner.tools import McpServers
from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.runner_check import check_runner
from agentexec.temporal.steps import (
    LIST_TOOLS_ACTIVITY,
    MODEL_CALL_ACTIVITY,
    TOOL_CALL_ACTIVITY,
    LoopInput,
    LoopSpec,
    ModelCallRequest,
    ToolServer,
)
from agentexec.temporal.types import (
    REPORT_STATUS_ACTIVITY,
    AgentSpec,
    ExecutionInput,
    ExecutionRef,
    StatusReport,
)
from bench.baseline import BaselineSteps
from localenv.mcp_server import MCPServerProcess
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.support.operator import RunnerProcess

SPEC = AgentSpec(
    name="bench",
    type="assistant",
    model=MODEL,
    provider="local",
    system_prompt="Use the tools.",
    parameters={"temperature": 0, "seed": 7, "maxTokens": 64},
)
REF = ExecutionRef("bench", "loop", "uid")
QUEUE = "bench-loop"
RUNNER_QUEUE = f"{QUEUE}-runner"


@dataclass
class Run:
    """One run of the loop, as seconds per step (index 0: step 1)."""

    total: float
    steps: list[float]
    model: list[float] = field(default_factory=list)
    tool: list[float] = field(default_factory=list)


async def direct(server: ToolServer, chat: ChatAgent, steps: int) -> Run:
    """The loop's calls in one process, no Temporal: the baseline."""
    endpoint = McpServers().resolve(server)
    started = time.monotonic()
    listed = await tools.list_tools(endpoint)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "add 2 and 3"}]
    run = Run(0.0, [])
    for step in range(1, steps + 1):
        began = time.monotonic()
        last = step == steps
        name, body = build_model_body(
            ModelCallRequest(
                execution=REF,
                step=step,
                agent_spec=SPEC,
                messages=messages,
                tools=[] if last else listed,
                tool_choice=None if last else "add",
            )
        )
        answer = build_model_result(await chat.send(name, body))
        called = time.monotonic()
        run.model.append(called - began)
        messages.append(answer.message)
        for call in answer.message.get("tool_calls") or []:
            result = await tools.call_tool(
                endpoint, "add", json.loads(call["function"]["arguments"]), f"direct/{step}"
            )
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})
        if not last:
            run.tool.append(time.monotonic() - called)
        run.steps.append(time.monotonic() - began)
    run.total = time.monotonic() - started
    return run


async def durable(client: Client, server: ToolServer, steps: int) -> tuple[Run, dict[str, float]]:
    started = time.monotonic()
    handle = await client.start_workflow(
        AgentLoopWorkflow.run,
        LoopInput(
            execution=ExecutionInput(
                ref=REF,
                agent="assistant",
                message="add 2 and 3",
                runner_task_queue=RUNNER_QUEUE,
                timeout_seconds=600,
                agent_spec=SPEC,
            ),
            loop=LoopSpec(tools=[server], tool_choice="add", max_steps=steps),
        ),
        id=f"bench-{uuid.uuid4()}",
        task_queue=QUEUE,
    )
    await handle.result()
    total = time.monotonic() - started
    run, parts = await from_history(handle, (MODEL_CALL_ACTIVITY, TOOL_CALL_ACTIVITY))
    run.total = total
    return run, parts


async def from_history(
    handle: WorkflowHandle[Any, Any], kinds_of_step: tuple[str, ...]
) -> tuple[Run, dict[str, float]]:
    """The activities of ``kinds_of_step`` in a history: each one's time from
    scheduled to completed, and where the time went, summed: dispatch
    (scheduled to started), the runner (started to completed), and the
    workflow task after each (completed to the next activity scheduled).
    For the loop, each step's span too (a model call scheduled to the next
    one's, the last to the workflow's completion)."""
    kinds: dict[int, str] = {}
    scheduled: dict[int, datetime] = {}
    started: dict[int, datetime] = {}
    model_at: list[datetime] = []
    run = Run(0.0, [])
    parts = {"dispatch": 0.0, "runner": 0.0, "workflow task": 0.0, "activities": 0}
    last_done: datetime | None = None
    end: datetime | None = None
    async for e in handle.fetch_history_events():
        at = e.event_time.ToDatetime()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kind = e.activity_task_scheduled_event_attributes.activity_type.name
            kinds[e.event_id], scheduled[e.event_id] = kind, at
            if kind in kinds_of_step and last_done is not None:
                parts["workflow task"] += (at - last_done).total_seconds()
            if kind == MODEL_CALL_ACTIVITY:
                model_at.append(at)
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[e.activity_task_started_event_attributes.scheduled_event_id] = at
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            sid = e.activity_task_completed_event_attributes.scheduled_event_id
            kind = kinds.get(sid, "")
            if kind in kinds_of_step:
                took = (at - scheduled[sid]).total_seconds()
                (run.model if kind == MODEL_CALL_ACTIVITY else run.tool).append(took)
                parts["activities"] += 1
                parts["dispatch"] += (started[sid] - scheduled[sid]).total_seconds()
                parts["runner"] += (at - started[sid]).total_seconds()
            if kind in (*kinds_of_step, LIST_TOOLS_ACTIVITY):
                last_done = at
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            end = at
            if last_done is not None:
                parts["workflow task"] += (at - last_done).total_seconds()
    if model_at:
        marks = [*model_at, end or model_at[-1]]
        run.steps = [(b - a).total_seconds() for a, b in itertools.pairwise(marks)]
    return run, parts


async def floor(client: Client, steps: int, delay: float) -> tuple[float, dict[str, float]]:
    """BaselineSteps with two echo activities per step, each taking ``delay``
    seconds: the seconds beyond those delays, and where they went."""
    started = time.monotonic()
    handle = await client.start_workflow(
        BaselineSteps.run,
        args=[RUNNER_QUEUE, 2 * steps, delay],
        id=f"floor-{uuid.uuid4()}",
        task_queue=QUEUE,
    )
    await handle.result()
    took = time.monotonic() - started - 2 * steps * delay
    return took, (await from_history(handle, ("run_agent",)))[1]


@asynccontextmanager
async def runner(
    kind: str, work: Path, temporal: TemporalDevServer, providers: Path, chat: ChatAgent
) -> AsyncIterator[None]:
    if kind == "process":
        proc = RunnerProcess(
            work,
            temporal.address,
            RUNNER_QUEUE,
            env={"AGENTEXEC_PROVIDERS_FILE": str(providers), "LOG_LEVEL": "WARNING"},
        )
        proc.start()
        try:
            yield
        finally:
            proc.stop()
        return
    client = await Client.connect(temporal.address)
    echo = RunnerActivities(load_agents(only=["echo"]))
    async with Worker(
        client,
        task_queue=RUNNER_QUEUE,
        activities=[echo.run_agent, *StepActivities(chat).all()],
    ):
        yield


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


async def main(a: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    temporal = TemporalDevServer(work / "t")
    if a.temporal_db == "memory":
        argv = temporal._proc.argv
        i = argv.index("--db-filename")
        del argv[i : i + 2]
    llama = OpenAIServer(work, n_ctx=4096)
    temporal.start()
    llama.start()
    mcp = MCPServerProcess(work)
    mcp.start()
    try:
        providers = work / "providers.json"
        provider = Provider("local", llama.base_url, stream=not a.no_stream)
        providers.write_text(dump_providers({"local": provider}))
        chat = ChatAgent(providers)
        server = ToolServer(name="fixture", url=mcp.url, allow=["add"])
        client = await Client.connect(temporal.address)

        @activity.defn(name=REPORT_STATUS_ACTIVITY)
        async def report_status(report: StatusReport) -> None:
            return None

        async with (
            Worker(
                client,
                task_queue=QUEUE,
                workflows=[AgentLoopWorkflow, BaselineSteps],
                activities=[report_status, check_runner],
            ),
            runner(a.runner, work, temporal, providers, chat),
        ):
            await durable(client, server, 2)  # warm: sandbox, connections, the model
            warm = await direct(server, chat, a.steps)
            # The floor's echoes take as long as a direct call: the server
            # sees the loop's rhythm (back-to-back instant activities are
            # dispatched more slowly by the dev server, ~40 ms each).
            delay = round(warm.total / (2 * a.steps - 1), 3)
            await floor(client, 2, delay)
            base: list[Run] = []
            loop: list[Run] = []
            floors: list[float] = []
            parts: list[dict[str, float]] = []
            floor_parts: list[dict[str, float]] = []
            for n in range(a.runs):
                # Interleaved, so that the machine's load falls on all three alike.
                base.append(await direct(server, chat, a.steps))
                run, split = await durable(client, server, a.steps)
                loop.append(run)
                parts.append(split)
                took, split = await floor(client, a.steps, delay)
                floors.append(took)
                floor_parts.append(split)
                print(
                    f"run {n + 1}: direct {base[-1].total:.3f} s, durable loop "
                    f"{loop[-1].total:.3f} s, floor {floors[-1]:.3f} s",
                    flush=True,
                )
        steps = a.steps
        print(f"\nper step, median of {a.runs} runs (ms):")
        print("| step | direct model | direct tool | direct step | loop model | loop tool "
              "| loop step | overhead |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for i in range(steps):
            d_step = med([r.steps[i] for r in base])
            l_step = med([r.steps[i] for r in loop])
            tool = i < steps - 1
            print(
                f"| {i + 1} | {ms(med([r.model[i] for r in base]))} "
                f"| {ms(med([r.tool[i] for r in base])) if tool else '-'} | {ms(d_step)} "
                f"| {ms(med([r.model[i] for r in loop]))} "
                f"| {ms(med([r.tool[i] for r in loop])) if tool else '-'} | {ms(l_step)} "
                f"| {ms(l_step - d_step)} |"
            )
        b = med([r.total for r in base])
        d = med([r.total for r in loop])
        f = med(floors)
        print(f"\n{steps}-step loop, median of {a.runs} (runner: {a.runner}, "
              f"Temporal's store: {a.temporal_db}, streamed: {not a.no_stream}):")  # fmt: skip
        print("| figure | ms per step |")
        print("|---|---|")
        print(f"| the calls made directly, one process | {ms(b / steps)} |")
        print(f"| the durable loop (AgentLoop, each call an activity) | {ms(d / steps)} |")
        print(f"| overhead | {ms((d - b) / steps)} |")
        print(
            f"| Temporal's floor: two bare echo activities of {ms(delay)} ms (BaselineSteps), "
            f"less those {ms(2 * delay)} ms | {ms(f / steps)} |"
        )
        print("\nper activity, median of runs (ms):")
        print("| activities | dispatch | workflow task after it |")
        print("|---|---|---|")
        table: list[tuple[str, list[dict[str, float]]]] = [
            ("the loop's model and tool calls", parts),
            ("the floor's echoes", floor_parts),
        ]
        for name, splits in table:
            per = [{k: v / max(1, one["activities"]) for k, v in one.items()} for one in splits]
            print(
                f"| {name} | {ms(med([one['dispatch'] for one in per]))} "
                f"| {ms(med([one['workflow task'] for one in per]))} |"
            )
        print(f"\nratio durable/direct: {d / b:.2f} (target <= 1.5); "
              f"overhead beyond the floor: {ms((d - b - f) / steps)} ms per step")  # fmt: skip
    finally:
        mcp.stop()
        llama.stop()
        temporal.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runner", choices=["process", "inline"], default="process")
    parser.add_argument("--temporal-db", choices=["file", "memory"], default="file")
    parser.add_argument(
        "--no-stream", action="store_true", help="the provider with stream: false (one answer)"
    )
    asyncio.run(main(parser.parse_args()))
