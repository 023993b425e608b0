"""reconcile(key): observe → decide ⇄ call → apply, and a verdict for the queue.

One object's data goes down and back once: the cached object, its pending
report and the connection are observed; ``planner.decide`` (pure) answers
with a request or the decision; the executor makes each request and hands
back what came of it; the decision is applied; the verdict (done, look again
after, back off, gone) goes back to the work queue. Nothing here writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from agentexec import planner
from agentexec.agents import AgentCache
from agentexec.approvals import ApprovalCache
from agentexec.cache import ExecutionCache, Key
from agentexec.decisions import Config, Decision, Observed
from agentexec.executor import Executor
from agentexec.kube import KubeError
from agentexec.metrics import Metrics
from agentexec.reports import Reports
from agentexec.status import Connection, uid_of
from agentexec.workqueue import GONE, Verdict

# decide ⇄ call rounds in one reconcile: a start needs at most five (read a
# shadowing Agent, a start turn, the finalizer, the start); a running one a
# describe, a suspend signal and an approval's signal or two; more is a bug.
MAX_STEPS = 12


class Reconciler:
    def __init__(
        self,
        cache: ExecutionCache,
        agents: AgentCache,
        approvals: ApprovalCache,
        reports: Reports,
        executor: Executor,
        metrics: Metrics,
        config: Config,
        connection: Callable[[], Connection],
        retries: Callable[[Key], int],
    ) -> None:
        self.cache = cache
        self.agents = agents
        self.approvals = approvals
        self.reports = reports
        self.executor = executor
        self.metrics = metrics
        self.config = config
        self.connection = connection
        self.retries = retries
        # Keys owed a check against Temporal (their workflow closed or vanished
        # there), and keys whose cached view a write found stale.
        self.checks: set[Key] = set()
        self.stale: set[Key] = set()

    def forget(self, key: Key) -> None:
        self.checks.discard(key)
        self.stale.discard(key)
        self.executor.forget(key)

    def clear(self) -> None:
        self.checks.clear()
        self.stale.clear()
        self.executor.clear()

    def tracked(self) -> int:
        return len(self.checks) + len(self.stale) + self.executor.tracked()

    def observe(self, key: Key, body: Mapping[str, object]) -> Observed:
        spec = body.get("spec")
        name = str(spec.get("agent", "")) if isinstance(spec, Mapping) else ""
        return Observed(
            body=body,
            conn=self.connection(),
            now=datetime.now(UTC),
            config=self.config,
            report=self.reports.for_key(key, uid_of(body)),
            check=key in self.checks,
            agent=self.agents.get(key[0], name),
            approvals=self.approvals.of(key),
            retries=self.retries(key),
            unanswered_start=self.executor.unanswered_start(key),
            stale=key in self.stale,
        )

    async def reconcile(self, key: Key) -> Verdict:
        started = time.monotonic()
        try:
            return await self._reconcile(key)
        except KubeError as exc:
            if exc.status == 409:
                # Someone else wrote since our view: read it, decide again at once.
                self.stale.add(key)
                return Verdict(after=0.0)
            if exc.status == 404:
                return self._gone(key)
            self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            raise
        except Exception:
            self.metrics.reconcile_errors.labels(handler="reconcile").inc()
            raise
        finally:
            self.metrics.reconcile_duration.labels(handler="reconcile").observe(
                time.monotonic() - started
            )

    async def _reconcile(self, key: Key) -> Verdict:
        body = self.cache.get(key)
        read = body is None and self.reports.has(key)
        if read:
            # A report for an object we do not hold: ask before calling it moot.
            body = await self.executor.read(key)
        if body is None:
            return self._gone(key)
        o: Observed | None = replace(self.observe(key, body), refreshed=read)
        decision = Decision()
        for _ in range(MAX_STEPS):
            assert o is not None
            decision = planner.decide(o)
            if decision.request is None:
                break
            o = await self.executor.call(key, decision.request, o)
            if o is None:
                return self._gone(key)
        else:
            raise RuntimeError(f"no decision for {'/'.join(key)} after {MAX_STEPS} steps")
        assert o is not None
        verdict = await self.executor.apply(key, o, decision)
        self.stale.discard(key)
        if decision.check_done:
            self.checks.discard(key)
        if decision.report_done and o.report is not None:
            self.reports.resolve(o.report)
            if self.reports.has(key):
                return Verdict(after=0.0)  # another report waits (another object's)
        now = self.connection()
        if decision.status and (now.connected, now.reason) != (o.conn.connected, o.conn.reason):
            # The connection flipped while this was decided: what was just
            # written may already be stale, and the walk of the new state may
            # have passed this execution by before the write landed.
            return Verdict(after=0.0) if verdict.backoff is None else verdict
        return verdict

    def _gone(self, key: Key) -> Verdict:
        held = self.cache.get(key)
        if held is not None:
            self.executor.events.forget(uid_of(held))
        self.cache.remove(key)
        self.reports.drop(key)
        self.forget(key)
        return GONE
