"""The echo agent: returns its message. For demos and tests.

``parameters.delaySeconds`` waits first (heartbeating); with
``parameters.checkpointSeconds`` it waits in steps of that many seconds,
checkpointing after each, and a later attempt (after a disruption or a
suspend) waits only what is left, as a long agent resumes its work.
``parameters.fail`` (true, or a message) makes it fail on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agentexec.runner import AgentFailed, context
from agentexec.runner.api import current_context
from agentexec.temporal.types import AgentRequest, AgentResult


def _seconds(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class EchoAgent:
    name = "echo"

    async def run(self, request: AgentRequest) -> AgentResult:
        params = request.parameters or {}
        delay = _seconds(params.get("delaySeconds", 0))
        step = _seconds(params.get("checkpointSeconds", 0))
        if delay > 0 and step > 0 and current_context() is not None:
            ctx = context()
            resumed = ctx.resume_from if isinstance(ctx.resume_from, dict) else {}
            done = _seconds(resumed.get("done", 0))
            while done < delay:
                await asyncio.sleep(min(step, delay - done))
                done = min(delay, done + step)
                ctx.checkpoint({"done": done})
        elif delay > 0:
            await asyncio.sleep(delay)
        fail = params.get("fail")
        if fail:
            raise AgentFailed(fail if isinstance(fail, str) else "the echo agent was asked to fail")
        return AgentResult(output=request.message)
