"""The echo agent: returns its message. For demos and tests.

``parameters.delaySeconds`` waits first (heartbeating); ``parameters.fail``
(true, or a message) makes it fail on purpose.
"""

from __future__ import annotations

import asyncio

from agentexec.runner import AgentFailed
from agentexec.temporal.types import AgentRequest, AgentResult


class EchoAgent:
    name = "echo"

    async def run(self, request: AgentRequest) -> AgentResult:
        params = request.parameters or {}
        delay = params.get("delaySeconds", 0)
        if isinstance(delay, int | float) and not isinstance(delay, bool) and delay > 0:
            await asyncio.sleep(float(delay))
        fail = params.get("fail")
        if fail:
            raise AgentFailed(fail if isinstance(fail, str) else "the echo agent was asked to fail")
        return AgentResult(output=request.message)
