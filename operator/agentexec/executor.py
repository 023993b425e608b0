"""The executor: makes the one call a decision asks for, and applies decisions.

It is the only part of reconciliation that touches the world: the API server
(status and finalizer writes checked against resourceVersion, reads, TTL
deletes, events) and Temporal (through the gateway). It never decides: each
call's result goes back into the Observed that ``planner.decide`` reads, and
applying a decision ends in a Verdict for the work queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agentexec.agents import AgentCache
from agentexec.approvals import ApprovalCache
from agentexec.cache import ExecutionCache, Key
from agentexec.conditions import TERMINAL, parse_time, status_of
from agentexec.decisions import (
    AddFinalizer,
    Cancel,
    Decision,
    Describe,
    Observed,
    ReadAgent,
    ReadExecution,
    Request,
    SignalApproval,
    SignalSuspend,
    Start,
    TakeDeleteSlot,
    TakeStartSlot,
)
from agentexec.events import EventRecorder
from agentexec.kube import Kube, KubeError
from agentexec.metrics import Metrics
from agentexec.policy import PolicyCache, plan_charge
from agentexec.status import FINALIZER, Connection, ttl_after_finished
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.types import Outcome
from agentexec.workqueue import DONE, FairTurns, RateLimiter, Turns, Verdict

log = logging.getLogger("agentexec.executor")
# An unanswered start is remembered this long: far longer than any start can
# stay in flight (planner.Config.start_in_flight).
UNANSWERED_KEPT = 600.0


def _now() -> datetime:
    return datetime.now(UTC)


class Executor:
    def __init__(
        self,
        kube: Kube,
        gateway: TemporalGateway,
        events: EventRecorder,
        cache: ExecutionCache,
        agents: AgentCache,
        approvals: ApprovalCache,
        metrics: Metrics,
        connection: Callable[[], Connection],
        *,
        start_rate: float,
        delete_rate: float,
        finished_ttl: float | None = None,
        policies: PolicyCache | None = None,
    ) -> None:
        self.kube = kube
        self.gateway = gateway
        self.events = events
        self.cache = cache
        self.agents = agents
        self.approvals = approvals
        self.metrics = metrics
        self.connection = connection
        self.finished_ttl = finished_ttl
        self.policies = policies if policies is not None else PolicyCache()
        # Starts share the rate fairly among namespaces (#22).
        self.starts: FairTurns[Key] = FairTurns(
            start_rate, burst=max(1, int(start_rate)), group=lambda key: key[0]
        )
        # A TTL newly set on an install with many finished executions expires
        # them all at once: they are deleted at this pace.
        self.deletes: Turns[Key] = Turns(RateLimiter(delete_rate, burst=max(1, int(delete_rate))))
        # When a start of each key last went unanswered (it may still land).
        self._unanswered: dict[Key, float] = {}

    async def call(self, key: Key, request: Request, o: Observed) -> Observed | None:
        """Make ``request``; ``o`` with what came of it (None: the object is gone)."""
        if isinstance(request, ReadExecution):
            fresh = await self.read(key)
            if fresh is None:
                return None
            return replace(o, body=fresh, refreshed=True, stale=False, now=_now())
        if isinstance(request, ReadAgent):
            fetched = await self.kube.get_agent(key[0], request.name)  # a KubeError backs off
            if fetched is not None:
                self.agents.put(fetched)
            return replace(o, agent=self.agents.get(key[0], request.name), agent_read=True)
        if isinstance(request, TakeStartSlot):
            return replace(o, start_slot=self.starts.take(key))
        if isinstance(request, TakeDeleteSlot):
            return replace(o, delete_slot=self.deletes.take(key))
        if isinstance(request, AddFinalizer):
            body = await self.write_finalizers(key, o.body, add=True)
            return replace(o, body=body, now=_now())
        if isinstance(request, Start):
            sent = time.monotonic()
            answer = await self.gateway.start(request.workflow_id, request.input)
            self.metrics.workflow_starts.labels(result=answer.outcome.value).inc()
            if answer.outcome == Outcome.UNAVAILABLE:
                self._unanswered[key] = sent
        elif isinstance(request, Describe):
            answer = await self.gateway.describe(dict(request.workflow))
        elif isinstance(request, SignalSuspend):
            told = await self.gateway.signal_suspend(
                request.workflow_id, request.namespace, request.suspend
            )
            return replace(o, suspend_answer=told, conn=self.connection(), now=_now())
        elif isinstance(request, SignalApproval):
            told = await self.gateway.signal_approval(
                request.workflow_id, request.namespace, request.decision
            )
            signalled = {**o.signalled, request.decision.approval: told}
            return replace(o, signalled=signalled, conn=self.connection(), now=_now())
        else:
            assert isinstance(request, Cancel)
            answer = await self.gateway.cancel(request.workflow_id, request.namespace)
        # Decide on the connection as it is after the call, not before.
        return replace(o, answer=answer, conn=self.connection(), now=_now())

    async def read(self, key: Key) -> dict[str, Any] | None:
        """The execution as the API server has it now (into the cache), or None."""
        fresh = await self.kube.get(*key)
        if fresh is not None:
            self.cache.replace(key, fresh)
        return self.cache.get(key) if fresh is not None else None

    async def apply(self, key: Key, o: Observed, decision: Decision) -> Verdict:
        """Write what was decided, on the version it was decided on (a 409 if
        the object moved on meanwhile: then reconcile decides again)."""
        body = o.body
        wrote = False
        if decision.status:
            current = status_of(body)
            if any(current.get(k) != v for k, v in decision.status.items()):
                written = await self.kube.write_status(
                    *key, body["metadata"]["resourceVersion"], decision.status
                )
                self.cache.put(key, written)
                body, wrote = written, True
        for event in decision.events:
            await self.events.record(body, event.type, event.reason, event.message)
        for approval in decision.approvals:
            await self._write_approval(key[0], approval.name, approval.conditions)
        phase = (decision.status or {}).get("phase")
        if phase in TERMINAL:
            self._finished(key, body, phase, decision.status or {})
        if decision.charge and wrote:
            await self.charge(key[0], decision.charge)
        if decision.remove_finalizer:
            body = await self.write_finalizers(key, body, add=False)
        if decision.delete:
            await self._delete_expired(key, body)
        if decision.backoff is not None:
            self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            return Verdict(backoff=decision.backoff)
        return Verdict(after=decision.requeue_after) if decision.requeue_after is not None else DONE

    async def _write_approval(
        self, namespace: str, name: str, conditions: list[dict[str, Any]]
    ) -> None:
        """Say on an AgentApproval what came of it (its Applied condition)."""
        try:
            written = await self.kube.write_approval_status(
                namespace, name, {"conditions": conditions}
            )
        except KubeError as exc:
            if exc.status != 404:
                raise
            self.approvals.remove(namespace, name)  # deleted meanwhile
            return
        self.approvals.put(written)

    async def charge(self, namespace: str, tokens: int) -> None:
        """Add a finished execution's tokens to each budget of its namespace
        (the policy's status.budget: the leader is its one writer). A conflict
        re-reads the policy and adds again; other errors are logged and the
        tokens go uncounted (the budget is a guard, not a bill)."""
        for policy in self.policies.of(namespace):
            for _ in range(3):
                patch = plan_charge(policy, tokens, _now())
                if patch is None or policy.resource_version is None:
                    break
                try:
                    written = await self.kube.write_policy_status(
                        namespace, policy.name, policy.resource_version, patch
                    )
                except KubeError as exc:
                    if exc.status == 409:
                        fresh = await self.kube.get_policy(namespace, policy.name)
                        if fresh is None:
                            break
                        policy = self.policies.put(fresh)
                        continue
                    log.warning(
                        "could not count tokens against the namespace's budget",
                        extra={"namespace": namespace, "policy": policy.name,
                               "tokens": tokens, "error": str(exc)[:300]},
                    )  # fmt: skip
                    break
                self.policies.put(written)
                break

    def unanswered_start(self, key: Key) -> float | None:
        """Seconds since a start of ``key`` went unanswered (None: none did)."""
        sent = self._unanswered.get(key)
        if sent is None:
            return None
        elapsed = time.monotonic() - sent
        if elapsed > UNANSWERED_KEPT:
            del self._unanswered[key]
            return None
        return elapsed

    def forget(self, key: Key) -> None:
        self.starts.forget(key)
        self.deletes.forget(key)
        self._unanswered.pop(key, None)

    def clear(self) -> None:
        self.starts.clear()
        self.deletes.clear()
        self._unanswered.clear()

    def tracked(self) -> int:
        return len(self.starts) + len(self.deletes) + len(self._unanswered)

    def _finished(
        self, key: Key, body: Mapping[str, Any], phase: str, status: Mapping[str, Any]
    ) -> None:
        error = status.get("error") or {}
        reason = error.get("reason", phase)
        self.metrics.executions_finished.labels(phase=phase, reason=reason).inc()
        created = parse_time((body.get("metadata") or {}).get("creationTimestamp"))
        if created is not None:
            self.metrics.execution_duration.labels(phase=phase).observe(
                max(0.0, (_now() - created).total_seconds())
            )
        log.info(
            "execution finished",
            extra={"execution": "/".join(key), "phase": phase, "reason": reason},
        )
        self.events.forget(str(body.get("metadata", {}).get("uid", "")))
        self.starts.forget(key)
        self.deletes.forget(key)

    async def _delete_expired(self, key: Key, body: Mapping[str, Any]) -> None:
        """Delete a finished execution whose TTL ran out. The UID and
        resourceVersion preconditions mean only the object the decision was
        made on is deleted: not a re-created one of the same name, nor one
        changed since (whatever changed is decided on first). The API
        server answers 409, and reconcile re-reads and decides again; 404:
        already gone. No event: the object it would be about is gone (Jobs
        post none either)."""
        uid = str(body["metadata"]["uid"])
        version = body["metadata"].get("resourceVersion")
        if not await self.kube.delete(*key, uid, str(version) if version else None):
            return
        self.metrics.executions_deleted_by_ttl.inc()
        finished = parse_time(status_of(body).get("completionTime"))
        log.info(
            "finished execution deleted: its TTL ran out",
            extra={
                "execution": "/".join(key),
                "uid": uid,
                "finished_seconds_ago": None
                if finished is None
                else round((_now() - finished).total_seconds(), 1),
                "ttl_seconds": ttl_after_finished(body, self.finished_ttl),
            },
        )

    async def write_finalizers(
        self, key: Key, body: Mapping[str, Any], add: bool
    ) -> dict[str, Any]:
        meta = body["metadata"]
        current = [f for f in (meta.get("finalizers") or []) if isinstance(f, str)]
        wanted = [*current, FINALIZER] if add else [f for f in current if f != FINALIZER]
        if wanted == current:
            return dict(body)
        written = await self.kube.write_finalizers(*key, meta["resourceVersion"], wanted)
        self.cache.put(key, written)
        return self.cache.get(key) or written
