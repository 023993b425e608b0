"""Runners: the processes that run agents, and the API agents are written against.

An agent is an ``async def fn(request) -> str | AgentResult``, or any object
with a ``name`` and ``async run(request) -> AgentResult``. Serve agents on a
task queue from your own process::

    from agentexec.runner import AgentRequest, serve

    async def shout(request: AgentRequest) -> str:
        return request.message.upper() + "!"

    serve({"shout": shout}, task_queue="shout")

or package them under the ``agentexec.agents`` entry-point group, which
``agentexec-operator runner`` serves::

    [project.entry-points."agentexec.agents"]
    echo = "agentexec.runner.echo:EchoAgent"

Heartbeats are sent for the agent while it runs; cancellation arrives as
``asyncio.CancelledError``; ``context().checkpoint(data)`` records progress
that a retried attempt finds in ``context().resume_from``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

from agentexec.runner.api import (
    ENTRY_POINT_GROUP,
    Agent,
    AgentContext,
    AgentFailed,
    AgentFunction,
    AgentLoadError,
    BudgetExceeded,
    TokenBudget,
    agent_names,
    build_agents,
    check_agents,
    configure_agents,
    context,
    load_agents,
)
from agentexec.temporal.types import AgentRequest, AgentResult

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentContext",
    "AgentFailed",
    "AgentFunction",
    "AgentLoadError",
    "AgentRequest",
    "AgentResult",
    "BudgetExceeded",
    "TokenBudget",
    "agent_names",
    "build_agents",
    "check_agents",
    "configure_agents",
    "context",
    "load_agents",
    "serve",
]


def serve(
    agents: Mapping[str, Agent | AgentFunction] | Iterable[Agent],
    task_queue: str | Sequence[str] | None = None,
    *,
    max_concurrent: int | None = None,
) -> NoReturn:
    """Serve ``agents`` on ``task_queue`` until SIGTERM or Ctrl-C, then end the
    process (it blocks, and never returns: see exit_without_finalizing).

    Everything else comes from the environment, as for ``agentexec-operator
    runner``: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, AGENTEXEC_HTTP_PORT
    (probes and metrics), TEMPORAL_WORKER_GRACE_SECONDS, LOG_FORMAT, ...
    Without ``task_queue``, AGENTEXEC_RUNNER_TASK_QUEUES (or _QUEUE) says.
    """
    from agentexec.logs import configure_logging
    from agentexec.runner.process import exit_without_finalizing, run_runner
    from agentexec.settings import load_settings

    # This is a program's entry point, like cli.main: the one other place
    # that reads the environment.
    settings = load_settings(os.environ)
    if task_queue is not None:
        queues = (task_queue,) if isinstance(task_queue, str) else tuple(task_queue)
        settings = dataclasses.replace(settings, runner_task_queues=queues)
    if max_concurrent is not None:
        settings = dataclasses.replace(settings, runner_max_concurrent=max_concurrent)
    configure_logging(settings.log_level, settings.log_format)
    built = build_agents(agents)
    configure_agents(built, settings)
    asyncio.run(run_runner(settings, built))
    exit_without_finalizing(0)
