"""The Temporal fixture survives SIGKILL with its history intact."""

from __future__ import annotations

import uuid

from temporalio.client import Client

from localenv.temporal import TemporalDevServer
from tests.support.waiting import eventually


async def test_workflow_survives_sigkill_and_restart(
    temporal: TemporalDevServer, task_queue: str
) -> None:
    client = await Client.connect(temporal.address)
    workflow_id = f"survivor-{uuid.uuid4()}"
    # No worker polls this queue: the workflow simply stays Running.
    handle = await client.start_workflow("NobodyRunsThis", id=workflow_id, task_queue=task_queue)

    temporal.kill()
    assert not temporal.running
    temporal.start()

    fresh = await Client.connect(temporal.address)
    described = await eventually(
        lambda: fresh.get_workflow_handle(workflow_id).describe(),
        timeout=30,
        what=f"workflow {workflow_id} after restart",
    )
    assert described.run_id == handle.result_run_id
    assert described.workflow_type == "NobodyRunsThis"
