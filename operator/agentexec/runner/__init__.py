"""The built-in runner: agents behind a small protocol, found by entry point.

An agent is any object with a ``name`` and ``async run(request) -> result``.
Packages register agents under the ``agentexec.agents`` entry-point group::

    [project.entry-points."agentexec.agents"]
    echo = "agentexec.runner.echo:EchoAgent"
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from agentexec.temporal.types import AgentRequest, AgentResult

log = logging.getLogger("agentexec.runner")
ENTRY_POINT_GROUP = "agentexec.agents"


@runtime_checkable
class Agent(Protocol):
    name: str

    async def run(self, request: AgentRequest) -> AgentResult: ...


class AgentFailed(Exception):
    """Raised by an agent that ran and failed; the execution fails without retry."""


def agent_names(group: str = ENTRY_POINT_GROUP) -> frozenset[str]:
    """The names registered under ``group``, without loading (or configuring) them."""
    return frozenset(ep.name for ep in entry_points(group=group))


def load_agents(group: str = ENTRY_POINT_GROUP) -> Mapping[str, Agent]:
    """Every agent registered under ``group``; a broken one is logged and skipped."""
    agents: dict[str, Agent] = {}
    for ep in entry_points(group=group):
        try:
            agent = ep.load()()
        except Exception:
            log.exception("could not load agent", extra={"entry_point": ep.value})
            continue
        if not isinstance(agent, Agent):
            log.error("not an agent (needs name and async run)", extra={"entry_point": ep.value})
            continue
        agents[agent.name] = agent
    return agents
