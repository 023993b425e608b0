"""The gateway against a real dev server: how errors are classified (issue
#18, failure 1), what a cancelled call leaves behind (failure 11), and the
visibility calls the workflow watch relies on to see closings and deletions
without a call per running execution (SQLite visibility)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.types import WORKFLOW_TYPE, Outcome
from localenv.temporal import TemporalDevServer
from tests.integration.conftest import StartManager
from tests.support.relay import TcpRelay
from tests.support.waiting import eventually


async def started(settings: TemporalSettings) -> TemporalManager:
    manager = TemporalManager(settings, (), Metrics())
    manager.start()
    await asyncio.wait_for(manager.wait_connected(), 30)
    return manager


async def test_not_found_is_told_by_its_detail_type_never_by_the_text(
    temporal: TemporalDevServer, task_queue: str
) -> None:
    # The workflow ID carries the Kubernetes namespace: in "team-namespace"
    # the server's "workflow not found for ID: ...team-namespace..." reads like
    # a missing namespace to anyone searching the text.
    manager = await started(TemporalSettings(address=temporal.address))
    gateway = TemporalGateway(manager, task_queue, rpc_timeout=5.0)
    wid = f"agentexec/team-namespace/never-ran/{uuid.uuid4()}"
    try:
        cancel = await gateway.cancel(wid, "default")
        assert cancel.outcome is Outcome.NOT_FOUND, cancel
        assert "namespace" in cancel.message  # the text would have misled
        described = await gateway.describe({"id": wid, "namespace": "default"})
        assert described.outcome is Outcome.NOT_FOUND, described

        # A namespace that really is missing (not ours: the one a workflow was
        # recorded in) is an answer of its own, never "the workflow is gone".
        elsewhere = f"gone-{uuid.uuid4().hex[:8]}"
        for answer in (
            await gateway.cancel(wid, elsewhere),
            await gateway.describe({"id": wid, "namespace": elsewhere}),
        ):
            assert answer.outcome is Outcome.REJECTED, answer
            assert answer.reason == "NamespaceNotFound", answer
        assert manager.connected  # another namespace missing is not ours
    finally:
        await manager.stop()


async def test_cancelling_a_reconcile_cancels_its_temporal_call(
    temporal: TemporalDevServer, task_queue: str
) -> None:
    relay = TcpRelay("127.0.0.1", temporal.port)
    await relay.start()
    # Probes far apart and a long window: the manager stays "connected"
    # while the call hangs, so only the caller's cancellation can end it.
    settings = TemporalSettings(
        address=relay.address, probe_interval=60.0, probe_timeout=30.0, down_after=60.0
    )
    manager = await started(settings)
    gateway = TemporalGateway(manager, task_queue, rpc_timeout=20.0)
    try:
        relay.freeze_existing()  # the server stops answering this client
        reconcile = asyncio.create_task(
            gateway.describe({"id": f"frozen-{uuid.uuid4()}", "namespace": "default"})
        )
        await asyncio.sleep(0.5)
        calls = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "TemporalManager.call"
        ]
        assert len(calls) == 1, calls  # the call is in flight on the frozen connection
        assert not calls[0].done()

        reconcile.cancel()  # e.g. leadership lost: the work queue cancels its reconciles
        with pytest.raises(asyncio.CancelledError):
            await reconcile
        # At once, not when the call's own deadline (40 s) ends it.
        await asyncio.wait_for(asyncio.wait(calls), 2.0)
        assert calls[0].cancelled()
    finally:
        relay.restore()
        await manager.stop()
        await relay.stop()


async def connected(
    temporal: TemporalDevServer, start_manager: StartManager, task_queue: str
) -> tuple[TemporalGateway, Client]:
    """The operator's gateway on a connected manager, and a client of the test's own."""
    manager = start_manager(TemporalSettings(address=temporal.address))
    await asyncio.wait_for(manager.wait_connected(), 30)
    return TemporalGateway(manager, task_queue, rpc_timeout=5.0), await Client.connect(
        temporal.address
    )


async def test_closings_and_running_workflows_of_our_queue_are_listed_and_counted(
    temporal: TemporalDevServer, start_manager: StartManager, task_queue: str
) -> None:
    gateway, client = await connected(temporal, start_manager, task_queue)
    before = datetime.now(UTC) - timedelta(seconds=5)
    ids = [f"agentexec/gw/{n}/{uuid.uuid4()}" for n in range(4)]
    # No worker serves this type here: the workflows stay running until closed.
    for wid in ids:
        await client.start_workflow(WORKFLOW_TYPE, "x", id=wid, task_queue=task_queue)
    # Another workflow type on the same queue is not ours.
    await client.start_workflow("SomethingElse", id=f"other-{uuid.uuid4()}", task_queue=task_queue)

    assert await eventually(
        lambda: gateway.count_running("default", task_queue), lambda n: n == 4, what="4 running"
    )
    assert await gateway.list_running("default", task_queue) == set(ids)
    # Counted by when they started (Temporal's clock): none before the test began.
    assert await gateway.count_running("default", task_queue, started_before=before) == 0
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert await gateway.count_running("default", task_queue, started_before=later) == 4

    await client.get_workflow_handle(ids[0]).terminate("by hand")
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace="default", workflow_execution=WorkflowExecution(workflow_id=ids[1])
        )
    )
    closed = await eventually(
        lambda: gateway.list_closed("default", task_queue, before),
        lambda found: [c.workflow_id for c in found] == [ids[0]],
        what="the terminated workflow listed as closed",
    )
    assert closed[0].status == WorkflowExecutionStatus.TERMINATED
    assert closed[0].close_time >= before
    # A deleted running workflow never closes: only the count tells.
    assert await eventually(
        lambda: gateway.count_running("default", task_queue), lambda n: n == 2, what="2 running"
    )
    assert await gateway.list_running("default", task_queue) == set(ids[2:])
    # Nothing closed after a moment in the future.
    assert await gateway.list_closed("default", task_queue, later) == []


async def test_listings_page_through_more_than_a_page(
    temporal: TemporalDevServer, start_manager: StartManager, task_queue: str
) -> None:
    gateway, client = await connected(temporal, start_manager, task_queue)
    ids = {f"agentexec/page/{n}/{uuid.uuid4()}" for n in range(1005)}
    sem = asyncio.Semaphore(50)

    async def start(wid: str) -> None:
        async with sem:
            await client.start_workflow(WORKFLOW_TYPE, "x", id=wid, task_queue=task_queue)

    await asyncio.gather(*(start(wid) for wid in ids))
    assert await eventually(
        lambda: gateway.count_running("default", task_queue),
        lambda n: n == len(ids),
        timeout=60,
        what="all running",
    )
    assert await gateway.list_running("default", task_queue) == ids
    for wid in ids:  # leave nothing running for other tests
        await client.get_workflow_handle(wid).terminate("done")
