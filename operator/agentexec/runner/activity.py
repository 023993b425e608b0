"""The runner's Temporal activity: look up the agent and run it, heartbeating."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.metrics import Metrics
from agentexec.runner.api import Agent, AgentContext, AgentFailed, BudgetExceeded, _current
from agentexec.temporal.types import (
    AGENT_ERROR,
    AGENT_STOPPED,
    BUDGET_EXCEEDED,
    RUN_AGENT_ACTIVITY,
    RUNNER_SHUTDOWN,
    UNKNOWN_AGENT,
    AgentRequest,
    AgentResult,
    Usage,
)

T = TypeVar("T")

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
        ctx = AgentContext(activity.info(), request)
        self._running(+1)

        answered: list[Usage | None] = [None]

        async def work() -> AgentResult:
            result = _with_usage(await agent.run(request), ctx)
            answered[0] = result.usage
            return result

        def ended(outcome: str) -> None:
            self._running(-1)
            self._count(request.agent, outcome)
            # Tokens are counted where they are spent: a failed or stopped
            # attempt's too (what its context was told).
            self._tokens(request, answered[0] if outcome == "succeeded" else ctx.usage)

        return await run_attempt(ctx, work, ended)

    def _running(self, delta: int) -> None:
        self.in_flight += delta
        if self.metrics is not None:
            self.metrics.runner_agents_running.set(self.in_flight)

    def _tokens(self, request: AgentRequest, usage: Usage | None) -> None:
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


async def run_attempt(
    ctx: AgentContext,
    work: Callable[[], Awaitable[T]],
    ended: Callable[[str], None] | None = None,
) -> T:
    """Run one attempt's ``work`` (an agent, or a step of the agent loop) in
    ``ctx``: heartbeating meanwhile, and answering every way it can end as
    the workflow's attempt policy reads it (temporal/attempts.py). ``ended``
    is told the outcome (succeeded, failed, cancelled, error)."""
    token = _current.set(ctx)
    beat = asyncio.create_task(_heartbeat(ctx))
    outcome = "error"
    # Every failure carries [checkpoint, progress], as heartbeats do: the
    # workflow passes the checkpoint to the next attempt and bills what
    # this one used (a new attempt is a new activity: Temporal does not
    # carry heartbeat details over to it).
    try:
        result = await work()
        outcome = "succeeded"
        return result
    except BudgetExceeded as exc:
        # Past spec.limits.maxTokens: not retried (the workflow's attempt
        # policy reads the type), billed through the progress detail.
        outcome = "budget_exceeded"
        raise ApplicationError(
            str(exc),
            *ctx.details(),
            type=BUDGET_EXCEEDED,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        ) from exc
    except AgentFailed as exc:
        outcome = "failed"
        raise ApplicationError(
            str(exc),
            *ctx.details(),
            type=AGENT_ERROR,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        ) from exc
    except ApplicationError as exc:
        if exc.details:
            raise  # the agent's own details: passed on as they are
        raise ApplicationError(
            exc.message,
            *ctx.details(),
            type=exc.type,
            non_retryable=exc.non_retryable,
            next_retry_delay=exc.next_retry_delay,
            category=exc.category,
        ) from None
    except asyncio.CancelledError:
        outcome = "cancelled"
        details = activity.cancellation_details()
        if details is not None and (details.timed_out or details.not_found):
            # The server already ended this attempt (its deadline, or the
            # workflow is gone): the outcome is on the resource, and the SDK
            # would log the cancellation as a failure with a traceback.
            raise ApplicationError(
                "the agent was stopped: its attempt timed out or its workflow is gone",
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        if activity.is_worker_shutdown() and not (details and details.cancel_requested):
            # The runner is stopping and its grace period ran out: a
            # disruption, so another runner takes the agent now (from this
            # checkpoint) rather than after the heartbeat timeout.
            raise ApplicationError(
                "the runner shut down before the agent finished",
                *ctx.details(),
                type=RUNNER_SHUTDOWN,
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        # Cancelled by the workflow (the execution suspended or deleted):
        # answered as a failure, not a cancellation, because only a failure
        # carries details, and the next attempt resumes from them.
        raise ApplicationError(
            "the agent was stopped at the workflow's request",
            *ctx.details(),
            type=AGENT_STOPPED,
            non_retryable=True,
            category=ApplicationErrorCategory.BENIGN,
        ) from None
    except Exception as exc:
        # What the SDK would send for it (type: the exception's class),
        # plus the details; logged with its traceback, as unexpected.
        raise ApplicationError(
            str(exc) or type(exc).__name__, *ctx.details(), type=type(exc).__name__
        ) from exc
    finally:
        if ended is not None:
            ended(outcome)
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        _current.reset(token)


def _with_usage(result: AgentResult, ctx: AgentContext) -> AgentResult:
    """The result, with the usage the agent counted through its context when
    it returned none itself."""
    if result.usage is None and ctx.usage is not None:
        return dataclasses.replace(result, usage=ctx.usage)
    return result


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
        "execution_namespace": request.execution.namespace if request.execution else "",
        "agent": spec.name if spec else request.agent,
        "provider": pick(spec.provider if spec else None, "provider"),
        "model": pick(spec.model if spec else None, "model"),
    }


async def _heartbeat(ctx: AgentContext) -> None:
    # Heartbeats let the server notice a dead runner within the heartbeat
    # timeout, deliver cancellation (a deleted execution) to the agent, and
    # carry the agent's last checkpoint. The SDK throttles what it sends.
    # The first one waits an interval (a third of the timeout at most, so a
    # dead runner is still noticed in time): the SDK sends a first heartbeat
    # at once, and a write to Temporal at the start of every short attempt
    # (an agent loop's step) is a cost with nothing to carry yet.
    while True:
        await asyncio.sleep(ctx.heartbeat_every)
        ctx.heartbeat()
