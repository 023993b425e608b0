"""ExecutionPolicy (issue #22), pure: what a namespace's executions may use,
how many may run at once, and what the namespace may spend per period.

Admission (the chart's ValidatingAdmissionPolicy) checks what an object names
itself; the operator checks what an execution resolves to (its Agent's type,
provider, model and queue included) before any workflow starts, whatever
admission did (a policy created after the execution, admission turned off,
an Agent written before the policy). Several policies in a namespace all
apply: a name must be allowed by each, the smallest quota counts, and each
budget counts on its own.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from agentexec.conditions import parse_time, timestamp

Body = Mapping[str, Any]
PERIODS = ("Hour", "Day", "Week", "Month")
# Agent types that call a model provider: with allowed.providers set, one of
# these that names no provider is denied (its runner would pick one itself).
PROVIDER_AGENTS = frozenset({"chat", "assistant"})


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _names(value: object) -> frozenset[str] | None:
    if not isinstance(value, list):
        return None
    return frozenset(v for v in value if isinstance(v, str))


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass(frozen=True)
class NamespacePolicy:
    """One ExecutionPolicy, as the decisions read it."""

    name: str
    namespace: str
    providers: frozenset[str] | None = None  # None: any
    models: frozenset[str] | None = None
    agent_types: frozenset[str] | None = None
    task_queues: frozenset[str] | None = None
    max_running: int | None = None
    budget_tokens: int | None = None
    budget_period: str | None = None
    # status.budget as the operator last wrote it.
    period_start: datetime | None = None
    used: int = 0
    counted: int = 0
    resource_version: str | None = None


def build_policy(body: Body) -> NamespacePolicy:
    meta, spec = _mapping(body.get("metadata")), _mapping(body.get("spec"))
    allowed = _mapping(spec.get("allowed"))
    budget = _mapping(spec.get("budget"))
    status = _mapping(_mapping(body.get("status")).get("budget"))
    period = budget.get("period")
    started = status.get("periodStart")
    return NamespacePolicy(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        providers=_names(allowed.get("providers")),
        models=_names(allowed.get("models")),
        agent_types=_names(allowed.get("agentTypes")),
        task_queues=_names(allowed.get("taskQueues")),
        max_running=_count(_mapping(spec.get("concurrency")).get("maxRunning")),
        budget_tokens=_count(budget.get("tokens")),
        budget_period=period if period in PERIODS else None,
        period_start=parse_time(started),
        used=_count(status.get("used")) or 0,
        counted=_count(status.get("executions")) or 0,
        resource_version=meta.get("resourceVersion"),
    )


def _newer(held: str | None, given: str | None) -> bool:
    try:
        return int(held or "") > int(given or "")
    except ValueError:
        return False


class PolicyCache:
    """The ExecutionPolicies the watch has shown, by namespace."""

    def __init__(self) -> None:
        self._policies: dict[str, dict[str, NamespacePolicy]] = {}

    def put(self, body: Body) -> NamespacePolicy:
        """Hold ``body`` unless a newer version of it is held (our own status
        write is newer than the watch's late echo of the version before)."""
        policy = build_policy(body)
        held = self._policies.setdefault(policy.namespace, {})
        old = held.get(policy.name)
        if old is not None and _newer(old.resource_version, policy.resource_version):
            return old
        held[policy.name] = policy
        return policy

    def holds(self, body: Body) -> bool:
        """Whether this version of the policy, or a newer one, is held already
        (the watch's echo of our own status write: nothing new to decide on)."""
        meta = _mapping(body.get("metadata"))
        old = self._policies.get(str(meta.get("namespace", "")), {}).get(str(meta.get("name", "")))
        given = meta.get("resourceVersion")
        return (
            old is not None
            and given is not None
            and (old.resource_version == given or _newer(old.resource_version, given))
        )

    def remove(self, body: Body) -> None:
        meta = _mapping(body.get("metadata"))
        held = self._policies.get(str(meta.get("namespace", "")), {})
        held.pop(str(meta.get("name", "")), None)

    def absent(
        self, namespace: str | None, listed: Mapping[tuple[str, str], str]
    ) -> list[dict[str, Any]]:
        """The policies held in ``namespace`` (None: all) that a complete listing
        (key: uid) no longer has, as bodies for a DELETED event."""
        return [
            {"metadata": {"namespace": p.namespace, "name": p.name}}
            for p in self.all()
            if (namespace is None or p.namespace == namespace)
            and (p.namespace, p.name) not in listed
        ]

    def of(self, namespace: str) -> list[NamespacePolicy]:
        """The namespace's policies, by name (none: unrestricted)."""
        held = self._policies.get(namespace, {})
        return [held[name] for name in sorted(held)]

    def all(self) -> list[NamespacePolicy]:
        return [p for ns in sorted(self._policies) for p in self.of(ns)]

    def __len__(self) -> int:
        return sum(len(held) for held in self._policies.values())


class AgentLike(Protocol):
    """What an Agent snapshot (temporal.types.AgentSpec) says, as read here:
    a Protocol, so the metrics layer may read policies without the Temporal
    layer."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def provider(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def task_queue(self) -> str | None: ...


@dataclass(frozen=True)
class Uses:
    """What an execution resolves to, and where each name came from."""

    agent_type: str
    provider: str | None = None
    model: str | None = None
    task_queue: str | None = None  # a queue it (or its Agent) names; None: the default
    source: str = "the execution"  # "Agent 'x'" when an Agent was resolved


def build_uses(execution: Body, agent: AgentLike | None) -> Uses:
    """From the execution and its Agent snapshot (None: a built-in name, or
    a queue's own agent): the Agent's values first, as the chat agent picks them."""
    spec = _mapping(execution.get("spec"))
    params = _mapping(spec.get("parameters"))

    def text(value: object) -> str | None:
        return value if isinstance(value, str) and value else None

    queue = text(spec.get("taskQueue"))
    if agent is None:
        return Uses(
            agent_type=str(spec.get("agent", "")),
            provider=text(params.get("provider")),
            model=text(params.get("model")),
            task_queue=queue,
        )
    return Uses(
        agent_type=agent.type,
        provider=agent.provider or text(params.get("provider")),
        model=agent.model or text(params.get("model")),
        task_queue=queue or agent.task_queue,
        source=f"Agent {agent.name!r}",
    )


def _listed(allowed: frozenset[str]) -> str:
    return ", ".join(sorted(allowed)) or "none"


def policy_denial(
    policies: Iterable[NamespacePolicy], uses: Uses, default_queue: str
) -> str | None:
    """Why the execution may not run (the first rule it breaks, naming it),
    or None. The install's default runner queue is always allowed."""
    for p in policies:
        rule = f"ExecutionPolicy {p.name!r}"
        checks = (
            ("agentTypes", "agent type", uses.agent_type, p.agent_types),
            ("providers", "provider", uses.provider, p.providers),
            ("models", "model", uses.model, p.models),
        )
        for field, what, value, allowed in checks:
            if allowed is not None and value is not None and value not in allowed:
                return (
                    f"{rule}: allowed.{field} does not include {what} {value!r} "
                    f"(from {uses.source}; allowed: {_listed(allowed)})"
                )
        if p.providers is not None and uses.provider is None and uses.agent_type in PROVIDER_AGENTS:
            return (
                f"{rule}: a {uses.agent_type} agent must name its provider while "
                f"allowed.providers is set (allowed: {_listed(p.providers)})"
            )
        queue = uses.task_queue
        if (
            p.task_queues is not None
            and queue is not None
            and queue != default_queue
            and queue not in p.task_queues
        ):
            return (
                f"{rule}: allowed.taskQueues does not include task queue {queue!r} "
                f"(from {uses.source}; allowed: {_listed(p.task_queues)})"
            )
    return None


def token_limit(spec: object) -> int | None:
    """``spec.limits.maxTokens`` of an execution's spec, or None (no limit)."""
    limits = spec.get("limits") if isinstance(spec, Mapping) else None
    value: Any = limits.get("maxTokens") if isinstance(limits, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def max_running(policies: Iterable[NamespacePolicy]) -> int | None:
    """The namespace's quota of running executions (the smallest), or None."""
    quotas = [p.max_running for p in policies if p.max_running is not None]
    return min(quotas) if quotas else None


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC period that holds ``now``: [start, end)."""
    now = now.astimezone(UTC)
    if period == "Hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "Day":
        return day, day + timedelta(days=1)
    if period == "Week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "Month":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + timedelta(days=days)
    raise ValueError(f"unknown budget period {period!r}")


def used_now(policy: NamespacePolicy, now: datetime) -> int:
    """Tokens spent in the period that holds ``now`` (0 once it rolled over)."""
    if policy.budget_period is None:
        return 0
    start, _ = period_bounds(policy.budget_period, now)
    return policy.used if policy.period_start == start else 0


@dataclass(frozen=True)
class Exhausted:
    message: str
    retry_after: float  # seconds until the earliest period rolls over


def budget_exhausted(policies: Iterable[NamespacePolicy], now: datetime) -> Exhausted | None:
    """Whether a new execution must wait for a budget: each budget whose
    period's spending reached its tokens holds it back."""
    spent = []
    for p in policies:
        if p.budget_tokens is None or p.budget_period is None:
            continue
        used = used_now(p, now)
        if used >= p.budget_tokens:
            _, end = period_bounds(p.budget_period, now)
            spent.append((end, p, used))
    if not spent:
        return None
    end, p, used = max(spent, key=lambda s: s[0])
    return Exhausted(
        message=f"ExecutionPolicy {p.name!r}: the namespace spent {used} of its "
        f"{p.budget_tokens} tokens this {str(p.budget_period).lower()} (budget.tokens); the "
        f"execution starts when the period rolls over at {timestamp(end)} or the budget is raised",
        retry_after=max(0.0, (end - now).total_seconds()) + 0.5,
    )


def tokens_spent(status: Mapping[str, Any]) -> int:
    """The tokens a status says the execution used (status.usage.totalTokens)."""
    usage = _mapping(status.get("usage"))
    return _count(usage.get("totalTokens")) or 0


def plan_charge(policy: NamespacePolicy, tokens: int, now: datetime) -> dict[str, Any] | None:
    """The policy's status after one more execution of ``tokens`` finished
    (None: no budget to count against). A new period starts from zero."""
    if policy.budget_period is None:
        return None
    start, _ = period_bounds(policy.budget_period, now)
    same = policy.period_start == start
    return {
        "budget": {
            "periodStart": timestamp(start),
            "used": (policy.used if same else 0) + max(0, tokens),
            "executions": (policy.counted if same else 0) + 1,
        }
    }
