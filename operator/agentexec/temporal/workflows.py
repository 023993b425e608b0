"""AgentExecutionWorkflow: run the agent as an activity, report status back.

Imports temporalio, our types and the pure attempt decisions only: the
sandbox re-imports this module.

Workflows started since issue #19 run their own attempt loop (patch
``attempt-loop``, temporal/attempts.py says why); those started before keep
the path they began on (``_run_agent``), as replay requires.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError
from temporalio.workflow import ActivityCancellationType, ActivityHandle

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.attempts import (
        AttemptBook,
        Ended,
        Kind,
        RunnerWatch,
        build_ended,
        build_request,
    )
    from agentexec.temporal.attempts import _messages as _messages
    from agentexec.temporal.types import (
        AGENT_ERROR,
        AGENT_FAILURE_REASONS,
        CHECK_RUNNER_ACTIVITY,
        EXECUTION_FAILED,
        NO_RUNNER,
        REPORT_STATUS_ACTIVITY,
        RUN_AGENT_ACTIVITY,
        RUNNER_FAILED,
        RUNNING,
        SUSPEND_SIGNAL,
        SUSPENDED,
        UNKNOWN_AGENT,
        WORKFLOW_TYPE,
        ExecutionInput,
        ExecutionResult,
        RunnerCheck,
        RunnerSeen,
        StatusReport,
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
# Status reports go to the Kubernetes API: keep trying through an outage.
REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# Added in 0.2: a failed agent fails the workflow (after reporting), so
# Temporal's own UI, metrics and alerts see it. Histories recorded before
# this marker replay the old ending (completed with a Failed result).
FAIL_ON_AGENT_FAILURE = "fail-workflow-on-agent-failure"
# Added with issue #19: the workflow's own attempt loop (one activity per
# attempt, never retried by Temporal), the runner checks and suspend.
ATTEMPT_LOOP = "attempt-loop"
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# check_runner runs on the operator's own worker; a look that fails is
# simply taken again later.
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
CHECK_TIMEOUT = timedelta(seconds=10)


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
            raise ApplicationError(
                result.message or result.reason or "the agent failed",
                result,
                type=EXECUTION_FAILED,
                non_retryable=True,
            )
        return result

    # ----- the attempt loop (issue #19) ---------------------------------------

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
                # Time between failed attempts counts against the deadline, time
                # suspended does not: a suspend cuts the wait short.
                began = workflow.now()
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._suspended, timeout=timedelta(seconds=step.delay)
                    )
                book.ran += (workflow.now() - began).total_seconds()

    async def _attempt(self, inp: ExecutionInput, book: AttemptBook) -> Ended:
        """Run one attempt to its end; look for runners while it waits for one,
        and stop it when the execution is suspended."""
        request = book.request()
        activity_id = f"{RUN_AGENT_ACTIVITY}-{book.count}"
        left = timedelta(seconds=int(book.time_left()))
        scheduled = workflow.now()
        handle: ActivityHandle[Any] = workflow.start_activity(
            RUN_AGENT_ACTIVITY,
            request,
            activity_id=activity_id,
            task_queue=inp.runner_task_queue,
            # The attempt's running time; waiting for a runner is not counted
            # (no schedule-to-start bound: the runner checks watch that).
            start_to_close_timeout=left,
            heartbeat_timeout=min(timedelta(seconds=inp.heartbeat_timeout_seconds), left),
            retry_policy=ONE_ATTEMPT,
            # A stopped attempt has stopped before the next one starts, and
            # its runner's answer carries the checkpoint.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        watch = RunnerWatch(
            inp.no_runner_seconds, inp.timeout_seconds, inp.runner_task_queue, scheduled
        )
        stopping = False
        gave_up: str | None = None
        try:
            while not handle.done():
                wait = None if stopping else watch.next_check(workflow.now())
                watch_suspend = not stopping
                try:
                    await workflow.wait_condition(
                        lambda: handle.done() or (self._suspended and watch_suspend),  # noqa: B023
                        timeout=wait,
                    )
                except TimeoutError:
                    seen = await self._check_runner(inp, activity_id)
                    look = watch.observe(seen, workflow.now(), book)
                    if look.report is not None:
                        await self._report(inp, look.report, final=False, cancellable=True)
                    if look.give_up is not None and not handle.done():
                        gave_up, stopping = look.give_up, True
                        handle.cancel()
                    continue
                if self._suspended and not handle.done() and not stopping:
                    stopping = True
                    handle.cancel()
            out = await handle
        except asyncio.CancelledError:
            # The workflow is cancelled (the execution deleted): stop the agent,
            # and wait until it stopped, before saying so.
            handle.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await handle
            raise
        except ActivityError as err:
            ended = build_ended(err)
        else:
            try:
                ended = Ended(Kind.SUCCEEDED, result=agent_result_from(out))
            except ValueError as exc:
                ended = Ended(Kind.FATAL, RUNNER_FAILED, str(exc))
        finally:
            book.clock(scheduled, watch.started(), workflow.now())
        if ended.kind is Kind.STOPPED and workflow.cancellation_reason() is not None:
            raise asyncio.CancelledError()
        if gave_up is not None and ended.kind is Kind.STOPPED:
            return Ended(Kind.FATAL, NO_RUNNER, gave_up)
        return ended

    async def _check_runner(self, inp: ExecutionInput, activity_id: str) -> RunnerSeen | None:
        """Has a runner taken the attempt, and does any poll its queue?
        (check_runner, on the operator's worker.) None if it could not say."""
        try:
            seen = await workflow.execute_activity(
                CHECK_RUNNER_ACTIVITY,
                RunnerCheck(inp.runner_task_queue, activity_id),
                start_to_close_timeout=CHECK_TIMEOUT,
                retry_policy=CHECK_RETRY,
            )
            result = value_to_type(RunnerSeen, seen)
        except ActivityError as err:
            if isinstance(err.cause, CancelledError) and workflow.cancellation_reason() is not None:
                raise asyncio.CancelledError() from err
            workflow.logger.warning("could not check the runner queue: %s", err)
            return None
        except (TypeError, ValueError) as exc:
            workflow.logger.warning("check_runner answered something else: %s", exc)
            return None
        return result if isinstance(result, RunnerSeen) else None

    async def _stay_suspended(self, inp: ExecutionInput, book: AttemptBook) -> None:
        where = "at its checkpoint" if book.has_checkpoint else "before any checkpoint"
        said = (
            f"after {book.count} attempt{'s' if book.count != 1 else ''} it stopped {where}"
            if book.count
            else "before its first attempt"
        )
        await self._report(
            inp,
            book.progress(SUSPENDED, f"suspended (spec.suspend): no attempt runs; {said}"),
            final=False,
            cancellable=True,
        )
        began = workflow.now()
        await workflow.wait_condition(lambda: not self._suspended)
        waited = int((workflow.now() - began).total_seconds())
        await self._report(
            inp,
            book.progress(
                RUNNING,
                f"resumed after {waited}s suspended; attempt {book.count + 1} continues "
                f"{'from the checkpoint' if book.has_checkpoint else 'from the start'}",
            ),
            final=False,
            cancellable=True,
        )

    # ----- the path of workflows started before the attempt loop -------------

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
        except ActivityError as err:
            if (
                cancellable
                and isinstance(err.cause, CancelledError)
                and workflow.cancellation_reason() is not None
            ):
                # A progress report cut by the execution's deletion: the
                # deletion goes on (the path before #19 swallowed it).
                raise asyncio.CancelledError() from err
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
    if isinstance(cause, ApplicationError) and cause.type in AGENT_FAILURE_REASONS:
        # Only the report's content changes, not the commands: replay-safe.
        return ExecutionResult(phase="Failed", reason=cause.type, message=cause.message)
    return ExecutionResult(phase="Failed", reason="RunnerFailed", message=_messages(cause or err))
