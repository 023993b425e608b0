"""What making an agent loop durable costs: a 10-step loop (model call, tool
call, ... final answer) as the AgentLoop workflow, with each step an activity
on a Temporal dev server, against the same calls made directly in one
process (the same request bodies, providers and MCP client code), on the
same real servers: llama.cpp's (the tiny model, the tool forced by
``tool_choice``) and the MCP fixture server.

    .venv/bin/python -m bench.agent_loop [--runs 3] [--steps 10]

Prints each run's wall time, the median of each, and their ratio; the
target is ratio <= 1.5 (issue #23). Progress is written as in production
(every 5 s at most), to an in-memory report activity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from agentexec.runner import tools
from agentexec.runner.chat import ChatAgent, request_chat
from agentexec.runner.providers import Provider, dump_providers
from agentexec.runner.steps import StepActivities, build_model_body, build_model_result
from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.steps import LoopInput, LoopSpec, ModelCallRequest, ToolServer
from agentexec.temporal.types import (
    REPORT_STATUS_ACTIVITY,
    AgentSpec,
    ExecutionInput,
    ExecutionRef,
    StatusReport,
)
from localenv.mcp_server import MCPServerProcess
from localenv.openai_server import MODEL, OpenAIServer
from localenv.temporal import TemporalDevServer

SPEC = AgentSpec(
    name="bench",
    type="assistant",
    model=MODEL,
    provider="local",
    system_prompt="Use the tools.",
    parameters={"temperature": 0, "seed": 7, "maxTokens": 64},
)
REF = ExecutionRef("bench", "loop", "uid")


async def direct(server: ToolServer, chat: ChatAgent, steps: int) -> float:
    """The loop's calls in one process, no Temporal: the baseline."""
    started = time.monotonic()
    listed = await tools.list_tools(server)
    messages: list[dict[str, object]] = [{"role": "user", "content": "add 2 and 3"}]
    for step in range(1, steps + 1):
        last = step == steps
        name, body = build_model_body(
            ModelCallRequest(
                execution=REF,
                step=step,
                agent_spec=SPEC,
                messages=messages,  # type: ignore[arg-type]
                tools=[] if last else listed,
                tool_choice=None if last else "add",
            )
        )
        provider, key = chat.provider_for(name)
        answer = await request_chat(provider, key, body, build_model_result)
        messages.append(answer.message)
        for call in answer.message.get("tool_calls") or []:
            result = await tools.call_tool(
                server, "add", json.loads(call["function"]["arguments"]), f"direct/{step}"
            )
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})
    return time.monotonic() - started


async def durable(client: Client, server: ToolServer, queue: str, steps: int) -> float:
    started = time.monotonic()
    await client.execute_workflow(
        AgentLoopWorkflow.run,
        LoopInput(
            execution=ExecutionInput(
                ref=REF,
                agent="assistant",
                message="add 2 and 3",
                runner_task_queue=f"{queue}-runner",
                timeout_seconds=600,
                agent_spec=SPEC,
            ),
            loop=LoopSpec(tools=[server], tool_choice="add", max_steps=steps),
        ),
        id=f"bench-{uuid.uuid4()}",
        task_queue=queue,
    )
    return time.monotonic() - started


async def main(a: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    temporal, llama, mcp = TemporalDevServer(work / "t"), OpenAIServer(work, n_ctx=4096), None
    temporal.start()
    llama.start()
    mcp = MCPServerProcess(work)
    mcp.start()
    try:
        providers = work / "providers.json"
        providers.write_text(dump_providers({"local": Provider("local", llama.base_url)}))
        chat = ChatAgent(providers)
        server = ToolServer(name="fixture", url=mcp.url, allow=["add"])
        client = await Client.connect(temporal.address)
        queue = "bench-loop"

        @activity.defn(name=REPORT_STATUS_ACTIVITY)
        async def report_status(report: StatusReport) -> None:
            return None

        async with (
            Worker(
                client,
                task_queue=queue,
                workflows=[AgentLoopWorkflow],
                activities=[report_status],
            ),
            Worker(client, task_queue=f"{queue}-runner", activities=StepActivities(chat).all()),
        ):
            await durable(client, server, queue, 2)  # warm: sandbox, connections
            base, loop = [], []
            for run in range(a.runs):
                base.append(await direct(server, chat, a.steps))
                loop.append(await durable(client, server, queue, a.steps))
                print(f"run {run + 1}: direct {base[-1]:.3f} s, durable loop {loop[-1]:.3f} s")
        b, d = statistics.median(base), statistics.median(loop)
        print(f"\n{a.steps}-step loop, median of {a.runs}:")
        print("| figure | seconds |")
        print("|---|---|")
        print(f"| the calls made directly, one process | {b:.3f} |")
        print(f"| the durable loop (AgentLoop, each step an activity) | {d:.3f} |")
        print(f"| overhead per step | {(d - b) / a.steps * 1000:.0f} ms |")
        print(f"\nratio durable/direct: {d / b:.2f} (target <= 1.5)")
    finally:
        mcp.stop()
        llama.stop()
        temporal.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    asyncio.run(main(parser.parse_args()))
