"""A fresh runner's first tool call, watched from its own event loop, for
tests/integration/test_agent_loop.py: ``python first_tool_call.py MCP_URL``.

Builds what ``agentexec-operator runner`` builds before it polls, runs the
tool-call step once (the real activity, in the SDK's ActivityEnvironment)
against the MCP server at MCP_URL, and prints JSON: the longest time the
event loop could not run anything during the call (``stall``, seconds),
the modules the call imported, and the call's result. Its own process: in
the test's process whatever another test imported would hide what a
runner's first call pays.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from datetime import timedelta

from temporalio.testing import ActivityEnvironment

from agentexec.runner.activity import RunnerActivities
from agentexec.runner.process import build_runner_specs
from agentexec.settings import load_settings
from agentexec.temporal.steps import ToolCallRequest, ToolServer
from agentexec.temporal.types import ExecutionRef

TICK = 0.01


async def longest_stall(stalls: list[float]) -> None:
    """Keep ``stalls[0]`` the longest a TICK sleep overran its time."""
    while True:
        started = time.monotonic()
        await asyncio.sleep(TICK)
        stalls[0] = max(stalls[0], time.monotonic() - started - TICK)


async def main(url: str) -> None:
    settings = load_settings({"AGENTEXEC_RUNNER_TASK_QUEUES": "first-tool-call"})
    (spec,) = build_runner_specs(settings, RunnerActivities({}))
    (tool_call,) = [a for a in spec.activities if getattr(a, "__name__", "") == "tool_call"]
    env = ActivityEnvironment()
    # The heartbeat timeout the killed-runner test gives its steps.
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=2))
    request = ToolCallRequest(
        execution=ExecutionRef("ns", "first", "uid"),
        step=1,
        call_id="call-1",
        server=ToolServer(name="fixture", url=url),
        tool="add",
        arguments={"a": 2, "b": 3},
    )
    stalls = [0.0]
    watch = asyncio.create_task(longest_stall(stalls))
    await asyncio.sleep(0.1)  # the watch is running
    before = set(sys.modules)
    result = await env.run(tool_call, request)
    imported = sorted(set(sys.modules) - before)
    watch.cancel()
    print(json.dumps({"stall": stalls[0], "imported": imported, "content": result.content}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
