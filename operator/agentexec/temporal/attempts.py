"""The workflow's attempt loop, as pure decisions (issue #19).

Each attempt of an agent is one ``run_agent`` activity that Temporal never
retries by itself: how the attempt ended decides what comes next, so that
two budgets can be kept apart, as a Job's ``podFailurePolicy`` keeps
disruptions apart from failures:

- a **failure** of the agent or its provider spends one of ``backoffLimit``
  (the execution's; the agent loop gives each of its steps the whole budget,
  temporal/loop.py);
- a **disruption** (the runner shut down, or stopped heartbeating because it
  died) is retried at once from the last checkpoint and spends nothing, up to
  ``max_disruptions`` so a crash-looping runner cannot retry forever;
- a **stop** (suspended, or the execution deleted) is no attempt's fault;
- some failures say retrying cannot help, and end the execution at once.

The workflow only does what these functions return: no I/O here, and the
same inputs give the same answer, so replays stay deterministic (the time
comes from ``workflow.now()`` and jitter from ``workflow.random()``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.converter import value_to_type
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    FailureError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as TemporalTimeoutError

from agentexec import backoff
from agentexec.temporal.types import (
    AGENT_ERROR,
    AGENT_FAILED,
    AGENT_FAILURE_REASONS,
    AGENT_STOPPED,
    ATTEMPT_DISRUPTED,
    ATTEMPT_FAILED,
    BUDGET_EXCEEDED,
    CANCELLED,
    DISRUPTED,
    HEARTBEAT_TIMEOUT,
    NO_RUNNER,
    RUNNER_FAILED,
    RUNNER_SHUTDOWN,
    RUNNING,
    TIMEOUT,
    UNKNOWN_AGENT,
    WAITING_FOR_RUNNER,
    AgentRequest,
    AgentResult,
    AttemptEnd,
    AttemptProgress,
    Attempts,
    ExecutionInput,
    ExecutionResult,
    RunnerSeen,
    Usage,
    add_usage,
)

# Temporal forgets a poller five minutes after its last poll (the matching
# service's PollerHistoryTTL): "no poller now" means none polled since then.
POLLER_HISTORY = timedelta(minutes=5)


class Kind(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # spends backoffLimit, then the execution fails
    FATAL = "fatal"  # retrying cannot help: the execution fails now
    DISRUPTED = "disrupted"  # cut short by the platform: retried, free
    STOPPED = "stopped"  # cancelled (suspend, delete): no one's fault
    DEADLINE = "deadline"  # the execution's deadline ran out during it


@dataclass(frozen=True)
class Ended:
    """How one attempt ended."""

    kind: Kind
    reason: str = ""
    message: str = ""
    result: AgentResult | None = None  # when SUCCEEDED
    details: tuple[Any, ...] = ()  # [checkpoint, progress] as the runner last left them
    retry_delay: float | None = None  # the runner's next_retry_delay, if any

    @property
    def checkpoint(self) -> tuple[bool, Any]:
        """(whether the attempt left a checkpoint, the checkpoint)."""
        if self.details and self.details[0] is not None:
            return True, self.details[0]
        return False, None

    @property
    def progress(self) -> AttemptProgress | None:
        return progress_from(self.details[1]) if len(self.details) > 1 else None


def progress_from(value: Any) -> AttemptProgress | None:
    """A runner's progress detail, or None when it sent none (or something else)."""
    if isinstance(value, AttemptProgress):
        return value
    if not isinstance(value, dict) or not set(value) <= {"usage", "output_chars"}:
        return None
    try:
        progress = value_to_type(AttemptProgress, value)
    except (TypeError, ValueError):
        return None
    return progress if isinstance(progress, AttemptProgress) else None


def build_ended(err: ActivityError) -> Ended:
    """Classify a failed attempt (the table in docs/agents.md, "Failures")."""
    cause = err.cause
    if isinstance(cause, TemporalTimeoutError):
        details = tuple(cause.last_heartbeat_details)
        if cause.type == TimeoutType.HEARTBEAT:
            return Ended(
                Kind.DISRUPTED,
                HEARTBEAT_TIMEOUT,
                "the runner stopped heartbeating (it died or was cut off, or the agent "
                "blocked its event loop)",
                details=details,
            )
        return Ended(Kind.DEADLINE, TIMEOUT, details=details)
    if isinstance(cause, CancelledError):
        return Ended(Kind.STOPPED, CANCELLED, "the attempt was cancelled")
    if isinstance(cause, ApplicationError):
        kind_of = cause.type or ""
        details = _attempt_details(cause.details)
        delay = cause.next_retry_delay.total_seconds() if cause.next_retry_delay else None
        if kind_of == AGENT_STOPPED:
            return Ended(Kind.STOPPED, CANCELLED, cause.message, details=details)
        if kind_of == RUNNER_SHUTDOWN:
            return Ended(Kind.DISRUPTED, RUNNER_SHUTDOWN, cause.message, details=details)
        if kind_of == AGENT_ERROR:
            return Ended(Kind.FATAL, AGENT_FAILED, cause.message, details=details)
        if kind_of == BUDGET_EXCEEDED:
            # Past spec.limits.maxTokens: retrying would only spend more.
            return Ended(Kind.FATAL, BUDGET_EXCEEDED, cause.message, details=details)
        if kind_of in AGENT_FAILURE_REASONS or kind_of == UNKNOWN_AGENT:
            kind = Kind.FATAL if cause.non_retryable else Kind.FAILED
            return Ended(kind, kind_of, cause.message, details=details, retry_delay=delay)
        kind = Kind.FATAL if cause.non_retryable else Kind.FAILED
        return Ended(kind, RUNNER_FAILED, _messages(cause), details=details, retry_delay=delay)
    return Ended(Kind.FAILED, RUNNER_FAILED, _messages(cause or err))


def _attempt_details(details: Sequence[Any]) -> tuple[Any, ...]:
    """An error's details when they follow the heartbeat convention
    ([checkpoint, progress], as agentexec.runner attaches them); otherwise
    they are the runner's own business and carry no checkpoint."""
    if len(details) == 2 and progress_from(details[1]) is not None:
        return tuple(details)
    return ()


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


def build_request(
    inp: ExecutionInput,
    attempt: int | None = None,
    resume_from: Any = None,
    max_tokens: int | None = None,
) -> AgentRequest:
    """What the runner is sent for an attempt of ``inp``."""
    return AgentRequest(
        agent=inp.agent,
        message=inp.message,
        session_id=inp.session_id,
        parameters=inp.parameters,
        execution=inp.ref,
        agent_spec=inp.agent_spec,
        attempt=attempt,
        resume_from=resume_from,
        max_tokens=max_tokens if max_tokens is not None else inp.max_tokens,
    )


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Step:
    """What the workflow does after an attempt."""

    finish: ExecutionResult | None = None  # the execution ends with this
    report: ExecutionResult | None = None  # a progress report first
    delay: float = 0.0  # seconds before the next attempt


@dataclass(frozen=True)
class BookState:
    """What an AttemptBook carries across continue-as-new (the agent loop)."""

    attempts: Attempts = field(default_factory=Attempts)
    ran: float = 0.0
    runner_wait: float = 0.0
    usage: Usage | None = None


@dataclass
class AttemptBook:
    """One execution's attempts: the budgets, the clock, the checkpoint and the bill."""

    inp: ExecutionInput
    count: int = 0
    failed: int = 0
    disrupted: int = 0
    # Failures that spent backoffLimit in the current piece of work: the
    # execution for a single call, the step for the agent loop (begin_step).
    spent: int = 0
    last_failure: AttemptEnd | None = None
    last_disruption: AttemptEnd | None = None
    ran: float = 0.0  # seconds counted against the deadline
    runner_wait: float = 0.0  # seconds attempts were seen waiting for a runner
    has_checkpoint: bool = False
    checkpoint: Any = None
    usage: Usage | None = None

    @property
    def deadline(self) -> int:
        return self.inp.timeout_seconds

    def time_left(self) -> float:
        return self.deadline - self.ran

    def tokens_left(self) -> int | None:
        """What spec.limits.maxTokens leaves after the attempts so far (None: no limit)."""
        if self.inp.max_tokens is None:
            return None
        spent = self.usage.total_tokens if self.usage is not None else 0
        return max(0, self.inp.max_tokens - spent)

    def request(self) -> AgentRequest:
        """The next attempt's request (counting it), with what is left of the
        execution's token limit."""
        self.begin_attempt()
        resume_from = self.checkpoint if self.has_checkpoint else None
        return build_request(
            self.inp, attempt=self.count, resume_from=resume_from, max_tokens=self.tokens_left()
        )

    def begin_attempt(self) -> int:
        """Count the next attempt; its number."""
        self.count += 1
        return self.count

    def begin_step(self) -> None:
        """A new piece of work (an agent loop's step): its own backoffLimit,
        and no checkpoint yet. Disruptions, the clock and the bill go on."""
        self.spent = 0
        self.has_checkpoint, self.checkpoint = False, None

    def state(self) -> BookState:
        return BookState(self.attempts(), self.ran, self.runner_wait, self.usage)

    @classmethod
    def resume(cls, inp: ExecutionInput, state: BookState) -> AttemptBook:
        """The book of an execution continued as new, from its ``state``."""
        a = state.attempts
        return cls(
            inp,
            count=a.count,
            failed=a.failed,
            disrupted=a.disrupted,
            last_failure=a.last_failure,
            last_disruption=a.last_disruption,
            ran=state.ran,
            runner_wait=state.runner_wait,
            usage=state.usage,
        )

    def attempts(self) -> Attempts:
        return Attempts(
            count=self.count,
            failed=self.failed,
            disrupted=self.disrupted,
            last_failure=self.last_failure,
            last_disruption=self.last_disruption,
            runner_wait_seconds=int(self.runner_wait),
        )

    def result(
        self,
        phase: str,
        reason: str | None = None,
        message: str | None = None,
        output: str | None = None,
    ) -> ExecutionResult:
        return ExecutionResult(
            phase=phase,
            output=output,
            reason=reason,
            message=message,
            usage=self.usage,
            attempts=self.attempts(),
        )

    def progress(self, reason: str, message: str) -> ExecutionResult:
        """A progress report (phase Running) carrying the attempts so far."""
        return self.result("Running", reason, message)

    def deadline_result(self) -> ExecutionResult:
        inp = self.inp
        return self.result(
            "Failed",
            TIMEOUT,
            f"the agent did not finish within {inp.deadline_field}={self.deadline} "
            f"({self.count} attempt{'s' if self.count != 1 else ''})",
        )

    def clock(self, scheduled: datetime, started: datetime | None, ended: datetime) -> None:
        """Count one attempt's time: waiting for a runner apart from running."""
        began = max(scheduled, min(started or scheduled, ended))
        self.runner_wait += (began - scheduled).total_seconds()
        self.ran += (ended - began).total_seconds()

    def record(self, ended: Ended, now: datetime, rnd: float) -> Step:
        """What follows an attempt that ``ended`` (its time already counted)."""
        has, checkpoint = ended.checkpoint
        if has:
            self.has_checkpoint, self.checkpoint = True, checkpoint
        if ended.kind is Kind.SUCCEEDED and ended.result is not None:
            self.usage = add_usage(self.usage, ended.result.usage)
            return Step(finish=self.result("Succeeded", output=ended.result.output))
        progress = ended.progress
        if progress is not None:
            self.usage = add_usage(self.usage, progress.usage)
        when = timestamp(now)
        how_far = _how_far(progress, has)
        if ended.kind is Kind.STOPPED:
            return Step()
        if ended.kind is Kind.DEADLINE:
            return Step(finish=self.deadline_result())
        if ended.kind is Kind.FATAL:
            return Step(finish=self.result("Failed", ended.reason, ended.message))
        if ended.kind is Kind.DISRUPTED:
            self.disrupted += 1
            self.last_disruption = AttemptEnd(ended.reason, ended.message, when)
            limit = self.inp.max_disruptions
            if self.disrupted > limit:
                return Step(
                    finish=self.result(
                        "Failed",
                        DISRUPTED,
                        f"attempt {self.count} was disrupted ({ended.reason}: {ended.message}), "
                        f"{self.disrupted} disruptions in all, more than the "
                        f"{limit} the operator allows (AGENTEXEC_MAX_DISRUPTIONS)",
                    )
                )
            return Step(
                report=self.progress(
                    ATTEMPT_DISRUPTED,
                    f"attempt {self.count} was disrupted ({ended.reason}: {ended.message})"
                    f"{how_far}; attempt {self.count + 1} resumes "
                    f"{'from its checkpoint' if self.has_checkpoint else 'from the start'} "
                    f"(disruptions: {self.disrupted} of {limit}; backoffLimit untouched)",
                )
            )
        # A failure of the agent or its provider: one of backoffLimit.
        self.failed += 1
        self.spent += 1
        self.last_failure = AttemptEnd(ended.reason, ended.message, when)
        limit = self.inp.backoff_limit
        if self.spent > limit:
            return Step(finish=self.result("Failed", ended.reason, ended.message))
        delay = (
            ended.retry_delay
            if ended.retry_delay is not None
            else backoff.AGENT_ATTEMPT.delay(self.spent, rnd)
        )
        delay = max(0.0, min(delay, self.time_left()))
        return Step(
            report=self.progress(
                ATTEMPT_FAILED,
                f"attempt {self.count} failed ({ended.reason}: {ended.message}){how_far}; "
                f"attempt {self.count + 1} in {delay:.0f}s (failures: {self.spent} of "
                f"backoffLimit={limit})",
            ),
            delay=delay,
        )


def _how_far(progress: AttemptProgress | None, checkpointed: bool) -> str:
    parts = []
    if progress is not None and progress.output_chars:
        parts.append(f"{progress.output_chars} characters of output")
    if checkpointed:
        parts.append("a checkpoint")
    return f" after {' and '.join(parts)}" if parts else ""


@dataclass(frozen=True)
class WatchStep:
    report: ExecutionResult | None = None
    give_up: str | None = None  # end the attempt: no runner, for this long (a message)


@dataclass
class RunnerWatch:
    """Whether a scheduled attempt has a runner yet, from ``check_runner``'s looks.

    NoRunner is said only when no runner polls the queue at all; runners that
    poll but are all busy are WaitingForRunner (issue #18, 10). An attempt is
    given up (NoRunner) only when no runner polled for a whole deadline.
    """

    no_runner_seconds: float
    deadline: float
    runner_task_queue: str
    scheduled: datetime
    started_at: datetime | None = None
    checks: int = 0
    said: str | None = None
    waiting_seen: datetime | None = None  # the last look that found it waiting
    no_runner_since: datetime | None = None
    due: datetime = field(init=False)

    def __post_init__(self) -> None:
        # The first look comes no later than the deadline (a short one would
        # otherwise outlast a minute of waiting unseen).
        first = max(1.0, min(self.no_runner_seconds, self.deadline))
        self.due = self.scheduled + timedelta(seconds=first)

    def next_check(self, now: datetime) -> timedelta | None:
        """How long until the next look (None: it started, no more looks)."""
        if self.started_at is not None:
            return None
        due = self.due
        if self.no_runner_since is not None:
            due = min(due, self.no_runner_since + timedelta(seconds=self.deadline))
        return max(timedelta(seconds=1), due - now)

    def started(self) -> datetime | None:
        """When the attempt started running, as far as the looks saw."""
        return self.started_at or self.waiting_seen

    def observe(self, seen: RunnerSeen | None, now: datetime, book: AttemptBook) -> WatchStep:
        self.checks += 1
        interval = min(
            backoff.RUNNER_CHECK_CAP, self.no_runner_seconds * 2.0 ** min(self.checks, 30)
        )
        self.due = now + timedelta(seconds=interval)
        if seen is None:  # the look itself failed: look again later
            return WatchStep()
        queue = self.runner_task_queue
        waited = int((now - self.scheduled).total_seconds())
        if seen.started:
            # No start time: the attempt was no longer pending when the look
            # came (it ran and ended just before). When it started is unknown;
            # it started no earlier than the last look that saw it waiting, and
            # counting from there never takes its running time for waiting
            # (the deadline counts running time: the safe side).
            started = (
                datetime.fromtimestamp(seen.started_at, UTC)
                if seen.started_at is not None
                else self.waiting_seen or self.scheduled
            )
            self.started_at = max(self.scheduled, min(started, now))
            if self.said in (NO_RUNNER, WAITING_FOR_RUNNER):
                took = int((self.started_at - self.scheduled).total_seconds())
                return WatchStep(
                    report=book.progress(RUNNING, f"a runner took the agent after {took}s")
                )
            return WatchStep()
        self.waiting_seen = now
        if seen.pollers == 0:
            since = max(self.scheduled, now - POLLER_HISTORY)
            if self.no_runner_since is None or since < self.no_runner_since:
                self.no_runner_since = since
            absent = (now - self.no_runner_since).total_seconds()
            if absent >= self.deadline:
                return WatchStep(
                    give_up=f"no runner polled task queue {queue!r} for {int(absent)}s, "
                    f"the execution's deadline ({self.deadline}s)"
                )
            if self.said == NO_RUNNER:
                return WatchStep()
            self.said = NO_RUNNER
            return WatchStep(
                report=book.progress(
                    NO_RUNNER,
                    f"no runner polls task queue {queue!r}; the agent has waited {waited}s "
                    "for one and keeps waiting",
                )
            )
        self.no_runner_since = None
        if self.said == WAITING_FOR_RUNNER:
            return WatchStep()
        self.said = WAITING_FOR_RUNNER
        return WatchStep(
            report=book.progress(
                WAITING_FOR_RUNNER,
                f"{seen.pollers} {'runner polls' if seen.pollers == 1 else 'runners poll'} "
                f"task queue "
                f"{queue!r}, all busy; the agent has waited {waited}s for a free one "
                "(not counted against its deadline)",
            )
        )

    def no_runner_result(self, book: AttemptBook, message: str) -> ExecutionResult:
        return book.result("Failed", NO_RUNNER, message)
