"""Issue #18, provoked for real (control plane, Temporal, the operator process):
what Temporal says reaches the execution, nothing is left behind in
Temporal, and nothing is dropped, parked or mis-reported on the way."""

from __future__ import annotations

import asyncio
import base64
import calendar
import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.e2e.test_agents import apply_agent
from tests.support.operator import OperatorProcess
from tests.support.relay import TcpRelay
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


def gone(plane: ControlPlane, namespace: str, name: str) -> bool:
    found = plane.kubectl("get", "-n", namespace, "aex", name, "--ignore-not-found", "-o", "name")
    return not found.stdout.strip()


async def deleted_within(plane: ControlPlane, namespace: str, name: str, seconds: float) -> float:
    """Delete ``name``; how long until it is gone (at most ``seconds``)."""
    began = time.monotonic()
    plane.kubectl("delete", "-n", namespace, "aex", name, "--wait=false")
    await eventually(lambda: gone(plane, namespace, name), timeout=seconds, what=f"{name} gone")
    return time.monotonic() - began


async def test_namespace_named_like_team_namespace_deletes_unstarted_at_once(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """1b: an execution that never started is deleted without asking Temporal
    (the workflow ID carries this namespace's name, "…namespace…")."""
    assert "namespace" in namespace
    operator = make_operator()
    # Never started: it waits for an Agent nobody created.
    aex.create(control_plane, namespace, "no-agent", "x", agent="nobody-made-this")
    await aex.reaches(
        control_plane, namespace, "no-agent",
        lambda o: aex.condition(o, "AgentResolved").get("reason") == "AgentNotFound",
        "AgentNotFound",
    )  # fmt: skip
    waited_agent = await deleted_within(control_plane, namespace, "no-agent", 10)
    # Never started either: Temporal was down the whole time.
    temporal.kill()
    await eventually(
        lambda: operator.statusz()["temporal"]["connected"], lambda up: not up, what="seen down"
    )
    aex.create(control_plane, namespace, "while-down", "x")
    await aex.reaches(
        control_plane, namespace, "while-down",
        lambda o: aex.condition(o, "WorkflowStarted").get("reason") == "WaitingForTemporal",
        "WaitingForTemporal",
    )  # fmt: skip
    waited_down = await deleted_within(control_plane, namespace, "while-down", 10)
    blocked = [
        e
        for name in ("no-agent", "while-down")
        for e in aex.events_of(control_plane, namespace, name)
        if e["reason"] == "DeletionBlocked"
    ]
    assert blocked == []
    SUMMARY.append(
        f"[#18 1b] never-started executions deleted in {waited_agent:.1f}s (waiting for an "
        f"Agent) and {waited_down:.1f}s (Temporal down)"
    )


async def test_workflows_closed_or_deleted_in_temporal_are_reflected_within_10s(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """2: terminate, cancel and delete with the temporal CLI; each execution
    says so with its own reason within 10 s (the operator's defaults)."""
    make_operator()
    names = ("terminated", "cancelled", "deleted", "untouched")
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n, parameters={"delaySeconds": 120}) for n in names),
    )  # fmt: skip
    running = {
        name: await aex.reaches(
            control_plane, namespace, name, lambda o: aex.phase(o) == "Running", f"{name} Running"
        )
        for name in names
    }
    await asyncio.sleep(2)  # the agents are running in their runners
    wid = {name: aex.workflow_id(obj) for name, obj in running.items()}
    actions = {
        "terminated": (
            "workflow",
            "terminate",
            "--reason",
            "x",
            "--workflow-id",
            wid["terminated"],
        ),
        "cancelled": ("workflow", "cancel", "--workflow-id", wid["cancelled"]),
        "deleted": ("workflow", "delete", "--yes", "--workflow-id", wid["deleted"]),
    }
    took: dict[str, float] = {}
    expected = {
        "terminated": ("Failed", "Terminated"),
        "cancelled": ("Cancelled", "Cancelled"),
        "deleted": ("Failed", "WorkflowLost"),
    }
    for name, args in actions.items():
        out = temporal.cli_run(*args)
        assert out.returncode == 0, out.stderr
        began = time.monotonic()
        done = await aex.reaches(
            control_plane, namespace, name,
            lambda o: aex.phase(o) in ("Succeeded", "Failed", "Cancelled"),
            f"{name} reflected", timeout=30,
        )  # fmt: skip
        took[name] = time.monotonic() - began
        error = done["status"].get("error", {})
        assert (aex.phase(done), error.get("reason")) == expected[name], aex.summary(done)
        assert "deleted" not in error.get("message", "") or name == "deleted", error
    assert aex.phase(aex.get(control_plane, namespace, "untouched")) == "Running"
    SUMMARY.append(
        f"[#18 2] closed in Temporal -> reflected: { {k: round(v, 1) for k, v in took.items()} }"
    )
    assert all(t <= 10 for t in took.values()), took


async def test_a_start_without_an_answer_while_connected_retries_and_says_what_is_true(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """4: every start times out (a 1 ms RPC deadline) while the probe is green."""
    make_operator(TEMPORAL_RPC_TIMEOUT_SECONDS="0.001")
    aex.create(control_plane, namespace, "unanswered", "x", parameters={"delaySeconds": 60})
    said_down: list[dict[str, Any]] = []

    def retrying(obj: dict[str, Any]) -> bool:
        if aex.condition(obj, "TemporalConnected").get("status") == "False":
            said_down.append(aex.summary(obj))
        attempts = obj.get("status", {}).get("startAttempts", 0)
        return aex.phase(obj) == "Running" or attempts >= 3

    obj = await aex.reaches(
        control_plane, namespace, "unanswered", retrying, "retried with backoff", timeout=30
    )
    assert said_down == []  # never TemporalConnected=False while connected
    if aex.phase(obj) != "Running":
        started = aex.condition(obj, "WorkflowStarted")
        assert (started["status"], started["reason"]) == ("False", "StartFailed"), started
        assert aex.condition(obj, "TemporalConnected")["status"] == "True"


async def test_refused_starts_end_start_rejected_with_temporals_words(
    control_plane: ControlPlane,
    namespace: str,
    make_operator: MakeOperator,
    refusing_temporal: TemporalDevServer,
) -> None:
    """7: bounded by the queue TTL here (8 s), else by the retry budget."""
    make_operator(TEMPORAL_ADDRESS=refusing_temporal.address, AGENTEXEC_QUEUE_TTL_SECONDS="8")
    aex.create(control_plane, namespace, "refused", "x")
    failed = await aex.reaches(
        control_plane, namespace, "refused", lambda o: aex.phase(o) == "Failed",
        "Failed after the queue TTL", timeout=60,
    )  # fmt: skip
    error = failed["status"]["error"]
    assert error["reason"] == "StartRejected", error
    assert "InvalidArgument" in error["message"], error
    assert aex.condition(failed, "WorkflowStarted")["reason"] == "StartRejected"
    # Nothing can run under an ID the server refuses: the finalizer goes.
    await eventually(
        lambda: aex.get(control_plane, namespace, "refused")["metadata"].get("finalizers"),
        lambda f: not f,
        timeout=30,
        what="finalizer released",
    )


async def test_a_recreated_execution_is_never_dropped(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """5: delete and re-create under the same name, again and again: the
    previous object's late events never drop the new one."""
    make_operator()
    for round_ in range(8):
        message = f"round-{round_}"
        control_plane.kubectl(
            "replace", "--force", "-n", namespace, "-f", "-", stdin=aex.manifest("again", message)
        ) if round_ else aex.create(control_plane, namespace, "again", message)
        done = await aex.reaches(
            control_plane, namespace, "again",
            lambda o, m=message: aex.phase(o) == "Succeeded" and o["spec"]["message"] == m,
            f"{message} Succeeded", timeout=30,
        )  # fmt: skip
        assert done["status"]["output"] == message


def _etcd(plane: ControlPlane, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{plane.etcd_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer: dict[str, Any] = json.load(resp)
        return answer


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_objects_deleted_while_the_watch_was_away_leave_the_caches(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """9: deleted behind the API server's back during an outage, then compacted
    away: the watch comes back with 410 Gone, kopf re-lists, and the re-listing
    replaces the caches (an Agent gone is no longer snapshotted)."""
    operator = make_operator()
    temporal.kill()  # nothing starts: the executions only sit in the cache
    for name in ("stays", "ghost"):
        aex.create(control_plane, namespace, name, name)
    apply_agent(control_plane, namespace, "ghost-agent", type="echo")
    await eventually(
        lambda: operator.statusz()["executions"],
        lambda e: e["known"] == 2,
        what="both executions cached",
    )
    control_plane.stop_apiserver()
    try:
        for plural, name in (("agentexecutions", "ghost"), ("agents", "ghost-agent")):
            key = f"/registry/agentexec.io/{plural}/{namespace}/{name}"
            assert _etcd(control_plane, "/v3/kv/deleterange", {"key": _b64(key)}).get("deleted")
        revision = _etcd(control_plane, "/v3/kv/range", {"key": _b64("/")})["header"]["revision"]
        _etcd(control_plane, "/v3/kv/compaction", {"revision": revision, "physical": True})
    finally:
        control_plane.start_apiserver()
    await eventually(
        lambda: operator.statusz()["executions"],
        lambda e: e["known"] == 1,
        timeout=60,
        what="the ghost execution forgotten after the re-listing",
    )
    temporal.start()
    aex.create(control_plane, namespace, "names-the-ghost", "x", agent="ghost-agent")
    obj = await aex.reaches(
        control_plane, namespace, "names-the-ghost",
        lambda o: aex.condition(o, "AgentResolved").get("reason") in ("AgentNotFound", "Resolved"),
        "the Agent resolved or not",
    )  # fmt: skip
    assert aex.condition(obj, "AgentResolved")["reason"] == "AgentNotFound", aex.summary(obj)


async def test_a_standby_holds_no_queue_entries(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """11: the standby watches (its cache stays warm) and holds nothing else."""
    leader = make_operator()
    await eventually(lambda: leader.statusz()["executions"]["leading"], what="first one leads")
    standby = make_operator()
    names = [f"s-{n}" for n in range(20)]
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n, parameters={"delaySeconds": 30}) for n in names),
    )  # fmt: skip
    state = await eventually(
        lambda: standby.statusz()["executions"],
        lambda e: e["known"] == len(names),
        what="the standby's cache warm",
    )
    assert not state["leading"]
    assert state["queued"] == 0
    assert state["tracked_keys"] == 0


async def _runs(client: Client, wid: str) -> bool:
    try:
        desc = await client.get_workflow_handle(wid).describe()
    except RPCError:
        return False
    return desc.status == WorkflowExecutionStatus.RUNNING


async def test_a_start_whose_answer_was_lost_leaves_no_workflow_running(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """3: the starts reach Temporal, their answers never come back; one
    execution then fails QueueTimeout, the other is deleted. Before either
    finalizer goes, the workflow that did start is cancelled by its ID."""
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    try:
        operator = make_operator(TEMPORAL_ADDRESS=relay.address, AGENTEXEC_QUEUE_TTL_SECONDS="6")
        await eventually(lambda: operator.statusz()["temporal"]["connected"], what="connected")
        relay.mute_answers()
        for name in ("timed-out", "deleted"):
            aex.create(control_plane, namespace, name, name, parameters={"delaySeconds": 600})
        client = await Client.connect(temporal.address)  # past the relay: Temporal's own view
        wids = {
            n: aex.workflow_id(aex.get(control_plane, namespace, n))
            for n in ("timed-out", "deleted")
        }
        for name, wid in wids.items():
            await eventually(lambda w=wid: _runs(client, w), timeout=30, what=f"{name} started")
        failed = await aex.reaches(
            control_plane, namespace, "timed-out", lambda o: aex.phase(o) == "Failed",
            "QueueTimeout while no answer comes", timeout=60,
        )  # fmt: skip
        assert failed["status"]["error"]["reason"] == "QueueTimeout", aex.summary(failed)
        control_plane.kubectl("delete", "-n", namespace, "aex", "deleted", "--wait=false")
        relay.restore()
        for name, wid in wids.items():
            await eventually(
                lambda w=wid: _runs(client, w), lambda running: not running, timeout=60,
                what=f"{name}'s workflow no longer running",
            )  # fmt: skip
        await eventually(
            lambda: aex.get(control_plane, namespace, "timed-out")["metadata"].get("finalizers"),
            lambda f: not f,
            what="finalizer released",
        )
        await eventually(lambda: gone(control_plane, namespace, "deleted"), what="deleted")
    finally:
        await relay.stop()


def _seconds(stamp: str) -> float:
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


async def test_reports_and_deletes_go_ahead_of_a_backlog_of_starts(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    """6: 120 starts at 4 per second (30 s of backlog): the executions that
    started first finish as soon as their agent does, and a deletion is not
    queued behind the starts either."""
    make_operator(AGENTEXEC_START_RATE="4", AGENTEXEC_NO_RUNNER_SECONDS="600")
    aex.create(control_plane, namespace, "long", "x", parameters={"delaySeconds": 300})
    await aex.reaches(
        control_plane, namespace, "long", lambda o: aex.phase(o) == "Running", "Running"
    )
    names = [f"b-{n}" for n in range(120)]
    control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        stdin="\n---\n".join(aex.manifest(n, n) for n in names),
    )  # fmt: skip
    await asyncio.sleep(3)
    deleted_in = await deleted_within(control_plane, namespace, "long", 30)

    def finished(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [o for o in items if aex.phase(o) == "Succeeded"]

    items = await eventually(
        lambda: aex.list_all(control_plane, namespace),
        lambda found: len(finished(found)) >= 10,
        timeout=60,
        what="ten finished",
    )
    unstarted = sum(1 for o in items if not o.get("status", {}).get("startTime"))
    took = [
        _seconds(o["status"]["completionTime"]) - _seconds(o["status"]["startTime"])
        for o in finished(items)
    ]
    SUMMARY.append(
        f"[#18 6] backlog of starts: delete done in {deleted_in:.1f}s; start -> Succeeded of the "
        f"first finished {sorted(took)} s while {unstarted} had not started"
    )
    assert deleted_in <= 8, deleted_in
    assert max(took) <= 6, took
    assert unstarted >= 40  # the backlog was still there
