"""What an agent sees: the Agent protocol, its context, and how it says it failed.

Imports temporalio and our types only: a runner needs no Kubernetes client.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from temporalio import activity

from agentexec.temporal.types import (
    AgentRequest,
    AgentResult,
    AttemptProgress,
    Usage,
    add_usage,
)

if TYPE_CHECKING:
    from agentexec.settings import Settings

log = logging.getLogger("agentexec.runner")
ENTRY_POINT_GROUP = "agentexec.agents"
# How often a running agent heartbeats at most; a shorter heartbeat timeout
# (the workflow's, per attempt) makes it beat three times per timeout.
HEARTBEAT_EVERY = 5.0


@runtime_checkable
class Agent(Protocol):
    name: str

    async def run(self, request: AgentRequest) -> AgentResult: ...


AgentFunction = Callable[[AgentRequest], Awaitable[AgentResult | str]]


class AgentFailed(Exception):
    """Raised by an agent that ran and failed; the execution fails without retry."""


class BudgetExceeded(AgentFailed):
    """The agent would go past the execution's spec.limits.maxTokens: it stops,
    and the execution fails with reason BudgetExceeded and its usage."""

    def __init__(self, message: str, usage: Usage) -> None:
        super().__init__(message)
        self.usage = usage


class TokenBudget:
    """The tokens one attempt may still use (what spec.limits.maxTokens leaves
    after the attempts before it: the workflow says, AgentRequest.max_tokens).

    An agent that calls a model asks :meth:`cap` for the most tokens its call
    may answer with; :meth:`AgentContext.add_usage` charges each call here.
    Both raise BudgetExceeded once nothing is left (before a call, or when
    one went past it).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.used = Usage()

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used.total_tokens)

    def cap(self, requested: int | None = None) -> int | None:
        """The max_tokens for the next call: ``requested``, bounded by what is left."""
        left = self.left
        if left is None:
            return requested
        if left <= 0:
            raise self.exceeded("before its next model call")
        return left if requested is None else min(requested, left)

    def charge(self, usage: Usage) -> None:
        used = self.used
        total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        self.used = Usage(
            used.prompt_tokens + usage.prompt_tokens,
            used.completion_tokens + usage.completion_tokens,
            used.total_tokens + total,
        )
        if self.limit is not None and self.used.total_tokens > self.limit:
            raise self.exceeded("by its last model call")

    def exceeded(self, when: str) -> BudgetExceeded:
        return BudgetExceeded(
            f"the agent was stopped {when}: {self.used.total_tokens} tokens used "
            f"(prompt {self.used.prompt_tokens}, completion {self.used.completion_tokens}), "
            f"the execution's spec.limits.maxTokens left {self.limit} for this attempt",
            self.used,
        )


class AgentContext:
    """The running attempt of an agent, from :func:`context` inside ``run``.

    Heartbeats are sent for the agent while it runs: it never calls Temporal.
    Cancellation (the execution was deleted or suspended, the attempt timed
    out, the runner is shutting down past its grace period) arrives as
    ``asyncio.CancelledError`` in the agent's coroutine.
    """

    def __init__(
        self,
        info: activity.Info,
        request: AgentRequest | None = None,
        *,
        resume_from: Any = None,
        attempt: int | None = None,
    ) -> None:
        self.info = info
        self.request = request
        details = list(info.heartbeat_details)
        # A retry by Temporal itself (workflows started before #19) finds the
        # last heartbeat's details; the workflow's own next attempt, the
        # checkpoint the workflow passed on (in the request, or given here
        # by an agent loop's step).
        passed = request.resume_from if request is not None else resume_from
        self._attempt = attempt
        checkpoint = details[0] if details else passed
        self._checkpoint: Any = checkpoint
        self._has_checkpoint = checkpoint is not None
        #: What the previous attempt last passed to :meth:`checkpoint`, or None
        #: on a first attempt (or if it never checkpointed).
        self.resume_from: Any = checkpoint
        self._usage: Usage | None = None
        #: What spec.limits.maxTokens leaves this attempt (see TokenBudget).
        self.budget = TokenBudget(request.max_tokens if request is not None else None)
        self._output_chars = 0
        self._started = time.monotonic()

    @property
    def attempt(self) -> int:
        """1 on the first attempt, 2 on the next (failed, disrupted and
        suspended attempts all count), ..."""
        if self.request is not None and self.request.attempt:
            return self.request.attempt
        return self._attempt or self.info.attempt

    @property
    def heartbeat_timeout(self) -> timedelta | None:
        return self.info.heartbeat_timeout

    @property
    def heartbeat_every(self) -> float:
        timeout = self.info.heartbeat_timeout
        if timeout is None or timeout.total_seconds() <= 0:
            return HEARTBEAT_EVERY
        return max(0.1, min(HEARTBEAT_EVERY, timeout.total_seconds() / 3))

    def time_left(self) -> float | None:
        """Seconds this attempt may still run (the execution's deadline, less
        what earlier attempts used), or None when nothing bounds it."""
        info = self.info
        bounds = []
        if info.start_to_close_timeout:
            bounds.append(info.start_to_close_timeout.total_seconds())
        if info.schedule_to_close_timeout:
            # The path before #19: all attempts together, from the first schedule.
            waited = (info.started_time - info.scheduled_time).total_seconds()
            bounds.append(info.schedule_to_close_timeout.total_seconds() - max(waited, 0.0))
        if not bounds:
            return None
        return min(bounds) - (time.monotonic() - self._started)

    def checkpoint(self, data: Any) -> None:
        """Record progress (JSON-serialisable) that a retried attempt resumes from.

        It travels as the activity's heartbeat details: the last one sent
        (within a heartbeat interval) reaches the next attempt, whichever
        runner takes it.
        """
        self._checkpoint = data
        self._has_checkpoint = True
        activity.heartbeat(*self.details())

    def add_usage(self, usage: Usage) -> None:
        """Count what a model request used (tokens, requests) in this attempt:
        heartbeated with the checkpoint, so the execution's ``status.usage``
        includes attempts that never returned. Raises BudgetExceeded once the
        attempt went past its budget (spec.limits.maxTokens)."""
        self._usage = add_usage(self._usage, usage)
        self.budget.charge(usage)

    @property
    def usage(self) -> Usage | None:
        """What this attempt used so far (add_usage)."""
        return self._usage

    def output_progress(self, chars: int) -> None:
        """How much output the attempt has produced so far (streamed text):
        a disrupted attempt's status says how far it got."""
        self._output_chars = chars

    def details(self) -> tuple[Any, AttemptProgress]:
        """What heartbeats and failures carry: [checkpoint, progress]."""
        return (
            self._checkpoint if self._has_checkpoint else None,
            AttemptProgress(usage=self._usage, output_chars=self._output_chars),
        )

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (for code between awaits)."""
        return activity.is_cancelled() or activity.is_worker_shutdown()

    def heartbeat(self) -> None:
        """One heartbeat, carrying the last checkpoint (a heartbeat without
        it would erase it on the server) and the progress."""
        activity.heartbeat(*self.details())


_current: ContextVar[AgentContext] = ContextVar("agentexec_agent_context")


def context() -> AgentContext:
    """The context of the agent attempt running in this task."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("agentexec.runner.context() is only available inside an agent") from None


def current_context() -> AgentContext | None:
    """The running attempt's context, or None outside one (an agent called directly)."""
    return _current.get(None)


class FunctionAgent:
    """An ``async def fn(request) -> AgentResult | str`` as an Agent."""

    def __init__(self, name: str, fn: AgentFunction) -> None:
        self.name = name
        self.fn = fn

    async def run(self, request: AgentRequest) -> AgentResult:
        result = await self.fn(request)
        return AgentResult(output=result) if isinstance(result, str) else result


def build_agents(agents: Mapping[str, Agent | AgentFunction] | Iterable[Agent]) -> dict[str, Agent]:
    """Agents by name, from a mapping of names to agents or async functions, or
    from agent objects (each its own ``name``)."""
    out: dict[str, Agent] = {}
    items = agents.items() if isinstance(agents, Mapping) else ((a.name, a) for a in agents)
    for name, agent in items:
        if isinstance(agent, Agent):
            out[name] = agent
        elif inspect.iscoroutinefunction(agent):
            out[name] = FunctionAgent(name, agent)
        else:
            raise TypeError(
                f"agent {name!r}: needs an async function or an object with name and async run"
            )
    return out


def agent_names(group: str = ENTRY_POINT_GROUP) -> frozenset[str]:
    """The names registered under ``group``, without loading (or configuring) them."""
    return frozenset(ep.name for ep in entry_points(group=group))


class AgentLoadError(ValueError):
    """An agent the runner was asked to serve cannot be loaded or configured."""


def load_agents(
    group: str = ENTRY_POINT_GROUP,
    *,
    only: Collection[str] = (),
    strict: bool = False,
) -> Mapping[str, Agent]:
    """The agents registered under ``group`` (those named in ``only``, if any).

    A broken entry point is logged and skipped, or, with ``strict`` (the
    runner process), raises AgentLoadError naming it: a runner that serves
    without one of its agents looks healthy and fails each of its executions.
    """
    agents: dict[str, Agent] = {}
    for ep in entry_points(group=group):
        if only and ep.name not in only:
            continue  # not served here: neither loaded nor able to stop the runner
        try:
            agent = ep.load()()
        except Exception as exc:
            if strict:
                raise AgentLoadError(
                    f"agent entry point {ep.name} = {ep.value} could not be loaded: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            log.exception("could not load agent", extra={"entry_point": ep.value})
            continue
        if not isinstance(agent, Agent):
            if strict:
                raise AgentLoadError(
                    f"agent entry point {ep.name} = {ep.value} is not an agent "
                    "(needs name and async run)"
                )
            log.error("not an agent (needs name and async run)", extra={"entry_point": ep.value})
            continue
        agents[agent.name] = agent
    return agents


def configure_agents(agents: Mapping[str, Agent], settings: Settings) -> None:
    """Call each agent's optional ``configure(settings)`` once, before serving.

    Agents are built with no arguments; this is how they get their settings
    (the one object that reads the environment) and check them at startup
    rather than at every call. An error raises AgentLoadError naming the agent.
    """
    for name, agent in agents.items():
        configure = getattr(agent, "configure", None)
        if configure is None:
            continue
        try:
            configure(settings)
        except Exception as exc:
            raise AgentLoadError(f"agent {name!r}: {exc}") from exc


def check_agents(agents: Mapping[str, Agent], settings: Settings) -> list[str]:
    """What each agent's optional ``check(settings)`` finds missing, for
    --check-config: things a runner only warns about when it starts (a
    provider's key file not mounted), each naming its agent."""
    problems = []
    for name, agent in agents.items():
        check = getattr(agent, "check", None)
        if check is not None:
            problems += [f"agent {name!r}: {problem}" for problem in check(settings)]
    return problems
