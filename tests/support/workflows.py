"""The operator's workflow worker as the integration tests run it: the real
workflows (the single call's and the agent loop's) and check_runner, with
report_status kept in memory instead of written to Kubernetes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from agentexec.temporal.loop import AgentLoopWorkflow
from agentexec.temporal.runner_check import check_runner
from agentexec.temporal.types import REPORT_STATUS_ACTIVITY, StatusReport
from agentexec.temporal.workflows import AgentExecutionWorkflow


@contextlib.asynccontextmanager
async def workflow_worker(
    client: Client, task_queue: str, on_report: Callable[[StatusReport], None]
) -> AsyncIterator[Worker]:
    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(report: StatusReport) -> None:
        on_report(report)

    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[AgentExecutionWorkflow, AgentLoopWorkflow],
        activities=[report_status, check_runner],
    ) as worker:
        yield worker
