"""Agent resources end to end: real control plane, real Temporal, the operator process.

What the workflow was given is read from Temporal's own history (the started
event's input and the run_agent activity's input), not from the operator.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from temporalio.client import Client

from localenv.binaries import ROOT
from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


def agent_manifest(name: str, **spec: Any) -> str:
    return aex.resource("Agent", name, spec)


def apply_agent(plane: ControlPlane, namespace: str, name: str, **spec: Any) -> None:
    plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=agent_manifest(name, **spec))


async def reaches(
    plane: ControlPlane, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    return await eventually(
        lambda: aex.get(plane, namespace, name),
        lambda o: aex.phase(o) == phase,
        timeout=timeout,
        interval=0.3,
        what=f"{name} {phase}",
    )


async def recorded_inputs(temporal: TemporalDevServer, obj: dict[str, Any]) -> tuple[Any, Any]:
    """The workflow's input and its run_agent activity's input, as Temporal recorded them."""
    client = await Client.connect(temporal.address)
    history = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).fetch_history()
    workflow_input = activity_input = None
    for event in history.events:
        if event.HasField("workflow_execution_started_event_attributes"):
            payload = event.workflow_execution_started_event_attributes.input.payloads[0]
            workflow_input = json.loads(payload.data)
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "run_agent":
                activity_input = json.loads(attrs.input.payloads[0].data)
    assert workflow_input is not None
    return workflow_input, activity_input


def warnings(plane: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    listed: Any = plane.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )
    return {e["reason"]: e["message"] for e in listed["items"] if e.get("type") == "Warning"}


async def test_an_agent_runs_with_its_snapshot_in_the_workflow_input(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    apply_agent(
        control_plane, namespace, "greeter",
        type="echo", model="tiny", systemPrompt="be kind", provider="local",
        parameters={"style": "plain", "delaySeconds": 0}, timeoutSeconds=120,
    )  # fmt: skip
    aex.create(
        control_plane, namespace, "hi", "hello", agent="greeter", parameters={"style": "loud"}
    )
    done = await reaches(control_plane, namespace, "hi", "Succeeded")
    assert done["status"]["output"] == "hello"
    resolved = aex.condition(done, "AgentResolved")
    assert (resolved["status"], resolved["reason"]) == ("True", "Resolved")

    agent = control_plane.kubectl_json("get", "-n", namespace, "agent", "greeter")
    snapshot = {
        "name": "greeter",
        "type": "echo",
        "model": "tiny",
        "system_prompt": "be kind",
        "provider": "local",
        "parameters": {"style": "loud", "delaySeconds": 0},  # the execution's override wins
        "task_queue": None,
        "timeout_seconds": 120,
        "uid": agent["metadata"]["uid"],  # type: ignore[index]
        "generation": 1,
        "loop": None,  # an assistant's tools, maxSteps and approval
    }
    workflow_input, activity_input = await recorded_inputs(temporal, done)
    assert workflow_input["agent_spec"] == snapshot
    assert workflow_input["agent"] == "echo"  # the runner dispatches on the type
    assert workflow_input["timeout_seconds"] == 120  # the Agent's default
    assert activity_input["agent_spec"] == snapshot  # what the runner received


async def test_editing_or_deleting_the_agent_never_changes_a_started_execution(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    apply_agent(control_plane, namespace, "slow", type="echo", parameters={"delaySeconds": 4})
    aex.create(control_plane, namespace, "before", "first", agent="slow")
    running = await reaches(control_plane, namespace, "before", "Running", timeout=30)

    # Edited while it runs: this version would make the echo agent fail.
    apply_agent(
        control_plane,
        namespace,
        "slow",
        type="echo",
        parameters={"fail": "edited", "delaySeconds": 0},
    )
    aex.create(control_plane, namespace, "after", "second", agent="slow")
    after = await reaches(control_plane, namespace, "after", "Failed")
    assert after["status"]["error"]["message"] == "edited"  # new executions see the edit
    control_plane.kubectl("delete", "-n", namespace, "agent", "slow")

    before = await reaches(control_plane, namespace, "before", "Succeeded")
    assert before["status"]["output"] == "first"
    assert before["status"]["workflow"]["id"] == running["status"]["workflow"]["id"]
    workflow_input, activity_input = await recorded_inputs(temporal, before)
    assert workflow_input["agent_spec"]["parameters"] == {"delaySeconds": 4}
    assert workflow_input["agent_spec"]["generation"] == 1
    assert activity_input["parameters"] == {"delaySeconds": 4}
    edited, _ = await recorded_inputs(temporal, after)
    assert edited["agent_spec"]["generation"] == 2


async def test_a_missing_agent_waits_then_starts_when_created(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    # A long TTL (the default hour): only the Agent's watch event can start it soon.
    make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="3600")
    aex.create(control_plane, namespace, "early", "waited", agent="later")
    waiting = await eventually(
        lambda: aex.get(control_plane, namespace, "early"),
        lambda o: aex.condition(o, "AgentResolved").get("reason") == "AgentNotFound",
        what="AgentResolved=False/AgentNotFound",
    )
    assert aex.phase(waiting) == "Pending"
    resolved = aex.condition(waiting, "AgentResolved")
    assert resolved["status"] == "False"
    assert "'later'" in resolved["message"]
    assert aex.condition(waiting, "WorkflowStarted")["reason"] == "AgentNotFound"
    assert "workflow" not in waiting["status"]
    assert "'later'" in warnings(control_plane, namespace, "early")["AgentNotFound"]

    apply_agent(control_plane, namespace, "later", type="echo")
    done = await reaches(control_plane, namespace, "early", "Succeeded", timeout=30)
    assert done["status"]["output"] == "waited"
    assert aex.condition(done, "AgentResolved")["status"] == "True"
    workflow_input, _ = await recorded_inputs(temporal, done)
    assert workflow_input["agent_spec"]["name"] == "later"


async def test_a_missing_agent_fails_after_the_queue_ttl_naming_it(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="3")
    aex.create(control_plane, namespace, "orphan", "x", agent="never")
    failed = await reaches(control_plane, namespace, "orphan", "Failed", timeout=30)
    assert failed["status"]["error"]["reason"] == "AgentNotFound"
    assert "'never'" in failed["status"]["error"]["message"]
    assert "workflow" not in failed["status"]
    assert not failed["metadata"].get("finalizers")


async def test_a_disallowed_task_queue_is_refused_before_any_workflow(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator(AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE="false")
    aex.create(control_plane, namespace, "sneaky", "x", taskQueue="someone-elses-runner")
    refused = await reaches(control_plane, namespace, "sneaky", "Failed")
    error = refused["status"]["error"]
    assert error["reason"] == "TaskQueueNotAllowed"
    assert "'someone-elses-runner'" in error["message"]
    assert "AGENTEXEC_ALLOW_EXECUTION_TASK_QUEUE" in error["message"]
    assert "TaskQueueNotAllowed" in warnings(control_plane, namespace, "sneaky")
    assert "workflow" not in refused["status"]

    # The queue an Agent names is how a namespace reaches a runner: allowed.
    apply_agent(control_plane, namespace, "routed", type="echo", taskQueue=operator.runner_queue)
    aex.create(control_plane, namespace, "routed", "ok", agent="routed")
    assert (await reaches(control_plane, namespace, "routed", "Succeeded"))["status"][
        "output"
    ] == "ok"
    uid = aex.get(control_plane, namespace, "routed")["metadata"]["uid"]
    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    assert set(runs) == {f"agentexec/{namespace}/routed/{uid}"}  # none for "sneaky"


def test_kubectl_explains_the_agent_and_validates_it(
    control_plane: ControlPlane, namespace: str, crd: None
) -> None:
    def explain(path: str) -> str:
        return " ".join(control_plane.kubectl("explain", path).stdout.split())

    spec = explain("agent.spec")
    assert "never to those already started" in spec
    fields = (
        "type",
        "model",
        "systemPrompt",
        "parameters",
        "provider",
        "taskQueue",
        "timeoutSeconds",
    )
    for field in fields:
        assert f" {field} <" in spec, field  # listed with its type
        described = explain(f"agent.spec.{field}").split("DESCRIPTION:", 1)[1]
        assert len(described.split()) >= 8, (field, described)  # and explained
    assert "snapshot" in explain("agent")
    assert "credentials live there, never in this resource" in explain("agent.spec.provider")
    assert "overridden" in explain("agent.spec.parameters") or "override" in explain(
        "agent.spec.parameters"
    )

    refused = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", check=False,
        stdin=agent_manifest("no-model", type="chat", provider="local"),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "a chat or assistant agent needs spec.model and spec.provider" in refused.stderr
    # The type is any agent name (an external runner's too), not an enum.
    assert "the name of an agent your runners register" in explain("agent.spec.type")
    apply_agent(control_plane, namespace, "loud", type="shout", taskQueue="shout")
    for bad in ("Shout", "shout_it", "x" * 64):
        refused = control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-", check=False,
            stdin=agent_manifest("bad-type", type=bad),
        )  # fmt: skip
        assert refused.returncode != 0, bad
        assert "spec.type" in refused.stderr, refused.stderr
    apply_agent(
        control_plane, namespace, "chatty", type="chat", model="m", provider="local", taskQueue="q"
    )
    header = control_plane.kubectl("get", "-n", namespace, "ag").stdout.splitlines()
    assert header[0].split() == ["NAME", "TYPE", "MODEL", "PROVIDER", "QUEUE", "AGE"]
    assert header[1].split()[:5] == ["chatty", "chat", "m", "local", "q"]


async def test_the_agent_example_runs(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    make_operator()
    example = ROOT / "examples" / "agent.yaml"
    control_plane.kubectl("apply", "-n", namespace, "-f", str(example))
    done = await reaches(control_plane, namespace, "hello-greeter", "Succeeded")
    assert done["status"]["output"] == "Hello from an Agent"
    assert aex.condition(done, "AgentResolved")["status"] == "True"


async def test_an_agent_wins_over_the_builtin_of_its_name_from_the_first_reconcile(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    # Both exist before the operator starts: its first decision must already
    # see the Agent (listed before reconciling), not the built-in echo.
    apply_agent(control_plane, namespace, "echo", type="echo", parameters={"fail": "the Agent"})
    aex.create(control_plane, namespace, "shadowed", "x")  # agent: echo
    make_operator()
    failed = await reaches(control_plane, namespace, "shadowed", "Failed")
    assert failed["status"]["error"]["message"] == "the Agent"
    assert aex.condition(failed, "AgentResolved")["status"] == "True"
    assert "AgentNotFound" not in warnings(control_plane, namespace, "shadowed")


async def test_an_agent_applied_with_its_execution_wins_over_the_builtin_of_its_name(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    """One `kubectl apply` of an Agent named like a built-in and an execution
    of it, the operator already running: the execution may be reconciled
    before the Agents watch delivers the Agent, so the operator asks the API
    server for it before starting the built-in. (The race is not forced
    here: without that read this test fails only when the race is lost.)"""
    make_operator(AGENTEXEC_RUNNER_ENABLED="true")
    both = agent_manifest("echo", type="echo", parameters={"fail": "the Agent"}) + "\n---\n"
    both += aex.manifest("together", "x")  # agent: echo
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", stdin=both)
    failed = await reaches(control_plane, namespace, "together", "Failed")
    assert failed["status"]["error"]["message"] == "the Agent"
    assert aex.condition(failed, "AgentResolved")["status"] == "True"


async def test_a_missing_agent_waits_with_the_runner_out_of_process(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    """The chart's default: the operator runs no agents itself. A name that is
    neither an Agent nor one of the image's agents still waits for its
    Agent (it is not sent to the runners to fail as UnknownAgent)."""
    make_operator(AGENTEXEC_RUNNER_ENABLED="false")
    aex.create(control_plane, namespace, "later", "x", agent="assistant-2")
    waiting = await eventually(
        lambda: aex.get(control_plane, namespace, "later"),
        lambda o: aex.condition(o, "AgentResolved").get("reason") == "AgentNotFound",
        timeout=30,
        what="AgentResolved=False/AgentNotFound",
    )
    assert aex.phase(waiting) == "Pending"
