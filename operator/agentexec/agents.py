"""Agent resources: what an execution's ``spec.agent`` resolves to, and which
runner queues a namespace may reach. Pure: the controller hands in the Agent
it holds in its cache; nothing here reads the cluster.

Resolution of ``spec.agent``, in this order:

1. an ``Agent`` of that name in the execution's namespace: its snapshot
   (:class:`AgentSpec`) goes into the workflow input, and the runner is sent
   the Agent's ``type`` as the agent to run;
2. a built-in agent name (the ``agentexec.agents`` entry points of the
   operator, ``echo`` among them): sent as is, as before Agents existed;
3. an execution with its own (allowed) ``spec.taskQueue``: sent as is, since
   the runner of that queue knows its own names;
4. otherwise the execution waits for the Agent (``AgentResolved=False``,
   ``AgentNotFound``) and fails with that reason after the queue TTL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentexec.temporal.steps import ASSISTANT
from agentexec.temporal.types import AgentSpec

Body = Mapping[str, Any]
ANY_QUEUE = "*"
# What build_agent_spec and resolve read of an Agent: all the cache keeps.
AGENT_SPEC_FIELDS = (
    "type",
    "model",
    "systemPrompt",
    "provider",
    "parameters",
    "taskQueue",
    "timeoutSeconds",
    "tools",
    "maxSteps",
    "approval",
)
# What an assistant's snapshot carries for its loop (AgentSpec.loop).
LOOP_FIELDS = ("tools", "maxSteps", "approval")
AGENT_META_FIELDS = ("name", "namespace", "uid", "generation", "resourceVersion")


@dataclass(frozen=True)
class AgentPolicy:
    """What the platform team configured (settings), as the planner needs it."""

    # Agent names served without an Agent resource: those registered in the
    # image (the runner Deployment runs the same image). None: unknown, so any
    # name is sent as is.
    builtin_agents: frozenset[str] | None = frozenset({"echo"})
    # Queues an execution may name in its own spec.taskQueue ("*": any).
    execution_task_queues: frozenset[str] = frozenset({ANY_QUEUE})
    runner_task_queue: str = "agentexec-runner"


@dataclass(frozen=True)
class Resolved:
    """What the execution's agent is now (exactly one of the three is set, or none
    for a name sent as is)."""

    spec: AgentSpec | None = None  # an Agent resource, snapshotted
    missing: str | None = None  # no such Agent (the message says which)
    refused: str | None = None  # spec.taskQueue is not allowed (the message says why)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def build_agent_spec(agent: Body, execution_parameters: Mapping[str, Any]) -> AgentSpec:
    """The snapshot of ``agent`` for one execution: the Agent's default
    parameters overridden, key by key, by the execution's."""
    meta, spec = _mapping(agent.get("metadata")), _mapping(agent.get("spec"))
    timeout = spec.get("timeoutSeconds")
    generation = meta.get("generation")
    return AgentSpec(
        name=str(meta.get("name", "")),
        type=str(spec.get("type", "")),
        model=_text(spec.get("model")),
        system_prompt=_text(spec.get("systemPrompt")),
        provider=_text(spec.get("provider")),
        parameters={**_mapping(spec.get("parameters")), **execution_parameters},
        task_queue=_text(spec.get("taskQueue")),
        timeout_seconds=timeout if isinstance(timeout, int) and timeout > 0 else None,
        uid=_text(meta.get("uid")),
        generation=generation if isinstance(generation, int) else None,
        loop={k: spec[k] for k in LOOP_FIELDS if k in spec}
        if spec.get("type") == ASSISTANT
        else None,
    )


def slim_agent(body: Body) -> dict[str, Any]:
    """What an Agent's snapshot is built from, and no more: no annotations,
    managedFields or status, nor spec fields this version does not read."""
    meta, spec = _mapping(body.get("metadata")), _mapping(body.get("spec"))
    return {
        "metadata": {k: meta[k] for k in AGENT_META_FIELDS if k in meta},
        "spec": {k: spec[k] for k in AGENT_SPEC_FIELDS if k in spec},
    }


def _rv(body: Body) -> int | None:
    try:
        return int(_mapping(body.get("metadata"))["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


class AgentCache:
    """The Agents the watch has shown, slim, by (namespace, name). A version is
    only replaced by a newer one of the same Agent, and a deletion only
    removes the Agent it is about: events of an Agent deleted and re-created
    under the same name may arrive late, and must not undo the newer one."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._agents.get((namespace, name))

    def __len__(self) -> int:
        return len(self._agents)

    def put(self, body: Body) -> bool:
        """Keep ``body`` unless a newer version of the same Agent is held; True if kept."""
        key = _key(body)
        if key is None:
            return False
        old = self._agents.get(key)
        if old is not None and _uid(old) == _uid(body):
            old_rv, new_rv = _rv(old), _rv(body)
            if old_rv is not None and new_rv is not None and new_rv <= old_rv:
                return False
        self._agents[key] = slim_agent(body)
        return True

    def remove(self, body: Body) -> bool:
        """Forget the Agent ``body`` is (a DELETED event); True if it was held.
        Without a uid on either side there is no telling, and it goes."""
        key = _key(body)
        old = self._agents.get(key) if key is not None else None
        if old is None or key is None:
            return False
        if _uid(old) is not None and _uid(body) is not None and _uid(old) != _uid(body):
            return False  # a late deletion of an older Agent of this name
        del self._agents[key]
        return True

    def absent(
        self, namespace: str | None, listed: Mapping[tuple[str, str], str]
    ) -> list[dict[str, Any]]:
        """The Agents held in ``namespace`` (None: all) that a complete listing
        (key: uid) does not have: deleted while the watch was away."""
        return [
            body
            for key, body in self._agents.items()
            if (namespace is None or key[0] == namespace) and listed.get(key) != _uid(body)
        ]


def _key(body: Body) -> tuple[str, str] | None:
    meta = _mapping(body.get("metadata"))
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns, name) if isinstance(ns, str) and isinstance(name, str) else None


def _uid(body: Body) -> str | None:
    return _text(_mapping(body.get("metadata")).get("uid"))


def queue_refusal(queue: str, agent_queue: str | None, policy: AgentPolicy) -> str | None:
    """Why an execution may not name ``queue`` itself, or None when it may.

    The operator's own runner queue and the queue of the execution's Agent are
    always allowed (naming them changes nothing); others only where the
    platform team allowed them (AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE).
    """
    allowed = policy.execution_task_queues
    if ANY_QUEUE in allowed or queue in allowed or queue in (policy.runner_task_queue, agent_queue):
        return None
    said = (
        f"only {', '.join(repr(q) for q in sorted(allowed))} are allowed"
        if allowed
        else "this operator allows none"
    )
    return (
        f"spec.taskQueue {queue!r} is not allowed: an execution may name its own runner queue "
        f"only where the platform team allowed it (AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE; {said}). "
        "Name the queue in an Agent's spec.taskQueue and set spec.agent to that Agent instead."
    )


def resolve(execution: Body, agent: Body | None, policy: AgentPolicy) -> Resolved:
    """What the execution's ``spec.agent`` resolves to, given the Agent of that
    name in its namespace (None: there is none).

    A name that is neither an Agent nor built in waits for its Agent, even
    when its ``spec.taskQueue`` would be refused without one: an Agent
    created with the execution (one `kubectl apply`) may arrive a moment
    later and allow that queue (its own). Refusing would be final."""
    spec = _mapping(execution.get("spec"))
    meta = _mapping(execution.get("metadata"))
    name = str(spec.get("agent", ""))
    queue = _text(spec.get("taskQueue"))
    agent_queue = _text(_mapping((agent or {}).get("spec")).get("taskQueue"))
    refusal = queue_refusal(queue, agent_queue, policy) if queue is not None else None
    builtin = policy.builtin_agents
    if agent is not None:
        if refusal is not None:
            return Resolved(refused=refusal)
        return Resolved(spec=build_agent_spec(agent, _mapping(spec.get("parameters"))))
    if builtin is None or name in builtin:
        return Resolved(refused=refusal) if refusal is not None else Resolved()
    if queue is not None and refusal is None:
        return Resolved()  # an allowed queue: whatever serves it knows the name
    known = ", ".join(sorted(builtin)) or "none"
    unless = f"; without one, spec.taskQueue {queue!r} is not allowed" if queue else ""
    return Resolved(
        missing=f"Agent {name!r} not found in namespace {meta.get('namespace', '')!r} (and it "
        f"is not a built-in agent: {known}); the execution starts when the Agent is "
        f"created{unless}"
    )
