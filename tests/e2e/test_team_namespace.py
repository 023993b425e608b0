"""Issue #18, failure 1: deleting an execution in a Kubernetes namespace whose
name contains "namespace", while its workflow no longer exists in Temporal.

The workflow ID carries the Kubernetes namespace, so the server's NOT_FOUND
text names "team-namespace": read as text, the cancel's "workflow not found"
looked like "namespace not found", and the finalizer waited forever.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from localenv.kube import ControlPlane
from localenv.temporal import TemporalDevServer
from tests.e2e.test_executions import gone, long_running
from tests.support.operator import OperatorProcess
from tests.support.waiting import eventually

MakeOperator = Callable[..., OperatorProcess]


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    """The Kubernetes namespace of the report (one per control plane, so one test)."""
    control_plane.kubectl("create", "namespace", "team-namespace")
    return "team-namespace"


async def workflow_gone(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def test_an_execution_whose_workflow_is_gone_is_deleted_in_team_namespace(
    control_plane: ControlPlane,
    temporal: TemporalDevServer,
    namespace: str,
    make_operator: MakeOperator,
) -> None:
    operator = make_operator()
    running = await long_running(control_plane, namespace, "orphaned")
    workflow_id = running["status"]["workflow"]["id"]
    assert "team-namespace" in workflow_id

    # Gone from Temporal behind the operator's back (an admin, retention).
    temporal.cli_run("workflow", "delete", "--yes", "--workflow-id", workflow_id)
    client = await Client.connect(temporal.address)
    await eventually(
        lambda: workflow_gone(client, workflow_id), what="the workflow deleted", timeout=30
    )

    control_plane.kubectl("delete", "-n", namespace, "aex", "orphaned", "--wait=false")
    await eventually(
        lambda: gone(control_plane, namespace, "orphaned"),
        what="the execution deleted (its cancel answered NotFound)",
        timeout=30,
    )
    blocked = control_plane.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "reason=DeletionBlocked"
    )["items"]
    assert blocked == [], blocked
    assert "Traceback" not in operator.log(), operator.log_tail()
