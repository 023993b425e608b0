"""The attempt loop's decisions (temporal/attempts.py): the failure table,
the two budgets, the deadline clock and the runner looks. Pure: the
integration tier runs them in the real workflow (tests/integration/test_attempts.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import RetryState
from temporalio.client import WorkflowFailureError
from temporalio.converter import DataConverter
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from agentexec.temporal import running
from agentexec.temporal.attempts import (
    AttemptBook,
    Ended,
    Kind,
    RunnerWatch,
    build_ended,
)
from agentexec.temporal.gateway import _result_of_failure
from agentexec.temporal.types import (
    EXECUTION_FAILED,
    AgentResult,
    AttemptProgress,
    ExecutionInput,
    ExecutionRef,
    RunnerSeen,
    Usage,
)

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def failed(cause: BaseException) -> ActivityError:
    error = ActivityError(
        "activity failed",
        scheduled_event_id=5,
        started_event_id=6,
        identity="runner",
        activity_type="run_agent",
        activity_id="run_agent-1",
        retry_state=RetryState.RETRY_STATE_MAXIMUM_ATTEMPTS_REACHED,
    )
    error.__cause__ = cause
    return error


def app(kind: str, *details: Any, non_retryable: bool = False) -> ApplicationError:
    return ApplicationError("said the runner", *details, type=kind, non_retryable=non_retryable)


def timeout(kind: TimeoutType, *details: Any) -> TemporalTimeoutError:
    return TemporalTimeoutError("timed out", type=kind, last_heartbeat_details=details)


PROGRESS = {"usage": {"prompt_tokens": 3, "requests": 1}, "output_chars": 40}


@pytest.mark.parametrize(
    ("cause", "kind", "reason"),
    [
        # The platform cut it short: free, resumed.
        (app("RunnerShutdown"), Kind.DISRUPTED, "RunnerShutdown"),
        (timeout(TimeoutType.HEARTBEAT), Kind.DISRUPTED, "HeartbeatTimeout"),
        # The execution's deadline.
        (timeout(TimeoutType.START_TO_CLOSE), Kind.DEADLINE, "Timeout"),
        # Suspended or deleted.
        (app("AgentStopped"), Kind.STOPPED, "Cancelled"),
        (CancelledError("Cancelled"), Kind.STOPPED, "Cancelled"),
        # Retrying cannot help: the execution fails now, with the reason.
        (app("AgentError", non_retryable=True), Kind.FATAL, "AgentFailed"),
        (app("ProviderRejected", non_retryable=True), Kind.FATAL, "ProviderRejected"),
        (app("ContextTooLong", non_retryable=True), Kind.FATAL, "ContextTooLong"),
        (app("ContentFiltered", non_retryable=True), Kind.FATAL, "ContentFiltered"),
        (app("RateLimited", non_retryable=True), Kind.FATAL, "RateLimited"),
        (app("ProviderUnavailable", non_retryable=True), Kind.FATAL, "ProviderUnavailable"),
        (app("SomethingElse", non_retryable=True), Kind.FATAL, "RunnerFailed"),
        # Failures of the agent or the provider: one of backoffLimit each.
        (app("ProviderUnavailable"), Kind.FAILED, "ProviderUnavailable"),
        (app("UnknownAgent"), Kind.FAILED, "UnknownAgent"),
        (app("ConnectionResetError"), Kind.FAILED, "RunnerFailed"),
        (RuntimeError("no failure type at all"), Kind.FAILED, "RunnerFailed"),
    ],
)
def test_how_an_attempt_ended_is_classified(cause: BaseException, kind: Kind, reason: str) -> None:
    ended = build_ended(failed(cause))
    assert (ended.kind, ended.reason) == (kind, reason)


def test_the_checkpoint_and_progress_travel_in_the_details() -> None:
    ended = build_ended(failed(app("RunnerShutdown", {"page": 2}, PROGRESS)))
    assert ended.checkpoint == (True, {"page": 2})
    assert ended.progress == AttemptProgress(Usage(prompt_tokens=3, requests=1), output_chars=40)
    lost = build_ended(failed(timeout(TimeoutType.HEARTBEAT, {"page": 5})))  # an older runner
    assert lost.checkpoint == (True, {"page": 5})
    assert lost.progress is None
    # A runner's own details (not [checkpoint, progress]) are not taken for a checkpoint.
    foreign = build_ended(failed(app("AgentError", "why", {"code": 7}, non_retryable=True)))
    assert foreign.checkpoint == (False, None)


def book(**inp: Any) -> AttemptBook:
    fields: dict[str, Any] = {"timeout_seconds": 600, **inp}
    return AttemptBook(
        ExecutionInput(
            ref=ExecutionRef("ns", "name", "uid"),
            agent="echo",
            message="hi",
            runner_task_queue="runners",
            **fields,
        )
    )


def test_failures_spend_the_backoff_limit_then_end_with_their_reason() -> None:
    b = book(backoff_limit=2)
    for n in (1, 2):
        b.request()
        step = b.record(Ended(Kind.FAILED, "RunnerFailed", "boom"), T0, 0.5)
        assert step.finish is None
        assert step.report is not None
        assert step.report.reason == "AttemptFailed"
        assert f"failures: {n} of backoffLimit=2" in (step.report.message or "")
        assert step.delay == 2.0 ** (n - 1)  # the project's backoff, no jitter at 0.5
    b.request()
    step = b.record(Ended(Kind.FAILED, "RunnerFailed", "boom"), T0, 0.5)
    assert step.finish is not None
    assert (step.finish.phase, step.finish.reason, step.finish.message) == (
        "Failed",
        "RunnerFailed",
        "boom",
    )
    attempts = step.finish.attempts
    assert attempts is not None
    assert (attempts.count, attempts.failed, attempts.disrupted) == (3, 3, 0)
    assert attempts.last_failure is not None
    assert attempts.last_failure.time == "2026-12-03T12:00:00Z"


def test_a_runners_retry_delay_wins_over_the_backoff() -> None:
    b = book()
    b.request()
    step = b.record(Ended(Kind.FAILED, "UnknownAgent", "?", retry_delay=1.0), T0, 0.9)
    assert step.delay == 1.0


def test_disruptions_are_free_up_to_their_own_bound() -> None:
    b = book(backoff_limit=0, max_disruptions=2)
    for n in (1, 2):
        b.request()
        step = b.record(Ended(Kind.DISRUPTED, "RunnerShutdown", "bye"), T0, 0.5)
        assert step.finish is None
        assert step.delay == 0  # at once, on another runner
        assert step.report is not None
        assert f"disruptions: {n} of 2; backoffLimit untouched" in (step.report.message or "")
    b.request()
    step = b.record(Ended(Kind.DISRUPTED, "HeartbeatTimeout", "gone"), T0, 0.5)
    assert step.finish is not None
    assert (step.finish.phase, step.finish.reason) == ("Failed", "Disrupted")
    assert step.finish.attempts is not None
    assert step.finish.attempts.failed == 0


def test_retrying_cannot_help_ends_it_at_once_and_a_stop_costs_nothing() -> None:
    b = book()
    b.request()
    assert b.record(Ended(Kind.STOPPED, "Cancelled"), T0, 0.5) == b.record(
        Ended(Kind.STOPPED, "Cancelled"), T0, 0.5
    )
    assert (b.failed, b.disrupted) == (0, 0)
    step = b.record(Ended(Kind.FATAL, "ContextTooLong", "too long"), T0, 0.5)
    assert step.finish is not None
    assert step.finish.reason == "ContextTooLong"


def test_the_next_attempt_resumes_from_the_last_checkpoint_and_usage_is_summed() -> None:
    b = book()
    first = b.request()
    assert (first.attempt, first.resume_from) == (1, None)
    b.record(Ended(Kind.DISRUPTED, "RunnerShutdown", details=({"page": 4}, PROGRESS)), T0, 0.5)
    second = b.request()
    assert (second.attempt, second.resume_from) == (2, {"page": 4})
    # An attempt that left no checkpoint keeps the one before.
    b.record(Ended(Kind.FAILED, "RunnerFailed", details=(None, PROGRESS)), T0, 0.5)
    assert b.request().resume_from == {"page": 4}
    done = b.record(
        Ended(Kind.SUCCEEDED, result=AgentResult("ok", Usage(3, 5, 8, requests=1))), T0, 0.5
    )
    assert done.finish is not None
    assert done.finish.usage == Usage(9, 5, 8, requests=3)


def test_each_step_of_a_loop_has_the_whole_backoff_limit_and_no_checkpoint() -> None:
    """The agent loop gives each step the backoffLimit (begin_step): failures
    of an earlier step do not count; disruptions and the bill go on."""
    b = book(backoff_limit=1, max_disruptions=5)
    b.begin_step()
    b.begin_attempt()
    b.record(Ended(Kind.FAILED, "RunnerFailed", "x", details=({"requests": 1}, PROGRESS)), T0, 0.5)
    b.begin_attempt()
    b.record(Ended(Kind.DISRUPTED, "RunnerShutdown", "bye"), T0, 0.5)
    assert (b.spent, b.failed, b.disrupted, b.has_checkpoint) == (1, 1, 1, True)
    b.begin_step()
    assert (b.spent, b.failed, b.disrupted, b.has_checkpoint) == (0, 1, 1, False)
    b.begin_attempt()
    step = b.record(Ended(Kind.FAILED, "RunnerFailed", "y"), T0, 0.5)
    assert step.finish is None  # the new step's first failure, not the second
    assert step.report is not None
    assert "failures: 1 of backoffLimit=1" in (step.report.message or "")
    b.begin_attempt()
    step = b.record(Ended(Kind.FAILED, "RunnerFailed", "y"), T0, 0.5)
    assert step.finish is not None
    assert step.finish.attempts is not None
    assert (step.finish.attempts.count, step.finish.attempts.failed) == (4, 3)
    assert step.finish.usage == Usage(prompt_tokens=3, requests=1)


def test_a_book_continues_as_new_from_its_state() -> None:
    b = book()
    b.begin_attempt()
    b.record(Ended(Kind.DISRUPTED, "RunnerShutdown", "bye", details=(None, PROGRESS)), T0, 0.5)
    b.ran, b.runner_wait = 12.5, 3.0
    again = AttemptBook.resume(b.inp, b.state())
    assert again.attempts() == b.attempts()
    assert (again.ran, again.runner_wait) == (12.5, 3.0)
    assert again.usage == Usage(prompt_tokens=3, requests=1)


def test_the_deadline_counts_running_time_not_waiting_for_a_runner() -> None:
    b = book(timeout_seconds=100, deadline_field="activeDeadlineSeconds")
    b.clock(T0, T0 + timedelta(seconds=40), T0 + timedelta(seconds=70))
    assert (b.runner_wait, b.ran, b.time_left()) == (40, 30, 70)
    b.clock(T0, None, T0 + timedelta(seconds=70))  # never seen waiting: all running
    assert b.time_left() == 0
    result = b.deadline_result()
    assert (result.reason, result.message) == (
        "Timeout",
        "the agent did not finish within activeDeadlineSeconds=100 (0 attempts)",
    )


def watch(**kw: Any) -> RunnerWatch:
    return RunnerWatch(
        **{"no_runner_seconds": 60, "deadline": 3600, "runner_task_queue": "runners", **kw},
        scheduled=T0,
    )


def test_runners_that_poll_but_are_busy_are_waited_for_never_said_missing() -> None:
    w, b = watch(), book()
    assert w.next_check(T0) == timedelta(seconds=60)
    look = w.observe(RunnerSeen(started=False, pollers=3), T0 + timedelta(seconds=60), b)
    assert look.report is not None
    assert look.report.reason == "WaitingForRunner"
    assert "3 runners poll task queue 'runners', all busy" in (look.report.message or "")
    # Said once; the looks space out (60 s, 120 s, 240 s ... up to 10 min).
    assert w.next_check(T0 + timedelta(seconds=60)) == timedelta(seconds=120)
    again = w.observe(RunnerSeen(started=False, pollers=3), T0 + timedelta(seconds=180), b)
    assert again.report is None
    started = w.observe(
        RunnerSeen(started=True, started_at=(T0 + timedelta(seconds=200)).timestamp()),
        T0 + timedelta(seconds=420),
        b,
    )
    assert started.report is not None
    assert (started.report.reason, started.report.message) == (
        "Running",
        "a runner took the agent after 200s",
    )
    assert w.next_check(T0 + timedelta(seconds=420)) is None
    assert w.started() == T0 + timedelta(seconds=200)


def test_an_attempt_that_ended_before_the_look_is_not_counted_as_waiting() -> None:
    """check_runner found the attempt no longer pending (it ran, and ended
    just before the look): its start is unknown, and its running time is not
    counted as waiting for a runner (the node tier's rollout saw 60 s of
    runnerWaitSeconds for agents a runner took within a second)."""
    w, b = watch(), book()
    assert w.observe(RunnerSeen(started=True), T0 + timedelta(seconds=60), b).report is None
    assert w.next_check(T0 + timedelta(seconds=60)) is None
    b.clock(T0, w.started(), T0 + timedelta(seconds=61))
    assert (b.runner_wait, b.ran) == (0, 61)
    # Seen waiting before: it started no earlier than that look.
    w, b = watch(), book()
    w.observe(RunnerSeen(started=False, pollers=2), T0 + timedelta(seconds=60), b)
    took = w.observe(RunnerSeen(started=True), T0 + timedelta(seconds=180), b)
    assert took.report is not None
    assert took.report.message == "a runner took the agent after 60s"
    b.clock(T0, w.started(), T0 + timedelta(seconds=181))
    assert (b.runner_wait, b.ran) == (60, 121)


def test_no_runner_is_said_when_none_polls_and_ends_it_after_a_whole_deadline() -> None:
    short = watch(deadline=100)
    look = short.observe(RunnerSeen(started=False, pollers=0), T0 + timedelta(seconds=60), book())
    assert look.report is not None
    assert look.report.reason == "NoRunner"
    # The next look comes when the deadline without runners ends, not at 180 s.
    assert short.next_check(T0 + timedelta(seconds=60)) == timedelta(seconds=40)
    w, b = watch(deadline=600), book()
    w.observe(RunnerSeen(started=False, pollers=0), T0 + timedelta(seconds=60), b)
    # A runner polling in between resets the clock.
    w.observe(RunnerSeen(started=False, pollers=1), T0 + timedelta(seconds=300), b)
    late = w.observe(RunnerSeen(started=False, pollers=0), T0 + timedelta(seconds=700), b)
    assert late.give_up is None  # absent since 400 s at most (Temporal's 5 min memory)
    gone = w.observe(RunnerSeen(started=False, pollers=0), T0 + timedelta(seconds=1000), b)
    assert gone.give_up is not None
    assert "no runner polled task queue 'runners' for 600s" in gone.give_up


def test_the_first_look_comes_no_later_than_a_short_deadline() -> None:
    assert watch(deadline=3).next_check(T0) == timedelta(seconds=3)


def test_a_look_that_failed_changes_nothing_but_its_timing() -> None:
    w, b = watch(), book()
    assert w.observe(None, T0 + timedelta(seconds=60), b).report is None
    assert w.next_check(T0 + timedelta(seconds=60)) == timedelta(seconds=120)


def test_a_failed_workflows_result_decodes_with_its_usage_and_attempts() -> None:
    """The gateway reads a failed workflow's result from its error's details,
    decoded without a type hint: nested fields must come back as types."""
    result = book().result("Failed", "RunnerFailed", "boom", output=None)
    result = replace(result, usage=Usage(1, 2, 3, requests=2, resent_requests=1))
    plain = json.loads(DataConverter.default.payload_converter.to_payloads([result])[0].data)
    error = WorkflowFailureError(cause=ApplicationError("boom", plain, type=EXECUTION_FAILED))
    decoded = _result_of_failure(error)
    assert decoded == result
    assert decoded is not None
    assert isinstance(decoded.usage, Usage)


class _Pending:
    """What a workflow await looks like to the coroutine: suspended."""

    def __await__(self) -> Any:
        yield None


class _Activity:
    def done(self) -> bool:
        return False


def test_an_attempt_dropped_by_its_worker_closes_without_the_workflow_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker that drops a workflow from its cache leaves its coroutine to be
    # closed by Python (GeneratorExit) outside the workflow's event loop, where
    # every workflow call raises; CI once failed on the time read there.
    now = datetime(2026, 12, 3, tzinfo=UTC)
    monkeypatch.setattr(running.workflow, "now", lambda: now)
    monkeypatch.setattr(running.workflow, "start_activity", lambda *a, **kw: _Activity())
    monkeypatch.setattr(running.workflow, "wait_condition", lambda *a, **kw: _Pending())

    async def report(result: Any) -> None:
        raise AssertionError("no report expected")

    b = book()
    attempt = running.run_attempt(b.inp, b, "run_agent", None, "run_agent-1", lambda: False, report)
    attempt.send(None)

    def outside_the_loop() -> datetime:
        raise RuntimeError("Not in workflow event loop")

    monkeypatch.setattr(running.workflow, "now", outside_the_loop)
    attempt.close()
