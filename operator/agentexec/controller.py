"""Reconciliation of AgentExecutions: triggers enqueue, one reconcile decides.

Every trigger only puts the execution's key on the work queue: watch events,
Temporal becoming connected (or not), the sweep, the workflow's reports,
the queue TTL (a delayed add). ``reconcile(key)`` then reads what is true
now (the watch's view of the object, or our own last write if newer),
asks the pure planner for a decision, makes the Temporal call the decision
needs (and decides again with the answer), and applies it: finalizer,
status, events, requeue. One reconcile per key at a time, so a queued start
can never land after a delete decided there was nothing to cancel.

Only the replica holding the Lease runs the queue, the sweep and the
connection trigger; the others keep their cache warm and write nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from agentexec import backoff, lifecycle, planner
from agentexec.agents import AgentCache, AgentPolicy
from agentexec.approvals import APPLIED, plan_approvals, slim_approval
from agentexec.events import EventRecorder
from agentexec.kube import Kube, KubeError
from agentexec.metrics import Metrics
from agentexec.planner import Body, Call, Connection, Decision, Observed
from agentexec.policy import token_limit
from agentexec.runner.api import agent_names
from agentexec.settings import Settings
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalManager
from agentexec.temporal.steps import ASSISTANT, LoopInput, build_loop_spec
from agentexec.temporal.types import (
    REPORT_STATUS_ACTIVITY,
    WORKFLOW_NOT_RUNNING,
    AgentSpec,
    Answer,
    ExecutionInput,
    ExecutionRef,
    Outcome,
    StatusReport,
)
from agentexec.workqueue import TokenBucket, WorkQueue

log = logging.getLogger("agentexec.controller")
Key = tuple[str, str]  # (namespace, name)


def _now() -> datetime:
    return datetime.now(UTC)


def key_of(body: Body) -> Key | None:
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns, name) if isinstance(ns, str) and isinstance(name, str) else None


def build_input(body: Body, settings: Settings, agent: AgentSpec | None = None) -> ExecutionInput:
    """The workflow input from the spec; defaults for anything odd or missing.

    With an Agent snapshot, the runner is sent the Agent's type as the agent,
    the merged parameters, and the Agent's queue and timeout unless the
    execution names its own.
    """
    meta = body.get("metadata", {})
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    params = spec.get("parameters")
    queue = spec.get("taskQueue")
    session = spec.get("sessionId")
    if not (isinstance(queue, str) and queue):
        queue = (agent.task_queue if agent else None) or settings.runner_task_queue
    timeout, deadline_field = lifecycle.deadline_of(spec, agent)
    return ExecutionInput(
        ref=ExecutionRef(meta["namespace"], meta["name"], meta["uid"]),
        agent=agent.type if agent else str(spec.get("agent", "")),
        message=str(spec.get("message", "")),
        runner_task_queue=queue,
        timeout_seconds=timeout,
        session_id=session if isinstance(session, str) else None,
        parameters=dict(
            agent.parameters if agent else params if isinstance(params, Mapping) else {}
        ),
        no_runner_seconds=int(settings.no_runner_seconds),
        report_timeout_seconds=int(settings.report_timeout),
        agent_spec=agent,
        heartbeat_timeout_seconds=int(settings.runner_heartbeat_timeout),
        max_tokens=token_limit(spec),
        backoff_limit=lifecycle.backoff_limit_of(spec),
        max_disruptions=settings.max_disruptions,
        deadline_field=deadline_field,
    )


def build_start_input(
    body: Body, settings: Settings, agent: AgentSpec | None = None
) -> ExecutionInput | LoopInput:
    """The workflow input: an assistant's runs the agent loop (LoopInput)."""
    inp = build_input(body, settings, agent)
    if agent is None or agent.type != ASSISTANT:
        return inp
    spec = body.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    return LoopInput(
        execution=inp,
        loop=build_loop_spec(
            agent.loop, inp.ref.namespace, token_limit(spec), inp.parameters.get("toolChoice")
        ),
        progress_interval_seconds=settings.progress_interval,
    )


def _rv(body: Body) -> int | None:
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def _slim(body: Body) -> dict[str, Any]:
    """What reconcile needs of an object, and no more (memory per execution).

    A finished execution keeps its identity, finalizers, phase, completion
    time and TTL only.
    """
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    slim_meta = {
        k: meta[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "finalizers",
            "creationTimestamp",
        )
        if k in meta
    }
    if isinstance(annotations, Mapping) and planner.FORCE_DELETE in annotations:
        slim_meta["annotations"] = {planner.FORCE_DELETE: annotations[planner.FORCE_DELETE]}
    status = body.get("status")
    status = status if isinstance(status, Mapping) else {}
    if status.get("phase") in planner.TERMINAL:
        spec = body.get("spec")
        ttl = spec.get("ttlSecondsAfterFinished") if isinstance(spec, Mapping) else None
        return {
            "metadata": slim_meta,
            "spec": {} if ttl is None else {"ttlSecondsAfterFinished": ttl},
            "status": {k: status[k] for k in ("phase", "completionTime") if k in status},
        }
    return {"metadata": slim_meta, "spec": body.get("spec"), "status": dict(status)}


class ExecutionCache:
    """The latest view of every execution: the watch's, or our own write if newer."""

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any]] = {}
        self.phases: Counter[str] = Counter()

    def put(self, key: Key, body: Body) -> bool:
        """Keep ``body`` unless we already hold it or a newer version.

        Returns whether it was news: the watch echoing our own write (same
        resourceVersion) or lagging behind it is not, and enqueues nothing.
        """
        old = self._objects.get(key)
        if old is not None:
            old_rv, new_rv = _rv(old), _rv(body)
            same = old["metadata"].get("uid") == body.get("metadata", {}).get("uid")
            if same and old_rv is not None and new_rv is not None and new_rv <= old_rv:
                return False
            self.phases[planner.phase_of(old) or "Unknown"] -= 1
        slim = _slim(body)
        self._objects[key] = slim
        self.phases[planner.phase_of(slim) or "Unknown"] += 1
        return True

    def remove(self, key: Key) -> None:
        old = self._objects.pop(key, None)
        if old is not None:
            self.phases[planner.phase_of(old) or "Unknown"] -= 1

    def get(self, key: Key) -> dict[str, Any] | None:
        return self._objects.get(key)

    def items(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        return iter(list(self._objects.items()))

    def __len__(self) -> int:
        return len(self._objects)


def needs_attention(body: Body) -> bool:
    """Whether reconcile has anything to do for this object (at start-up, on a
    connection change): not for finished executions without our finalizer."""
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return planner.FINALIZER in (meta.get("finalizers") or [])
    if planner.is_terminal(body):
        return planner.FINALIZER in (meta.get("finalizers") or [])
    return True


def has_timer(body: Body, finished_ttl: float | None) -> bool:
    """A finished execution that its TTL will delete: reconcile sets its timer."""
    meta = body.get("metadata") or {}
    return not meta.get("deletionTimestamp") and planner.expiry_of(body, finished_ttl) is not None


@dataclass
class _Report:
    report: StatusReport
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)


class Loops:
    """Long-lived background loops that survive their own errors and say so."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failures: Counter[str] = Counter()

    def spawn(self, name: str, step: Callable[[], Awaitable[float]]) -> None:
        """Run ``step`` forever; it returns the seconds until the next run.

        An error is logged and retried with backoff; the loop never ends by itself.
        """

        async def forever() -> None:
            failures = 0
            while True:
                try:
                    delay = await step()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    self.failures[name] += 1
                    delay = backoff.LOOP.delay(failures, random.random())
                    log.warning(
                        "background loop failed; retrying",
                        extra={
                            "loop": name,
                            "error": f"{type(exc).__name__}: {exc}"[:300],
                            "retry_in_seconds": delay,
                        },
                    )
                await asyncio.sleep(delay)

        self._tasks[name] = asyncio.create_task(forever(), name=name)

    def stopped(self) -> list[str]:
        """Loops that should run and do not (a bug: /healthz reports them)."""
        return sorted(name for name, task in self._tasks.items() if task.done())

    async def stop(self) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
        self.approvals: dict[Key, dict[str, Any]] = {}  # AgentApprovals by (namespace, name)
        self.policy = AgentPolicy(
            # The agents registered in this image: the runner Deployment (or the
            # in-process runner) serves them on the default runner queue.
            builtin_agents=agent_names() | {"echo"},
            execution_task_queues=frozenset(settings.execution_task_queues),
            runner_task_queue=settings.runner_task_queue,
        )
        self.queue: WorkQueue[Key] = WorkQueue()
        self.starts = TokenBucket(settings.start_rate, burst=max(1, int(settings.start_rate)))
        self.deletes = TokenBucket(settings.delete_rate, burst=max(1, int(settings.delete_rate)))
        self.loops = Loops()
        self.leading = False
        self._reports: dict[Key, _Report] = {}
        self._check: set[Key] = set()
        self._touched: dict[Key, float] = {}
        self._connection_changed = asyncio.Event()
        manager.add_listener(lambda _state: self._connection_changed.set())
        metrics.waiting_for_temporal.set_function(self._count_waiting)

    # ----- leadership -------------------------------------------------------------

    async def start_leading(self) -> None:
        await self._prime_agents()
        self.leading = True
        ttl = self.settings.ttl_seconds_after_finished
        for key, body in self.cache.items():
            if needs_attention(body) or has_timer(body, ttl):
                if planner.status_of(body).get("workflow"):
                    self._check.add(key)  # resume: what happened while nobody led?
                self.queue.add(key)
        self.queue.start(self.reconcile, self.settings.reconcile_workers)
        self.loops.spawn("sweep", self._sweep)
        self.loops.spawn("connection-trigger", self._connection_trigger)

    async def stop_leading(self) -> None:
        self.leading = False
        await self.queue.stop()
        await self.loops.stop()
        # Reports waiting here fail now, and Temporal retries them on the leader.
        for report in self._reports.values():
            for waiter in report.waiters:
                if not waiter.done():
                    waiter.set_result(False)
        self._reports.clear()

    def stopped_loops(self) -> list[str]:
        if not self.leading:
            return []
        stopped = self.loops.stopped()
        if not self.queue.running:
            stopped.append("reconcile-workers")
        return stopped

    # ----- triggers ------------------------------------------------------------

    def on_event(self, event_type: str | None, body: Body) -> None:
        """A watch event (the initial listing included): cache it, enqueue its key."""
        key = key_of(body)
        if key is None:
            return
        if event_type == "DELETED":
            self._forget(key, body.get("metadata", {}).get("uid"))
            return
        if not self.cache.put(key, body):
            return
        self._publish_phases()
        if (
            event_type is None
            and not needs_attention(body)
            and not has_timer(body, self.settings.ttl_seconds_after_finished)
        ):
            return  # start-up listing of a finished execution: nothing to do
        if event_type is None and planner.status_of(body).get("workflow"):
            self._check.add(key)
        # A new execution goes ahead of any backlog (start-up resync, a burst
        # released by Temporal coming back): its latency is what users see.
        self.queue.add(key, first=event_type == "ADDED")

    def on_agent_event(self, event_type: str | None, body: Body) -> None:
        """An Agent watch event: cache it, enqueue the executions that name it and
        have not started (they wait for it, or will snapshot this version)."""
        key = key_of(body)
        if key is None:
            return
        changed = self.agents.remove(body) if event_type == "DELETED" else self.agents.put(body)
        if not changed:
            return
        if not self.leading:
            return  # start_leading enqueues everything
        namespace, name = key
        for ekey, execution in self.cache.items():
            spec = execution.get("spec")
            if (
                ekey[0] == namespace
                and isinstance(spec, Mapping)
                and spec.get("agent") == name
                and not planner.is_terminal(execution)
                and not planner.status_of(execution).get("workflow")
            ):
                self.queue.add(ekey)

    def on_approval_event(self, event_type: str | None, body: Body) -> None:
        """An AgentApproval watch event: cache it, enqueue the execution it names."""
        key = key_of(body)
        if key is None:
            return
        if event_type == "DELETED":
            self.approvals.pop(key, None)
            return
        self.approvals[key] = slim_approval(body)
        execution = (
            body.get("spec", {}).get("execution") if isinstance(body.get("spec"), Mapping) else None
        )
        if self.leading and isinstance(execution, str):
            self.queue.add((key[0], execution))

    async def _relay_approvals(self, key: Key) -> float | None:
        """Send the AgentApprovals of this execution that it waits for to its
        workflow, and say on each what came of it. Returns a retry delay when
        Temporal could not be told."""
        body = self.cache.get(key)
        recorded = planner.status_of(body or {}).get("workflow") or {}
        mine = [
            a
            for (ns, _), a in self.approvals.items()
            if ns == key[0] and a["spec"].get("execution") == key[1]
        ]
        if body is None or not mine or not recorded.get("id"):
            return None
        retry = None
        for relay in plan_approvals(body, mine, planner.is_terminal(body)):
            if relay.signal is not None:
                answer = await self.gateway.signal_approval(
                    str(recorded["id"]), recorded.get("namespace"), relay.signal
                )
                if answer.outcome is Outcome.REJECTED and answer.reason == WORKFLOW_NOT_RUNNING:
                    # The loop ended meanwhile: nothing waits for this decision.
                    relay = replace(
                        relay,
                        applied=False,
                        reason=WORKFLOW_NOT_RUNNING,
                        message="the execution's workflow ended before the decision reached it",
                    )
                elif answer.outcome is not Outcome.SIGNALLED:
                    retry = 2.0
                    continue
            condition = planner.build_conditions(
                self.approvals.get((key[0], relay.name), {}),
                [
                    planner.Condition(
                        APPLIED, "True" if relay.applied else "False", relay.reason, relay.message
                    )
                ],
                _now(),
            )
            try:
                written = await self.kube.write_approval_status(
                    key[0], relay.name, {"conditions": condition}
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
                continue
            self.approvals[(key[0], relay.name)] = slim_approval(written)
        return retry

    async def _shadowing_agent(self, namespace: str, body: Body) -> dict[str, Any] | None:
        """Just before a start without an Agent, for a built-in name: the Agent
        of that name, asked of the API server. An Agent applied with its
        execution may not have reached the cache yet, and the built-in agent
        would run without the Agent's model, provider or queue. (A name that
        is not built in waits for the Agent's watch event instead: nothing
        starts in its place.)"""
        spec = body.get("spec")
        name = str(spec.get("agent", "")) if isinstance(spec, Mapping) else ""
        if name not in (self.policy.builtin_agents or frozenset()):
            return None
        fetched = await self.kube.get_agent(namespace, name)  # a KubeError backs off
        if fetched is None:
            return None
        self.agents.put(fetched)
        return self.agents.get(namespace, name)

    async def _prime_agents(self) -> None:
        """List the Agents before the first reconcile, so that no execution is
        decided before the Agents watch has delivered its first listing (an
        Agent would otherwise look missing for a moment, or lose to a
        built-in agent of the same name). Best effort: the watch fills in."""
        try:
            for namespace in self.settings.watch_namespaces or (None,):
                listed = await asyncio.wait_for(self.kube.list_agents(namespace), timeout=10)
                for body in listed:
                    self.agents.put(body)
        except Exception as exc:
            log.warning(
                "could not list Agents; relying on the watch",
                extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
            )

    def _forget(self, key: Key, uid: object) -> None:
        self.cache.remove(key)
        self.queue.remove(key)
        self._check.discard(key)
        self._touched.pop(key, None)
        report = self._reports.pop(key, None)
        if report is not None:
            _resolve(report)
        if isinstance(uid, str):
            self.events.forget(uid)
        self._publish_phases()

    async def _connection_trigger(self) -> float:
        await self._connection_changed.wait()
        self._connection_changed.clear()
        if not self.manager.connected:
            # Batch flaps: one pass per interval however often the state changes.
            await asyncio.sleep(self.settings.condition_sync_interval)
        for key, body in self.cache.items():
            if needs_attention(body):
                self.queue.add(key)
        return 0.0

    async def _sweep(self) -> float:
        """Started executions nobody looked at for a while: ask Temporal."""
        if self.manager.connected:
            stale = time.monotonic() - self.settings.sweep_interval
            for key, body in self.cache.items():
                if (
                    not planner.is_terminal(body)
                    and planner.status_of(body).get("workflow")
                    and self._touched.get(key, 0.0) < stale
                ):
                    self._check.add(key)
                    self.queue.add(key)
        return self.settings.sweep_interval

    @activity.defn(name=REPORT_STATUS_ACTIVITY)
    async def report_status(self, report: StatusReport) -> None:
        """The workflow says how it ended: enqueue, and return once it is written."""
        if not self.leading:
            # Temporal retries the activity; it lands on the leader.
            raise _not_leader("this replica is not the leader")
        key = (report.ref.namespace, report.ref.name)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pending = self._reports.get(key)
        superseded = (
            pending is not None
            and pending.report.result.phase in planner.TERMINAL
            and report.result.phase not in planner.TERMINAL
        )
        if pending is not None and superseded:
            pending.waiters.append(waiter)
        else:
            # A new object (not mutated): a reconcile already holding the old
            # one will not mistake it for what it applied.
            waiters = [*(pending.waiters if pending else []), waiter]
            self._reports[key] = _Report(report, waiters)
        self.queue.add(key)
        if not await asyncio.wait_for(asyncio.shield(waiter), 25):
            raise _not_leader("leadership moved before the report was written")

    # ----- reconcile --------------------------------------------------------------

    def connection(self) -> Connection:
        if self.manager.connected:
            return Connection(True, "Connected", f"connected to {self.settings.temporal.address}")
        unavailable = self.manager.unavailable()
        return Connection(False, unavailable.reason, unavailable.message)

    async def reconcile(self, key: Key) -> float | None:
        body = self.cache.get(key)
        pending = self._reports.get(key)
        if body is None:
            self._forget(key, None)
            return None
        self._touched[key] = time.monotonic()
        check = key in self._check
        self._check.discard(key)
        spec = body.get("spec")
        agent = self.agents.get(
            key[0], str(spec.get("agent", "")) if isinstance(spec, Mapping) else ""
        )
        obs = Observed(
            body=body,
            conn=self.connection(),
            now=_now(),
            queue_ttl=self.settings.queue_ttl,
            report=pending.report if pending else None,
            check=check,
            finished_ttl=self.settings.ttl_seconds_after_finished,
            agent=agent,
            policy=self.policy,
        )
        started = time.monotonic()
        try:
            decision, decided_on = await self._decide(key, obs)
            await self._apply(key, decided_on, decision, pending)
            relay_retry = await self._relay_approvals(key)
        except KubeError as exc:
            if exc.status not in (404, 409):
                self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            if exc.status == 409:
                # Someone else wrote since our view: re-read, decide again at once.
                await self._refresh(key)
                return 0.0
            if exc.status == 404:
                self._forget(key, None)
                return None
            raise
        except Exception:
            self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            raise
        finally:
            self.metrics.reconcile_duration.labels(handler="reconcile").observe(
                time.monotonic() - started
            )
        if decision.backoff:
            if check:
                self._check.add(key)
            self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            raise _Backoff(decision.backoff)
        if relay_retry is not None:
            return min(relay_retry, decision.requeue_after or relay_retry)
        return decision.requeue_after

    async def _decide(self, key: Key, obs: Observed) -> tuple[Decision, Body]:
        for _ in range(5):
            decision = planner.decide(obs)
            if decision.add_finalizer:
                body = await self._write_finalizers(key, obs.body, add=True)
                obs = replace(obs, body=body, now=_now())
                continue
            if decision.call is Call.START and obs.answer is None and obs.agent is None:
                shadowing = await self._shadowing_agent(key[0], obs.body)
                if shadowing is not None:
                    obs = replace(obs, agent=shadowing, now=_now())
                    continue
            if decision.call is Call.START and obs.answer is None and not self.starts.available():
                # Its turn may take seconds (a backlog at the start rate): a
                # new execution says where it is before it waits.
                queued = planner.plan_queued(
                    obs.body,
                    obs.conn,
                    obs.now,
                    f"queued for its start ({self.settings.start_rate:g} starts per second, "
                    "AGENTEXEC_START_RATE)",
                )
                if queued is not None:
                    written = await self.kube.write_status(
                        *key, obs.body["metadata"]["resourceVersion"], queued
                    )
                    self.cache.put(key, written)
                    obs = replace(obs, body=written, now=_now())
            if decision.call is not Call.NONE and obs.answer is None:
                answer = await self._call(decision, obs.body)
                obs = replace(obs, answer=answer, conn=self.connection(), now=_now())
                continue
            return decision, obs.body
        raise RuntimeError(f"no decision for {key} after five steps")

    async def _call(self, decision: Decision, body: Body) -> Answer:
        call = decision.call
        meta = body["metadata"]
        wid = planner.workflow_id(meta["namespace"], meta["name"], meta["uid"])
        recorded = planner.status_of(body).get("workflow") or {}
        if call is Call.START:
            await self.starts.acquire()
            answer = await self.gateway.start(
                wid, build_start_input(body, self.settings, decision.agent_spec)
            )
            self.metrics.workflow_starts.labels(result=answer.outcome.value).inc()
            return answer
        if call is Call.DESCRIBE:
            return await self.gateway.describe({"id": wid, **recorded})
        if call is Call.SIGNAL_SUSPEND:
            return await self.gateway.signal_suspend(
                str(recorded.get("id") or wid), recorded.get("namespace"), decision.suspend
            )
        return await self.gateway.cancel(str(recorded.get("id") or wid), recorded.get("namespace"))

    async def _apply(
        self, key: Key, body: Body, decision: Decision, pending: _Report | None
    ) -> None:
        """Write what was decided, on the version it was decided on (a 409 if
        the object moved on meanwhile: then reconcile decides again)."""
        if decision.status:
            current = body.get("status") or {}
            if any(current.get(k) != v for k, v in decision.status.items()):
                written = await self.kube.write_status(
                    *key, body["metadata"]["resourceVersion"], decision.status
                )
                self.cache.put(key, written)
                body = written
        if decision.events:
            for event in decision.events:
                await self.events.record(body, event.type, event.reason, event.message)
        phase = (decision.status or {}).get("phase")
        if phase in planner.TERMINAL:
            self._finished(key, body, phase, decision.status or {})
        if decision.remove_finalizer:
            body = await self._write_finalizers(key, body, add=False)
        if decision.delete:
            await self._delete_expired(key, body)
        if decision.report_done and pending is not None:
            if self._reports.get(key) is pending:
                del self._reports[key]
            _resolve(pending)

    def _finished(self, key: Key, body: Body, phase: str, status: Mapping[str, Any]) -> None:
        error = status.get("error") or {}
        reason = error.get("reason", phase)
        self.metrics.executions_finished.labels(phase=phase, reason=reason).inc()
        created = planner.parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        if created is not None:
            self.metrics.execution_duration.labels(phase=phase).observe(
                max(0.0, (_now() - created).total_seconds())
            )
        log.info(
            "execution finished",
            extra={"execution": "/".join(key), "phase": phase, "reason": reason},
        )
        self.events.forget(str(body.get("metadata", {}).get("uid", "")))
        self._touched.pop(key, None)  # finished: the sweep never looks at it again
        self._publish_phases()

    async def _delete_expired(self, key: Key, body: Body) -> None:
        """Delete a finished execution whose TTL ran out. The UID and
        resourceVersion preconditions mean only the object the decision was
        made on is deleted: not a re-created one of the same name, nor one
        changed since (whatever changed is decided on first). The API
        server answers 409, and reconcile re-reads and decides again; 404:
        already gone. No event: the object it would be
        about is gone (Jobs post none either)."""
        uid = str(body["metadata"]["uid"])
        version = body["metadata"].get("resourceVersion")
        # A TTL newly set on an install with many finished executions expires
        # them all at once; the preconditions still hold after the wait.
        await self.deletes.acquire()
        if not await self.kube.delete(*key, uid, str(version) if version else None):
            return
        self.metrics.executions_deleted_by_ttl.inc()
        finished = planner.parse_time(planner.status_of(body).get("completionTime"))
        log.info(
            "finished execution deleted: its TTL ran out",
            extra={
                "execution": "/".join(key),
                "uid": uid,
                "finished_seconds_ago": None
                if finished is None
                else round((_now() - finished).total_seconds(), 1),
                "ttl_seconds": planner.ttl_after_finished(
                    body, self.settings.ttl_seconds_after_finished
                ),
            },
        )

    async def _write_finalizers(self, key: Key, body: Body, add: bool) -> dict[str, Any]:
        meta = body["metadata"]
        current = [f for f in (meta.get("finalizers") or []) if isinstance(f, str)]
        wanted = (
            [*current, planner.FINALIZER] if add else [f for f in current if f != planner.FINALIZER]
        )
        if wanted == current:
            return dict(body)
        written = await self.kube.write_finalizers(*key, meta["resourceVersion"], wanted)
        self.cache.put(key, written)
        return self.cache.get(key) or written

    async def _refresh(self, key: Key) -> None:
        fresh = await self.kube.get(*key)
        if fresh is None:
            self._forget(key, None)
        else:
            self.cache.remove(key)
            self.cache.put(key, fresh)

    # ----- what /statusz and /metrics show ---------------------------------------

    def _count_waiting(self) -> float:
        return float(
            sum(
                1
                for _, body in self.cache.items()
                if not planner.is_terminal(body)
                and not planner.status_of(body).get("workflow")
                and (planner.condition_of(body, planner.WORKFLOW_STARTED) or {}).get("reason")
                == "WaitingForTemporal"
            )
        )

    def _publish_phases(self) -> None:
        for phase in ("Unknown", *planner.TERMINAL, planner.PENDING, planner.RUNNING):
            self.metrics.executions.labels(phase=phase).set(self.cache.phases[phase])

    def status(self) -> dict[str, Any]:
        return {
            "leading": self.leading,
            "known": len(self.cache),
            "queued": len(self.queue),
            "waiting_for_temporal": int(self._count_waiting()),
            "pending_reports": len(self._reports),
            # Per-key state held anywhere besides the cache (a leak shows here).
            "tracked_keys": self.queue.tracked()
            + len(self._touched)
            + len(self._check)
            + len(self._reports)
            + len(self.events),
            "loops_stopped": self.stopped_loops(),
        }


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


class _Backoff(Exception):
    """A decision that could not finish (Temporal refused): retry with backoff."""


def _resolve(report: _Report) -> None:
    for waiter in report.waiters:
        if not waiter.done():
            waiter.set_result(True)


__all__ = ["Controller", "Outcome", "build_input", "key_of"]
