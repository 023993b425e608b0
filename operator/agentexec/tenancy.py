"""What a namespace's ExecutionPolicies mean for one execution now (issue #22):
its policies, and its place in the namespace's running quota.

Read by reconcile before each decision (the decision itself is the planner's,
pure: policy.py and planner._held); no I/O here. The quota counts executions
with a workflow that has not finished, plus starts in flight in this process,
and the older executions of the namespace still waiting: each starts only
when those before it have their workflows (an older start in flight is
waited for, not raced), so they start in the order created. Nothing is
counted for a namespace without a quota, or with room for all it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentexec.cache import ExecutionCache, Key
from agentexec.conditions import AGENT_NOT_FOUND, WORKFLOW_STARTED, condition_of
from agentexec.decisions import Quota
from agentexec.policy import NamespacePolicy, PolicyCache, max_running
from agentexec.status import is_terminal, meta_of, recorded_workflow

Body = Mapping[str, Any]


def holds_a_slot(body: Body) -> bool:
    """A workflow that has not finished (a deleted one's too, until it ends)."""
    return not is_terminal(body) and bool(recorded_workflow(body).get("id"))


def waits_for_a_slot(body: Body) -> bool:
    """Not started, not finished, not being deleted, and waiting for nothing
    but its turn (an execution waiting for its Agent does not hold others back)."""
    if is_terminal(body) or recorded_workflow(body).get("id"):
        return False
    if meta_of(body).get("deletionTimestamp"):
        return False
    said = condition_of(body, WORKFLOW_STARTED) or {}
    return said.get("reason") != AGENT_NOT_FOUND


def creation_order(body: Body) -> tuple[str, str]:
    """Creation time (whole seconds in the API), then the name."""
    meta = meta_of(body)
    return str(meta.get("creationTimestamp", "")), str(meta.get("name", ""))


class Tenancy:
    def __init__(self, cache: ExecutionCache, policies: PolicyCache) -> None:
        self.cache = cache
        self.policies = policies
        # Keys whose start is in flight in this process: they hold a slot.
        self.starting: set[Key] = set()

    def observe(self, key: Key, body: Body) -> tuple[tuple[NamespacePolicy, ...], Quota | None]:
        policies = tuple(self.policies.of(key[0]))
        limit = max_running(policies)
        if limit is None or not waits_for_a_slot(body):
            return policies, None
        if self.cache.count_unfinished(key[0]) <= limit:
            return policies, None  # room for every one of them: nothing to order
        mine = creation_order(body)
        running = ahead = in_flight = 0
        for other_key, other in self.cache.unfinished(key[0]):
            if other_key == key:
                continue
            if holds_a_slot(other):
                running += 1
            elif other_key in self.starting:
                running += 1
                in_flight += creation_order(other) < mine
            elif waits_for_a_slot(other) and creation_order(other) < mine:
                ahead += 1
        return policies, Quota(limit, running, ahead, in_flight)

    def next_in_line(self, namespace: str) -> list[Key]:
        """The namespace's waiting executions that may start now, oldest first
        (those a freed slot should wake); none without a quota."""
        limit = max_running(self.policies.of(namespace))
        if limit is None:
            return []
        running = 0
        waiting: list[tuple[tuple[str, str], Key]] = []
        for key, body in self.cache.unfinished(namespace):
            if holds_a_slot(body) or key in self.starting:
                running += 1
            elif waits_for_a_slot(body):
                waiting.append((creation_order(body), key))
        waiting.sort()
        return [key for _, key in waiting[: max(0, limit - running)]]

    def unstarted(self, namespace: str) -> list[Key]:
        """Every execution of the namespace a policy change may concern."""
        return [
            key for key, body in self.cache.unfinished(namespace)
            if not recorded_workflow(body).get("id")
        ]  # fmt: skip
