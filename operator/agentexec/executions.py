"""Reconciliation of AgentExecutions with Temporal: the I/O around the planner.

The kopf handlers are thin and call in here. This module:

- starts workflows (one per execution, by a derived ID), or queues the
  execution while Temporal is unavailable and starts it when the manager
  reports "connected", at a bounded rate;
- applies status reports from the workflow (the ``report_status`` activity);
- mirrors the connection state onto every non-terminal execution, batched;
- sweeps: queue TTL, and running executions whose workflow closed without
  reporting (terminated from Temporal's side);
- cancels workflows on delete.

The queue lives in memory but the resources are the queue: kopf's resume
handler re-queues every waiting execution when the operator starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from agentexec import planner
from agentexec.kube import Kube
from agentexec.metrics import Metrics
from agentexec.planner import Body, Connection
from agentexec.settings import Settings
from agentexec.temporal.manager import TemporalManager, TemporalUnavailable
from agentexec.temporal.types import (
    REPORT_STATUS_ACTIVITY,
    ExecutionInput,
    ExecutionRef,
    ExecutionResult,
    StatusReport,
)
from agentexec.temporal.workflows import AgentExecutionWorkflow

log = logging.getLogger("agentexec.executions")
Key = tuple[str, str]  # (namespace, name)


@dataclass
class Record:
    """What the operator last saw of one execution (from kopf's watch)."""

    uid: str
    phase: str | None
    connected: tuple[str | None, str | None]  # TemporalConnected (status, reason)
    queued: datetime | None
    seen: float


def _now() -> datetime:
    return datetime.now(UTC)


def build_input(body: Body, settings: Settings) -> ExecutionInput:
    """The workflow input from the spec; defaults for anything odd or missing."""
    meta = body.get("metadata", {})
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    params = spec.get("parameters")
    timeout = spec.get("timeoutSeconds")
    queue = spec.get("taskQueue")
    session = spec.get("sessionId")
    return ExecutionInput(
        ref=ExecutionRef(meta["namespace"], meta["name"], meta["uid"]),
        agent=str(spec.get("agent", "")),
        message=str(spec.get("message", "")),
        runner_task_queue=queue if isinstance(queue, str) and queue else settings.runner_task_queue,
        timeout_seconds=timeout if isinstance(timeout, int) and timeout > 0 else 3600,
        session_id=session if isinstance(session, str) else None,
        parameters=dict(params) if isinstance(params, Mapping) else {},
    )


def key_of(body: Body) -> Key:
    meta = body["metadata"]
    return meta["namespace"], meta["name"]


def _workflow_id(body: Body) -> str:
    meta = body["metadata"]
    return planner.workflow_id(meta["namespace"], meta["name"], meta["uid"])


def _rpc_status(exc: BaseException) -> RPCStatusCode | None:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, RPCError):
            return cause.status
        cause = cause.__cause__
    return None


class Reconciler:
    def __init__(
        self, settings: Settings, manager: TemporalManager, kube: Kube, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.kube = kube
        self.metrics = metrics
        self.records: dict[Key, Record] = {}
        self._phases: Counter[str] = Counter()
        self._waiting: dict[Key, str] = {}
        self._starting: set[Key] = set()
        self._wake_queue = asyncio.Event()
        self._conn_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._writes = asyncio.Semaphore(32)
        manager.add_listener(lambda _state: self._conn_dirty.set())

    # ----- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._queue_loop(), name="start-queue"),
            asyncio.create_task(self._condition_loop(), name="condition-sync"),
            asyncio.create_task(self._sweep_loop(), name="sweep"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def waiting(self) -> int:
        """Executions queued until Temporal is available."""
        return len(self._waiting)

    # ----- what kopf's watch tells us ---------------------------------------------

    def observe(self, body: Body, deleted: bool = False) -> None:
        """Every watch event: keep the registry and the phase gauge current."""
        try:
            key = key_of(body)
            uid = body["metadata"]["uid"]
        except (KeyError, TypeError):
            return
        old = self.records.pop(key, None)
        if old is not None:
            self._phases[old.phase or "Unknown"] -= 1
        if not deleted:
            cond = planner.condition_of(body, planner.TEMPORAL_CONNECTED) or {}
            record = Record(
                uid=uid,
                phase=planner.phase_of(body),
                connected=(cond.get("status"), cond.get("reason")),
                queued=planner.parse_time(planner.status_of(body).get("queuedTime")),
                seen=time.monotonic(),
            )
            self.records[key] = record
            self._phases[record.phase or "Unknown"] += 1
            if (
                record.phase not in planner.TERMINAL
                and record.connected != self._wanted_condition()
            ):
                self._conn_dirty.set()
        else:
            self._waiting.pop(key, None)
        for phase in ("Unknown", *planner.TERMINAL, planner.PENDING, planner.RUNNING):
            self.metrics.executions.labels(phase=phase).set(self._phases[phase])
        self.metrics.waiting_for_temporal.set(len(self._waiting))

    def connection(self) -> Connection:
        if self.manager.connected:
            return Connection(True, "Connected", f"connected to {self.settings.temporal.address}")
        unavailable = self.manager.unavailable()
        return Connection(False, unavailable.reason, unavailable.message)

    def _wanted_condition(self) -> tuple[str, str]:
        conn = self.connection()
        return ("True" if conn.connected else "False", conn.reason)

    # ----- create / resume ----------------------------------------------------------

    async def reconcile(self, body: Body) -> str:
        """Bring one execution forward. Returns what happened (for logs and tests)."""
        if planner.is_terminal(body):
            return "terminal"
        if planner.status_of(body).get("workflow"):
            # Resumed with a workflow on record: ask Temporal where it is.
            return await self.sync_from_temporal(body)
        return await self.start_execution(body)

    async def start_execution(self, body: Body) -> str:
        key, uid = key_of(body), body["metadata"]["uid"]
        if not self.manager.connected:
            return await self._wait(body, self.connection())
        try:
            inp = build_input(body, self.settings)
            run_id, closed = await self.manager.call(
                lambda client: self._start_workflow(client, _workflow_id(body), inp)
            )
        except TemporalUnavailable as exc:
            self.metrics.workflow_starts.labels(result="unavailable").inc()
            return await self._wait(body, Connection(False, exc.reason, exc.message))
        except Exception as exc:
            self.metrics.workflow_starts.labels(result="failed").inc()
            message = f"starting the workflow failed: {type(exc).__name__}: {exc}"[:1000]
            log.warning("start failed", extra={"execution": "/".join(key), "error": message})
            await self._write(key, uid, lambda b: planner.plan_start_failed(b, _now(), message))
            await self.kube.post_event(body, "Warning", "StartFailed", message)
            raise
        self._waiting.pop(key, None)
        self.metrics.waiting_for_temporal.set(len(self._waiting))
        self.metrics.workflow_starts.labels(result="started").inc()
        workflow = self._workflow_ref(body, run_id)
        conn = self.connection()
        await self._write(
            key,
            uid,
            lambda b: planner.plan_started(b, _now(), workflow=workflow, conn=conn),
            body=dict(body),  # first try on what we have; a conflict re-reads
        )
        if closed:  # it had already finished (we restarted before writing status)
            return await self.sync_from_temporal(body)
        return "started"

    async def _start_workflow(
        self, client: Client, workflow_id: str, inp: ExecutionInput
    ) -> tuple[str, bool]:
        """Start, or find the one already there. Returns (run id, already closed)."""
        try:
            handle: WorkflowHandle[Any, Any] = await client.start_workflow(
                AgentExecutionWorkflow.run,
                inp,
                id=workflow_id,
                task_queue=self.settings.task_queue,
                # Running already: that one. Closed already: refuse, never a second run.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                rpc_timeout=timedelta(seconds=self.settings.temporal.rpc_timeout),
            )
        except WorkflowAlreadyStartedError:
            self.metrics.workflow_starts.labels(result="already_started").inc()
            desc = await client.get_workflow_handle(workflow_id).describe()
            return desc.run_id, desc.status != WorkflowExecutionStatus.RUNNING
        return handle.result_run_id or handle.first_execution_run_id or "", False

    def _workflow_ref(self, body: Body, run_id: str) -> dict[str, str]:
        return {
            "id": _workflow_id(body),
            "runId": run_id,
            "namespace": self.settings.temporal.namespace,
            "taskQueue": self.settings.task_queue,
        }

    async def _wait(self, body: Body, conn: Connection) -> str:
        """Temporal is unavailable: say so on the resource and queue the start."""
        key, uid = key_of(body), body["metadata"]["uid"]
        written, patch = await self._write(
            key,
            uid,
            lambda b: planner.plan_waiting(b, conn, _now(), self.settings.queue_ttl),
            body=dict(body),
        )
        if written is None or patch is None:
            return "gone"
        if patch.get("phase") == planner.FAILED:
            self._waiting.pop(key, None)
            await self.kube.post_event(
                written, "Warning", "QueueTimeout", patch["error"]["message"]
            )
            return "queue-timeout"
        self._waiting[key] = uid
        self.metrics.waiting_for_temporal.set(len(self._waiting))
        self._wake_queue.set()
        await self.kube.post_event(
            written,
            "Warning",
            "WaitingForTemporal",
            f"workflow not started (attempt {patch.get('startAttempts')}): {conn.message}",
        )
        return "waiting"

    # ----- the queue: start waiting executions promptly, at a bounded rate -------

    async def _queue_loop(self) -> None:
        interval = 1.0 / self.settings.start_rate
        running: set[asyncio.Task[None]] = set()
        while True:
            if not self._waiting:
                self._wake_queue.clear()
                await self._wake_queue.wait()
                continue
            if not self.manager.connected:
                await self.manager.wait_connected()
                continue
            log.info("starting waiting executions", extra={"count": len(self._waiting)})
            for key in list(self._waiting):
                if not self.manager.connected:
                    break
                uid = self._waiting.pop(key, None)
                if uid is None:
                    continue
                task = asyncio.create_task(self._start_waiting(key, uid))
                running.add(task)
                task.add_done_callback(running.discard)
                await asyncio.sleep(interval)
            self.metrics.waiting_for_temporal.set(len(self._waiting))
            if running:
                await asyncio.wait(set(running))

    async def _start_waiting(self, key: Key, uid: str) -> None:
        self._starting.add(key)
        async with self._writes:
            try:
                body = await self.kube.get(*key)
                if body is None or body["metadata"]["uid"] != uid:
                    return
                await self.reconcile(body)
            except Exception:
                log.exception(
                    "starting a waiting execution failed", extra={"execution": "/".join(key)}
                )
                self._waiting.setdefault(key, uid)

    # ----- workflow reports ------------------------------------------------------------

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(self, report: StatusReport) -> None:
        """The workflow says where it is; write it to the resource (retried by Temporal)."""
        ref, result = report.ref, report.result
        workflow = {
            "id": report.workflow_id,
            "runId": report.run_id,
            "namespace": self.settings.temporal.namespace,
            "taskQueue": self.settings.task_queue,
        }
        await self.apply_result((ref.namespace, ref.name), ref.uid, result, workflow)

    async def apply_result(
        self, key: Key, uid: str, result: ExecutionResult, workflow: dict[str, str]
    ) -> None:
        conn = self.connection()
        written, patch = await self.kube.patch_status(
            *key,
            lambda b: planner.plan_report(
                b,
                _now(),
                phase=result.phase,
                workflow=workflow,
                conn=conn,
                output=result.output,
                reason=result.reason,
                message=result.message,
            ),
            uid=uid,
        )
        if written is not None and patch is not None and "phase" in patch:
            await self._phase_event(written, patch)

    async def _phase_event(self, body: Body, patch: Mapping[str, Any]) -> None:
        phase = patch["phase"]
        error = patch.get("error") or {}
        if phase == planner.FAILED:
            await self.kube.post_event(
                body, "Warning", error.get("reason", "Failed"), error.get("message", "")
            )
        else:
            await self.kube.post_event(body, "Normal", phase, f"phase is now {phase}")

    async def _write(
        self, key: Key, uid: str, plan: Any, body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        written, patch = await self.kube.patch_status(*key, plan, uid=uid, body=body)
        if (
            written is not None
            and patch is not None
            and patch.get("phase")
            in (
                planner.RUNNING,
                *planner.TERMINAL,
            )
        ):
            await self._phase_event(written, patch)
        return written, patch

    # ----- what Temporal says ------------------------------------------------------

    async def sync_from_temporal(self, body: Body) -> str:
        """Reconcile a started execution with its workflow (resume, sweep)."""
        key, uid, wid = key_of(body), body["metadata"]["uid"], _workflow_id(body)
        try:
            desc = await self.manager.call(lambda c: c.get_workflow_handle(wid).describe())
        except TemporalUnavailable:
            return "unknown"  # the sweep asks again later
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                log.warning(
                    "workflow on record not found in Temporal; starting it",
                    extra={"execution": "/".join(key), "workflow_id": wid},
                )
                return await self.start_execution(body)
            raise
        workflow = self._workflow_ref(body, desc.run_id)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            conn = self.connection()
            await self._write(
                key,
                uid,
                lambda b: planner.plan_started(
                    b, _now(), workflow=workflow, conn=conn, counted_attempt=False
                ),
            )
            return "running"
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            result: ExecutionResult = await self.manager.call(
                lambda c: c.get_workflow_handle(wid, result_type=ExecutionResult).result()
            )
        else:
            phase, reason = planner.CLOSED_STATUS[desc.status.name if desc.status else "FAILED"]
            result = ExecutionResult(
                phase=phase,
                reason=reason,
                message=f"the workflow ended {desc.status.name.lower() if desc.status else ''} "
                "in Temporal without reporting",
            )
        await self.apply_result(key, uid, result, workflow)
        return "closed"

    # ----- connection state on every non-terminal execution ---------------------------

    async def _condition_loop(self) -> None:
        while True:
            await self._conn_dirty.wait()
            # Batch: one pass per interval however often the state flips.
            await asyncio.sleep(self.settings.condition_sync_interval)
            self._conn_dirty.clear()
            await self.sync_conditions()

    async def sync_conditions(self) -> int:
        conn = self.connection()
        wanted = ("True" if conn.connected else "False", conn.reason)
        stale = [
            (key, record)
            for key, record in list(self.records.items())
            if record.phase not in planner.TERMINAL
            and record.connected != wanted
            # A queued execution gets the condition with its start; writing it
            # here too would only race that write.
            and not (conn.connected and (key in self._waiting or key in self._starting))
        ]

        async def one(key: Key, record: Record) -> None:
            async with self._writes:
                try:
                    await self.kube.patch_status(
                        *key, lambda b: planner.plan_connection(b, conn, _now()), uid=record.uid
                    )
                    record.connected = wanted
                except Exception as exc:
                    log.warning(
                        "could not update TemporalConnected",
                        extra={"execution": "/".join(key), "error": str(exc)[:200]},
                    )
                    self._conn_dirty.set()

        await asyncio.gather(*(one(k, r) for k, r in stale))
        return len(stale)

    # ----- sweep: queue TTL and workflows that closed without reporting -------------

    async def _sweep_loop(self) -> None:
        period = min(5.0, self.settings.queue_ttl / 4)
        last_running_sweep = time.monotonic()
        while True:
            await asyncio.sleep(period)
            await self._expire_waiting()
            if time.monotonic() - last_running_sweep >= self.settings.sweep_interval:
                last_running_sweep = time.monotonic()
                await self._sweep_running()

    async def _expire_waiting(self) -> None:
        now = _now()
        for key, uid in list(self._waiting.items()):
            record = self.records.get(key)
            if record is None or record.queued is None:
                continue
            if (now - record.queued).total_seconds() > self.settings.queue_ttl:
                self._waiting.pop(key, None)
                body = await self.kube.get(*key)
                if body is not None and body["metadata"]["uid"] == uid:
                    await self._wait(body, self.connection())
        self.metrics.waiting_for_temporal.set(len(self._waiting))

    async def _sweep_running(self) -> None:
        if not self.manager.connected:
            return
        stale_before = time.monotonic() - self.settings.sweep_interval
        for key, record in list(self.records.items()):
            if record.phase != planner.RUNNING or record.seen > stale_before:
                continue
            async with self._writes:
                try:
                    body = await self.kube.get(*key)
                    if body is not None and body["metadata"]["uid"] == record.uid:
                        await self.sync_from_temporal(body)
                except Exception as exc:
                    log.warning(
                        "sweep failed", extra={"execution": "/".join(key), "error": str(exc)[:200]}
                    )

    # ----- delete -----------------------------------------------------------------

    async def cancel(self, body: Body) -> str:
        """Cancel the workflow. Returns "cancelled", "not-found" or raises TemporalUnavailable."""
        key, uid, wid = key_of(body), body["metadata"]["uid"], _workflow_id(body)
        self._waiting.pop(key, None)
        try:
            await self.manager.call(lambda c: c.get_workflow_handle(wid).cancel())
            outcome = "cancelled"
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
            outcome = "not-found"  # never started, or already closed
        if not planner.is_terminal(body):
            await self._write(
                key,
                uid,
                lambda b: planner.plan_terminal(
                    b,
                    planner.CANCELLED,
                    _now(),
                    reason="Deleted",
                    message="the AgentExecution was deleted; its workflow was cancelled",
                ),
            )
        return outcome
