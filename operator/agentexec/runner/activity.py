"""The runner's Temporal activity: look up the agent and run it, heartbeating."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.runner import Agent, AgentFailed
from agentexec.temporal.types import (
    AGENT_ERROR,
    RUN_AGENT_ACTIVITY,
    UNKNOWN_AGENT,
    AgentRequest,
    AgentResult,
)

HEARTBEAT_EVERY = 5.0


class RunnerActivities:
    def __init__(self, agents: Mapping[str, Agent]) -> None:
        self.agents = dict(agents)

    @activity.defn(name=RUN_AGENT_ACTIVITY)
    async def run_agent(self, request: AgentRequest) -> AgentResult:
        agent = self.agents.get(request.agent)
        if agent is None:
            known = ", ".join(sorted(self.agents)) or "none"
            raise ApplicationError(
                f"no agent named {request.agent!r} on this runner (known: {known})",
                type=UNKNOWN_AGENT,
                non_retryable=True,
                # An expected outcome, said on the resource: no traceback in the log.
                category=ApplicationErrorCategory.BENIGN,
            )
        beat = asyncio.create_task(_heartbeat())
        try:
            return await agent.run(request)
        except AgentFailed as exc:
            raise ApplicationError(
                str(exc),
                type=AGENT_ERROR,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is not None and (details.timed_out or details.not_found):
                # The server already ended this attempt (timeoutSeconds, or the
                # workflow is gone): the outcome is on the resource, and the SDK
                # would log the cancellation as a failure with a traceback.
                raise ApplicationError(
                    "the agent was stopped: its attempt timed out or its workflow is gone",
                    category=ApplicationErrorCategory.BENIGN,
                ) from None
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat


async def _heartbeat() -> None:
    # Heartbeats let the server notice a dead runner within the heartbeat
    # timeout and deliver cancellation (a deleted execution) to the agent.
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY)
