"""The gateway's answers against a real dev server: how errors are classified
(issue #18, failure 1) and what a cancelled call leaves behind (failure 11)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.types import Outcome
from localenv.temporal import TemporalDevServer
from tests.support.relay import TcpRelay


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
