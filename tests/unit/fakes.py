"""Plain fakes of the world the executor and the controller talk to (unit tier only).

FakeKube keeps objects as the API server would (resourceVersion checks, 409
and 404) and records every call; FakeGateway answers Temporal calls from a
script; FakeManager is a connection that is up or down.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

from agentexec.kube import KubeError
from agentexec.temporal.manager import TemporalUnavailable
from agentexec.temporal.types import Answer, ExecutionInput, Outcome

_rv = itertools.count(100)


def next_rv() -> str:
    """A resourceVersion newer than any so far (etcd revisions only grow)."""
    return str(next(_rv))


def execution(
    name: str = "a", uid: str = "u1", namespace: str = "ns", **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": str(next(_rv)),
            "creationTimestamp": "2026-12-01T00:00:00Z",
        },
        "spec": {"agent": "echo", "message": "hi", **spec},
    }


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.agents: dict[tuple[str, str], dict[str, Any]] = {}
        self.approvals: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.events: list[dict[str, Any]] = []

    def hold(self, body: Mapping[str, Any]) -> dict[str, Any]:
        held = copy.deepcopy(dict(body))
        self.objects[(held["metadata"]["namespace"], held["metadata"]["name"])] = held
        return copy.deepcopy(held)

    def _object(self, namespace: str, name: str, rv: str) -> dict[str, Any]:
        held = self.objects.get((namespace, name))
        if held is None:
            raise KubeError(404, "not found")
        if held["metadata"]["resourceVersion"] != rv:
            raise KubeError(409, "the object has been modified")
        return held

    async def write_status(
        self, namespace: str, name: str, resource_version: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("status", name))
        held = self._object(namespace, name, resource_version)
        merged = {**held.get("status", {}), **status}
        held["status"] = {k: v for k, v in merged.items() if v is not None}
        held["metadata"]["resourceVersion"] = str(next(_rv))
        return copy.deepcopy(held)

    async def write_finalizers(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any]:
        self.calls.append(("finalizers", name))
        held = self._object(namespace, name, resource_version)
        held["metadata"]["finalizers"] = list(finalizers)
        held["metadata"]["resourceVersion"] = str(next(_rv))
        return copy.deepcopy(held)

    async def write_approval_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.calls.append(("approval-status", name))
        held = self.approvals.get((namespace, name))
        if held is None:
            raise KubeError(404, "not found")
        held["status"] = {**held.get("status", {}), **status}
        held["metadata"]["resourceVersion"] = str(next(_rv))
        return copy.deepcopy(held)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", name))
        held = self.objects.get((namespace, name))
        return copy.deepcopy(held) if held is not None else None

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get-agent", name))
        return self.agents.get((namespace, name))

    async def list_agents(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return list(self.agents.values())

    async def delete(
        self, namespace: str, name: str, uid: str, resource_version: str | None = None
    ) -> bool:
        self.calls.append(("delete", name))
        return self.objects.pop((namespace, name), None) is not None

    async def create_event(self, namespace: str, event: Mapping[str, Any]) -> dict[str, Any]:
        self.events.append(dict(event))
        return dict(event)

    async def patch_event(
        self, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        return dict(patch)

    def writes(self) -> list[tuple[str, str]]:
        return [
            c for c in self.calls if c[0] in ("status", "finalizers", "delete", "approval-status")
        ]


class FakeGateway:
    """Answers from ``answers`` (by call kind), recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.answers: dict[str, Answer] = {}

    async def start(self, workflow_id: str, inp: ExecutionInput) -> Answer:
        self.calls.append(("start", workflow_id))
        workflow = {"id": workflow_id, "runId": "r", "namespace": "default", "taskQueue": "q"}
        return self.answers.get("start", Answer(Outcome.STARTED, workflow=workflow))

    async def describe(self, workflow: dict[str, Any]) -> Answer:
        self.calls.append(("describe", str(workflow.get("id"))))
        return self.answers.get("describe", Answer(Outcome.RUNNING, workflow=workflow))

    async def cancel(self, workflow_id: str, namespace: str | None) -> Answer:
        self.calls.append(("cancel", workflow_id))
        return self.answers.get("cancel", Answer(Outcome.CANCEL_REQUESTED))

    async def signal_suspend(
        self, workflow_id: str, namespace: str | None, suspend: bool
    ) -> Answer:
        self.calls.append(("signal-suspend", f"{workflow_id}={suspend}"))
        return self.answers.get("signal", Answer(Outcome.SIGNALLED))

    async def signal_approval(
        self, workflow_id: str, namespace: str | None, decision: Any
    ) -> Answer:
        self.calls.append(("signal-approval", f"{workflow_id}:{decision.id}"))
        return self.answers.get("signal", Answer(Outcome.SIGNALLED))


class FakeManager:
    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.listeners: list[Any] = []

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def unavailable(self) -> TemporalUnavailable:
        return TemporalUnavailable("TemporalUnavailable", "Temporal at t:7233 is unavailable")

    def flip(self, connected: bool) -> None:
        self.connected = connected
        for listener in self.listeners:
            listener(None)


class FakeVisibility(FakeGateway):
    """FakeGateway plus the visibility calls of the workflow watch."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[Any] = []
        self.running_ids: set[str] = set()

    async def list_closed(self, namespace: str, task_queue: str, since: Any) -> list[Any]:
        self.calls.append(("list_closed", task_queue))
        return [c for c in self.closed if c.close_time >= since]

    async def count_running(
        self, namespace: str, task_queue: str, started_before: Any = None
    ) -> int:
        self.calls.append(("count_running", task_queue))
        return len(self.running_ids)  # (all of them started long before)

    async def list_running(self, namespace: str, task_queue: str) -> set[str]:
        self.calls.append(("list_running", task_queue))
        return set(self.running_ids)
