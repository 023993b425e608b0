"""ExecutionPolicy in the operator (issue #22): real control plane, Temporal
and operator process, no admission policy installed (as when admission is
bypassed): denied before any workflow, a running quota kept in creation
order, namespaces served fairly at the start rate, another install's reports
refused. A namespace's token budget: tests/e2e/test_budgets.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from temporalio.client import Client

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


def apply_policy(plane: ControlPlane, namespace: str, **spec: Any) -> None:
    plane.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=aex.resource("ExecutionPolicy", "limits", spec)
    )


def create_many(plane: ControlPlane, namespace: str, names: list[str], **spec: Any) -> None:
    plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n, **spec) for n in names),
    )  # fmt: skip


async def test_an_execution_its_policy_forbids_fails_policy_denied_with_no_workflow(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    # The Agent predates the policy (admission could not have refused it).
    apply_agent(control_plane, namespace, "elsewhere", type="echo", taskQueue="team-b-runner")
    apply_policy(control_plane, namespace, allowed={"taskQueues": ["team-a-runner"]})
    await eventually(
        lambda: control_plane.kubectl_json("get", "-n", namespace, "executionpolicy", "limits"),
        bool,
        what="the policy stored",
    )
    await asyncio.sleep(1)  # the operator's watch delivers it
    aex.create(control_plane, namespace, "denied", agent="elsewhere")
    aex.create(control_plane, namespace, "allowed", agent="echo")
    denied = await eventually(
        lambda: aex.get(control_plane, namespace, "denied"),
        lambda o: aex.phase(o) == "Failed",
        timeout=30,
        what="denied Failed",
    )
    assert denied["status"]["error"]["reason"] == "PolicyDenied", aex.summary(denied)
    message = denied["status"]["error"]["message"]
    assert "ExecutionPolicy 'limits': allowed.taskQueues does not include task queue " \
        "'team-b-runner' (from Agent 'elsewhere'" in message  # fmt: skip
    assert "workflow" not in denied["status"]
    assert not denied["metadata"].get("finalizers")
    allowed = await eventually(
        lambda: aex.get(control_plane, namespace, "allowed"),
        lambda o: aex.phase(o) == "Succeeded",
        timeout=30,
        what="allowed Succeeded",
    )
    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    assert set(runs) == {allowed["status"]["workflow"]["id"]}


async def test_a_running_quota_holds_the_rest_and_starts_them_in_creation_order(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    apply_policy(control_plane, namespace, concurrency={"maxRunning": 3})
    await asyncio.sleep(1)
    names = [f"q{n:02d}" for n in range(10)]
    create_many(control_plane, namespace, names, parameters={"delaySeconds": 1.5})
    most = 0
    seen_held = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        objs = aex.list_all(control_plane, namespace)
        running = sum(1 for o in objs if aex.phase(o) == "Running")
        most = max(most, running)
        seen_held |= any(
            aex.condition(o, "WorkflowStarted").get("reason") == "QuotaExceeded" for o in objs
        )
        if len(objs) == 10 and all(aex.phase(o) == "Succeeded" for o in objs):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"not all Succeeded: {[aex.summary(o) for o in objs]}")
    assert most <= 3, most
    assert most == 3, most  # the quota was used, not just respected
    assert seen_held
    # Temporal's own start times: the three the quota had room for started
    # first (at once, in parallel: in any order among themselves), and each
    # one past it after every older one, in the order created.
    client = await Client.connect(temporal.address)
    started = {}
    for obj in objs:
        desc = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).describe()
        started[obj["metadata"]["name"]] = desc.start_time
    in_order = sorted(started, key=lambda n: started[n])
    assert set(in_order[:3]) == set(names[:3]), in_order
    assert in_order[3:] == names[3:], in_order
    assert set(await aex.workflow_runs(temporal.address, operator.task_queue)) == {
        o["status"]["workflow"]["id"] for o in objs
    }


async def test_a_busy_namespace_does_not_delay_another_s_first_start(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    quiet = f"{namespace[:40]}-quiet"
    control_plane.kubectl("create", "namespace", quiet)
    # 5 starts per second: the busy namespace's 200 take 40 s to start.
    make_operator(AGENTEXEC_START_RATE="5", AGENTEXEC_WATCH_NAMESPACES=f"{namespace},{quiet}")
    busy = [f"b{n:03d}" for n in range(200)]
    create_many(control_plane, namespace, busy)
    await eventually(
        lambda: sum(aex.phase(o) == "Running" or aex.phase(o) == "Succeeded"
                    for o in aex.list_all(control_plane, namespace)),
        lambda n: n >= 10,
        timeout=60,
        what="the busy namespace's backlog draining",
    )  # fmt: skip
    created = time.monotonic()
    aex.create(control_plane, quiet, "first")
    await eventually(
        lambda: aex.condition(aex.get(control_plane, quiet, "first"), "WorkflowStarted"),
        lambda cond: cond.get("status") == "True",
        timeout=30,
        interval=0.1,
        what="the quiet namespace's first start",
    )
    waited = time.monotonic() - created
    backlog = sum(
        1 for o in aex.list_all(control_plane, namespace) if not o["status"].get("workflow")
    )
    assert backlog > 50, backlog  # the busy namespace was still far from done
    assert waited < 5, f"waited {waited:.1f} s behind a backlog of {backlog}"
