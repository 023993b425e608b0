"""tenancy.Tenancy (issue #22): a namespace's quota as one execution sees it."""

from __future__ import annotations

from typing import Any

from agentexec.cache import ExecutionCache
from agentexec.decisions import Quota
from agentexec.policy import PolicyCache
from agentexec.tenancy import Tenancy


def execution(
    name: str, ns: str = "a", created: str = "2026-12-03T10:00:00Z", **status: Any
) -> Any:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": name, "resourceVersion": "1",
                     "creationTimestamp": created},
        "spec": {"agent": "echo", "message": "hi"},
        "status": status,
    }  # fmt: skip


RUNNING = {"phase": "Running", "workflow": {"id": "w"}}


def tenancy(max_running: int | None, *bodies: Any) -> Tenancy:
    cache = ExecutionCache()
    for body in bodies:
        cache.put((body["metadata"]["namespace"], body["metadata"]["name"]), body)
    policies = PolicyCache()
    if max_running is not None:
        policies.put({"metadata": {"name": "p", "namespace": "a"},
                      "spec": {"concurrency": {"maxRunning": max_running}}})  # fmt: skip
    return Tenancy(cache, policies)


def test_the_quota_counts_running_ones_and_older_waiting_ones() -> None:
    t = tenancy(
        2,
        execution("r1", **RUNNING),
        execution("w1"),
        execution("w2"),
        execution("w3", created="2026-12-03T10:00:01Z"),
        execution("done", phase="Succeeded"),
        execution("elsewhere", ns="b", **RUNNING),
    )
    _, quota = t.observe(("a", "w2"), execution("w2"))
    assert quota == Quota(limit=2, running=1, ahead=1)
    _, quota = t.observe(("a", "w3"), execution("w3", created="2026-12-03T10:00:01Z"))
    assert quota == Quota(limit=2, running=1, ahead=2)
    t.starting.add(("a", "w1"))  # its start is in flight: it holds a slot
    _, quota = t.observe(("a", "w2"), execution("w2"))
    assert quota == Quota(limit=2, running=2, ahead=0, in_flight=1)
    assert t.next_in_line("a") == []
    t.starting.clear()
    assert t.next_in_line("a") == [("a", "w1")]


def test_an_execution_waiting_for_its_agent_holds_nobody_back() -> None:
    missing = {"conditions": [{"type": "WorkflowStarted", "status": "False",
                               "reason": "AgentNotFound"}]}  # fmt: skip
    t = tenancy(1, execution("lost", **missing), execution("w1"), execution("r", **RUNNING))
    _, quota = t.observe(("a", "w1"), execution("w1"))
    assert quota == Quota(limit=1, running=1, ahead=0)


def test_no_quota_or_room_for_all_means_nothing_to_count() -> None:
    assert tenancy(None, execution("w1")).observe(("a", "w1"), execution("w1"))[1] is None
    roomy = tenancy(5, execution("w1"), execution("w2"))
    assert roomy.observe(("a", "w2"), execution("w2"))[1] is None
