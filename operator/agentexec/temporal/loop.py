"""AgentLoopWorkflow: an assistant that thinks in steps, each step durable.

The conversation lives in the workflow; each model call and each tool call
is its own activity on the execution's runner queue, retried on its own and
never run again once it completed: a runner that dies mid-loop costs the step
it was in, not the steps before it (and completed model calls are not billed
again). A tool call that needs approval waits for a signal from the operator
(an AgentApproval), costing no runner slot, up to its timeout. Long loops
continue as new, with their state, before Temporal's history limits.

Imports temporalio and our types only: the sandbox re-imports this module.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
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
        EXECUTION_FAILED,
        ExecutionInput,
        ExecutionResult,
        Usage,
    )
    from agentexec.temporal.workflows import AGENT_RETRY, _failure, send_report

# A step is retried on its own (a runner lost mid-call, a provider or tool
# server that blinked) as the single-call agent is.
STEP_RETRY = AGENT_RETRY
MAX_RECORDS = 100  # steps the query shows (earlier ones are in earlier runs' histories)
MAX_DETAIL = 200  # characters of a step's detail


class _Ended(Exception):
    def __init__(self, result: ExecutionResult) -> None:
        super().__init__(result.reason)
        self.result = result


@workflow.defn(name=LOOP_WORKFLOW_TYPE)
class AgentLoopWorkflow:
    def __init__(self) -> None:
        self._decisions: dict[str, ApprovalDecision] = {}
        self._state: LoopState | None = None
        self._progress = Progress(step=0, max_steps=0, current="starting")
        self._done = False
        self._reporting: Any = None  # the progress report in flight
        self._reported_at: datetime | None = None

    @workflow.signal(name=APPROVAL_SIGNAL)
    def approval(self, decision: ApprovalDecision) -> None:
        # The first decision for a call stands: a second AgentApproval for the
        # same call (another approver, a retried signal) changes nothing.
        self._decisions.setdefault(decision.id, decision)

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
        try:
            result = await self._loop(inp)
        except _Ended as ended:
            result = ended.result
        except asyncio.CancelledError:
            await self._settle()
            await self._report(
                exe,
                ExecutionResult(
                    phase="Cancelled", reason="Cancelled", message="the AgentExecution was deleted"
                ),
            )
            raise
        self._done = True
        state = self._state
        self._progress = replace(
            self._progress,
            current="done",
            pending_approval=None,
            usage=state.usage if state else self._progress.usage,
            tool_calls=state.tool_calls if state else self._progress.tool_calls,
        )
        await self._settle()
        await self._report(exe, result, progress=True)
        if result.phase == "Failed":
            raise ApplicationError(
                result.message or result.reason or "the agent failed",
                result,
                type=EXECUTION_FAILED,
                non_retryable=True,
            )
        return result

    # ----- the loop -----------------------------------------------------------------

    async def _loop(self, inp: LoopInput) -> ExecutionResult:
        exe, spec = inp.execution, inp.loop
        state = inp.state or LoopState(
            messages=[{"role": "user", "content": exe.message}],
            tools=await self._list_tools(inp),
            started=_iso(workflow.info().start_time),
        )
        self._state = state
        for d in state.decisions:
            self._decisions.setdefault(d.id, d)
        while True:
            self._state = state
            # timeoutSeconds counts the loop's own time, not waits for approval.
            deadline = _parse(state.started, workflow.info().start_time) + timedelta(
                seconds=exe.timeout_seconds + state.waited_seconds
            )
            if self._should_continue_as_new(inp):
                await self._settle()
                workflow.continue_as_new(
                    replace(
                        inp,
                        state=replace(
                            state, decisions=list(self._decisions.values()), runs=state.runs + 1
                        ),
                    )
                )
            step = state.step + 1
            budget = spec.max_tokens
            if budget is not None and state.usage.total_tokens >= budget:
                raise _Ended(self._budget(state, budget))
            last = step >= spec.max_steps
            self._set_progress(inp, state, step, MODEL)
            answer = await self._model(inp, state, step, deadline, last)
            usage = _add(state.usage, answer.usage)
            state = replace(
                state,
                step=step,
                usage=usage,
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
            if budget is not None and usage.total_tokens > budget:
                raise _Ended(self._budget(state, budget))
            calls = answer.message.get("tool_calls") or []
            if not calls:
                return ExecutionResult(
                    phase="Succeeded",
                    output=str(answer.message.get("content") or ""),
                    usage=usage,
                )
            for index, call in enumerate(calls):
                state = await self._tool(inp, state, step, index, call, deadline)
                self._state = state

    def _should_continue_as_new(self, inp: LoopInput) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() > inp.max_history_events
        )

    async def _list_tools(self, inp: LoopInput) -> list[Tool]:
        servers = inp.loop.tools
        if not servers:
            return []
        exe = inp.execution
        try:
            listed = await workflow.execute_activity(
                LIST_TOOLS_ACTIVITY,
                ListToolsRequest(execution=exe.ref, servers=servers),
                task_queue=exe.runner_task_queue,
                start_to_close_timeout=timedelta(
                    seconds=sum(s.timeout_seconds for s in servers) + 10
                ),
                schedule_to_close_timeout=timedelta(seconds=exe.timeout_seconds),
                heartbeat_timeout=timedelta(seconds=exe.heartbeat_timeout_seconds),
                retry_policy=STEP_RETRY,
                result_type=ListToolsResult,
            )
        except ActivityError as err:
            raise _Ended(_step_failure(err, exe, TOOLS_UNAVAILABLE, "listing the tools")) from None
        tools: list[Tool] = listed.tools
        seen: dict[str, str] = {}
        for tool in tools:
            if tool.name in seen:
                raise _Ended(
                    ExecutionResult(
                        phase="Failed",
                        reason=TOOLS_UNAVAILABLE,
                        message=f"tool {tool.name!r} is offered by MCP servers {seen[tool.name]!r} "
                        f"and {tool.server!r}: name the one to use in spec.tools[].allow",
                    )
                )
            seen[tool.name] = tool.server
        return tools

    async def _model(
        self, inp: LoopInput, state: LoopState, step: int, deadline: datetime, last: bool
    ) -> ModelCallResult:
        exe, spec = inp.execution, inp.loop
        if exe.agent_spec is None:
            raise _Ended(
                ExecutionResult(phase="Failed", reason="RunnerFailed", message="no Agent snapshot")
            )
        budget = spec.max_tokens
        left = None if budget is None else max(1, budget - state.usage.total_tokens)
        try:
            answer: ModelCallResult = await workflow.execute_activity(
                MODEL_CALL_ACTIVITY,
                ModelCallRequest(
                    execution=exe.ref,
                    step=step,
                    agent_spec=exe.agent_spec,
                    messages=state.messages,
                    # The last step answers: no tools to call.
                    tools=[] if last else state.tools,
                    tool_choice=None if last else spec.tool_choice,
                    max_tokens=left,
                ),
                task_queue=exe.runner_task_queue,
                schedule_to_close_timeout=self._left(deadline, exe),
                heartbeat_timeout=timedelta(seconds=exe.heartbeat_timeout_seconds),
                retry_policy=STEP_RETRY,
                result_type=ModelCallResult,
            )
        except ActivityError as err:
            raise _Ended(_step_failure(err, exe, None, f"step {step}'s model call")) from None
        return answer

    async def _tool(
        self,
        inp: LoopInput,
        state: LoopState,
        step: int,
        index: int,
        call: dict[str, Any],
        deadline: datetime,
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
                result = await self._call_tool(
                    inp, server, step, call_id, name, arguments, deadline
                )
                state = replace(state, tool_calls=state.tool_calls + 1)
        if result.is_error and server is not None and server.on_error == FAIL:
            raise _Ended(
                ExecutionResult(
                    phase="Failed",
                    reason=TOOL_FAILED,
                    message=f"step {step}: tool {name!r} failed (onError: Fail): "
                    f"{result.content[:500]}",
                    usage=state.usage,
                )
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
        deadline: datetime,
    ) -> ToolCallResult:
        exe = inp.execution
        try:
            result: ToolCallResult = await workflow.execute_activity(
                TOOL_CALL_ACTIVITY,
                ToolCallRequest(
                    execution=exe.ref,
                    step=step,
                    call_id=call_id,
                    server=server,
                    tool=name,
                    arguments=arguments,
                ),
                task_queue=exe.runner_task_queue,
                start_to_close_timeout=timedelta(seconds=server.timeout_seconds + 5),
                schedule_to_close_timeout=self._left(deadline, exe),
                heartbeat_timeout=timedelta(seconds=exe.heartbeat_timeout_seconds),
                retry_policy=STEP_RETRY,
                result_type=ToolCallResult,
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise asyncio.CancelledError() from err
            failed = _step_failure(err, exe, TOOL_FAILED, f"step {step}'s call of tool {name!r}")
            # Reported to the model (onError: Report), or ends the loop (Fail).
            return ToolCallResult(content=f"error: {failed.message}", is_error=True)
        return result

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
        needs = (
            "*" in server.require_approval
            or tool.name in server.require_approval
            or (policy.after_steps is not None and step > policy.after_steps)
            or (policy.after_tokens is not None and state.usage.total_tokens > policy.after_tokens)
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
        asked = workflow.now()
        try:
            await workflow.wait_condition(
                lambda: approval_id in self._decisions,
                timeout=timedelta(seconds=policy.timeout_seconds),
            )
            decision = self._decisions[approval_id]
        except TimeoutError:
            if policy.on_timeout == FAIL:
                raise _Ended(
                    ExecutionResult(
                        phase="Failed",
                        reason=APPROVAL_TIMEOUT,
                        message=f"step {step}: nobody approved tool {tool.name!r} within "
                        f"{policy.timeout_seconds}s (onTimeout: Fail)",
                        usage=state.usage,
                    )
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
            waited_seconds=state.waited_seconds + (workflow.now() - asked).total_seconds(),
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

    # ----- progress and reports --------------------------------------------------------

    def _set_progress(self, inp: LoopInput, state: LoopState, step: int, current: str) -> None:
        self._progress = replace(
            self._progress,
            step=step,
            max_steps=inp.loop.max_steps,
            current=current,
            tool_calls=state.tool_calls,
            usage=state.usage,
        )
        self._report_progress(inp)

    def _report_progress(self, inp: LoopInput, force: bool = False) -> None:
        """Write progress at most every progress_interval_seconds (always when
        forced: an approval asked for or given). Never awaited: the loop does
        not wait for the Kubernetes API; one report in flight at a time."""
        now = workflow.now()
        busy = self._reporting is not None and not self._reporting.done()
        recent = (
            self._reported_at is not None
            and (now - self._reported_at).total_seconds() < inp.progress_interval_seconds
        )
        if not force and (busy or recent):
            return
        previous = self._reporting
        self._reported_at = now
        progress = self._progress

        async def send() -> None:
            if previous is not None:
                await previous
            await self._report(
                inp.execution,
                ExecutionResult(phase="Running", reason="Running", message=progress.current),
                final=False,
                progress=True,
                snapshot=progress,
            )

        self._reporting = asyncio.ensure_future(send())

    async def _settle(self) -> None:
        if self._reporting is not None:
            await self._reporting
            self._reporting = None

    async def _report(
        self,
        exe: ExecutionInput,
        result: ExecutionResult,
        final: bool = True,
        progress: bool = False,
        snapshot: Progress | None = None,
    ) -> None:
        fields = (
            build_progress_status(snapshot or self._progress, _iso(workflow.now()))
            if progress
            else None
        )
        await send_report(exe, result, final, fields)

    def _budget(self, state: LoopState, budget: int) -> ExecutionResult:
        return ExecutionResult(
            phase="Failed",
            reason=BUDGET_EXCEEDED,
            message=f"the loop used {state.usage.total_tokens} tokens in {state.step} steps; "
            f"spec.limits.maxTokens is {budget}",
            usage=state.usage,
        )

    def _left(self, deadline: datetime, exe: ExecutionInput) -> timedelta:
        left = deadline - workflow.now()
        if left.total_seconds() <= 0:
            raise _Ended(
                ExecutionResult(
                    phase="Failed",
                    reason="Timeout",
                    message=f"the agent did not finish within timeoutSeconds={exe.timeout_seconds}",
                    usage=self._state.usage if self._state else None,
                )
            )
        return left


def _step_failure(
    err: ActivityError, exe: ExecutionInput, reason: str | None, what: str
) -> ExecutionResult:
    if isinstance(err.cause, CancelledError):
        raise asyncio.CancelledError() from err
    failed = _failure(err, exe.timeout_seconds)
    return replace(
        failed,
        reason=reason or failed.reason,
        message=f"{what}: {failed.message}",
    )


def _add(total: Usage, more: Usage | None) -> Usage:
    if more is None:
        return total
    return Usage(
        prompt_tokens=total.prompt_tokens + more.prompt_tokens,
        completion_tokens=total.completion_tokens + more.completion_tokens,
        total_tokens=total.total_tokens + more.total_tokens,
    )


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


def _parse(value: str, default: datetime) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=default.tzinfo)
    except ValueError:
        return default
