"""AgentExecutions end to end: real control plane, real Temporal, the operator process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import kopf
import pytest

from agentexec.kube import Kube, KubeError
from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


async def reaches(
    plane: ControlPlane, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict:
    return await eventually(
        lambda: aex.get(plane, namespace, name),
        lambda o: aex.phase(o) == phase,
        timeout=timeout,
        interval=0.3,
        what=f"{name} {phase}",
    )


async def test_reference_reconnection_scenario(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    temporal.kill()
    operator = make_operator()

    aex.create(control_plane, namespace, "first", "one")
    pending = await eventually(
        lambda: aex.get(control_plane, namespace, "first"),
        lambda o: aex.phase(o) == "Pending",
        what="first Pending",
    )
    assert aex.condition(pending, "TemporalConnected")["status"] == "False"
    assert aex.condition(pending, "TemporalConnected")["reason"] in (
        "TemporalUnavailable",
        "CircuitOpen",
    )
    assert aex.condition(pending, "WorkflowStarted")["reason"] == "WaitingForTemporal"
    assert (
        pending["status"]["temporalConnection"]
        == aex.condition(pending, "TemporalConnected")["reason"]
    )
    # Temporal is known to be down: no start was tried yet (no attempt is wasted).
    assert pending["status"]["startAttempts"] == 0

    temporal.start()
    done = await reaches(control_plane, namespace, "first", "Succeeded")
    assert done["status"]["output"] == "one"
    assert aex.condition(done, "TemporalConnected")["status"] == "True"
    assert aex.condition(done, "Succeeded")["status"] == "True"
    assert "temporalConnection" not in done["status"]  # the TEMPORAL column empties
    assert done["status"]["startTime"]
    assert done["status"]["completionTime"]

    temporal.kill()
    await asyncio.sleep(1)
    temporal.start()
    aex.create(control_plane, namespace, "second", "two")
    done = await reaches(control_plane, namespace, "second", "Succeeded")
    assert done["status"]["output"] == "two"

    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    assert sorted(runs.values()) == [1, 1], runs


async def test_fifty_created_during_an_outage_all_succeed_once(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    temporal.kill()
    names = [f"burst-{n}" for n in range(50)]
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n) for n in names),
    )  # fmt: skip
    await eventually(
        lambda: aex.list_all(control_plane, namespace),
        lambda items: len(items) == 50 and all(aex.phase(o) == "Pending" for o in items),
        timeout=60,
        what="50 Pending",
    )
    assert "agentexec_waiting_for_temporal 50.0" in operator.metrics()

    temporal.start()
    await aex.all_succeed_once(
        control_plane, namespace, names, temporal.address, operator.task_queue
    )


async def test_connection_state_is_mirrored_on_running_executions(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    aex.create(control_plane, namespace, "long", "slow", parameters={"delaySeconds": 120})
    aex.create(control_plane, namespace, "quick", "fast")
    await reaches(control_plane, namespace, "long", "Running")
    await reaches(control_plane, namespace, "quick", "Succeeded")
    # Finishing ends with removing our finalizer; from then on nothing writes.
    done = await eventually(
        lambda: aex.get(control_plane, namespace, "quick"),
        lambda o: not o["metadata"].get("finalizers"),
        what="quick finished, finalizer removed",
    )
    done_version = done["metadata"]["resourceVersion"]

    temporal.kill()
    obj = await eventually(
        lambda: aex.get(control_plane, namespace, "long"),
        lambda o: aex.condition(o, "TemporalConnected").get("status") == "False",
        timeout=10,
        what="TemporalConnected False within 10 s",
    )
    assert aex.condition(obj, "TemporalConnected")["reason"] == "TemporalUnavailable"
    temporal.start()
    await eventually(
        lambda: aex.get(control_plane, namespace, "long"),
        lambda o: aex.condition(o, "TemporalConnected").get("status") == "True",
        timeout=20,
        what="TemporalConnected True again",
    )
    # Terminal executions are not touched.
    assert aex.get(control_plane, namespace, "quick")["metadata"]["resourceVersion"] == done_version


async def test_runner_failure_and_timeout_end_failed_with_reason(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    aex.create(control_plane, namespace, "fails", "x", parameters={"fail": "boom on purpose"})
    aex.create(
        control_plane, namespace, "slow", "x", parameters={"delaySeconds": 30}, timeoutSeconds=2
    )
    # A name that is neither an Agent nor built in waits (AgentNotFound),
    # unless the execution names its runner queue itself: then the name is
    # sent as is, and a runner that does not know it says UnknownAgent.
    aex.create(
        control_plane,
        namespace,
        "nobody",
        "x",
        agent="no-such-agent",
        taskQueue=operator.runner_queue,
    )

    failed = await reaches(control_plane, namespace, "fails", "Failed")
    assert failed["status"]["error"] == {"reason": "AgentFailed", "message": "boom on purpose"}
    assert aex.condition(failed, "Succeeded")["status"] == "False"
    assert aex.condition(failed, "Succeeded")["reason"] == "AgentFailed"

    timed_out = await reaches(control_plane, namespace, "slow", "Failed")
    assert timed_out["status"]["error"]["reason"] == "Timeout"
    assert "timeoutSeconds=2" in timed_out["status"]["error"]["message"]
    assert aex.condition(timed_out, "Succeeded")["status"] == "False"

    unknown = await reaches(control_plane, namespace, "nobody", "Failed")
    assert unknown["status"]["error"]["reason"] == "UnknownAgent"
    assert "no-such-agent" in unknown["status"]["error"]["message"]

    # Temporal sees the failures too: the workflows end failed, not completed
    # (just after their report, so the resource can say Failed a moment first).
    for obj in (failed, unknown):
        await eventually(
            lambda o=obj: workflow_status(temporal, o),
            lambda status: status == "FAILED",
            what=f"{obj['metadata']['name']}'s workflow FAILED in Temporal",
        )
    # Expected outcomes are said on the resource, not as tracebacks in the log.
    assert "Traceback" not in operator.log(), operator.log_tail()
    log = operator.log()
    # The log a 3 am reader wants: one line per finished execution with its
    # reason, the start-up line says what it runs against, no per-event noise.
    assert "execution finished" in log
    assert "reason=UnknownAgent" in log
    assert "temporal_tls=False" in log
    assert "temporal_api_key=False" in log
    assert f"watch_namespaces={namespace}" in log
    assert "Handler 'observe' succeeded" not in log


async def workflow_status(temporal: TemporalDevServer, obj: dict) -> str:
    from temporalio.client import Client

    client = await Client.connect(temporal.address)
    desc = await client.get_workflow_handle(obj["status"]["workflow"]["id"]).describe()
    assert desc.status is not None
    return desc.status.name


def gone(plane: ControlPlane, namespace: str, name: str) -> bool:
    out = plane.kubectl("get", "-n", namespace, "aex", name, check=False)
    return out.returncode != 0 and "NotFound" in out.stderr


async def long_running(plane: ControlPlane, namespace: str, name: str) -> dict:
    """An execution whose agent runs for minutes, once it is Running."""
    aex.create(plane, namespace, name, "x", parameters={"delaySeconds": 300})
    return await reaches(plane, namespace, name, "Running")


async def deleted_and_cancelled(
    plane: ControlPlane, temporal: TemporalDevServer, running: dict, timeout: float = 30
) -> None:
    meta = running["metadata"]
    await eventually(
        lambda: gone(plane, meta["namespace"], meta["name"]), what="deleted", timeout=timeout
    )
    assert await eventually(
        lambda: workflow_status(temporal, running), lambda s: s == "CANCELED", what="cancelled"
    )


async def test_delete_cancels_the_workflow(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    running = await long_running(control_plane, namespace, "doomed")
    assert "agentexec.io/cancel-workflow" in running["metadata"]["finalizers"]

    control_plane.kubectl("delete", "-n", namespace, "aex", "doomed", "--wait=false")
    await deleted_and_cancelled(control_plane, temporal, running)


async def test_delete_while_temporal_is_down_waits_then_completes(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    running = await long_running(control_plane, namespace, "patient")
    temporal.kill()
    control_plane.kubectl("delete", "-n", namespace, "aex", "patient", "--wait=false")
    await asyncio.sleep(8)  # the scenario: Temporal stays down a while
    waiting = aex.get(control_plane, namespace, "patient")
    assert waiting["metadata"]["deletionTimestamp"]
    assert "agentexec.io/cancel-workflow" in waiting["metadata"]["finalizers"]
    # `kubectl describe` says why and what to do, not only the operator's log.
    blocked = control_plane.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "reason=DeletionBlocked"
    )["items"]
    assert len(blocked) == 1, blocked  # one event, counted; not one per retry
    assert "agentexec.io/force-delete" in blocked[0]["message"]  # type: ignore[index]
    # The retries back off and are warnings, not an ERROR every few seconds.
    retries = operator.log().count("reconcile failed; retrying with backoff")
    assert retries <= 8, retries
    assert " ERROR " not in operator.log()

    temporal.start()
    await deleted_and_cancelled(control_plane, temporal, running, timeout=60)


async def test_force_delete_annotation_removes_the_finalizer(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator()
    await long_running(control_plane, namespace, "stuck")
    temporal.kill()
    control_plane.kubectl("delete", "-n", namespace, "aex", "stuck", "--wait=false")
    control_plane.kubectl(
        "annotate", "-n", namespace, "aex", "stuck", "agentexec.io/force-delete=true"
    )
    await eventually(lambda: gone(control_plane, namespace, "stuck"), what="deleted", timeout=30)
    events = control_plane.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "reason=ForceDeleted", "-o", "name"
    ).stdout
    assert events.strip(), "a Warning event records the forced removal"


async def test_crash_between_workflow_start_and_status_write(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """The window a crash can leave: the workflow exists, the status says nothing."""
    from temporalio.client import Client

    from agentexec.status import workflow_id
    from agentexec.temporal.types import ExecutionInput, ExecutionRef
    from agentexec.temporal.workflows import AgentExecutionWorkflow

    operator = make_operator(start=False)
    aex.create(control_plane, namespace, "window", "orphan")
    obj = aex.get(control_plane, namespace, "window")
    assert "status" not in obj  # no operator has touched it
    uid = obj["metadata"]["uid"]
    client = await Client.connect(temporal.address)
    # Exactly the start the operator makes, as if it then died before writing status.
    await client.start_workflow(
        AgentExecutionWorkflow.run,
        ExecutionInput(
            ref=ExecutionRef(namespace, "window", uid),
            agent="echo",
            message="orphan",
            runner_task_queue=operator.runner_queue,
            timeout_seconds=60,
        ),
        id=workflow_id(namespace, "window", uid),
        task_queue=operator.task_queue,
    )

    operator.start()
    done = await reaches(control_plane, namespace, "window", "Succeeded")
    assert done["status"]["output"] == "orphan"
    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    assert dict(runs) == {workflow_id(namespace, "window", uid): 1}


async def test_operator_sigkilled_while_starting_never_duplicates(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    first = make_operator()
    names = [f"crash-{n}" for n in range(20)]
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n, parameters={"delaySeconds": 2}) for n in names),
    )  # fmt: skip
    # SIGKILL as soon as the first workflows exist: starts and writes in flight.
    await eventually(
        lambda: aex.workflow_runs(temporal.address, first.task_queue),
        lambda runs: len(runs) >= 1,
        interval=0.05,
        what="first workflow",
    )
    first.kill()
    second = make_operator()  # same namespace, same task queues
    await aex.all_succeed_once(control_plane, namespace, names, temporal.address, second.task_queue)


async def test_external_runner_example_serves_its_queue(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
    tmp_path: Path,
) -> None:
    """examples/external-runner/worker.py: ten lines on the public runner API."""
    import sys

    from localenv.binaries import ROOT
    from tests.support.operator import RunnerProcess

    queue = f"shout-{namespace}"
    example = ROOT / "examples" / "external-runner" / "worker.py"
    runner = RunnerProcess(
        tmp_path, temporal.address, queue, argv=[sys.executable, str(example), queue]
    )
    runner.start()
    try:
        make_operator(AGENTEXEC_RUNNER_ENABLED="false")
        aex.create(control_plane, namespace, "shouted", "hello", agent="shout", taskQueue=queue)
        done = await reaches(control_plane, namespace, "shouted", "Succeeded")
        assert done["status"]["output"] == "HELLO!"
    finally:
        runner.stop()


async def test_largest_message_and_big_labels_succeed(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    """kopf's bookkeeping must not copy a 256 KiB spec into an annotation."""
    import json

    make_operator()
    message = "m" * (256 * 1024)
    labels = {f"team.example.com/label-{n}": "v" * 63 for n in range(60)}
    doc = json.loads(aex.manifest("biggest", message))
    doc["metadata"]["labels"] = labels
    doc["metadata"]["annotations"] = {"note.example.com/big": "a" * 100_000}
    control_plane.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(doc))
    done = await reaches(control_plane, namespace, "biggest", "Succeeded")
    # The output is bounded (32 KiB); the whole of it stays in Temporal.
    assert done["status"]["output"] == "m" * 32768
    assert done["status"]["outputTruncated"] is True
    assert done["status"]["outputLength"] == 256 * 1024
    # kopf only watches: it never copies the spec into an annotation of its own
    # (which would pass the 256 KiB limit and make every patch fail).
    annotations = done["metadata"].get("annotations") or {}
    assert not [a for a in annotations if a.startswith(("kopf.", "agentexec.io/"))], list(
        annotations
    )


def names_in(plane: ControlPlane, namespace: str) -> set[str]:
    return {o["metadata"]["name"] for o in aex.list_all(plane, namespace)}


async def test_ttl_deletes_a_finished_execution_after_its_ttl_and_not_before(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    """spec.ttlSecondsAfterFinished, with no operator default: the execution
    that sets it is deleted that long after it finished; one that leaves it
    unset is kept."""
    operator = make_operator()
    aex.create(control_plane, namespace, "short-lived", "bye", ttlSecondsAfterFinished=8)
    aex.create(control_plane, namespace, "kept", "stay")
    done = await reaches(control_plane, namespace, "short-lived", "Succeeded")
    assert done["status"]["completionTime"]
    await reaches(control_plane, namespace, "kept", "Succeeded")
    uid = done["metadata"]["uid"]

    await asyncio.sleep(3)  # well inside the TTL: still there
    assert names_in(control_plane, namespace) == {"short-lived", "kept"}

    await eventually(
        lambda: names_in(control_plane, namespace),
        lambda names: names == {"kept"},
        timeout=30,
        interval=0.5,
        what="short-lived deleted by its TTL, kept kept",
    )
    assert "agentexec_executions_deleted_by_ttl_total 1.0" in operator.metrics()
    assert "finished execution deleted: its TTL ran out" in operator.log()
    assert uid in operator.log()
    # Past the other's TTL too: an execution without one is never deleted.
    await asyncio.sleep(3)
    assert names_in(control_plane, namespace) == {"kept"}


async def test_the_ttl_delete_keeps_an_execution_changed_since_the_decision(
    control_plane: ControlPlane, namespace: str, crd: None
) -> None:
    """The delete the TTL makes is preconditioned on the resourceVersion it
    decided on: an object changed meanwhile (here a label) is kept (409; the
    controller re-reads and decides again)."""
    aex.create(control_plane, namespace, "raised", "x", ttlSecondsAfterFinished=1)
    decided_on = aex.get(control_plane, namespace, "raised")
    control_plane.kubectl("label", "-n", namespace, "aex", "raised", "keep=yes")
    info = kopf.ConnectionInfo(
        server=control_plane.url,
        ca_path=str(control_plane.ca_path),
        certificate_path=str(control_plane.admin.cert),
        private_key_path=str(control_plane.admin.key),
    )
    kube = Kube(info)
    try:
        meta = decided_on["metadata"]
        with pytest.raises(KubeError) as refused:
            await kube.delete(namespace, "raised", meta["uid"], meta["resourceVersion"])
        assert refused.value.status == 409
        assert names_in(control_plane, namespace) == {"raised"}
        fresh = aex.get(control_plane, namespace, "raised")["metadata"]
        assert await kube.delete(namespace, "raised", fresh["uid"], fresh["resourceVersion"])
        assert not await kube.delete(namespace, "raised", fresh["uid"], fresh["resourceVersion"])
    finally:
        await kube.close()


async def test_the_operator_default_ttl_applies_unless_the_spec_sets_one(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    make_operator(AGENTEXEC_TTL_SECONDS_AFTER_FINISHED="2")
    aex.create(control_plane, namespace, "defaulted", "one")
    aex.create(control_plane, namespace, "overridden", "two", ttlSecondsAfterFinished=3600)
    await reaches(control_plane, namespace, "overridden", "Succeeded")
    await eventually(
        lambda: names_in(control_plane, namespace),
        lambda names: names == {"overridden"},
        timeout=30,
        interval=0.5,
        what="defaulted deleted by the operator's default TTL",
    )
    await asyncio.sleep(3)  # past the default: the spec's own TTL holds it
    assert names_in(control_plane, namespace) == {"overridden"}


async def test_a_long_output_is_cut_on_a_character_boundary_and_says_so(
    control_plane: ControlPlane, namespace: str, make_operator: MakeOperator
) -> None:
    make_operator()
    # 40 001 bytes of UTF-8: the 32 768-byte bound falls inside an "é".
    message = "a" + "é" * 20_000
    aex.create(control_plane, namespace, "wordy", message)
    aex.create(control_plane, namespace, "brief", "short")
    done = await reaches(control_plane, namespace, "wordy", "Succeeded")
    assert done["status"]["output"] == "a" + "é" * 16_383  # 32 767 bytes
    assert done["status"]["outputTruncated"] is True
    assert done["status"]["outputLength"] == 40_001
    brief = await reaches(control_plane, namespace, "brief", "Succeeded")
    assert brief["status"]["output"] == "short"
    assert "outputTruncated" not in brief["status"]
    assert "outputLength" not in brief["status"]
