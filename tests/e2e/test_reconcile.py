"""One writer per execution (issue #10): the production failures the keyed
queue removes, each provoked for real (control plane, Temporal, the operator)."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


workflow_id = aex.workflow_id


async def test_a_lost_workflow_is_never_run_again(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    aex.create(control_plane, namespace, "lost", "x", parameters={"delaySeconds": 60})
    running = await aex.reaches(
        control_plane, namespace, "lost", lambda o: aex.phase(o) == "Running", "Running"
    )
    operator.stop()
    # Retention expired while the operator was down (or someone deleted it).
    out = temporal.cli_run("workflow", "delete", "--yes", "--workflow-id", workflow_id(running))
    assert out.returncode == 0, out.stderr
    client = await Client.connect(temporal.address)
    await eventually(
        lambda: _exists(client, workflow_id(running)), lambda e: not e, what="workflow deleted"
    )

    make_operator()
    failed = await aex.reaches(
        control_plane, namespace, "lost", lambda o: aex.phase(o) == "Failed", "Failed"
    )
    assert failed["status"]["error"]["reason"] == "WorkflowLost", aex.summary(failed)
    assert workflow_id(running) in failed["status"]["error"]["message"]
    await asyncio.sleep(3)  # nothing starts it again behind our back
    assert not await _exists(client, workflow_id(running))


async def _exists(client: Client, wid: str) -> bool:
    try:
        await client.get_workflow_handle(wid).describe()
    except Exception:
        return False
    return True


async def test_a_report_that_cannot_be_written_is_not_lost(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator(AGENTEXEC_REPORT_TIMEOUT_SECONDS="3")
    aex.create(control_plane, namespace, "unreported", "kept", parameters={"delaySeconds": 2})
    running = await aex.reaches(
        control_plane, namespace, "unreported", lambda o: aex.phase(o) == "Running", "Running"
    )
    client = await Client.connect(temporal.address)
    handle = client.get_workflow_handle(workflow_id(running))
    control_plane.stop_apiserver()
    try:
        # The workflow finishes without the API server: it does not wait on it.
        desc = await eventually(
            handle.describe,
            lambda d: d.status == WorkflowExecutionStatus.COMPLETED,
            timeout=60,
            what="workflow completed while the API server is down",
        )
        assert desc.status == WorkflowExecutionStatus.COMPLETED
    finally:
        control_plane.start_apiserver()
    done = await aex.reaches(
        control_plane, namespace, "unreported", lambda o: aex.phase(o) == "Succeeded",
        "Succeeded from Temporal's record", timeout=90,
    )  # fmt: skip
    assert done["status"]["output"] == "kept"


async def test_the_queue_ttl_expires_through_an_api_server_outage(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="8")
    temporal.kill()
    aex.create(control_plane, namespace, "expires", "x")
    await aex.reaches(
        control_plane, namespace, "expires", lambda o: aex.phase(o) == "Pending", "Pending"
    )
    control_plane.stop_apiserver()
    try:
        await asyncio.sleep(12)  # the TTL runs out while every API call fails
    finally:
        control_plane.start_apiserver()
    failed = await aex.reaches(
        control_plane, namespace, "expires", lambda o: aex.phase(o) == "Failed", "QueueTimeout",
        timeout=90,
    )  # fmt: skip
    assert failed["status"]["error"]["reason"] == "QueueTimeout"
    assert await asyncio.to_thread(_healthz, operator.http_port) == 200
    assert operator.statusz()["executions"]["loops_stopped"] == []


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        return int(resp.status)


async def test_deleting_a_finished_execution_never_waits_for_temporal(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    aex.create(control_plane, namespace, "finished", "x")
    done = await aex.reaches(
        control_plane, namespace, "finished", lambda o: aex.phase(o) == "Succeeded", "Succeeded"
    )
    # A finished execution keeps no finalizer: nothing is left to cancel.
    await eventually(
        lambda: aex.get(control_plane, namespace, "finished")["metadata"].get("finalizers"),
        lambda f: not f,
        what="finalizer removed once finished",
    )
    assert done["status"]["phase"] == "Succeeded"
    temporal.kill()
    started = time.monotonic()
    control_plane.kubectl("delete", "-n", namespace, "aex", "finished", "--timeout=30s")
    assert time.monotonic() - started < 15
    # The deleted key left every structure of the operator.
    state = await eventually(
        lambda: operator.statusz()["executions"],
        lambda e: e["known"] == 0 and e["tracked_keys"] == 0,
        what="nothing kept of the deleted execution",
    )
    assert state["queued"] == 0


async def test_connection_condition_is_right_on_an_execution_that_was_queued(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    # No sweep during the test: the connection trigger alone must set it right.
    make_operator(AGENTEXEC_SWEEP_SECONDS="600")
    temporal.kill()
    aex.create(control_plane, namespace, "queued", "x", parameters={"delaySeconds": 60})
    await aex.reaches(
        control_plane, namespace, "queued", lambda o: aex.phase(o) == "Pending", "Pending"
    )

    def connected(status: str) -> Callable[[dict[str, Any]], bool]:
        return lambda o: aex.condition(o, "TemporalConnected").get("status") == status

    temporal.start()
    obj = await aex.reaches(control_plane, namespace, "queued", connected("True"), "True")
    assert aex.phase(obj) == "Running"
    temporal.kill()
    await aex.reaches(
        control_plane, namespace, "queued", connected("False"), "False after an outage"
    )
    temporal.start()
    obj = await aex.reaches(control_plane, namespace, "queued", connected("True"), "True again", 20)
    assert aex.phase(obj) == "Running"


async def test_the_queue_ttl_never_fails_executions_while_the_queue_drains(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    # 20 starts at 1.5 per second take 13 s: longer than the 8 s TTL, all after
    # Temporal is back (about 4 s after the creates: one kubectl call, 2 s, a
    # server start). None may fail for the TTL.
    operator = make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="8", AGENTEXEC_START_RATE="1.5")
    temporal.kill()
    names = [f"drain-{n}" for n in range(20)]
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(name, name) for name in names),
    )  # fmt: skip
    await asyncio.sleep(2)
    temporal.start()
    await aex.all_succeed_once(
        control_plane, namespace, names, temporal.address, operator.task_queue, timeout=120
    )


async def test_a_refused_start_backs_off_with_one_counted_warning(
    control_plane: ControlPlane,
    namespace: str,
    make_operator: MakeOperator,
    refusing_temporal: TemporalDevServer,
) -> None:
    operator = make_operator(TEMPORAL_ADDRESS=refusing_temporal.address)
    aex.create(control_plane, namespace, "refused", "x")
    obj = await aex.reaches(
        control_plane, namespace, "refused",
        lambda o: aex.condition(o, "WorkflowStarted").get("reason") == "StartFailed",
        "StartFailed",
    )  # fmt: skip
    assert aex.condition(obj, "TemporalConnected")["status"] == "True"
    warnings = await eventually(
        lambda: [e for e in aex.events_of(control_plane, namespace, "refused")
                 if e["reason"] == "StartFailed"],
        lambda found: len(found) == 1 and found[0]["count"] >= 2,
        timeout=40,
        what="one StartFailed event with a count",
    )  # fmt: skip
    assert "InvalidArgument" in warnings[0]["message"]
    attempts = aex.get(control_plane, namespace, "refused")["status"]["startAttempts"]
    await asyncio.sleep(5)
    later = aex.get(control_plane, namespace, "refused")["status"]["startAttempts"]
    assert later - attempts <= 3, (attempts, later)  # backing off, not a hot loop
    assert "Traceback" not in operator.log()


async def test_no_runner_is_said_within_the_threshold_and_ends_with_its_own_reason(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    make_operator(AGENTEXEC_NO_RUNNER_SECONDS="2")
    aex.create(
        control_plane, namespace, "unserved", "x", taskQueue="nobody-serves-this", timeoutSeconds=10
    )
    obj = await aex.reaches(
        control_plane, namespace, "unserved",
        lambda o: aex.condition(o, "Succeeded").get("reason") == "NoRunner",
        "NoRunner while it waits", timeout=20,
    )  # fmt: skip
    assert aex.phase(obj) == "Running"
    assert "nobody-serves-this" in aex.condition(obj, "Succeeded")["message"]
    assert any(
        e["reason"] == "NoRunner" for e in aex.events_of(control_plane, namespace, "unserved")
    )
    failed = await aex.reaches(
        control_plane, namespace, "unserved", lambda o: aex.phase(o) == "Failed", "Failed", 40
    )
    assert failed["status"]["error"]["reason"] == "NoRunner", aex.summary(failed)

    aex.create(
        control_plane, namespace, "too-long", "x", parameters={"delaySeconds": 30}, timeoutSeconds=3
    )
    failed = await aex.reaches(
        control_plane, namespace, "too-long", lambda o: aex.phase(o) == "Failed", "Failed", 40
    )
    assert failed["status"]["error"]["reason"] == "Timeout", aex.summary(failed)


async def test_restart_with_many_executions_resumes_bounded_and_stays_connected(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    # NoRunner reports would be writes of their own: not within this test.
    quiet = {"AGENTEXEC_NO_RUNNER_SECONDS": "600"}
    operator = make_operator(**quiet)
    names = [f"old-{n}" for n in range(150)]
    for name in names:
        aex.create(control_plane, namespace, name, name)
    await aex.all_succeed_once(
        control_plane, namespace, names, temporal.address, operator.task_queue, timeout=180
    )
    running = [f"long-{n}" for n in range(150)]
    for name in running:
        # Running workflows whose agent waits on a queue nobody serves: they
        # hold no runner slot the new execution would need.
        aex.create(control_plane, namespace, name, name, taskQueue="nobody-serves-this")
    await eventually(
        lambda: [o for o in aex.list_all(control_plane, namespace) if aex.phase(o) == "Running"],
        lambda found: len(found) == len(running),
        timeout=120,
        what="150 running",
    )
    operator.stop()
    before = control_plane.request_counts("agentexecutions")
    # Resume checks every running execution against Temporal: a flood the
    # health probe must not mistake for an outage.
    restarted = make_operator(TEMPORAL_PROBE_TIMEOUT_SECONDS="0.5", **quiet)
    started = time.monotonic()
    aex.create(control_plane, namespace, "new-after-restart", "fresh")
    seen_down = 0
    while time.monotonic() - started < 10:
        text = await asyncio.to_thread(restarted.metrics)
        seen_down += sum(
            1
            for line in text.splitlines()
            if line.startswith("temporal_connection_status{") and line.endswith(" 0.0")
        )
        await asyncio.sleep(0.2)
    done = await aex.reaches(
        control_plane, namespace, "new-after-restart",
        lambda o: aex.phase(o) == "Succeeded", "Succeeded",
    )  # fmt: skip
    assert done["status"]["output"] == "fresh"
    after = control_plane.request_counts("agentexecutions")
    writes = {k: after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("PATCH")}
    # Nothing written for the 150 finished nor the 150 running ones (their
    # status is already right); the new execution: finalizer, Running, the
    # end, finalizer removal.
    assert writes.get("PATCH", 0) <= 2, writes
    assert writes.get("PATCH/status", 0) <= 2, writes
    assert seen_down == 0
    assert "reconnect" not in restarted.log().lower()
    SUMMARY.append(
        f"[restart] 150 finished + 150 running executions: API writes during the restart "
        f"{writes}, Temporal never reported down"
    )
