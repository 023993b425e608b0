"""AgentExecutionWorkflow: run the agent as an activity, report status back.

Imports temporalio and our types only: the sandbox re-imports this module.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.types import (
        AGENT_ERROR,
        AGENT_FAILURE_REASONS,
        BUDGET_EXCEEDED,
        EXECUTION_FAILED,
        REPORT_STATUS_ACTIVITY,
        RUN_AGENT_ACTIVITY,
        UNKNOWN_AGENT,
        WORKFLOW_TYPE,
        AgentRequest,
        ExecutionInput,
        ExecutionResult,
        StatusReport,
        agent_result_from,
        usage_from,
    )

# Transient runner failures (a crashed worker, a lost connection) are retried,
# and so is an agent unknown to the runner that took it (another runner on the
# queue may know it: a rollout, or two kinds of runners); an agent that says
# it failed is not.
AGENT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=[AGENT_ERROR],
)
# Status reports go to the Kubernetes API: keep trying through an outage.
REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# Added in 0.2: a failed agent fails the workflow (after reporting), so
# Temporal's own UI, metrics and alerts see it. Histories recorded before
# this marker replay the old ending (completed with a Failed result).
FAIL_ON_AGENT_FAILURE = "fail-workflow-on-agent-failure"


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
        if result.phase == "Failed" and workflow.patched(FAIL_ON_AGENT_FAILURE):
            raise ApplicationError(
                result.message or result.reason or "the agent failed",
                result,
                type=EXECUTION_FAILED,
                non_retryable=True,
            )
        return result

    async def _run_agent(self, inp: ExecutionInput) -> ExecutionResult:
        timeout = timedelta(seconds=inp.timeout_seconds)
        # First wait at most no_runner_seconds for a runner to take the agent:
        # if none does, say so on the resource and keep waiting until timeout.
        no_runner = timedelta(seconds=max(1, min(inp.no_runner_seconds, inp.timeout_seconds)))
        try:
            return await self._agent(inp, timeout, schedule_to_start=no_runner)
        except _NoRunnerYet:
            waited = workflow.now() - workflow.info().start_time
        await self._report(
            inp,
            ExecutionResult(
                phase="Running",
                reason="NoRunner",
                message=f"no runner has taken the agent from task queue "
                f"{inp.runner_task_queue!r} for {int(no_runner.total_seconds())}s; "
                f"still waiting (timeoutSeconds={inp.timeout_seconds})",
            ),
            final=False,
        )
        remaining = max(timedelta(seconds=1), timeout - waited)
        try:
            return await self._agent(inp, remaining, schedule_to_start=remaining)
        except _NoRunnerYet:
            return ExecutionResult(
                phase="Failed",
                reason="NoRunner",
                message=f"no runner took the agent from task queue {inp.runner_task_queue!r} "
                f"within timeoutSeconds={inp.timeout_seconds}",
            )

    async def _agent(
        self, inp: ExecutionInput, timeout: timedelta, schedule_to_start: timedelta
    ) -> ExecutionResult:
        try:
            out = await workflow.execute_activity(
                RUN_AGENT_ACTIVITY,
                AgentRequest(
                    agent=inp.agent,
                    message=inp.message,
                    session_id=inp.session_id,
                    parameters=inp.parameters,
                    execution=inp.ref,
                    agent_spec=inp.agent_spec,
                    max_tokens=inp.max_tokens,
                ),
                task_queue=inp.runner_task_queue,
                start_to_close_timeout=timeout,
                # A little over the run's own bound, so that "nobody took it"
                # (schedule-to-start) fires first when no runner ever came.
                schedule_to_close_timeout=timeout + timedelta(seconds=5),
                schedule_to_start_timeout=schedule_to_start,
                # From the input (default 30 s, as before the field existed):
                # histories recorded earlier replay the same command.
                heartbeat_timeout=min(timedelta(seconds=inp.heartbeat_timeout_seconds), timeout),
                retry_policy=AGENT_RETRY,
                # No result_type: a result the SDK cannot decode would fail the
                # workflow task forever, leaving the execution Running (#11).
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                # The workflow was cancelled and the agent with it.
                raise asyncio.CancelledError() from err
            cause = err.cause
            if (
                isinstance(cause, TemporalTimeoutError)
                and cause.type == TimeoutType.SCHEDULE_TO_START
            ):
                raise _NoRunnerYet() from err
            return _failure(err, inp.timeout_seconds)
        try:
            result = agent_result_from(out)
        except ValueError as err:
            return ExecutionResult(phase="Failed", reason="RunnerFailed", message=str(err))
        return ExecutionResult(phase="Succeeded", output=result.output, usage=result.usage)

    async def _report(
        self, inp: ExecutionInput, result: ExecutionResult, final: bool = True
    ) -> None:
        info = workflow.info()
        try:
            await workflow.execute_activity(
                REPORT_STATUS_ACTIVITY,
                StatusReport(
                    ref=inp.ref,
                    result=result,
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                    namespace=info.namespace,
                    task_queue=info.task_queue,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(seconds=inp.report_timeout_seconds),
                retry_policy=REPORT_RETRY,
            )
        except ActivityError:
            # The Kubernetes API stayed unreachable longer than the report's
            # retries: the result stays in this workflow's history and the
            # operator applies it from there. Never lose it, never wait forever.
            workflow.logger.warning("could not report %s to the resource", result.phase)
            if not final:
                return


class _NoRunnerYet(Exception):
    """No runner took the agent within the schedule-to-start timeout."""


def _failure(err: ActivityError, timeout_seconds: int) -> ExecutionResult:
    """How a failed agent activity ends the execution: each cause its own reason."""
    cause = err.cause
    if isinstance(cause, TemporalTimeoutError):
        if cause.type == TimeoutType.HEARTBEAT:
            return ExecutionResult(
                phase="Failed",
                reason="HeartbeatTimeout",
                message="the agent stopped heartbeating (its runner died or hung) and its "
                "retries ran out",
            )
        return ExecutionResult(
            phase="Failed",
            reason="Timeout",
            message=f"the agent did not finish within timeoutSeconds={timeout_seconds}",
        )
    if isinstance(cause, ApplicationError) and cause.type == UNKNOWN_AGENT:
        return ExecutionResult(phase="Failed", reason="UnknownAgent", message=cause.message)
    if isinstance(cause, ApplicationError) and cause.type == BUDGET_EXCEEDED:
        # Only the report's content: replay-safe. The usage is the first detail.
        return ExecutionResult(
            phase="Failed",
            reason=BUDGET_EXCEEDED,
            message=cause.message,
            usage=usage_from(cause.details[0] if cause.details else None),
        )
    if isinstance(cause, ApplicationError) and cause.type in AGENT_FAILURE_REASONS:
        # Only the report's content changes, not the commands: replay-safe.
        return ExecutionResult(phase="Failed", reason=cause.type, message=cause.message)
    return ExecutionResult(phase="Failed", reason="RunnerFailed", message=_messages(cause or err))


def _messages(err: BaseException) -> str:
    """The failure and its causes: the SDK's "Failed decoding arguments" says
    which field a runner of another version could not decode only in its cause."""
    parts: list[str] = []
    cur: BaseException | None = err
    while cur is not None and len(parts) < 4:
        text = cur.message if isinstance(cur, FailureError) else str(cur)
        if text and text not in parts:  # `raise ... from exc` often repeats the text
            parts.append(text)
        cur = cur.cause if isinstance(cur, FailureError) else None
    return ": ".join(parts)
