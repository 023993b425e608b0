"""Worker supervision: the SDK Workers the manager keeps running.

A Worker whose ``run()`` ends is rebuilt on the current client once the
connection says the server and our namespace are there; a new client (a
re-dial, rotated TLS files) goes under the running Workers rather than
replacing them, so in-flight activities are never cancelled by our own
housekeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from agentexec.backoff import WORKER_RESTART
from agentexec.temporal.connection import Connection, settle
from agentexec.temporal.errors import describe_error

log = logging.getLogger("agentexec.temporal")


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """One worker the manager keeps running: a task queue and what it serves."""

    task_queue: str
    workflows: Sequence[type] = ()
    activities: Sequence[Callable[..., Any]] = ()
    max_concurrent_activities: int | None = None
    # Workflows kept in memory between tasks; an evicted one is replayed.
    max_cached_workflows: int | None = None
    # Longest gap between heartbeats the SDK sends for an activity (its
    # default: 0.8 x the heartbeat timeout, 24 s for 30 s). Cancellation
    # reaches an activity only with a heartbeat's answer.
    heartbeat_throttle_seconds: float | None = None


class SupervisedWorker:
    """A Worker kept running; rebuilt when its run() ends.

    A new client (re-dial, rotated TLS files) goes under the running Worker
    (the SDK's ``Worker.client`` setter): shutting a worker down cancels its
    in-flight activities once the grace is over, and the SDK reports that as
    a retryable failure, so an agent that runs for hours would start again
    from scratch on every certificate rotation.
    """

    QUICK_FAILURE = 30.0  # a run shorter than this counts as a failed restart
    MAX_QUICK_FAILURES = 3

    def __init__(
        self,
        connection: Connection,
        spec: WorkerSpec,
        client: Client,
        on_running: Callable[[], None] = lambda: None,
    ) -> None:
        self.connection = connection
        self.spec = spec
        self.client = client
        self._on_running = on_running
        self._worker: Worker | None = None
        self._stopping = False
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def name(self) -> str:
        return f"worker:{self.spec.task_queue}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def stopped(self) -> bool:
        """The supervisor ended though nobody stopped it (a bug: /healthz says so)."""
        return self._task is not None and self._task.done() and not self._stopping

    @property
    def worker(self) -> Worker | None:
        """The SDK Worker of the current run (a new one after each restart)."""
        return self._worker

    async def _loop(self) -> None:
        quick_failures = 0
        fields = self.connection.log_fields
        while not self._stopping:
            # Not before the probe says the client works and our namespace
            # exists: a worker started without it only fails (Worker.run()
            # validates the namespace first).
            await self.connection.wait_connected()
            started = time.monotonic()
            error: BaseException | None = None
            try:
                self._worker = self._build()
                self._set_running(True)
                await self._worker.run()
            except Exception as exc:
                error = exc
            finally:
                self._set_running(False)
            if self._stopping:
                return
            quick_failures = (
                quick_failures + 1 if time.monotonic() - started < self.QUICK_FAILURE else 1
            )
            log.warning(
                "worker stopped unexpectedly; restarting",
                extra={
                    **fields,
                    "task_queue": self.spec.task_queue,
                    "error": describe_error(error) if error else "run() returned",
                    "quick_failures": quick_failures,
                },
            )
            # Ask the probe what is wrong now rather than at its next tick.
            self.connection.report_failure(error)
            await asyncio.sleep(WORKER_RESTART.nominal(quick_failures))
            # A re-dial is for a client that is broken while the probe says
            # the server and the namespace are fine; a missing namespace or
            # a server that is down is waited out at the top of the loop.
            if quick_failures >= self.MAX_QUICK_FAILURES and self.connection.connected:
                self.connection.request_redial("worker cannot be restarted on the current client")
            self.restarts += 1
            if not self._stopping:
                log.info("workers restarted", extra={**fields, "task_queue": self.spec.task_queue})

    def replace_client(self, client: Client) -> bool:
        """Put ``client`` under the running worker; False if the SDK refuses."""
        worker = self._worker if self._running else None
        if worker is not None:
            try:
                worker.client = client
            except Exception as exc:
                log.warning(
                    "worker cannot take the new client",
                    extra={
                        **self.connection.log_fields,
                        "task_queue": self.spec.task_queue,
                        "error": describe_error(exc),
                    },
                )
                return False
        self.client = client  # and every later build uses it
        return True

    def _build(self) -> Worker:
        kwargs: dict[str, Any] = {}
        if self.spec.max_concurrent_activities is not None:
            kwargs["max_concurrent_activities"] = self.spec.max_concurrent_activities
        if self.spec.max_cached_workflows is not None:
            kwargs["max_cached_workflows"] = self.spec.max_cached_workflows
        if self.spec.heartbeat_throttle_seconds is not None:
            throttle = timedelta(seconds=self.spec.heartbeat_throttle_seconds)
            kwargs["max_heartbeat_throttle_interval"] = throttle
            kwargs["default_heartbeat_throttle_interval"] = throttle
        return Worker(
            self.client,
            task_queue=self.spec.task_queue,
            workflows=list(self.spec.workflows),
            activities=list(self.spec.activities),
            graceful_shutdown_timeout=timedelta(seconds=self.connection.settings.worker_grace),
            **kwargs,
        )

    def _set_running(self, running: bool) -> None:
        if running != self._running:
            self._running = running
            self._on_running()

    async def stop(self) -> None:
        """Drain: in-flight activities get the grace period, then are cancelled."""
        self._stopping = True
        if self._worker is not None and self._running:
            with contextlib.suppress(Exception):
                await self._worker.shutdown()
        if self._task is not None:
            if not self._running:  # waiting to restart: nothing to drain
                self._task.cancel()
            await settle([self._task])


class WorkerPool:
    """The set of supervised workers: started on the first client, moved to
    each new one, drained on stop."""

    def __init__(
        self,
        connection: Connection,
        specs: Sequence[WorkerSpec] = (),
        on_running: Callable[[], None] = lambda: None,
    ) -> None:
        self.connection = connection
        self.specs = tuple(specs)
        self._on_running = on_running
        self._workers: list[SupervisedWorker] = []
        self._draining: set[asyncio.Task[None]] = set()

    def _new(self, spec: WorkerSpec, client: Client) -> SupervisedWorker:
        worker = SupervisedWorker(self.connection, spec, client, self._on_running)
        worker.start()
        return worker

    def install(self, client: Client) -> None:
        """Workers move to ``client`` where they run (the first client starts them).

        Only a worker whose SDK Worker refuses the new client is replaced: a
        new one starts on the new client first, then the old one drains
        (in-flight activities get the grace period).
        """
        fields = self.connection.log_fields
        if not self._workers:
            self._workers = [self._new(spec, client) for spec in self.specs]
            if self._workers:
                log.info(
                    "all workers started",
                    extra={**fields, "task_queues": [w.spec.task_queue for w in self._workers]},
                )
            return
        stuck = [w for w in self._workers if not w.replace_client(client)]
        for old in stuck:
            self._workers[self._workers.index(old)] = self._new(old.spec, client)
            log.info(
                "replacing a worker; the old one drains",
                extra={**fields, "task_queue": old.spec.task_queue},
            )
            drain = asyncio.create_task(old.stop())
            self._draining.add(drain)
            drain.add_done_callback(self._draining.discard)
        log.info("new client under the running workers", extra={**fields, "replaced": len(stuck)})

    async def stop(self) -> None:
        """Drain every worker, within the grace plus a bound.

        Bounded: the SDK's shutdown can wait on pollers of a server that is
        gone; a stopping process must not wait on a server it no longer needs.
        """
        workers, self._workers = self._workers, []
        stops = [asyncio.ensure_future(w.stop()) for w in workers] + list(self._draining)
        if not stops:
            return
        limit = self.connection.settings.worker_grace + 10.0
        # asyncio.wait, not wait_for: wait_for waits for what it cancels, and
        # an SDK shutdown stuck on a dead server may never end.
        _, stuck = await asyncio.wait(stops, timeout=limit)
        if stuck:
            log.warning(
                "workers did not stop within the grace period; leaving them",
                extra={**self.connection.log_fields, "seconds": limit},
            )
            for stop in stuck:
                stop.cancel()

    @property
    def workers(self) -> tuple[SupervisedWorker, ...]:
        return tuple(self._workers)

    @property
    def running(self) -> int:
        return sum(1 for w in self._workers if w.running)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

    def stopped(self) -> list[str]:
        """Supervisors that ended although nobody stopped them."""
        return [w.name for w in self._workers if w.stopped]
