"""The agent loop's progress and its reports to the resource (temporal/loop.py).

``status.progress`` (the step, what it is doing, the pending and the last
approval) is kept here, for the steps query and for the reports: written at
a bounded rate and never awaited by the loop, one report in flight at a
time; the reports the loop waits for (an attempt failed or disrupted, no
runner, suspended) go after the one in flight, the final one last.

Workflow code, as temporal/running.py (which sends each report): it imports
temporalio, our types and the pure modules only, the loop imports it passed
through its sandbox, and the module keeps no state (each run has its own
LoopProgress).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

from temporalio import workflow

from agentexec.temporal.attempts import AttemptBook
from agentexec.temporal.loop_decisions import iso
from agentexec.temporal.running import send_report
from agentexec.temporal.steps import (
    APPROVAL,
    ApprovalDecision,
    LoopInput,
    PendingApproval,
    Progress,
    build_progress_status,
)
from agentexec.temporal.types import RUNNING, ExecutionInput, ExecutionResult, Usage


class LoopProgress:
    """One run's progress, and the reports that write it."""

    def __init__(self) -> None:
        self.progress = Progress(step=0, max_steps=0, current="starting")
        self._reporting: asyncio.Task[None] | None = None  # the progress report in flight
        self._reported_at: datetime | None = None

    def at_step(
        self, inp: LoopInput, book: AttemptBook, step: int, current: str, tool_calls: int
    ) -> None:
        """The loop is at ``current`` of ``step``: reported if it is time."""
        self.progress = replace(
            self.progress,
            step=step,
            max_steps=inp.loop.max_steps,
            current=current,
            tool_calls=tool_calls,
            usage=book.usage,
        )
        self.report_progress(inp, book)

    def waiting_for(self, inp: LoopInput, book: AttemptBook, pending: PendingApproval) -> None:
        """A tool call waits for a person: reported at once."""
        self.progress = replace(
            self.progress, current=f"{APPROVAL} {pending.tool}", pending_approval=pending
        )
        self.report_progress(inp, book, force=True)

    def decided(self, inp: LoopInput, book: AttemptBook, decision: ApprovalDecision) -> None:
        """The approval was given or refused (or timed out): reported at once."""
        self.progress = replace(self.progress, pending_approval=None, last_approval=decision)
        self.report_progress(inp, book, force=True)

    def suspended(self) -> None:
        self.progress = replace(self.progress, current="suspended")

    def done(self, usage: Usage | None, tool_calls: int | None) -> None:
        self.progress = replace(
            self.progress,
            current="done",
            pending_approval=None,
            usage=usage,
            tool_calls=self.progress.tool_calls if tool_calls is None else tool_calls,
        )

    def report_progress(self, inp: LoopInput, book: AttemptBook, force: bool = False) -> None:
        """Write progress at most every progress_interval_seconds (always when
        forced: an approval asked for or given). Never awaited: the loop does
        not wait for the Kubernetes API; one report in flight at a time."""
        now = workflow.now()
        busy = self._reporting is not None and not self._reporting.done()
        # The first write waits an interval too (the operator wrote Running
        # when it started the loop): a loop shorter than that writes its
        # progress once, with its result. Each write is an activity whose
        # completion is a workflow task, which the next step's would queue
        # behind (docs/benchmarks.md).
        since = self._reported_at or workflow.info().start_time
        recent = (now - since).total_seconds() < inp.progress_interval_seconds
        if not force and (busy or recent):
            return
        previous = self._reporting
        self._reported_at = now
        progress = self.progress
        result = book.progress(RUNNING, progress.current)

        async def send() -> None:
            if previous is not None:
                await previous
            await self.report(inp.execution, result, final=False, snapshot=progress)

        self._reporting = asyncio.ensure_future(send())

    async def report_now(self, exe: ExecutionInput, result: ExecutionResult) -> None:
        """A report the loop waits for (an attempt failed or disrupted, no
        runner, suspended): after the one in flight, with the progress."""
        await self.settle()
        await self.report(exe, result, final=False, cancellable=True)

    async def settle(self) -> None:
        """Wait for the report in flight, if any."""
        if self._reporting is not None:
            await self._reporting
            self._reporting = None

    async def report(
        self,
        exe: ExecutionInput,
        result: ExecutionResult,
        final: bool = True,
        cancellable: bool = False,
        snapshot: Progress | None = None,
    ) -> None:
        """Report ``result`` with the progress (``snapshot``, else as it is now)."""
        fields = build_progress_status(snapshot or self.progress, iso(workflow.now()))
        await send_report(exe, result, final, cancellable, fields)
