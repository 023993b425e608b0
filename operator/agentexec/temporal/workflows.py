"""AgentExecutionWorkflow: run the agent as an activity, report status back.

Imports temporalio, our types, the pure attempt decisions and the workflow
code it shares with the agent loop (temporal/running.py) only: the sandbox
re-imports this module.

Workflows started since issue #19 run their own attempt loop (patch
``attempt-loop``, temporal/attempts.py says why); those started before keep
the path they began on (``_run_agent``), as replay requires.
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
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.attempts import (
        AttemptBook,
        Ended,
        Kind,
        build_request,
    )
    from agentexec.temporal.attempts import _messages as _messages
    from agentexec.temporal.running import (
        execution_failure,
        pause,
        run_attempt,
        send_report,
        stay_suspended,
    )
    from agentexec.temporal.types import (
        AGENT_ERROR,
        AGENT_FAILURE_REASONS,
        RUN_AGENT_ACTIVITY,
        RUNNER_FAILED,
        SUSPEND_SIGNAL,
        UNKNOWN_AGENT,
        WORKFLOW_TYPE,
        ExecutionInput,
        ExecutionResult,
        agent_result_from,
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
# Added in 0.2: a failed agent fails the workflow (after reporting), so
# Temporal's own UI, metrics and alerts see it. Histories recorded before
# this marker replay the old ending (completed with a Failed result).
FAIL_ON_AGENT_FAILURE = "fail-workflow-on-agent-failure"
# Added with issue #19: the workflow's own attempt loop (one activity per
# attempt, never retried by Temporal), the runner checks and suspend.
ATTEMPT_LOOP = "attempt-loop"


@workflow.defn(name=WORKFLOW_TYPE)
class AgentExecutionWorkflow:
    def __init__(self) -> None:
        self._suspended = False
        self._book: AttemptBook | None = None

    @workflow.signal(name=SUSPEND_SIGNAL)
    def suspend(self, suspended: bool) -> None:
        """spec.suspend changed: stop the running attempt at its checkpoint
        (True), or carry on from there (False)."""
        self._suspended = bool(suspended)

    @workflow.run
    async def run(self, inp: ExecutionInput) -> ExecutionResult:
        # Running is written by the operator when this workflow is started (and
        # by resume after a crash); the workflow reports how it ended.
        try:
            if workflow.patched(ATTEMPT_LOOP):
                result = await self._run_attempts(inp)
            else:
                result = await self._run_agent(inp)
        except asyncio.CancelledError:
            # Deleting the resource cancels the workflow; say so, then end.
            message = "the AgentExecution was deleted"
            await self._report(
                inp,
                self._book.result("Cancelled", "Cancelled", message)
                if self._book is not None
                else ExecutionResult(phase="Cancelled", reason="Cancelled", message=message),
            )
            raise
        await self._report(inp, result)
        if result.phase == "Failed" and workflow.patched(FAIL_ON_AGENT_FAILURE):
            raise execution_failure(result)
        return result

    async def _run_attempts(self, inp: ExecutionInput) -> ExecutionResult:
        book = self._book = AttemptBook(inp)
        while True:
            if self._suspended:
                await self._stay_suspended(inp, book)
            if book.time_left() < 1:
                return book.deadline_result()
            ended = await self._attempt(inp, book)
            step = book.record(ended, workflow.now(), workflow.random().random())
            if step.finish is not None:
                return step.finish
            if step.report is not None:
                await self._report(inp, step.report, final=False, cancellable=True)
            if step.delay > 0:
                await pause(book, step.delay, self._is_suspended)

    async def _attempt(self, inp: ExecutionInput, book: AttemptBook) -> Ended:
        """Run one attempt to its end (temporal/running.py)."""
        request = book.request()
        ended, out = await run_attempt(
            inp,
            book,
            RUN_AGENT_ACTIVITY,
            request,
            f"{RUN_AGENT_ACTIVITY}-{book.count}",
            self._is_suspended,
            lambda result: self._report(inp, result, final=False, cancellable=True),
        )
        if ended.kind is not Kind.SUCCEEDED:
            return ended
        try:
            return Ended(Kind.SUCCEEDED, result=agent_result_from(out))
        except ValueError as exc:
            return Ended(Kind.FATAL, RUNNER_FAILED, str(exc))

    def _is_suspended(self) -> bool:
        return self._suspended

    async def _stay_suspended(self, inp: ExecutionInput, book: AttemptBook) -> None:
        where = "at its checkpoint" if book.has_checkpoint else "before any checkpoint"
        said = (
            f"after {book.count} attempt{'s' if book.count != 1 else ''} it stopped {where}"
            if book.count
            else "before its first attempt"
        )
        goes_on = (
            f"attempt {book.count + 1} continues "
            f"{'from the checkpoint' if book.has_checkpoint else 'from the start'}"
        )
        await stay_suspended(
            book,
            self._is_suspended,
            lambda result: self._report(inp, result, final=False, cancellable=True),
            said,
            goes_on,
        )

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
                build_request(inp),
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
        self,
        inp: ExecutionInput,
        result: ExecutionResult,
        final: bool = True,
        cancellable: bool = False,
    ) -> None:
        await send_report(inp, result, final, cancellable)


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
    if isinstance(cause, ApplicationError) and cause.type in AGENT_FAILURE_REASONS:
        # Only the report's content changes, not the commands: replay-safe.
        return ExecutionResult(phase="Failed", reason=cause.type, message=cause.message)
    return ExecutionResult(phase="Failed", reason="RunnerFailed", message=_messages(cause or err))
