"""The Temporal calls reconciliation makes, with every answer classified.

Reconcile never sees an exception from Temporal: it gets an ``Answer`` that
says what is true (started, running, closed with a result, not found) or why
it could not be learned (unavailable: wait; rejected: back off and say why).
Lookups of a started execution use the workflow's namespace as recorded in
its status, not today's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import (
    CountWorkflowExecutionsRequest,
    DescribeWorkflowExecutionRequest,
    ListWorkflowExecutionsRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.converter import value_to_type
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from agentexec.conditions import (
    CANCELLED,
    CONTINUED_AS_NEW,
    FAILED,
    NAMESPACE_NOT_FOUND,
    START_FAILED,
    TERMINATED,
    TIMEOUT,
    WORKFLOW_CANCELLED,
    WORKFLOW_FAILED,
    WORKFLOW_NOT_RUNNING,
)
from agentexec.temporal.errors import (
    TemporalUnavailable,
    describe_error,
    is_workflow_not_found,
    missing_namespace,
)
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.steps import (
    APPROVAL_SIGNAL,
    LOOP_WORKFLOW_TYPE,
    ApprovalDecision,
    LoopInput,
)
from agentexec.temporal.types import (
    EXECUTION_FAILED,
    SUSPEND_SIGNAL,
    WORKFLOW_TYPE,
    Answer,
    ExecutionInput,
    ExecutionResult,
    Outcome,
)

log = logging.getLogger("agentexec.gateway")
T = TypeVar("T")
# Visibility pages: Temporal's default and maximum for SQL stores is 1000.
PAGE_SIZE = 1000


_REJECTED_REASONS = {
    RPCStatusCode.PERMISSION_DENIED: "PermissionDenied",
    RPCStatusCode.UNAUTHENTICATED: "Unauthenticated",
    RPCStatusCode.RESOURCE_EXHAUSTED: "RateLimited",
    RPCStatusCode.INVALID_ARGUMENT: "InvalidArgument",
    RPCStatusCode.NOT_FOUND: "NotFound",
    RPCStatusCode.FAILED_PRECONDITION: "FailedPrecondition",
}

# How a workflow that closed without a result maps to a phase and reason.
CLOSED_STATUS = {
    WorkflowExecutionStatus.FAILED: (FAILED, WORKFLOW_FAILED),
    WorkflowExecutionStatus.CANCELED: (CANCELLED, WORKFLOW_CANCELLED),
    WorkflowExecutionStatus.TERMINATED: (FAILED, TERMINATED),
    WorkflowExecutionStatus.TIMED_OUT: (FAILED, TIMEOUT),
    WorkflowExecutionStatus.CONTINUED_AS_NEW: (FAILED, CONTINUED_AS_NEW),
}


@dataclass(frozen=True)
class ClosedWorkflow:
    """A workflow of ours that closed, as visibility lists it."""

    workflow_id: str
    run_id: str
    status: WorkflowExecutionStatus
    close_time: datetime


def _literal(value: str) -> str:
    """A string literal for a visibility query (names here never hold quotes)."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{value!r}: a quote or backslash cannot go into a visibility query")
    return f"'{value}'"


def _moment(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ours(task_queue: str) -> str:
    """Our workflows on ``task_queue``: both types the operator starts (an
    assistant's executions run the agent loop)."""
    types = ", ".join(_literal(t) for t in (WORKFLOW_TYPE, LOOP_WORKFLOW_TYPE))
    return f"WorkflowType IN ({types}) AND TaskQueue = {_literal(task_queue)}"


class TemporalGateway:
    def __init__(self, manager: TemporalManager, task_queue: str, rpc_timeout: float) -> None:
        self.manager = manager
        self.task_queue = task_queue
        self.rpc_timeout = rpc_timeout

    def _ref(self, client: Client, workflow_id: str, run_id: str) -> dict[str, str]:
        return {
            "id": workflow_id,
            "runId": run_id,
            "namespace": client.namespace,
            "taskQueue": self.task_queue,
        }

    async def start(self, workflow_id: str, inp: ExecutionInput | LoopInput) -> Answer:
        """Start the execution's one workflow, or find the one already there
        (an assistant's agent loop for a LoopInput)."""
        workflow_type = LOOP_WORKFLOW_TYPE if isinstance(inp, LoopInput) else WORKFLOW_TYPE

        async def call(client: Client) -> Answer:
            try:
                handle: WorkflowHandle[Any, Any] = await client.start_workflow(
                    workflow_type,
                    inp,
                    id=workflow_id,
                    task_queue=self.task_queue,
                    # Running already: that one. Closed already: refuse, never a second run.
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    rpc_timeout=timedelta(seconds=self.rpc_timeout),
                )
            except WorkflowAlreadyStartedError:
                # It ran and closed before we could record it (we restarted).
                return await self._describe(client, workflow_id, client.namespace)
            run_id = handle.result_run_id or handle.first_execution_run_id or ""
            return Answer(Outcome.STARTED, workflow=self._ref(client, workflow_id, run_id))

        return await self._guarded(call)

    async def describe(self, workflow: dict[str, Any]) -> Answer:
        """Where the recorded workflow is now (with its result once closed)."""
        wid, namespace = str(workflow.get("id", "")), workflow.get("namespace")

        async def call(client: Client) -> Answer:
            return await self._describe(client, wid, str(namespace or client.namespace))

        return await self._guarded(call)

    async def signal_approval(
        self, workflow_id: str, namespace: str | None, decision: ApprovalDecision
    ) -> Answer:
        """Relay an AgentApproval's decision to the waiting agent loop."""
        return await self._signal(workflow_id, namespace, APPROVAL_SIGNAL, decision)

    async def cancel(self, workflow_id: str, namespace: str | None) -> Answer:
        async def call(client: Client) -> Answer:
            scoped = _in_namespace(client, namespace)
            await scoped.get_workflow_handle(workflow_id).cancel(
                rpc_timeout=timedelta(seconds=self.rpc_timeout)
            )
            return Answer(Outcome.CANCEL_REQUESTED)

        return await self._guarded(call)

    async def signal_suspend(
        self, workflow_id: str, namespace: str | None, suspended: bool
    ) -> Answer:
        """Tell the running workflow that spec.suspend changed (idempotent:
        it sets a value)."""
        return await self._signal(workflow_id, namespace, SUSPEND_SIGNAL, suspended)

    async def _signal(self, workflow_id: str, namespace: str | None, name: str, arg: Any) -> Answer:
        """SIGNALLED, or REJECTED/WorkflowNotRunning when the workflow has
        ended (nothing is waiting for the signal any more)."""

        async def call(client: Client) -> Answer:
            handle = _in_namespace(client, namespace).get_workflow_handle(workflow_id)
            try:
                await handle.signal(name, arg, rpc_timeout=timedelta(seconds=self.rpc_timeout))
            except RPCError as exc:
                if not is_workflow_not_found(exc):
                    raise
                return Answer(Outcome.REJECTED, reason=WORKFLOW_NOT_RUNNING, message=str(exc)[:500])
            return Answer(Outcome.SIGNALLED)

        return await self._guarded(call)

    # ----- visibility: the cost of these does not grow with running executions ----

    async def list_closed(
        self, namespace: str, task_queue: str, since: datetime, limit: int = 10 * PAGE_SIZE
    ) -> list[ClosedWorkflow]:
        """Our workflows on ``task_queue`` that closed at or after ``since``
        (Temporal's clock), at most ``limit``. Raises TemporalUnavailable or
        RPCError: the caller is a background loop."""
        # A run that continued as new (an agent loop carrying its state on)
        # is no closing: the workflow goes on under the same ID.
        query = (
            f"{_ours(task_queue)} AND ExecutionStatus != 'Running' "
            f"AND ExecutionStatus != 'ContinuedAsNew' AND CloseTime >= '{_moment(since)}'"
        )
        closed: list[ClosedWorkflow] = []
        async for info in self._list(namespace, query, limit):
            if info.HasField("close_time"):
                closed.append(
                    ClosedWorkflow(
                        info.execution.workflow_id,
                        info.execution.run_id,
                        WorkflowExecutionStatus(info.status),
                        info.close_time.ToDatetime(tzinfo=UTC),
                    )
                )
        return closed

    async def count_running(
        self, namespace: str, task_queue: str, started_before: datetime | None = None
    ) -> int:
        """How many of our workflows on ``task_queue`` run now (one call), of
        those that started before ``started_before`` (Temporal's clock) if given."""
        query = f"{_ours(task_queue)} AND ExecutionStatus = 'Running'"
        if started_before is not None:
            query += f" AND StartTime < '{_moment(started_before)}'"

        async def call(client: Client) -> int:
            resp = await client.workflow_service.count_workflow_executions(
                CountWorkflowExecutionsRequest(namespace=namespace, query=query),
                retry=True,
                timeout=timedelta(seconds=self.rpc_timeout),
            )
            return int(resp.count)

        return await self._visibility(call)

    async def list_running(self, namespace: str, task_queue: str) -> set[str]:
        """The IDs of our workflows on ``task_queue`` that run now (a page per
        thousand: called only when the counts disagree)."""
        query = f"{_ours(task_queue)} AND ExecutionStatus = 'Running'"
        return {info.execution.workflow_id async for info in self._list(namespace, query, None)}

    async def _list(self, namespace: str, query: str, limit: int | None) -> Any:
        token = b""
        seen = 0
        while True:

            async def page(client: Client, token: bytes = token) -> Any:
                return await client.workflow_service.list_workflow_executions(
                    ListWorkflowExecutionsRequest(
                        namespace=namespace,
                        query=query,
                        page_size=PAGE_SIZE,
                        next_page_token=token,
                    ),
                    retry=True,
                    timeout=timedelta(seconds=self.rpc_timeout),
                )

            resp = await self._visibility(page)
            for info in resp.executions:
                yield info
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = resp.next_page_token
            if not token:
                return

    async def _visibility(self, fn: Callable[[Client], Awaitable[T]]) -> T:
        return await self.manager.call(fn, timeout=2 * self.rpc_timeout)

    async def _describe(self, client: Client, wid: str, namespace: str) -> Answer:
        resp = await client.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(
                namespace=namespace, execution=WorkflowExecution(workflow_id=wid)
            ),
            retry=True,
            timeout=timedelta(seconds=self.rpc_timeout),
        )
        info = resp.workflow_execution_info
        ref = {
            "id": wid,
            "runId": info.execution.run_id,
            "namespace": namespace,
            "taskQueue": info.task_queue or self.task_queue,
        }
        status = WorkflowExecutionStatus(info.status)
        if status == WorkflowExecutionStatus.RUNNING:
            started = any(
                a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                for a in resp.pending_activities
            )
            return Answer(Outcome.RUNNING, workflow=ref, agent_started=started or None)
        handle = _in_namespace(client, namespace).get_workflow_handle(
            wid, run_id=info.execution.run_id, result_type=ExecutionResult
        )
        if status == WorkflowExecutionStatus.COMPLETED:
            return Answer(Outcome.CLOSED, workflow=ref, result=await handle.result())
        if status == WorkflowExecutionStatus.FAILED:
            try:
                await handle.result()
            except WorkflowFailureError as err:
                result = _result_of_failure(err)
                if result is not None:
                    return Answer(Outcome.CLOSED, workflow=ref, result=result)
        phase, reason = CLOSED_STATUS.get(status, (FAILED, WORKFLOW_FAILED))
        return Answer(
            Outcome.CLOSED,
            workflow=ref,
            result=ExecutionResult(
                phase=phase,
                reason=reason,
                message=f"the workflow ended {status.name.lower()} in Temporal without reporting",
            ),
        )

    async def _guarded(self, fn: Any) -> Answer:
        try:
            answer: Answer = await self._until_disconnected(
                self.manager.call(fn, timeout=2 * self.rpc_timeout)
            )
        except TemporalUnavailable as exc:
            return Answer(Outcome.UNAVAILABLE, reason=exc.reason, message=exc.message)
        except RPCError as exc:
            # By the status and the detail type, never the text: the workflow
            # ID carries the Kubernetes namespace (errors.py).
            if is_workflow_not_found(exc):
                return Answer(Outcome.NOT_FOUND, message=str(exc)[:500])
            if missing_namespace(exc) is not None:
                # Not ours (the manager answers for that one): the namespace
                # an execution's workflow was recorded in is gone.
                reason = NAMESPACE_NOT_FOUND
            else:
                reason = _REJECTED_REASONS.get(exc.status, START_FAILED)
            return Answer(Outcome.REJECTED, reason=reason, message=describe_error(exc)[:1000])
        return answer

    async def _until_disconnected(self, call: Any) -> Answer:
        """The call, given up as soon as the manager sees Temporal go away.

        Against a blackholed server a call hangs until its deadline (10 s),
        while the probe notices within about a second: the execution then
        says "waiting for Temporal" at once instead of saying nothing.
        """
        task = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self.manager.wait_disconnected())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                # Given up, or the caller was cancelled (a reconcile stopped
                # when leadership ends): the Temporal call goes with it.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            raise self.manager.unavailable()
        result: Answer = task.result()
        return result


def _in_namespace(client: Client, namespace: str | None) -> Client:
    """The same connection, scoped to another namespace (no dial)."""
    if not namespace or namespace == client.namespace:
        return client
    return Client(client.service_client, namespace=namespace, data_converter=client.data_converter)


def _result_of_failure(err: WorkflowFailureError) -> ExecutionResult | None:
    """A workflow that failed on purpose carries its ExecutionResult as details."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type == EXECUTION_FAILED and cause.details:
        detail = cause.details[0]
        if isinstance(detail, ExecutionResult):
            return detail
        if isinstance(detail, dict):
            # Decoded by type, nested fields too (usage, attempts): the
            # details came without a type hint, as plain JSON.
            try:
                result = value_to_type(ExecutionResult, detail)
            except (TypeError, ValueError):
                return None
            return result if isinstance(result, ExecutionResult) else None
    return None
