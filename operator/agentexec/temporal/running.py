"""Workflow code both workflows run: one attempt of a runner activity under
the workflow's watch, the looks at the runner queue, suspension, and the
reports to the resource.

AgentExecution runs its agent as a series of such attempts (temporal/
workflows.py); AgentLoop runs each step of its loop so (temporal/loop.py).
What follows an attempt is decided by temporal/attempts.py (pure); this
module issues the commands. It imports temporalio, our types and those
decisions only, and keeps no state: the workflows import it passed through
their sandbox, as they do the decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ActivityCancellationType, ActivityHandle

from agentexec.temporal.attempts import AttemptBook, Ended, Kind, RunnerWatch, build_ended
from agentexec.temporal.types import (
    CHECK_RUNNER_ACTIVITY,
    EXECUTION_FAILED,
    NO_RUNNER,
    REPORT_STATUS_ACTIVITY,
    RUNNING,
    SUSPENDED,
    ExecutionInput,
    ExecutionResult,
    RunnerCheck,
    RunnerSeen,
    StatusReport,
)

# Status reports go to the Kubernetes API: keep trying through an outage.
REPORT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
# Each attempt is one activity that Temporal never retries by itself: the
# workflow decides what follows how it ended (temporal/attempts.py).
ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
# check_runner runs on the operator's own worker; a look that fails is
# simply taken again later.
CHECK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3)
CHECK_TIMEOUT = timedelta(seconds=10)

# Reports progress (phase Running) to the resource; the workflow's own way
# (the agent loop adds its progress fields).
Reporter = Callable[[ExecutionResult], Awaitable[None]]


def execution_failure(result: ExecutionResult) -> ApplicationError:
    """What a workflow whose execution failed ends with, once reported: a
    failed workflow, so Temporal's UI, metrics and alerts see it, with the
    result as its first detail (the operator reads it from there)."""
    return ApplicationError(
        result.message or result.reason or "the agent failed",
        result,
        type=EXECUTION_FAILED,
        non_retryable=True,
    )


async def send_report(
    inp: ExecutionInput,
    result: ExecutionResult,
    final: bool = True,
    cancellable: bool = False,
    progress: dict[str, Any] | None = None,
) -> None:
    """Report ``result`` (and the agent loop's ``progress`` fields) to the
    resource, through the operator's report_status activity."""
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
                progress=progress,
                install=inp.install,
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


async def run_attempt(
    inp: ExecutionInput,
    book: AttemptBook,
    activity: str,
    arg: Any,
    activity_id: str,
    suspended: Callable[[], bool],
    report: Reporter,
) -> tuple[Ended, Any]:
    """Run one attempt (activity ``activity`` on the runner queue) to its end;
    look for runners while it waits for one, and stop it when the execution
    is suspended. Returns how it ended, and on success what the runner
    answered (undecoded: a result the SDK cannot decode would fail the
    workflow task forever, leaving the execution Running, #11)."""
    left = timedelta(seconds=int(book.time_left()))
    scheduled = workflow.now()
    handle: ActivityHandle[Any] = workflow.start_activity(
        activity,
        arg,
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
    out: Any = None
    try:
        while not handle.done():
            wait = None if stopping else watch.next_check(workflow.now())
            watch_suspend = not stopping
            try:
                await workflow.wait_condition(
                    lambda: handle.done() or (suspended() and watch_suspend),  # noqa: B023
                    timeout=wait,
                )
            except TimeoutError:
                seen = await check_runner(inp, activity_id)
                look = watch.observe(seen, workflow.now(), book)
                if look.report is not None:
                    await report(look.report)
                if look.give_up is not None and not handle.done():
                    gave_up, stopping = look.give_up, True
                    handle.cancel()
                continue
            if suspended() and not handle.done() and not stopping:
                stopping = True
                handle.cancel()
        out = await handle
    except asyncio.CancelledError:
        # The workflow is cancelled (the execution deleted): stop the agent,
        # and wait until it stopped, before saying so.
        handle.cancel()
        with contextlib.suppress(ActivityError, asyncio.CancelledError):
            await handle
        book.clock(scheduled, watch.started(), workflow.now())
        raise
    except ActivityError as err:
        ended = build_ended(err)
    else:
        ended = Ended(Kind.SUCCEEDED)
    # Not in a `finally`: a worker that drops the workflow from its cache has
    # Python close this coroutine (GeneratorExit) outside the workflow's event
    # loop, where the workflow API raises and nothing reads the book.
    book.clock(scheduled, watch.started(), workflow.now())
    if ended.kind is Kind.STOPPED and workflow.cancellation_reason() is not None:
        raise asyncio.CancelledError()
    if gave_up is not None and ended.kind is Kind.STOPPED:
        return Ended(Kind.FATAL, NO_RUNNER, gave_up), None
    return ended, out


async def check_runner(inp: ExecutionInput, activity_id: str) -> RunnerSeen | None:
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


async def stay_suspended(
    book: AttemptBook, suspended: Callable[[], bool], report: Reporter, said: str, goes_on: str
) -> None:
    """Wait, costing no runner, until the execution is resumed; say where it
    stopped (``said``) when it stops, and what ``goes_on`` when resumed."""
    await report(book.progress(SUSPENDED, f"suspended (spec.suspend): no attempt runs; {said}"))
    began = workflow.now()
    await workflow.wait_condition(lambda: not suspended())
    waited = int((workflow.now() - began).total_seconds())
    await report(book.progress(RUNNING, f"resumed after {waited}s suspended; {goes_on}"))


async def pause(book: AttemptBook, seconds: float, suspended: Callable[[], bool]) -> None:
    """Wait ``seconds`` before the next attempt, counted against the deadline;
    a suspend cuts the wait short (time suspended is not counted)."""
    began = workflow.now()
    with contextlib.suppress(asyncio.TimeoutError):
        await workflow.wait_condition(suspended, timeout=timedelta(seconds=seconds))
    book.ran += (workflow.now() - began).total_seconds()
