"""The controller: triggers and leadership. Triggers enqueue; one reconcile decides.

Every trigger only puts an execution's key on the work queue: watch events
(the initial listing included), Temporal's connection changing (paced:
loops.ConditionPacer), workflows that closed or vanished in Temporal
(workflow_watch.py), the workflows' reports (``report_status``), timers.
``reconcile(key)`` (reconciler.py) then observes, decides (planner.py) and
applies (executor.py), and the queue acts on its verdict.

Only the replica holding the Lease runs the queue and the loops; the others
keep their caches warm and hold nothing else (no keys, no timers, no reports).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec.agents import AgentCache, AgentPolicy
from agentexec.approvals import ApprovalCache, applied_of
from agentexec.cache import ExecutionCache, Key, has_timer, key_of, needs_attention
from agentexec.conditions import (
    CONNECTED,
    PENDING,
    RUNNING,
    TERMINAL,
    WAITING_FOR_TEMPORAL,
    WORKFLOW_STARTED,
    Body,
    condition_of,
)
from agentexec.decisions import Config
from agentexec.events import EventRecorder
from agentexec.executor import Executor
from agentexec.kube import AGENT_PLURAL, APPROVAL_PLURAL, POLICY_PLURAL, Kube
from agentexec.logs import RateLimiter
from agentexec.loops import ConditionPacer, Loops
from agentexec.metrics import Metrics
from agentexec.policy import PolicyCache
from agentexec.reconciler import Reconciler
from agentexec.reports import Reports
from agentexec.runner.api import agent_names
from agentexec.settings import Settings
from agentexec.status import Connection, is_terminal, recorded_workflow, uid_of
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.types import REPORT_STATUS_ACTIVITY, StatusReport
from agentexec.tenancy import Tenancy, holds_a_slot
from agentexec.workflow_watch import WorkflowWatch
from agentexec.workqueue import Priority, WorkQueue

log = logging.getLogger("agentexec.controller")

# How long report_status waits for its report to be written before Temporal
# retries it (the activity's start-to-close timeout is 30 s).
REPORT_WAIT_SECONDS = 25.0


def build_config(settings: Settings, policy: AgentPolicy) -> Config:
    return Config(
        queue_ttl=settings.queue_ttl,
        finished_ttl=settings.ttl_seconds_after_finished,
        policy=policy,
        runner_task_queue=settings.runner_task_queue,
        no_runner_seconds=int(settings.no_runner_seconds),
        report_timeout_seconds=int(settings.report_timeout),
        heartbeat_timeout_seconds=int(settings.runner_heartbeat_timeout),
        max_disruptions=settings.max_disruptions,
        progress_interval=settings.progress_interval,
        start_rate=settings.start_rate,
        start_in_flight=2 * settings.temporal.rpc_timeout + 10.0,
        install=settings.install,
    )


class Controller:
    def __init__(
        self,
        settings: Settings,
        manager: TemporalManager,
        kube: Kube,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.kube = kube
        self.metrics = metrics
        self.gateway = TemporalGateway(manager, settings.task_queue, settings.temporal.rpc_timeout)
        self.events = EventRecorder(kube)
        self.cache = ExecutionCache()
        self.agents = AgentCache()
        self.approvals = ApprovalCache()  # AgentApprovals, by the execution they name
        self.policy = AgentPolicy(
            # The agents registered in this image: the runner Deployment (or the
            # in-process runner) serves them on the default runner queue.
            builtin_agents=agent_names() | {"echo"},
            execution_task_queues=frozenset(settings.execution_task_queues),
            runner_task_queue=settings.runner_task_queue,
        )
        self.queue: WorkQueue[Key] = WorkQueue()
        self.reports = Reports()
        # ExecutionPolicies by namespace (#22), and what they mean per execution.
        self.policies = PolicyCache()
        self.tenancy = Tenancy(self.cache, self.policies)
        self.executor = Executor(
            kube,
            self.gateway,
            self.events,
            self.cache,
            self.agents,
            self.approvals,
            metrics,
            self.connection,
            start_rate=settings.start_rate,
            delete_rate=settings.delete_rate,
            finished_ttl=settings.ttl_seconds_after_finished,
            policies=self.policies,
        )
        self.reconciler = Reconciler(
            self.cache,
            self.agents,
            self.approvals,
            self.reports,
            self.executor,
            metrics,
            build_config(settings, self.policy),
            self.connection,
            self.queue.failures,
            self.tenancy,
            self.wake,
        )
        self.loops = Loops()
        self.pacer = ConditionPacer(
            self.cache,
            self.queue,
            self.connection,
            rate=settings.condition_sync_rate,
            settle=settings.condition_sync_interval,
        )
        self.watch = WorkflowWatch(
            self.cache,
            self.gateway,
            lambda: self.manager.connected,
            self.check,
            settings.sweep_interval,
        )
        self.leading = False
        self._foreign_log = RateLimiter(period=30.0)
        manager.add_listener(lambda _state: self.pacer.changed())
        metrics.waiting_for_temporal.set_function(self._count_waiting)
        metrics.budgets = self.policies.all
        for phase in ("Unknown", *TERMINAL, PENDING, RUNNING):
            metrics.executions.labels(phase=phase).set_function(
                lambda phase=phase: float(self.cache.phases[phase])  # type: ignore[misc]
            )

    async def start_leading(self) -> None:
        await self._prime_agents()
        self.leading = True
        ttl = self.settings.ttl_seconds_after_finished
        for key, body in self.cache.items():
            if needs_attention(body) or has_timer(body, ttl):
                self.queue.add(key)
        for key in self.approvals.unsettled():  # (a finished execution's too)
            self.queue.add(key)
        self.watch.reset()  # what closed while nobody led is found by its first look
        self.queue.start(self.reconciler.reconcile, self.settings.reconcile_workers)
        self.loops.spawn("workflow-watch", self.watch.step)
        self.loops.spawn("condition-pacer", self.pacer.step)

    async def stop_leading(self) -> None:
        self.leading = False
        await self.queue.stop()
        await self.loops.stop()
        # A standby holds nothing: no keys, timers, turns or checks. Reports
        # waiting here fail now, and Temporal retries them on the leader.
        self.queue.clear()
        self.reconciler.clear()
        self.reports.fail_all()

    def stopped_loops(self) -> list[str]:
        if not self.leading:
            return []
        stopped = self.loops.stopped()
        if not self.queue.running:
            stopped.append("reconcile-workers")
        return stopped

    def on_event(self, event_type: str | None, body: Body) -> None:
        """A watch event (the initial listing included): cache it, enqueue its key."""
        key = key_of(body)
        if key is None:
            return
        if event_type == "DELETED":
            self._forget(key, uid_of(body))
            return
        if not self.cache.put(key, body):
            return
        if not self.leading:
            return  # start_leading enqueues what needs it
        if (
            event_type is None
            and not needs_attention(body)
            and not has_timer(body, self.settings.ttl_seconds_after_finished)
        ):
            return  # a listing's finished execution: nothing to do
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            priority = Priority.FINISH  # a deletion is finishing work
        elif event_type == "ADDED":
            # A new execution goes ahead of any backlog (a resync, a burst
            # released by Temporal coming back): its latency is what users see.
            priority = Priority.NEW
        else:
            priority = Priority.NORMAL
        self.queue.add(key, priority)

    def on_agent_event(self, event_type: str | None, body: Body) -> None:
        """An Agent watch event: cache it, enqueue the executions that name it and
        have not started (they wait for it, or will snapshot this version)."""
        key = key_of(body)
        if key is None:
            return
        changed = self.agents.remove(body) if event_type == "DELETED" else self.agents.put(body)
        if not changed or not self.leading:
            return
        namespace, name = key
        for ekey, execution in self.cache.active_items():
            spec = execution.get("spec")
            if (
                ekey[0] == namespace
                and isinstance(spec, Mapping)
                and spec.get("agent") == name
                and not is_terminal(execution)
                and not recorded_workflow(execution).get("id")
            ):
                self.queue.add(ekey)

    def on_approval_event(self, event_type: str | None, body: Body) -> None:
        """An AgentApproval watch event: cache it, enqueue the execution it
        names while the operator has not said what came of it."""
        key = key_of(body)
        if key is None:
            return
        if event_type == "DELETED":
            self.approvals.remove(*key)
            return
        execution = self.approvals.put(body)
        if execution is not None and self.leading and not applied_of(body):
            self.queue.add(execution)

    def on_policy_event(self, event_type: str | None, body: Body) -> None:
        """An ExecutionPolicy watch event: cache it, and enqueue the namespace's
        executions that have not started (a rule, the quota or the budget
        changed for them). The echo of our own status write (a finished
        execution's tokens counted) is nothing new: it enqueues nothing."""
        if event_type == "DELETED":
            self.policies.remove(body)
        elif self.policies.holds(body):
            return
        else:
            self.policies.put(body)
        namespace = (body.get("metadata") or {}).get("namespace")
        if not self.leading or not isinstance(namespace, str):
            return
        for key in self.tenancy.unstarted(namespace):
            self.queue.add(key)

    def wake(self, namespace: str) -> None:
        """A slot of the namespace's running quota came free: the oldest
        executions waiting for one take their turn."""
        if not self.leading:
            return
        for key in self.tenancy.next_in_line(namespace):
            self.queue.add(key)

    def on_listed(self, plural: str, namespace: str | None, listed: Mapping[Key, str]) -> None:
        """A (re-)listing of ``plural`` in ``namespace`` (None: the cluster) is
        complete: it replaces what we held there. Objects deleted while the
        watch was away (a 410 Gone, an API server outage) were never told
        with a DELETED event; they are not in ``listed`` (key: uid)."""
        if plural == AGENT_PLURAL:
            for gone in self.agents.absent(namespace, listed):
                self.on_agent_event("DELETED", gone)
            return
        if plural == APPROVAL_PLURAL:
            for named in self.approvals.absent(namespace, listed):
                self.approvals.remove(*named)
            return
        if plural == POLICY_PLURAL:
            for gone in self.policies.absent(namespace, listed):
                self.on_policy_event("DELETED", gone)
            return
        for key, body in self.cache.items():
            if namespace is not None and key[0] != namespace:
                continue
            if listed.get(key) != uid_of(body):
                self._forget(key, uid_of(body))

    def check(self, key: Key) -> None:
        """Verify ``key``'s workflow against Temporal (it closed or vanished there)."""
        if not self.leading:
            return
        self.reconciler.checks.add(key)
        self.queue.add(key, Priority.FINISH)

    async def _prime_agents(self) -> None:
        """List the Agents before the first reconcile, so that no execution is
        decided before the Agents watch has delivered its first listing (an
        Agent would otherwise look missing for a moment, or lose to a
        built-in agent of the same name). Best effort: the watch fills in."""
        try:
            for namespace in self.settings.watch_namespaces or (None,):
                async with asyncio.timeout(10):
                    listed = await self.kube.list_agents(namespace)
                for body in listed:
                    self.agents.put(body)
        except Exception as exc:
            log.warning(
                "could not list Agents; relying on the watch",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )

    def _forget(self, key: Key, uid: str) -> None:
        """The object with ``uid`` is gone; a newer one of the same name stays."""
        held = self.cache.get(key)
        freed = held is not None and holds_a_slot(held)
        if not self.cache.remove(key, uid):
            self.reports.drop(key, uid)
            return
        self.queue.remove(key)
        self.reconciler.forget(key)
        self.reports.drop(key, uid)
        self.events.forget(uid)
        if freed:
            self.wake(key[0])  # a running one deleted: its slot is free

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(self, report: StatusReport) -> None:
        """The workflow says how it ended: enqueue, and return once it is written."""
        foreign = self._foreign(report)
        if foreign is not None:
            raise foreign
        if not self.leading:
            # Temporal retries the activity; it lands on the leader.
            raise _not_leader("this replica is not the leader")
        waiter = self.reports.submit(report)
        self.queue.add((report.ref.namespace, report.ref.name), Priority.FINISH)
        async with asyncio.timeout(REPORT_WAIT_SECONDS):
            written = await asyncio.shield(waiter)
        if not written:
            raise _not_leader("leadership moved before the report was written")

    def _foreign(self, report: StatusReport) -> ApplicationError | None:
        """Why ``report`` is not this install's (a log line and a metric, then
        refused), or None. A report runs on its workflow's task queue, so one
        reaches this operator from another install only when both poll that
        queue (they cross: docs/operations.md#installs-crossing): the workflow
        says which install started it (ExecutionInput.install; workflows from
        before it say nothing and are taken), or it is about a namespace this
        install does not watch."""
        install, watched = self.settings.install, self.settings.watch_namespaces
        if report.install and report.install != install:
            reason = "other_install"
            why = f"its workflow was started by install {report.install!r}, not {install!r}"
        elif watched and report.ref.namespace not in watched:
            reason = "unknown_execution"
            why = f"namespace {report.ref.namespace!r} is not watched by this install"
        else:
            return None
        self.metrics.foreign_reports.labels(reason=reason).inc()
        held = self._foreign_log.allow(reason)
        if held is not None:
            log.warning(
                "refused a report of a workflow that is not this install's",
                extra={
                    "install": self.settings.install,
                    "workflow_id": report.workflow_id,
                    "execution": f"{report.ref.namespace}/{report.ref.name}",
                    "reason": reason,
                    "why": why,
                    "suppressed_repeats": held,
                },
            )
        return _foreign_report(f"refused by install {self.settings.install!r}: {why}")

    def connection(self) -> Connection:
        if self.manager.connected:
            return Connection(True, CONNECTED, f"connected to {self.settings.temporal.address}")
        unavailable = self.manager.unavailable()
        return Connection(False, unavailable.reason, unavailable.message)

    def _count_waiting(self) -> float:
        return float(
            sum(
                1
                for _, body in self.cache.active_items()
                if not is_terminal(body)
                and not recorded_workflow(body).get("id")
                and (condition_of(body, WORKFLOW_STARTED) or {}).get("reason")
                == WAITING_FOR_TEMPORAL
            )
        )

    def status(self) -> dict[str, Any]:
        return {
            "leading": self.leading,
            "known": len(self.cache),
            "agents": len(self.agents),
            "approvals": len(self.approvals),
            "queued": len(self.queue),
            "waiting_for_temporal": int(self._count_waiting()),
            "pending_reports": len(self.reports),
            # Per-key state held anywhere besides the caches (a leak shows here).
            "tracked_keys": self.queue.tracked()
            + self.reconciler.tracked()
            + len(self.reports)
            + len(self.events),
            "temporal_watch_calls": self.watch.calls,
            "condition_walk_enqueued": self.pacer.enqueued,
            "loops_stopped": self.stopped_loops(),
        }


def _foreign_report(message: str) -> ApplicationError:
    """A report of a workflow that is not this install's: refused, and retried
    (its own install's operator, polling the same queue, takes it in time)."""
    return ApplicationError(
        message,
        type="ForeignReport",
        next_retry_delay=timedelta(seconds=1),
        category=ApplicationErrorCategory.BENIGN,
    )


def _not_leader(message: str) -> ApplicationError:
    """A report that reached a standby: retried at once, so that it soon lands on
    the leader's worker (an idle standby's poller would otherwise win most of
    the backed-off retries), and no traceback: it is expected."""
    return ApplicationError(
        message,
        type="NotLeader",
        next_retry_delay=timedelta(milliseconds=200),
        category=ApplicationErrorCategory.BENIGN,
    )
