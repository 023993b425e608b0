"""Installs never cross: whose pollers serve an install's task queues.

Two installs on one Temporal namespace that share a task queue take each
other's tasks: one install's workflow reports to the other's operator, one
install's agents run on the other's runners with the other's providers. The
default queue names derive from the install's identity (settings.install),
and every worker of the install polls with an identity that starts with it
(:func:`worker_identity`), so a poller of our queues whose identity does not
is someone else's: :class:`PollerCheck` asks Temporal (DescribeTaskQueue)
once connected, warns naming them, and keeps a gauge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from agentexec.metrics import Metrics

if TYPE_CHECKING:
    from agentexec.settings import Settings
    from agentexec.temporal.manager import TemporalManager

log = logging.getLogger("agentexec.queues")

WORKFLOW = "workflow"
ACTIVITY = "activity"
_TYPES = {
    WORKFLOW: TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    ACTIVITY: TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
}


def worker_identity(settings: Settings, role: str, who: str) -> str:
    """The identity an install's clients and workers give Temporal:
    ``<install>:<role>:<who>`` (what the poller check recognises as ours)."""
    return f"{settings.install}:{role}:{who}"


def owned_by(identity: str, install: str) -> bool:
    return identity.startswith(f"{install}:")


@dataclass(frozen=True)
class Foreign:
    """Pollers of one of our queues that are not ours."""

    task_queue: str
    kind: str  # workflow or activity
    identities: tuple[str, ...]


def build_foreign(install: str, seen: Mapping[tuple[str, str], Iterable[str]]) -> list[Foreign]:
    """From the poller identities seen per (queue, kind): those not ours."""
    found = []
    for (queue, kind), identities in sorted(seen.items()):
        theirs = tuple(sorted({i for i in identities if not owned_by(i, install)}))
        if theirs:
            found.append(Foreign(queue, kind, theirs))
    return found


def queues_to_check(settings: Settings) -> list[tuple[str, str]]:
    """The operator's queues: its workflow queue (workflow and activity
    pollers: the report activity runs there) and its default runner queue."""
    return [
        (settings.task_queue, WORKFLOW),
        (settings.task_queue, ACTIVITY),
        (settings.runner_task_queue, ACTIVITY),
    ]


class PollerCheck:
    """Once the manager connects (and after each reconnection): who polls
    our queues. Owned by the operator process (app.run), which cancels it."""

    # Our own workers poll within this long of connecting; the server then
    # lists them (and pollers seen in the last few minutes).
    SETTLE = 3.0

    def __init__(
        self,
        manager: TemporalManager,
        settings: Settings,
        metrics: Metrics,
        queues: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.manager = manager
        self.install = settings.install
        self.namespace = settings.temporal.namespace
        self.queues = list(queues if queues is not None else queues_to_check(settings))
        self.metrics = metrics
        self.last: list[Foreign] = []
        for queue, kind in self.queues:
            metrics.foreign_pollers.labels(task_queue=queue, task_queue_type=kind).set(0)

    async def check(self) -> list[Foreign]:
        client = self.manager.client()
        seen: dict[tuple[str, str], list[str]] = {}
        for queue, kind in self.queues:
            async with asyncio.timeout(10):
                response = await client.workflow_service.describe_task_queue(
                    DescribeTaskQueueRequest(
                        namespace=self.namespace,
                        task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                        task_queue_type=_TYPES[kind],
                    ),
                    retry=True,
                    timeout=timedelta(seconds=5),
                )
            seen[(queue, kind)] = [p.identity for p in response.pollers]
        found = build_foreign(self.install, seen)
        for queue, kind in self.queues:
            count = next(
                (len(f.identities) for f in found if (f.task_queue, f.kind) == (queue, kind)), 0
            )
            self.metrics.foreign_pollers.labels(task_queue=queue, task_queue_type=kind).set(count)
        for foreign in found:
            log.warning(
                "pollers this install does not own serve its task queue: another install "
                "(or a runner of its own) takes its tasks; give each install its own queues "
                "(AGENTEXEC_INSTALL)",
                extra={
                    "install": self.install,
                    "task_queue": foreign.task_queue,
                    "task_queue_type": foreign.kind,
                    "pollers": list(foreign.identities),
                },
            )
        self.last = found
        return found

    async def run(self) -> None:
        """Check each time the manager connects; errors are logged, never fatal."""
        while True:
            await self.manager.wait_connected()
            await asyncio.sleep(self.SETTLE)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "could not list the pollers of the install's task queues",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300]},
                )
            await self.manager.wait_disconnected()
