"""The gateway's answers against a real dev server: how errors are classified
(issue #18, failure 1)."""

from __future__ import annotations

import asyncio
import uuid

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.types import Outcome
from localenv.temporal import TemporalDevServer


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
