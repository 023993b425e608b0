"""AgentExecutionWorkflow: run the agent as an activity, report status back.

Imports temporalio and our types only: the sandbox re-imports this module.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.types import (
        AGENT_ERROR,
        REPORT_STATUS_ACTIVITY,
        RUN_AGENT_ACTIVITY,
        UNKNOWN_AGENT,
        WORKFLOW_TYPE,
        AgentRequest,
        AgentResult,
        ExecutionInput,
        ExecutionResult,
        StatusReport,
    )

# Transient runner failures (a crashed worker, a lost connection) are retried;
# an agent that says it failed, or an unknown agent, is not.
AGENT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=[AGENT_ERROR, UNKNOWN_AGENT],
)
# Status reports go to the Kubernetes API: keep trying through an outage.
REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
HEARTBEAT_TIMEOUT = timedelta(seconds=30)


@workflow.defn(name=WORKFLOW_TYPE)
class AgentExecutionWorkflow:
    @workflow.run
    async def run(self, inp: ExecutionInput) -> ExecutionResult:
        # Running is written by the operator when this workflow is started (and
        # by resume after a crash); the workflow reports how it ended.
        try:
            result = await self._run_agent(inp)
        except asyncio.CancelledError:
            # Deleting the resource cancels the workflow; say so, then end.
            await self._report(
                inp,
                ExecutionResult(
                    phase="Cancelled", reason="Cancelled", message="the AgentExecution was deleted"
                ),
            )
            raise
        await self._report(inp, result)
        return result

    async def _run_agent(self, inp: ExecutionInput) -> ExecutionResult:
        timeout = timedelta(seconds=inp.timeout_seconds)
        try:
            out = await workflow.execute_activity(
                RUN_AGENT_ACTIVITY,
                AgentRequest(
                    agent=inp.agent,
                    message=inp.message,
                    session_id=inp.session_id,
                    parameters=inp.parameters,
                    execution=inp.ref,
                ),
                task_queue=inp.runner_task_queue,
                start_to_close_timeout=timeout,
                schedule_to_close_timeout=timeout,
                heartbeat_timeout=min(HEARTBEAT_TIMEOUT, timeout),
                retry_policy=AGENT_RETRY,
                result_type=AgentResult,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                # The workflow was cancelled and the agent with it.
                raise asyncio.CancelledError() from err
            return _failure(err, inp.timeout_seconds)
        return ExecutionResult(phase="Succeeded", output=out.output)

    async def _report(self, inp: ExecutionInput, result: ExecutionResult) -> None:
        info = workflow.info()
        await workflow.execute_activity(
            REPORT_STATUS_ACTIVITY,
            StatusReport(
                ref=inp.ref, result=result, workflow_id=info.workflow_id, run_id=info.run_id
            ),
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(hours=1),
            retry_policy=REPORT_RETRY,
        )


def _failure(err: ActivityError, timeout_seconds: int) -> ExecutionResult:
    cause = err.cause
    if isinstance(cause, TemporalTimeoutError):
        return ExecutionResult(
            phase="Failed",
            reason="Timeout",
            message=f"the agent did not finish within timeoutSeconds={timeout_seconds}",
        )
    if isinstance(cause, ApplicationError) and cause.type == UNKNOWN_AGENT:
        return ExecutionResult(phase="Failed", reason="UnknownAgent", message=cause.message)
    message = cause.message if isinstance(cause, ApplicationError) else str(cause or err)
    return ExecutionResult(phase="Failed", reason="RunnerFailed", message=message)
