"""Helpers to create and inspect AgentExecutions in e2e tests.

They call the API server through the official client (one request on a
kept-alive connection, 2.1 ms here, where a `kubectl` process took 70 ms:
bench/kube_calls.py). An API error raises AssertionError, as a failed
kubectl did, so `eventually` still stops at once on one.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from temporalio.client import Client
from urllib3.exceptions import HTTPError

from localenv.kube import ControlPlane, api_client

GROUP, VERSION, PLURAL = "agentexec.io", "v1alpha1", "agentexecutions"
# Per request, as the kubectl subprocess had its 60 s timeout.
TIMEOUT = 60
T = TypeVar("T")


def objects(plane: ControlPlane) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client(plane.kubeconfig))


def call(what: str, fn: Callable[[], T]) -> T:
    """`fn()`, with an API error or an API server that does not answer (down
    in a chaos scenario) raised as AssertionError, as a failed kubectl was."""
    try:
        return fn()
    except ApiException as exc:
        raise AssertionError(f"{what} failed ({exc.status} {exc.reason}): {exc.body}") from exc
    except (HTTPError, OSError) as exc:
        raise AssertionError(f"{what} failed: {exc}") from exc


def resource(kind: str, name: str, spec: dict[str, Any]) -> str:
    """One agentexec.io/v1alpha1 object, as `kubectl apply -f -` reads it."""
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def manifest(name: str, message: str = "hello", **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "agentexec.io/v1alpha1",
            "kind": "AgentExecution",
            "metadata": {"name": name},
            "spec": {"agent": "echo", "message": message, **spec},
        }
    )


# A ValidatingAdmissionPolicy whose parameters are a custom resource refuses
# every request for a while after it is created, or after the API server
# restarts, until the API server knows the CRD and has listed its objects
# (kubernetes#124237, #141367; docs/multi-team.md): retried, as a user would.
PARAMS_NOT_READY = (
    "not yet synced to use for admission",
    "failed to find resource referenced by paramKind",
)


def create(
    plane: ControlPlane, namespace: str, name: str, message: str = "hello", **spec: Any
) -> None:
    body = json.loads(manifest(name, message, **spec))
    api = objects(plane)
    deadline = time.monotonic() + 45
    while True:
        try:
            call(
                f"create aex {namespace}/{name}",
                lambda: api.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, body, _request_timeout=TIMEOUT
                ),
            )
            return
        except AssertionError as exc:
            refused = exc.__cause__
            waiting = (
                isinstance(refused, ApiException)
                and refused.status == 422
                and any(m in str(refused.body) for m in PARAMS_NOT_READY)
            )
            if not waiting or time.monotonic() > deadline:
                raise
            time.sleep(1)


def get(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    api = objects(plane)
    found: dict[str, Any] = call(
        f"get aex {namespace}/{name}",
        lambda: api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT
        ),
    )
    return found


def list_all(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    api = objects(plane)
    listed: dict[str, Any] = call(
        f"list aex in {namespace}",
        lambda: api.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _request_timeout=TIMEOUT
        ),
    )
    items: list[dict[str, Any]] = listed["items"]
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
