"""spec.suspend, the deadline fields and the attempts on status, end to end
(issue #19): the real control plane, Temporal and operator process, whose
in-process runner serves the echo agent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from agentexec.temporal.types import RUN_AGENT_ACTIVITY
from localenv.binaries import ROOT
from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


def patch_suspend(plane: ControlPlane, namespace: str, name: str, suspend: bool) -> None:
    plane.kubectl(
        "patch", "-n", namespace, "aex", name, "--type=merge",
        "-p", json.dumps({"spec": {"suspend": suspend}}),
    )  # fmt: skip


async def until(
    plane: ControlPlane,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], Any],
    what: str,
) -> dict[str, Any]:
    return await eventually(
        lambda: aex.get(plane, namespace, name),
        check,
        timeout=60,
        interval=0.3,
        what=f"{name}: {what}",
    )


async def agent_inputs(temporal: TemporalDevServer, workflow_id: str) -> list[dict[str, Any]]:
    """The run_agent requests the workflow sent, one per attempt, in order."""
    client = await Client.connect(temporal.address)
    found = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name == RUN_AGENT_ACTIVITY:
            found.append(json.loads(attrs.input.payloads[0].data))
    return found


async def test_suspend_before_start_and_while_running_then_resume_from_the_checkpoint(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    name = "paused"
    # Eight seconds of work, checkpointed every second.
    aex.create(
        control_plane, namespace, name, name, suspend=True,
        parameters={"delaySeconds": 8, "checkpointSeconds": 1},
    )  # fmt: skip
    held = await until(
        control_plane, namespace, name,
        lambda o: aex.condition(o, "Suspended").get("status") == "True", "Suspended before start",
    )  # fmt: skip
    assert aex.phase(held) == "Pending", aex.summary(held)
    assert aex.condition(held, "WorkflowStarted")["reason"] == "Suspended"
    await asyncio.sleep(2)
    assert "workflow" not in aex.get(control_plane, namespace, name)["status"]
    assert not await aex.workflow_runs(temporal.address, operator.task_queue)

    patch_suspend(control_plane, namespace, name, False)
    running = await until(
        control_plane, namespace, name, lambda o: aex.phase(o) == "Running", "Running"
    )
    assert aex.condition(running, "Suspended")["reason"] == "Resumed"
    await asyncio.sleep(3.5)  # three checkpoints into its eight seconds

    patch_suspend(control_plane, namespace, name, True)
    stopped = await until(
        control_plane, namespace, name,
        lambda o: aex.condition(o, "Succeeded").get("reason") == "Suspended",
        "its attempt stopped and reported",
    )  # fmt: skip
    assert aex.phase(stopped) == "Running"
    assert aex.condition(stopped, "Suspended")["status"] == "True"
    assert "at its checkpoint" in aex.condition(stopped, "Succeeded")["message"]
    await asyncio.sleep(2)
    assert aex.phase(aex.get(control_plane, namespace, name)) == "Running"  # nothing runs

    patch_suspend(control_plane, namespace, name, False)
    done = await until(
        control_plane, namespace, name, lambda o: aex.phase(o) == "Succeeded", "Succeeded"
    )
    assert done["status"]["output"] == name
    attempts = done["status"]["attempts"]
    # The suspended attempt counts as neither a failure nor a disruption.
    assert (attempts["count"], attempts["failed"], attempts["disrupted"]) == (2, 0, 0), attempts
    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    assert list(runs.values()) == [1]  # one workflow throughout
    [first, second] = await agent_inputs(temporal, done["status"]["workflow"]["id"])
    assert (first["attempt"], first["resume_from"]) == (1, None)
    assert second["attempt"] == 2
    assert second["resume_from"]["done"] >= 3, second  # resumed, not restarted
    events = control_plane.kubectl_json("get", "events", "-n", namespace)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == name}
    assert {"Suspended", "Resumed"} <= reasons, reasons


async def test_the_spec_is_immutable_except_suspend_and_one_deadline_field(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    make_operator()
    aex.create(control_plane, namespace, "fixed", "x", suspend=True, activeDeadlineSeconds=60)
    refused = control_plane.kubectl(
        "patch", "-n", namespace, "aex", "fixed", "--type=merge",
        "-p", json.dumps({"spec": {"message": "changed"}}), check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "immutable except suspend" in refused.stderr
    added = control_plane.kubectl(
        "patch", "-n", namespace, "aex", "fixed", "--type=merge",
        "-p", json.dumps({"spec": {"backoffLimit": 5}}), check=False,
    )  # fmt: skip
    assert added.returncode != 0  # defaulted to 2 at create: changing it is a change
    patch_suspend(control_plane, namespace, "fixed", False)  # allowed
    both = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-", check=False,
        stdin=aex.manifest("both", "x", timeoutSeconds=5, activeDeadlineSeconds=5),
    )  # fmt: skip
    assert both.returncode != 0
    assert "not both" in both.stderr
    created = aex.get(control_plane, namespace, "fixed")
    assert created["spec"]["backoffLimit"] == 2  # the schema's default, as a Job's
    example = ROOT / "examples" / "echo-slow.yaml"  # the fields as the docs show them
    control_plane.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", str(example))


async def test_a_failing_agent_spends_its_backoff_limit_and_says_so_on_status(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    aex.create(
        control_plane, namespace, "retried", "x", agent="no-such-agent", backoffLimit=1,
        taskQueue=f"aex-runner-{namespace}",
    )  # fmt: skip
    failed = await until(
        control_plane, namespace, "retried", lambda o: aex.phase(o) == "Failed", "Failed"
    )
    assert failed["status"]["error"]["reason"] == "UnknownAgent"
    attempts = failed["status"]["attempts"]
    assert (attempts["count"], attempts["failed"], attempts["disrupted"]) == (2, 2, 0), attempts
    assert attempts["lastFailure"]["reason"] == "UnknownAgent"
