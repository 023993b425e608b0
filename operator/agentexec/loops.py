"""The controller's background loops, and the supervisor that keeps them alive.

Each loop is a trigger: it only enqueues keys. ``Loops.spawn`` runs a step
forever, logs and backs off when a step raises, and reports a loop that
stopped (``/healthz`` names it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from agentexec import backoff
from agentexec.cache import ExecutionCache, Key, needs_attention, waits_for_temporal
from agentexec.status import Connection, connection_differs
from agentexec.workqueue import WorkQueue

log = logging.getLogger("agentexec.controller")


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


class ConditionPacer:
    """After a connection change, enqueues the executions it concerns: every
    unfinished one whose ``TemporalConnected`` says otherwise, and every one
    waiting for Temporal (a start, a cancel before its finalizer goes), at most
    ``rate`` per second.

    So each flip costs at most one write per execution, paced, and reaches all
    of them; a flip back before an execution's turn costs it none (the walk
    starts over for the new state, and a reconcile finds nothing to write).
    Disconnections are batched (``settle`` seconds): a flapping connection is
    walked once per interval, not once per flap.
    """

    def __init__(
        self,
        cache: ExecutionCache,
        queue: WorkQueue[Key],
        connection: Callable[[], Connection],
        rate: float,
        settle: float,
    ) -> None:
        self.cache = cache
        self.queue = queue
        self.connection = connection
        self.rate = rate
        self.settle = settle
        self._changed = asyncio.Event()
        self.enqueued = 0  # keys enqueued by walks (for /statusz and the bench)

    def changed(self) -> None:
        self._changed.set()

    async def step(self) -> float:
        await self._changed.wait()
        self._changed.clear()
        if not self.connection().connected:
            await asyncio.sleep(self.settle)
        conn = self.connection()
        due = [
            key
            for key, body in self.cache.active_items()
            if needs_attention(body)
            and (waits_for_temporal(body) or connection_differs(body, conn))
        ]
        batch = max(1, int(self.rate / 10))  # ten batches a second
        for start in range(0, len(due), batch):
            if self._changed.is_set():
                return 0.0  # the state moved on: walk again for the new one
            for key in due[start : start + batch]:
                self.queue.add(key)
            self.enqueued += len(due[start : start + batch])
            await asyncio.sleep(batch / self.rate)
        return 0.0
