"""ExecutionPolicy in the operator (issue #22): real control plane, Temporal
and operator process, no admission policy installed (as when admission is
bypassed): denied before any workflow, a running quota kept in creation
order, namespaces served fairly at the start rate, a namespace budget."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client

from localenv.kube import ControlPlane
from localenv.openai_server import OpenAIServer
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.e2e.test_chat import (  # noqa: F401 (the module-scoped server fixture)
    KEY,
    apply_chat_agent,
    chat_runner,
    finished,
    openai_server,
    providers_file,
)
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
    # Started in the order created: Temporal's own start times.
    client = await Client.connect(temporal.address)
    started = {}
    for obj in objs:
        desc = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).describe()
        started[obj["metadata"]["name"]] = desc.start_time
    assert sorted(started, key=lambda n: started[n]) == names
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


async def test_a_spent_namespace_budget_holds_new_executions_until_raised(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    openai_server: OpenAIServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    operator = make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    providers = providers_file(tmp_path / "providers", openai_server.base_url, KEY)
    runner = chat_runner(tmp_path, temporal, operator.runner_queue, providers)
    try:
        apply_chat_agent(control_plane, namespace)
        apply_policy(control_plane, namespace, budget={"tokens": 10, "period": "Day"})
        await asyncio.sleep(1)
        aex.create(control_plane, namespace, "spends", "hello?", agent="assistant")
        spent = await finished(control_plane, namespace, "spends")
        assert aex.phase(spent) == "Succeeded", aex.summary(spent)
        tokens = spent["status"]["usage"]["totalTokens"]
        policy: Any = await eventually(
            lambda: control_plane.kubectl_json("get", "-n", namespace, "executionpolicy", "limits"),
            lambda p: p.get("status", {}).get("budget", {}).get("used") == tokens,
            timeout=30,
            what="the tokens counted in the policy's status",
        )
        assert policy["status"]["budget"]["executions"] == 1
        assert f'agentexec_namespace_tokens_used{{namespace="{namespace}",period="Day",' \
            f'policy="limits"}} {float(tokens)}' in operator.metrics()  # fmt: skip
        aex.create(control_plane, namespace, "waits", "hello again?", agent="assistant")
        held = await eventually(
            lambda: aex.condition(aex.get(control_plane, namespace, "waits"), "WorkflowStarted"),
            lambda cond: cond.get("reason") == "BudgetExhausted",
            timeout=30,
            what="the next one held by the budget",
        )
        assert f"spent {tokens} of its 10 tokens this day" in held["message"]
        await asyncio.sleep(3)
        assert aex.phase(aex.get(control_plane, namespace, "waits")) == "Pending"
        control_plane.kubectl(
            "patch", "-n", namespace, "executionpolicy", "limits", "--type=merge",
            "-p", json.dumps({"spec": {"budget": {"tokens": 1_000_000, "period": "Day"}}}),
        )  # fmt: skip
        raised = await finished(control_plane, namespace, "waits")
        assert aex.phase(raised) == "Succeeded", aex.summary(raised)
    finally:
        runner.stop()
