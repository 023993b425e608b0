"""Helpers to create and inspect AgentExecutions in e2e tests."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from temporalio.client import Client

from localenv.kube import ControlPlane


def manifest(name: str, message: str = "hello", **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": "AgentExecution",
            "metadata": {"name": name},
            "spec": {"agent": "echo", "message": message, **spec},
        }
    )


def create(
    plane: ControlPlane, namespace: str, name: str, message: str = "hello", **spec: Any
) -> None:
    plane.kubectl("create", "-n", namespace, "-f", "-", stdin=manifest(name, message, **spec))


def get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return plane.kubectl_json("get", "-n", namespace, "aex", name)


def list_all(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = plane.kubectl_json("get", "-n", namespace, "aex")["items"]  # type: ignore[assignment]
    return items


def workflow_id(obj: dict[str, Any]) -> str:
    """The execution's workflow ID (agentexec/<namespace>/<name>/<uid>)."""
    meta = obj["metadata"]
    return f"agentexec/{meta['namespace']}/{meta['name']}/{meta['uid']}"


def phase(obj: dict[str, Any]) -> str | None:
    return obj.get("status", {}).get("phase")


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """What a failure message should show: phase, conditions, error."""
    status = obj.get("status", {})
    return {
        "phase": status.get("phase"),
        "conditions": {
            c["type"]: (c.get("status"), c.get("reason")) for c in status.get("conditions", [])
        },
        "error": status.get("error"),
    }


async def workflow_runs(address: str, task_queue: str) -> Counter[str]:
    """How many runs Temporal has per workflow ID on the operator's task queue."""
    client = await Client.connect(address)
    runs: Counter[str] = Counter()
    async for wf in client.list_workflows(f"TaskQueue = '{task_queue}'"):
        runs[wf.id] += 1
    return runs


async def all_succeed_once(
    plane: ControlPlane,
    namespace: str,
    names: list[str],
    temporal_address: str,
    task_queue: str,
    timeout: float = 120,
) -> list[dict[str, Any]]:
    """Every execution (message = its name) Succeeded with its output, and
    Temporal holds exactly one run for each: nothing lost, nothing twice."""
    from tests.support.waiting import eventually

    items = await eventually(
        lambda: list_all(plane, namespace),
        lambda objs: len(objs) == len(names) and all(phase(o) == "Succeeded" for o in objs),
        timeout=timeout,
        what=f"all {len(names)} Succeeded",
    )
    assert {o["metadata"]["name"]: o["status"]["output"] for o in items} == {n: n for n in names}
    runs = await workflow_runs(temporal_address, task_queue)
    assert len(runs) == len(names)
    assert set(runs.values()) == {1}
    return items


async def reaches(
    plane: ControlPlane, namespace: str, name: str, check: Callable[[dict[str, Any]], bool],
    what: str, timeout: float = 60,
) -> dict[str, Any]:  # fmt: skip
    """The execution, once ``check`` holds for it (what was last seen otherwise)."""
    from tests.support.waiting import eventually

    return await eventually(
        lambda: get(plane, namespace, name), check, timeout=timeout, interval=0.3, what=what
    )


def events_of(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Kubernetes Events about the object called ``name``."""
    found = plane.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return list(found["items"])  # type: ignore[arg-type]
