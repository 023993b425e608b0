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
- one ``CountWorkflowExecutions`` of our running workflows, compared with how
  many unfinished executions record one. Only when they disagree (and not
  for the same disagreement a listing already explained: a workflow of a
  force-deleted execution, say) are the running ones listed, and the
  executions whose workflow is not among them are checked.

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
from agentexec.temporal.gateway import TemporalGateway
from agentexec.temporal.manager import TemporalUnavailable

log = logging.getLogger("agentexec.controller")

# Visibility is eventually consistent: a closing is listed within this long
# (sub-second on the dev server's SQLite; about a second on Elasticsearch),
# and a workflow started this recently may not be listed as running yet.
VISIBILITY_LAG = timedelta(seconds=5)


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
        self._explained: dict[Group, tuple[int, int]] = {}  # counts a listing found fine
        self._suspects: dict[Group, set[Key]] = {}  # missing once, maybe not listed yet
        self._everything = True
        self.calls = 0  # Temporal calls made (for /statusz and the bench)

    def reset(self) -> None:
        """A new leadership: list everything once (what closed while nobody led)."""
        self._since.clear()
        self._seen.clear()
        self._explained.clear()
        self._suspects.clear()
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
        namespace, queue = group
        self.calls += 1
        theirs = await self.gateway.count_running(namespace, queue)
        ours = self.cache.running[group]
        suspects = self._suspects.get(group, set())
        settled = theirs == ours or self._explained.get(group) == (theirs, ours)
        if settled and not self._everything and not suspects:
            return
        self.calls += 1 + theirs // 1000
        running = await self.gateway.list_running(namespace, queue)
        now = self._now()
        missing: set[Key] = set()
        confirmed: set[Key] = set()
        for key, body in self.cache.items():
            if running_group(body) != group or recorded_workflow(body).get("id") in running:
                continue
            if key in checked:
                continue  # its closing was just seen
            missing.add(key)
            started = parse_time(status_of(body).get("startTime"))
            old = started is None or now - started >= VISIBILITY_LAG
            if self._everything or old or key in suspects:
                confirmed.add(key)
        for key in confirmed:
            log.info(
                "workflow no longer runs in Temporal; checking its execution",
                extra={"execution": "/".join(key)},
            )
            self.check(key)
        self._suspects[group] = missing - confirmed
        if missing:
            self._explained.pop(group, None)
        else:
            self._explained[group] = (theirs, ours)
