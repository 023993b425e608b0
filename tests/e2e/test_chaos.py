"""Fault injection under load: nothing lost, nothing twice, nothing waits silently.

Each scenario runs the operator as a process against the real control plane
and Temporal, feeds it a steady stream of echo executions (some with delays,
so activities are in flight), injects one kind of fault while the stream
runs, then checks from the API server and from Temporal's own workflow list:
every execution is terminal, none has more than one workflow run, none is
lost, every Succeeded has its output, and every non-terminal execution older
than a few seconds (since an operator was ready to write it) carried a
condition explaining where it was.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.client import Client

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e import aex
from tests.support.operator import OperatorProcess
from tests.support.relay import TcpRelay
from tests.support.report import SUMMARY
from tests.support.waiting import eventually

pytestmark = pytest.mark.chaos

EXPLAINING = {"TemporalConnected", "WorkflowStarted", "Succeeded"}
GRACE = 5.0  # seconds a new execution may go without any status


@dataclass
class Stream:
    plane: ControlPlane
    namespace: str
    operator: OperatorProcess
    created: list[str] = field(default_factory=list)
    unexplained: set[str] = field(default_factory=set)
    samples: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def feed(self, every: float = 0.4) -> None:
        n = 0
        while not self._stop.is_set():
            name = f"c-{n}"
            params = {"delaySeconds": 2} if n % 3 == 0 else {}
            try:
                await asyncio.to_thread(
                    aex.create, self.plane, self.namespace, name, name, parameters=params
                )
                self.created.append(name)
            except AssertionError:
                pass  # the API server itself may be down (scenario 5): not created, not counted
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every)

    async def sample(self) -> None:
        while not self._stop.is_set():
            try:
                items = await asyncio.to_thread(aex.list_all, self.plane, self.namespace)
            except AssertionError:
                items = []  # API server down
            now = time.time()
            for obj in items:
                if aex.phase(obj) in ("Succeeded", "Failed", "Cancelled"):
                    continue
                conds = {c.get("type") for c in obj.get("status", {}).get("conditions", [])}
                created = obj["metadata"]["creationTimestamp"]
                # Counted from when an operator was up to write it: a killed
                # one writes nothing until its successor is ready again.
                since = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
                age = now - max(since, self.operator.ready_at)
                if not conds & EXPLAINING and age > GRACE:
                    self.unexplained.add(obj["metadata"]["name"])
            self.samples += 1
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


async def run_scenario(
    title: str,
    plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    operator: OperatorProcess,
    fault: Callable[[], Awaitable[None]],
    expect_failed: Callable[[dict[str, Any]], bool] = lambda _: False,
) -> Counter[str]:
    stream = Stream(plane, namespace, operator)
    tasks = [asyncio.create_task(stream.feed()), asyncio.create_task(stream.sample())]
    await asyncio.sleep(3)
    await fault()
    await asyncio.sleep(3)
    stream.stop()
    await asyncio.gather(*tasks)
    if not temporal.running:
        temporal.start()

    items = await eventually(
        lambda: aex.list_all(plane, namespace),
        lambda objs: all(aex.phase(o) in ("Succeeded", "Failed", "Cancelled") for o in objs),
        timeout=180,
        interval=1,
        what=f"{title}: every execution terminal",
    )
    runs = await aex.workflow_runs(temporal.address, operator.task_queue)
    by_name = {o["metadata"]["name"]: o for o in items}
    counts: Counter[str] = Counter(created=len(stream.created))
    for obj in items:
        status = obj["status"]
        if status["phase"] == "Succeeded":
            counts["succeeded"] += 1
            assert status["output"] == obj["spec"]["message"], obj["metadata"]["name"]
        else:
            counts[f"{status['phase'].lower()}:{status.get('error', {}).get('reason')}"] += 1
            assert expect_failed(obj), (obj["metadata"]["name"], aex.summary(obj))
    counts["lost"] = len(set(stream.created) - set(by_name))
    counts["duplicates"] = sum(1 for n in runs.values() if n > 1)
    counts["zombies"] = sum(
        1 for o in items if aex.phase(o) not in ("Succeeded", "Failed", "Cancelled")
    )
    counts["unexplained"] = len(stream.unexplained)
    counts["samples"] = stream.samples
    SUMMARY.append(f"[chaos] {title}: {dict(counts)}")
    assert counts["lost"] == 0
    assert counts["duplicates"] == 0
    assert counts["zombies"] == 0
    assert counts["unexplained"] == 0, sorted(stream.unexplained)[:10]
    # The stream ran (not a correctness bound: a loaded machine, or an API
    # server that refuses creations for most of the window, makes fewer).
    assert counts["created"] > 5
    return counts


MakeOperator = Callable[..., OperatorProcess]


async def test_temporal_sigkilled_every_20s(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator()

    async def fault() -> None:
        for _ in range(5):
            temporal.kill()
            await asyncio.sleep(2)
            temporal.start()
            await asyncio.sleep(18)

    await run_scenario("Temporal SIGKILL x5", control_plane, temporal, namespace, operator, fault)


async def test_temporal_sigterm_and_60s_outage(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator()

    async def fault() -> None:
        temporal.stop()
        await asyncio.sleep(60)
        temporal.start()

    await run_scenario("Temporal SIGTERM 60s", control_plane, temporal, namespace, operator, fault)


async def test_network_blackhole_30s(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    try:
        operator = make_operator(TEMPORAL_ADDRESS=relay.address)

        async def fault() -> None:
            relay.blackhole()
            await asyncio.sleep(30)
            relay.restore()

        await run_scenario("blackhole 30s", control_plane, temporal, namespace, operator, fault)
    finally:
        await relay.stop()


async def test_temporal_flaps_every_5s_for_a_minute(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    """Connectivity to Temporal cut for 5 s and back for 5 s, six times: the
    hysteresis, the paced condition writes and the start retries all meet
    each flip while executions keep arriving and reporting."""
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    try:
        operator = make_operator(TEMPORAL_ADDRESS=relay.address)

        async def fault() -> None:
            for _ in range(6):
                relay.blackhole()
                await asyncio.sleep(5)
                relay.restore()
                await asyncio.sleep(5)

        await run_scenario("flap 5s x6", control_plane, temporal, namespace, operator, fault)
    finally:
        await relay.stop()


async def test_operator_sigkilled_twice(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator()

    async def fault() -> None:
        for _ in range(2):
            operator.kill()
            await asyncio.sleep(3)
            operator.start()
            await asyncio.sleep(8)

    await run_scenario("operator SIGKILL x2", control_plane, temporal, namespace, operator, fault)


async def test_apiserver_down_15s(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator()

    async def fault() -> None:
        control_plane.stop_apiserver()
        await asyncio.sleep(15)
        control_plane.start_apiserver()

    await run_scenario(
        "kube-apiserver down 15s", control_plane, temporal, namespace, operator, fault
    )


async def test_outage_longer_than_queue_ttl(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="15")

    async def fault() -> None:
        temporal.kill()
        await asyncio.sleep(30)
        temporal.start()

    def queue_timeout(obj: dict[str, Any]) -> bool:
        return obj["status"].get("error", {}).get("reason") == "QueueTimeout"

    counts = await run_scenario(
        "outage > queue TTL", control_plane, temporal, namespace, operator, fault, queue_timeout
    )
    assert counts["failed:QueueTimeout"] > 0
    assert counts["succeeded"] > 0


async def test_second_outage_while_the_backlog_drains(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    # A slow start rate keeps a backlog draining when Temporal goes away again.
    operator = make_operator(AGENTEXEC_START_RATE="4")

    async def fault() -> None:
        temporal.kill()
        await asyncio.sleep(20)
        temporal.start()
        await asyncio.sleep(3)
        temporal.kill()
        await asyncio.sleep(10)
        temporal.start()

    await run_scenario(
        "second outage while draining", control_plane, temporal, namespace, operator, fault
    )


async def test_apiserver_down_while_the_queue_ttl_expires(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    operator = make_operator(AGENTEXEC_QUEUE_TTL_SECONDS="10")

    async def fault() -> None:
        temporal.kill()
        await asyncio.sleep(6)
        control_plane.stop_apiserver()
        await asyncio.sleep(15)  # TTLs run out while no write can land
        control_plane.start_apiserver()
        await asyncio.sleep(5)
        temporal.start()

    def queue_timeout(obj: dict[str, Any]) -> bool:
        return obj["status"].get("error", {}).get("reason") == "QueueTimeout"

    counts = await run_scenario(
        "kube-apiserver down while the TTL expires", control_plane, temporal, namespace,
        operator, fault, queue_timeout,
    )  # fmt: skip
    assert counts["failed:QueueTimeout"] > 0


async def test_no_workflow_outlives_executions_deleted_while_temporal_is_sigkilled(
    control_plane: ControlPlane, temporal: TemporalDevServer, namespace: str,
    make_operator: MakeOperator,
) -> None:  # fmt: skip
    """#18 failure 3: executions with a long agent, each created and deleted
    at once, while Temporal is SIGKILLed again and again: some starts are cut
    in flight, and whatever they created must not run on for an object that
    is gone."""
    operator = make_operator()
    killing = asyncio.Event()

    async def kill_repeatedly() -> None:
        while not killing.is_set():
            await asyncio.sleep(2.5)
            temporal.kill()
            await asyncio.sleep(1)
            await asyncio.to_thread(temporal.start)

    killer = asyncio.create_task(kill_repeatedly())
    names = [f"gone-{n}" for n in range(40)]
    try:
        for name in names:
            await asyncio.to_thread(
                aex.create, control_plane, namespace, name, name, parameters={"delaySeconds": 600}
            )
            await asyncio.to_thread(
                control_plane.kubectl, "delete", "-n", namespace, "aex", name, "--wait=false"
            )
            await asyncio.sleep(0.3)
    finally:
        killing.set()
        await killer
    if not temporal.running:
        temporal.start()
    await eventually(
        lambda: aex.list_all(control_plane, namespace),
        lambda items: not items,
        timeout=180,
        interval=1,
        what="every deleted execution gone",
    )
    client = await Client.connect(temporal.address)
    query = f"TaskQueue = '{operator.task_queue}' AND ExecutionStatus = 'Running'"
    left = await eventually(
        lambda: client.count_workflows(query),
        lambda found: found.count == 0,
        timeout=60,
        what="no workflow left running",
    )
    SUMMARY.append(
        f"[chaos] 40 created and deleted while Temporal was SIGKILLed: {left.count} running"
    )
