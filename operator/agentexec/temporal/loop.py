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

This module is the loop and its steps' commands. What it decides is
temporal/loop_decisions.py (pure); its progress and reports are
temporal/loop_progress.py. Imports temporalio, our types, those modules and
the workflow code it shares (temporal/running.py) only, passed through: the
sandbox re-imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from agentexec.temporal.attempts import AttemptBook, Kind
    from agentexec.temporal.loop_decisions import (
        LoopEnded,
        StepFailed,
        add_record,
        build_approval_record,
        build_model_record,
        build_over_budget,
        build_pending,
        build_refusal,
        build_step_ending,
        build_step_result,
        build_timeout_decision,
        build_tool_record,
        find_tool_clash,
        needs_approval,
        parse_arguments,
        tokens_used,
    )
    from agentexec.temporal.loop_progress import LoopProgress
    from agentexec.temporal.running import (
        execution_failure,
        pause,
        run_attempt,
        stay_suspended,
    )
    from agentexec.temporal.steps import (
        APPROVAL_SIGNAL,
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
        StepsView,
        Tool,
        ToolCallRequest,
        ToolCallResult,
        ToolServer,
    )
    from agentexec.temporal.types import (
        CANCELLED,
        RUNNER_FAILED,
        SUSPEND_SIGNAL,
        TIMEOUT,
        ExecutionResult,
        add_usage,
    )

R = TypeVar("R")


@workflow.defn(name=LOOP_WORKFLOW_TYPE)
class AgentLoopWorkflow:
    def __init__(self) -> None:
        self._decisions: dict[str, ApprovalDecision] = {}
        self._state: LoopState | None = None
        self._book: AttemptBook | None = None
        self._progress = LoopProgress()
        self._done = False
        self._suspended = False

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
            progress=self._progress.progress,
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
        except LoopEnded as ended:
            result = book.result("Failed", ended.reason, ended.message)
        except asyncio.CancelledError:
            await self._progress.settle()
            await self._progress.report(
                exe, book.result("Cancelled", CANCELLED, "the AgentExecution was deleted")
            )
            raise
        self._done = True
        state = self._state
        self._progress.done(book.usage, state.tool_calls if state else None)
        await self._progress.settle()
        await self._progress.report(exe, result)
        if result.phase == "Failed":
            raise execution_failure(result)
        return result

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
                await self._progress.settle()
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
            if budget is not None and tokens_used(book) >= budget:
                raise build_over_budget(book, state.step, budget)
            last = step >= spec.max_steps
            self._progress.at_step(inp, book, step, MODEL, state.tool_calls)
            answer = await self._model(inp, state, step, last)
            state = replace(
                state,
                step=step,
                messages=[*state.messages, answer.message],
                records=add_record(state.records, build_model_record(step, answer, workflow.now())),
            )
            self._state = state
            if budget is not None and tokens_used(book) > budget:
                raise build_over_budget(book, state.step, budget)
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
        (temporal/attempts.py): its result, or StepFailed; LoopEnded when the
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
                raise LoopEnded(deadline.reason or TIMEOUT, deadline.message or "")
            attempt = book.begin_attempt()
            arg = build(attempt, book.checkpoint if book.has_checkpoint else None)
            ended, out = await run_attempt(
                exe,
                book,
                activity,
                arg,
                f"{activity}-{attempt}",
                self._is_suspended,
                lambda result: self._progress.report_now(exe, result),
            )
            if ended.kind is Kind.SUCCEEDED:
                return build_step_result(out, result_type, activity, what)
            decided = book.record(ended, workflow.now(), workflow.random().random())
            if decided.finish is not None:
                raise build_step_ending(decided.finish, ended.kind, what)
            if decided.report is not None:
                await self._progress.report_now(exe, decided.report)
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
        except StepFailed as failed:
            raise LoopEnded(TOOLS_UNAVAILABLE, failed.message) from None
        tools: list[Tool] = listed.tools
        clash = find_tool_clash(tools)
        if clash is not None:
            raise clash
        return tools

    async def _model(
        self, inp: LoopInput, state: LoopState, step: int, last: bool
    ) -> ModelCallResult:
        exe, spec = inp.execution, inp.loop
        agent_spec = exe.agent_spec
        if agent_spec is None:
            raise LoopEnded(RUNNER_FAILED, "no Agent snapshot")
        book = self._require_book()
        budget = spec.max_tokens
        left = None if budget is None else max(1, budget - tokens_used(book))
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
        except StepFailed as failed:
            # The provider's class (RateLimited, ContextTooLong, ...) is the reason.
            raise LoopEnded(failed.reason, failed.message) from None
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
        book = self._require_book()
        self._progress.at_step(inp, book, step, f"{TOOL} {name}", state.tool_calls)
        result: ToolCallResult
        arguments = parse_arguments(raw)
        if tool is None or server is None:
            result = ToolCallResult(
                content=f"error: there is no tool named {name!r}", is_error=True
            )
        elif isinstance(arguments, ToolCallResult):
            result = arguments
        else:
            refusal, state = await self._approve(inp, state, step, index, tool, server, raw)
            if refusal is not None:
                result = ToolCallResult(content=refusal, is_error=True)
            else:
                self._progress.at_step(inp, book, step, f"{TOOL} {name}", state.tool_calls)
                result = await self._call_tool(inp, server, step, call_id, name, arguments)
                state = replace(state, tool_calls=state.tool_calls + 1)
        if result.is_error and server is not None and server.on_error == FAIL:
            raise LoopEnded(
                TOOL_FAILED,
                f"step {step}: tool {name!r} failed (onError: Fail): {result.content[:500]}",
            )
        return replace(
            state,
            messages=[
                *state.messages,
                {"role": "tool", "tool_call_id": call_id, "content": result.content},
            ],
            records=add_record(
                state.records, build_tool_record(step, name, raw, result, workflow.now())
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
        except StepFailed as failed:
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
        if not needs_approval(policy, server, tool, step, tokens_used(book)):
            return None, state
        approval_id = f"{step}-{index}"
        pending = build_pending(approval_id, policy, step, tool, server, raw, workflow.now())
        self._progress.waiting_for(inp, book, pending)
        try:
            await workflow.wait_condition(
                lambda: approval_id in self._decisions,
                timeout=policy.timeout_seconds,
            )
            decision = self._decisions[approval_id]
        except TimeoutError:
            timed_out = build_timeout_decision(approval_id, policy, step, tool)
            if isinstance(timed_out, LoopEnded):
                raise timed_out from None
            decision = self._decisions[approval_id] = timed_out
        state = replace(
            state,
            last_approval=decision,
            records=add_record(
                state.records, build_approval_record(step, tool, decision, workflow.now())
            ),
        )
        self._state = state
        self._progress.decided(inp, book, decision)
        return build_refusal(decision), state

    def _is_suspended(self) -> bool:
        return self._suspended

    async def _stay_suspended(self, inp: LoopInput, what: str) -> None:
        exe = inp.execution
        self._progress.suspended()
        await stay_suspended(
            self._require_book(),
            self._is_suspended,
            lambda result: self._progress.report_now(exe, result),
            f"it stopped at {what}",
            f"{what} goes on",
        )

    def _require_book(self) -> AttemptBook:
        assert self._book is not None  # set first thing in run()
        return self._book
