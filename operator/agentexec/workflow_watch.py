"""Workflows that closed or vanished in Temporal without their execution
being told: terminated or cancelled in the UI or CLI, deleted, a report that
could not be written before the workflow ended, or anything that happened
while no replica led.

The cost to Temporal does not grow with the number of running executions.
Every interval, for each (Temporal namespace, task queue) our unfinished
executions' workflows run in:

- one ``ListWorkflowExecutions`` of our workflows closed since the last look
  (visibility: ``CloseTime >= …``); each one that an unfinished execution
  still records is checked;
- one ``CountWorkflowExecutions`` of our running workflows that started
  more than a few seconds ago (visibility lags), compared with how many of
  ours record one that started before that. Only when Temporal's count is
  short of ours are the running ones listed (a page per thousand), and the
  executions whose workflow is not among them are checked. A surplus
  (workflows of force-deleted executions, starts being recorded) could hide
  one missing: then they are listed at most every half minute.

"Checked" means enqueued with a check: reconcile then describes that one
workflow and writes what became of it (``Terminated``, ``Cancelled``,
``WorkflowLost``, or the result it ended with).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from agentexec.cache import ExecutionCache, Group, Key, running_group
from agentexec.conditions import parse_time, status_of
from agentexec.status import parse_workflow_id, recorded_workflow, uid_of
from agentexec.temporal.errors import TemporalUnavailable
from agentexec.temporal.gateway import TemporalGateway

log = logging.getLogger("agentexec.controller")

# Visibility is eventually consistent: a closing is listed within this long
# (sub-second on the dev server's SQLite; about a second on Elasticsearch),
# and a workflow started this recently may not be counted as running yet.
VISIBILITY_LAG = timedelta(seconds=5)
# A workflow starts in Temporal before its execution records it (the start's
# answer, then the status write): ours are counted up to this much earlier
# than Temporal's, so that every one of ours counted is in Temporal's count.
RECORD_MARGIN = timedelta(seconds=2)
# While Temporal counts more running workflows than we record (a workflow of a
# force-deleted execution, starts in flight), one of ours going missing can
# hide behind the surplus: the running ones are listed at most this often then.
SURPLUS_LISTING = 30.0


class WorkflowWatch:
    def __init__(
        self,
        cache: ExecutionCache,
        gateway: TemporalGateway,
        connected: Callable[[], bool],
        check: Callable[[Key], None],
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.gateway = gateway
        self.connected = connected
        self.check = check
        self.interval = interval
        self._clock = clock
        self._since: dict[Group, datetime] = {}
        self._seen: dict[tuple[str, str], datetime] = {}  # closings already handled
        self._listed: dict[Group, float] = {}  # when the running ones were last listed
        self._everything = True
        self.calls = 0  # Temporal calls made (for /statusz and the bench)

    def reset(self) -> None:
        """A new leadership: list everything once (what closed while nobody led)."""
        self._since.clear()
        self._seen.clear()
        self._listed.clear()
        self._everything = True

    async def step(self) -> float:
        if not self.connected():
            return self.interval
        try:
            for group in [g for g, n in self.cache.running.items() if n > 0]:
                checked = await self._closed(group)
                await self._vanished(group, checked)
        except TemporalUnavailable:
            return self.interval  # the probe says so too; the next look catches up
        self._everything = False
        return self.interval

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def _closed(self, group: Group) -> set[Key]:
        namespace, queue = group
        since = (
            self._since.get(group)
            or self._now() - timedelta(seconds=self.interval) - VISIBILITY_LAG
        )
        self.calls += 1
        closed = await self.gateway.list_closed(namespace, queue, since)
        latest = since
        checked: set[Key] = set()
        for workflow in closed:
            latest = max(latest, workflow.close_time)
            seen = (workflow.workflow_id, workflow.run_id)
            if seen in self._seen:
                continue
            self._seen[seen] = workflow.close_time
            key = self._running_execution(group, workflow.workflow_id)
            if key is not None:
                log.info(
                    "workflow closed in Temporal; checking its execution",
                    extra={
                        "execution": "/".join(key),
                        "workflow_id": workflow.workflow_id,
                        "status": workflow.status.name,
                    },
                )
                self.check(key)
                checked.add(key)
        horizon = max(since, latest - VISIBILITY_LAG)
        self._since[group] = horizon
        for seen, closed_at in list(self._seen.items()):
            if closed_at < horizon:
                del self._seen[seen]
        return checked

    def _running_execution(self, group: Group, wid: str) -> Key | None:
        """The unfinished execution that records workflow ``wid`` in ``group``."""
        parsed = parse_workflow_id(wid)
        if parsed is None:
            return None
        namespace, name, uid = parsed
        body = self.cache.get((namespace, name))
        if body is None or uid_of(body) != uid or running_group(body) != group:
            return None
        return (namespace, name) if recorded_workflow(body).get("id") == wid else None

    async def _vanished(self, group: Group, checked: set[Key]) -> None:
        """Ours that Temporal no longer runs (deleted there), found by counting
        running workflows that started before a moment on both sides; listed
        only when Temporal's count is short of ours (or a surplus could hide
        one, at most every SURPLUS_LISTING seconds)."""
        namespace, queue = group
        now = self._now()
        before = now - VISIBILITY_LAG
        recorded_before = before - RECORD_MARGIN
        self.calls += 1
        theirs = await self.gateway.count_running(namespace, queue, started_before=before)
        ours = self.cache.running[group] - self.cache.started_since(
            group, recorded_before.timestamp()
        )
        surplus = theirs - ours
        listed = self._listed.get(group, float("-inf"))
        due = (
            self._everything
            or surplus < 0
            or (surplus > 0 and self._clock() - listed >= SURPLUS_LISTING)
        )
        if not due:
            return
        self.calls += 1 + theirs // 1000
        self._listed[group] = self._clock()
        running = await self.gateway.list_running(namespace, queue)
        missing: list[Key] = []
        for key, body in self.cache.active_items():
            if running_group(body) != group or key in checked:
                continue
            if recorded_workflow(body).get("id") in running:
                continue
            started = parse_time(status_of(body).get("startTime"))
            if self._everything or started is None or started < recorded_before:
                missing.append(key)  # surely visible by now, and not running
        for key in missing:
            log.info(
                "workflow no longer runs in Temporal; checking its execution",
                extra={"execution": "/".join(key)},
            )
            self.check(key)
