"""AgentLoopWorkflow: an assistant that thinks in steps, each step durable.

The conversation lives in the workflow; each model call and each tool call
is its own activity on the execution's runner queue, never run again once it
completed: a runner that dies mid-loop costs the step it was in, not the
steps before it (and completed model calls are not billed again).

Each step's attempts follow the execution's attempt policy (issue #19,
temporal/attempts.py), as a single-call agent's attempts do: a disruption
(the runner shut down or died) is retried at once and costs nothing, up to
the operator's bound on disruptions for the whole execution; a failure of
the model provider or a tool server spends one of the step's
``backoffLimit``; a class that retrying cannot fix (ProviderRejected,
ContextTooLong, ContentFiltered, an agent error) ends the loop with its
reason. ``spec.suspend`` stops the step in flight and goes on from it when
resumed. The deadline counts the attempts' running time only: not waits for
a runner, for a person's approval, or while suspended.

A tool call that needs approval waits for a signal from the operator (an
AgentApproval), costing no runner slot, up to its timeout. Long loops
continue as new, with their state, before Temporal's history limits.

Imports temporalio, our types and the shared workflow code
(temporal/running.py) only: the sandbox re-imports this module.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.converter import value_to_type

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.attempts import AttemptBook, Kind
    from agentexec.temporal.running import (
        execution_failure,
        pause,
        run_attempt,
        send_report,
        stay_suspended,
    )
    from agentexec.temporal.steps import (
        APPROVAL,
        APPROVAL_SIGNAL,
        APPROVAL_TIMEOUT,
        APPROVE,
        BUDGET_EXCEEDED,
        FAIL,
        LIST_TOOLS_ACTIVITY,
        LOOP_WORKFLOW_TYPE,
        MODEL,
        MODEL_CALL_ACTIVITY,
        STEPS_QUERY,
        TOOL,
        TOOL_CALL_ACTIVITY,
        TOOL_FAILED,
        TOOLS_UNAVAILABLE,
        ApprovalDecision,
        ListToolsRequest,
        ListToolsResult,
        LoopInput,
        LoopState,
        ModelCallRequest,
        ModelCallResult,
        PendingApproval,
        Progress,
        StepRecord,
        StepsView,
        Tool,
        ToolCallRequest,
        ToolCallResult,
        ToolServer,
        build_progress_status,
    )
    from agentexec.temporal.types import (
        CANCELLED,
        DISRUPTED,
        NO_RUNNER,
        RUNNER_FAILED,
        RUNNING,
        SUSPEND_SIGNAL,
        TIMEOUT,
        ExecutionInput,
        ExecutionResult,
        add_usage,
    )

MAX_RECORDS = 100  # steps the query shows (earlier ones are in earlier runs' histories)
MAX_DETAIL = 200  # characters of a step's detail
# Endings of a step's attempts that end the whole loop, whatever the step
# (a tool's onError does not apply): the deadline, too many disruptions, no
# runner at all.
LOOP_ENDINGS = frozenset({TIMEOUT, DISRUPTED, NO_RUNNER})

R = TypeVar("R")


class _Ended(Exception):
    """The loop ends Failed with this reason and message (usage and attempts
    come from the book)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class _StepFailed(Exception):
    """A step's attempts failed beyond its backoffLimit, or in a way retrying
    cannot fix: the caller decides (a model call ends the loop, a tool's
    failure is reported to the model or ends it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@workflow.defn(name=LOOP_WORKFLOW_TYPE)
class AgentLoopWorkflow:
    def __init__(self) -> None:
        self._decisions: dict[str, ApprovalDecision] = {}
        self._state: LoopState | None = None
        self._book: AttemptBook | None = None
        self._progress = Progress(step=0, max_steps=0, current="starting")
        self._done = False
        self._suspended = False
        self._reporting: Any = None  # the progress report in flight
        self._reported_at: datetime | None = None

    @workflow.signal(name=APPROVAL_SIGNAL)
    def approval(self, decision: ApprovalDecision) -> None:
        # The first decision for a call stands: a second AgentApproval for the
        # same call (another approver, a retried signal) changes nothing.
        self._decisions.setdefault(decision.id, decision)

    @workflow.signal(name=SUSPEND_SIGNAL)
    def suspend(self, suspended: bool) -> None:
        """spec.suspend changed: stop the step in flight (True), or go on
        from it (False)."""
        self._suspended = bool(suspended)

    @workflow.query(name=STEPS_QUERY)
    def steps(self) -> StepsView:
        state = self._state
        return StepsView(
            progress=self._progress,
            records=list(state.records) if state else [],
            runs=state.runs if state else 1,
            done=self._done,
        )

    @workflow.run
    async def run(self, inp: LoopInput) -> ExecutionResult:
        exe = inp.execution
        book = self._book = (
            AttemptBook.resume(exe, inp.state.book) if inp.state else AttemptBook(exe)
        )
        try:
            result = await self._loop(inp, book)
        except _Ended as ended:
            result = book.result("Failed", ended.reason, ended.message)
        except asyncio.CancelledError:
            await self._settle()
            await self._report(
                exe, book.result("Cancelled", CANCELLED, "the AgentExecution was deleted")
            )
            raise
        self._done = True
        state = self._state
        self._progress = replace(
            self._progress,
            current="done",
            pending_approval=None,
            usage=book.usage,
            tool_calls=state.tool_calls if state else self._progress.tool_calls,
        )
        await self._settle()
        await self._report(exe, result, progress=True)
        if result.phase == "Failed":
            raise execution_failure(result)
        return result

    # ----- the loop -----------------------------------------------------------------

    async def _loop(self, inp: LoopInput, book: AttemptBook) -> ExecutionResult:
        exe, spec = inp.execution, inp.loop
        state = inp.state or LoopState(
            messages=[{"role": "user", "content": exe.message}],
            tools=await self._list_tools(inp),
        )
        self._state = state
        for d in state.decisions:
            self._decisions.setdefault(d.id, d)
        while True:
            self._state = state
            if self._should_continue_as_new(inp):
                await self._settle()
                workflow.continue_as_new(
                    replace(
                        inp,
                        state=replace(
                            state,
                            decisions=list(self._decisions.values()),
                            runs=state.runs + 1,
                            book=book.state(),
                        ),
                    )
                )
            step = state.step + 1
            budget = spec.max_tokens
            if budget is not None and _tokens(book) >= budget:
                raise self._over_budget(state, budget)
            last = step >= spec.max_steps
            self._set_progress(inp, state, step, MODEL)
            answer = await self._model(inp, state, step, last)
            state = replace(
                state,
                step=step,
                messages=[*state.messages, answer.message],
                records=_record(
                    state.records,
                    StepRecord(
                        step=step,
                        kind=MODEL,
                        detail=_detail(answer.message),
                        tokens=answer.usage.total_tokens if answer.usage else 0,
                        at=_iso(workflow.now()),
                    ),
                ),
            )
            self._state = state
            if budget is not None and _tokens(book) > budget:
                raise self._over_budget(state, budget)
            calls = answer.message.get("tool_calls") or []
            if not calls:
                return book.result("Succeeded", output=str(answer.message.get("content") or ""))
            for index, call in enumerate(calls):
                state = await self._tool(inp, state, step, index, call)
                self._state = state

    def _should_continue_as_new(self, inp: LoopInput) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > inp.max_history_events
        )

    async def _run_step(
        self,
        inp: LoopInput,
        activity: str,
        build: Callable[[int, Any], Any],
        result_type: type[R],
        what: str,
    ) -> R:
        """One step's activity, attempt after attempt as the policy says
        (temporal/attempts.py): its result, or _StepFailed; _Ended when the
        loop as a whole cannot go on. ``build(attempt, checkpoint)`` makes
        the activity's argument."""
        exe = inp.execution
        book = self._require_book()
        book.begin_step()
        while True:
            if self._suspended:
                await self._stay_suspended(inp, what)
            if book.time_left() < 1:
                deadline = book.deadline_result()
                raise _Ended(deadline.reason or TIMEOUT, deadline.message or "")
            attempt = book.begin_attempt()
            arg = build(attempt, book.checkpoint if book.has_checkpoint else None)
            ended, out = await run_attempt(
                exe,
                book,
                activity,
                arg,
                f"{activity}-{attempt}",
                self._is_suspended,
                lambda result: self._report_now(inp, result),
            )
            if ended.kind is Kind.SUCCEEDED:
                try:
                    decoded = value_to_type(result_type, out)
                except (TypeError, ValueError) as exc:
                    raise _StepFailed(
                        RUNNER_FAILED,
                        f"{what}: the runner's {activity} result is not a "
                        f"{result_type.__name__}: {exc}",
                    ) from None
                if isinstance(decoded, result_type):
                    return decoded
                raise _StepFailed(RUNNER_FAILED, f"{what}: the runner's {activity} sent nothing")
            decided = book.record(ended, workflow.now(), workflow.random().random())
            if decided.finish is not None:
                reason = decided.finish.reason or RUNNER_FAILED
                message = f"{what}: {decided.finish.message}"
                if reason in LOOP_ENDINGS or ended.kind not in (Kind.FAILED, Kind.FATAL):
                    raise _Ended(reason, message)
                raise _StepFailed(reason, message)
            if decided.report is not None:
                await self._report_now(inp, decided.report)
            if decided.delay > 0:
                await pause(book, decided.delay, self._is_suspended)

    async def _list_tools(self, inp: LoopInput) -> list[Tool]:
        servers = inp.loop.tools
        if not servers:
            return []
        exe = inp.execution
        try:
            listed = await self._run_step(
                inp,
                LIST_TOOLS_ACTIVITY,
                lambda _attempt, _checkpoint: ListToolsRequest(execution=exe.ref, servers=servers),
                ListToolsResult,
                "listing the tools",
            )
        except _StepFailed as failed:
            raise _Ended(TOOLS_UNAVAILABLE, failed.message) from None
        tools: list[Tool] = listed.tools
        seen: dict[str, str] = {}
        for tool in tools:
            if tool.name in seen:
                raise _Ended(
                    TOOLS_UNAVAILABLE,
                    f"tool {tool.name!r} is offered by MCP servers {seen[tool.name]!r} "
                    f"and {tool.server!r}: name the one to use in spec.tools[].allow",
                )
            seen[tool.name] = tool.server
        return tools

    async def _model(
        self, inp: LoopInput, state: LoopState, step: int, last: bool
    ) -> ModelCallResult:
        exe, spec = inp.execution, inp.loop
        agent_spec = exe.agent_spec
        if agent_spec is None:
            raise _Ended(RUNNER_FAILED, "no Agent snapshot")
        book = self._require_book()
        budget = spec.max_tokens
        left = None if budget is None else max(1, budget - _tokens(book))
        try:
            answer = await self._run_step(
                inp,
                MODEL_CALL_ACTIVITY,
                lambda attempt, checkpoint: ModelCallRequest(
                    execution=exe.ref,
                    step=step,
                    agent_spec=agent_spec,
                    messages=state.messages,
                    # The last step answers: no tools to call.
                    tools=[] if last else state.tools,
                    tool_choice=None if last else spec.tool_choice,
                    max_tokens=left,
                    attempt=attempt,
                    resume_from=checkpoint,
                ),
                ModelCallResult,
                f"step {step}'s model call",
            )
        except _StepFailed as failed:
            # The provider's class (RateLimited, ContextTooLong, ...) is the reason.
            raise _Ended(failed.reason, failed.message) from None
        book.usage = add_usage(book.usage, answer.usage)
        return answer

    async def _tool(
        self,
        inp: LoopInput,
        state: LoopState,
        step: int,
        index: int,
        call: dict[str, Any],
    ) -> LoopState:
        function = call.get("function") or {}
        name = str(function.get("name", ""))
        raw = str(function.get("arguments") or "{}")
        call_id = str(call.get("id") or f"{step}-{index}")
        tool = next((t for t in state.tools if t.name == name), None)
        server = next((s for s in inp.loop.tools if tool and s.name == tool.server), None)
        self._set_progress(inp, state, step, f"{TOOL} {name}")
        result: ToolCallResult
        try:
            arguments = json.loads(raw)
            if not isinstance(arguments, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            arguments = None
            result = ToolCallResult(
                content=f"error: the arguments are not a JSON object ({exc})", is_error=True
            )
        if tool is None or server is None:
            result = ToolCallResult(
                content=f"error: there is no tool named {name!r}", is_error=True
            )
        elif arguments is not None:
            refusal, state = await self._approve(inp, state, step, index, tool, server, raw)
            if refusal is not None:
                result = ToolCallResult(content=refusal, is_error=True)
            else:
                self._set_progress(inp, state, step, f"{TOOL} {name}")
                result = await self._call_tool(inp, server, step, call_id, name, arguments)
                state = replace(state, tool_calls=state.tool_calls + 1)
        if result.is_error and server is not None and server.on_error == FAIL:
            raise _Ended(
                TOOL_FAILED,
                f"step {step}: tool {name!r} failed (onError: Fail): {result.content[:500]}",
            )
        return replace(
            state,
            messages=[
                *state.messages,
                {"role": "tool", "tool_call_id": call_id, "content": result.content},
            ],
            records=_record(
                state.records,
                StepRecord(
                    step=step,
                    kind=TOOL,
                    name=name,
                    detail=f"{raw[:80]} -> {result.content}"[:MAX_DETAIL],
                    error=result.is_error,
                    at=_iso(workflow.now()),
                ),
            ),
        )

    async def _call_tool(
        self,
        inp: LoopInput,
        server: ToolServer,
        step: int,
        call_id: str,
        name: str,
        arguments: dict[str, Any],
    ) -> ToolCallResult:
        exe = inp.execution
        try:
            return await self._run_step(
                inp,
                TOOL_CALL_ACTIVITY,
                lambda _attempt, _checkpoint: ToolCallRequest(
                    execution=exe.ref,
                    step=step,
                    call_id=call_id,
                    server=server,
                    tool=name,
                    arguments=arguments,
                ),
                ToolCallResult,
                f"step {step}'s call of tool {name!r}",
            )
        except _StepFailed as failed:
            # Reported to the model (onError: Report), or ends the loop (Fail).
            return ToolCallResult(content=f"error: {failed.message}", is_error=True)

    async def _approve(
        self,
        inp: LoopInput,
        state: LoopState,
        step: int,
        index: int,
        tool: Tool,
        server: ToolServer,
        raw: str,
    ) -> tuple[str | None, LoopState]:
        """Wait for a person where the Agent asks for one. None: go ahead,
        else what the model is told instead of the tool's result; and the
        state with the approval recorded."""
        policy = inp.loop.approval
        book = self._require_book()
        needs = (
            "*" in server.require_approval
            or tool.name in server.require_approval
            or (policy.after_steps is not None and step > policy.after_steps)
            or (policy.after_tokens is not None and _tokens(book) > policy.after_tokens)
        )
        if not needs:
            return None, state
        approval_id = f"{step}-{index}"
        pending = PendingApproval(
            id=approval_id,
            step=step,
            tool=tool.name,
            server=server.name,
            arguments=raw[:2000],
            since=_iso(workflow.now()),
            timeout_seconds=policy.timeout_seconds,
            on_timeout=policy.on_timeout,
        )
        self._progress = replace(
            self._progress, current=f"{APPROVAL} {tool.name}", pending_approval=pending
        )
        self._report_progress(inp, force=True)
        try:
            await workflow.wait_condition(
                lambda: approval_id in self._decisions,
                timeout=policy.timeout_seconds,
            )
            decision = self._decisions[approval_id]
        except TimeoutError:
            if policy.on_timeout == FAIL:
                raise _Ended(
                    APPROVAL_TIMEOUT,
                    f"step {step}: nobody approved tool {tool.name!r} within "
                    f"{policy.timeout_seconds}s (onTimeout: Fail)",
                ) from None
            decision = ApprovalDecision(
                id=approval_id,
                approve=policy.on_timeout == APPROVE,
                approver="",
                reason=f"no decision within {policy.timeout_seconds}s "
                f"(onTimeout: {policy.on_timeout})",
            )
            self._decisions[approval_id] = decision
        self._progress = replace(self._progress, pending_approval=None, last_approval=decision)
        state = replace(
            state,
            last_approval=decision,
            records=_record(
                state.records,
                StepRecord(
                    step=step,
                    kind=APPROVAL,
                    name=tool.name,
                    detail=f"{'approved' if decision.approve else 'rejected'} by "
                    f"{decision.approver or 'timeout'}: {decision.reason}"[:MAX_DETAIL],
                    error=not decision.approve,
                    at=_iso(workflow.now()),
                ),
            ),
        )
        self._state = state
        self._report_progress(inp, force=True)
        if decision.approve:
            return None, state
        who = decision.approver or "the approval timeout"
        refusal = f"error: the call was rejected by {who}" + (
            f": {decision.reason}" if decision.reason else ""
        )
        return refusal, state

    # ----- suspension ------------------------------------------------------------------

    def _is_suspended(self) -> bool:
        return self._suspended

    async def _stay_suspended(self, inp: LoopInput, what: str) -> None:
        book = self._require_book()
        self._progress = replace(self._progress, current="suspended")
        await stay_suspended(
            book,
            self._is_suspended,
            lambda result: self._report_now(inp, result),
            f"it stopped at {what}",
            f"{what} goes on",
        )

    # ----- progress and reports --------------------------------------------------------

    def _require_book(self) -> AttemptBook:
        assert self._book is not None  # set first thing in run()
        return self._book

    def _set_progress(self, inp: LoopInput, state: LoopState, step: int, current: str) -> None:
        self._progress = replace(
            self._progress,
            step=step,
            max_steps=inp.loop.max_steps,
            current=current,
            tool_calls=state.tool_calls,
            usage=self._require_book().usage,
        )
        self._report_progress(inp)

    def _report_progress(self, inp: LoopInput, force: bool = False) -> None:
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
        progress = self._progress
        result = self._require_book().progress(RUNNING, progress.current)

        async def send() -> None:
            if previous is not None:
                await previous
            await self._report(inp.execution, result, final=False, snapshot=progress)

        self._reporting = asyncio.ensure_future(send())

    async def _report_now(self, inp: LoopInput, result: ExecutionResult) -> None:
        """A report the loop waits for (an attempt failed or disrupted, no
        runner, suspended): after the one in flight, with the progress."""
        await self._settle()
        await self._report(inp.execution, result, final=False, cancellable=True)

    async def _settle(self) -> None:
        if self._reporting is not None:
            await self._reporting
            self._reporting = None

    async def _report(
        self,
        exe: ExecutionInput,
        result: ExecutionResult,
        final: bool = True,
        cancellable: bool = False,
        progress: bool = True,
        snapshot: Progress | None = None,
    ) -> None:
        fields = (
            build_progress_status(snapshot or self._progress, _iso(workflow.now()))
            if progress
            else None
        )
        await send_report(exe, result, final, cancellable, fields)

    def _over_budget(self, state: LoopState, budget: int) -> _Ended:
        return _Ended(
            BUDGET_EXCEEDED,
            f"the loop used {_tokens(self._require_book())} tokens in {state.step} steps; "
            f"spec.limits.maxTokens is {budget}",
        )


def _tokens(book: AttemptBook) -> int:
    return book.usage.total_tokens if book.usage else 0


def _detail(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls") or []
    if calls:
        names = ", ".join(str((c.get("function") or {}).get("name", "")) for c in calls)
        return f"calls {names}"
    return str(message.get("content") or "")[:MAX_DETAIL]


def _record(records: list[StepRecord], record: StepRecord) -> list[StepRecord]:
    return [*records, record][-MAX_RECORDS:]


def _iso(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")
