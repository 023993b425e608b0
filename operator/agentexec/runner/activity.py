"""The runner's Temporal activity: look up the agent and run it, heartbeating."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.metrics import Metrics
from agentexec.runner.api import Agent, AgentContext, AgentFailed, BudgetExceeded, _current
from agentexec.temporal.types import (
    AGENT_ERROR,
    BUDGET_EXCEEDED,
    RUN_AGENT_ACTIVITY,
    UNKNOWN_AGENT,
    AgentRequest,
    AgentResult,
    Usage,
)

# A retryable failure: the attempt stopped because its runner did.
RUNNER_SHUTDOWN = "RunnerShutdown"
# How soon a task this runner does not know the agent of is offered again.
UNKNOWN_AGENT_RETRY_DELAY = timedelta(seconds=1)


class RunnerActivities:
    def __init__(self, agents: Mapping[str, Agent], metrics: Metrics | None = None) -> None:
        self.agents = dict(agents)
        self.metrics = metrics
        self.in_flight = 0

    @activity.defn(name=RUN_AGENT_ACTIVITY)
    async def run_agent(self, request: AgentRequest) -> AgentResult:
        agent = self.agents.get(request.agent)
        if agent is None:
            self._count("unknown", "unknown_agent")
            known = ", ".join(sorted(self.agents)) or "none"
            # Retryable, soon: during a runner rollout (version skew), or with
            # two kinds of runners on one queue, another runner may know it.
            # The workflow's retry policy bounds the attempts; the last one's
            # failure (this type, naming the agent) ends the execution.
            raise ApplicationError(
                f"no agent named {request.agent!r} on this runner (known: {known})",
                type=UNKNOWN_AGENT,
                next_retry_delay=UNKNOWN_AGENT_RETRY_DELAY,
                # An expected outcome, said on the resource: no traceback in the log.
                category=ApplicationErrorCategory.BENIGN,
            )
        ctx = AgentContext(activity.info(), request.max_tokens)
        token = _current.set(ctx)
        beat = asyncio.create_task(_heartbeat(ctx))
        self._running(+1)
        outcome = "error"
        try:
            result = await agent.run(request)
            outcome = "succeeded"
            self._tokens(request, result.usage if isinstance(result, AgentResult) else None)
            return result
        except BudgetExceeded as exc:
            outcome = "budget_exceeded"
            self._tokens(request, exc.usage)
            raise ApplicationError(
                str(exc),
                exc.usage,
                type=BUDGET_EXCEEDED,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        except AgentFailed as exc:
            outcome = "failed"
            raise ApplicationError(
                str(exc),
                type=AGENT_ERROR,
                non_retryable=True,
                category=ApplicationErrorCategory.BENIGN,
            ) from exc
        except asyncio.CancelledError:
            outcome = "cancelled"
            details = activity.cancellation_details()
            if details is not None and (details.timed_out or details.not_found):
                # The server already ended this attempt (timeoutSeconds, or the
                # workflow is gone): the outcome is on the resource, and the SDK
                # would log the cancellation as a failure with a traceback.
                raise ApplicationError(
                    "the agent was stopped: its attempt timed out or its workflow is gone",
                    category=ApplicationErrorCategory.BENIGN,
                ) from None
            if activity.is_worker_shutdown() and not (details and details.cancel_requested):
                # The runner is stopping and its grace period ran out: a
                # retryable failure, so another runner takes the agent now
                # rather than after the heartbeat timeout.
                raise ApplicationError(
                    "the runner shut down before the agent finished",
                    type=RUNNER_SHUTDOWN,
                    category=ApplicationErrorCategory.BENIGN,
                ) from None
            raise
        finally:
            self._running(-1)
            self._count(request.agent, outcome)
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            _current.reset(token)

    def _running(self, delta: int) -> None:
        self.in_flight += delta
        if self.metrics is not None:
            self.metrics.runner_agents_running.set(self.in_flight)

    def _tokens(self, request: AgentRequest, usage: Usage | None) -> None:
        """What the attempt spent, counted where it was spent: retried
        attempts and failed ones cost tokens too."""
        if self.metrics is None or usage is None:
            return
        labels = build_token_labels(request)
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ):
            if count > 0:
                self.metrics.tokens.labels(**labels, kind=kind).inc(count)

    def _count(self, agent: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.runner_agent_attempts.labels(agent=agent, outcome=outcome).inc()


def build_token_labels(request: AgentRequest) -> dict[str, str]:
    """agentexec_tokens_total's labels for one request: the execution's
    namespace, the Agent (or built-in agent) it named, and the provider and
    model as the chat agent picks them (the Agent's, else the parameters')."""
    spec = request.agent_spec
    params = request.parameters or {}

    def pick(own: str | None, key: str) -> str:
        value = own or params.get(key)
        return value if isinstance(value, str) else ""

    return {
        "namespace": request.execution.namespace if request.execution else "",
        "agent": spec.name if spec else request.agent,
        "provider": pick(spec.provider if spec else None, "provider"),
        "model": pick(spec.model if spec else None, "model"),
    }


async def _heartbeat(ctx: AgentContext) -> None:
    # Heartbeats let the server notice a dead runner within the heartbeat
    # timeout, deliver cancellation (a deleted execution) to the agent, and
    # carry the agent's last checkpoint. The SDK throttles what it sends.
    while True:
        ctx.heartbeat()
        await asyncio.sleep(ctx.heartbeat_every)
