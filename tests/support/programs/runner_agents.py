"""A runner program written against the public API (agentexec.runner), for
tests/integration/test_runner.py and tests/e2e/test_runner.py:
``python runner_agents.py QUEUE``. (A folder of its own: tests/support
holds an operator.py, which would shadow the stdlib module for a script run
from there.)"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from agentexec.runner import AgentRequest, context, serve


async def slow(request: AgentRequest) -> str:
    # Slower than the heartbeat timeout; never heartbeats itself.
    await asyncio.sleep(float(request.parameters["seconds"]))
    return f"slept {request.parameters['seconds']}s"


async def blocking(request: AgentRequest) -> str:
    # Blocks its event loop (as careless agent code does): a runner's problem,
    # never the operator's.
    time.sleep(float(request.parameters["seconds"]))  # noqa: ASYNC251 (on purpose)
    return "blocked"


async def cancellable(request: AgentRequest) -> str:
    marker = Path(request.parameters["marker"])
    marker.write_text("started")  # noqa: ASYNC240 (a few bytes, for the test to see)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        marker.write_text("cancelled")  # noqa: ASYNC240
        raise
    return "never"


async def checkpointed(request: AgentRequest) -> str:
    ctx = context()
    if ctx.resume_from is not None:
        return f"attempt {ctx.attempt} resumed from {sorted(ctx.resume_from.items())}"
    ctx.checkpoint({"step": 1, "note": request.message})
    await asyncio.sleep(3600)  # the test kills this runner here
    return "never"


if __name__ == "__main__":
    serve(
        {
            "slow": slow,
            "blocking": blocking,
            "cancellable": cancellable,
            "checkpointed": checkpointed,
        },
        task_queue=sys.argv[1],
    )
