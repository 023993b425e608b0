"""The Temporal manager: one owner for the connection and the workers.

One instance lives in each process (the operator, a runner). It is the face
the rest of the code uses; the work is done by two parts with one job each:

- :class:`~agentexec.temporal.connection.Connection` (temporal/connection.py):
  dial, probe, re-dial, and the connection state it surfaces (whether a run
  of failures means "down" is temporal/state.py's pure decision);
- :class:`~agentexec.temporal.workers.WorkerPool` (temporal/workers.py): the
  supervised SDK Workers, moved under each new client.

Callers never hold a client of their own: they ask :meth:`client` (or go
through :meth:`call`) at call time, so a re-dial can never leave anyone on a
stale client.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.converter import PayloadCodec

from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.codec import build_data_converter
from agentexec.temporal.connection import Connection
from agentexec.temporal.dial import forwarding_runtime
from agentexec.temporal.errors import TemporalUnavailable
from agentexec.temporal.state import ConnectionState
from agentexec.temporal.workers import SupervisedWorker, WorkerPool, WorkerSpec

# What callers import from here, wherever it lives now.
__all__ = [
    "SupervisedWorker",
    "TemporalManager",
    "TemporalUnavailable",
    "WorkerSpec",
    "forwarding_runtime",
]

T = TypeVar("T")


class TemporalManager:
    """Owns the Temporal client and workers; see the module docstring."""

    def __init__(
        self,
        settings: TemporalSettings,
        workers: Sequence[WorkerSpec] = (),
        metrics: Metrics | None = None,
        *,
        rng: random.Random | None = None,
        identity: str | None = None,
        payload_codec: PayloadCodec | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.identity = identity
        self.connection = Connection(
            settings,
            self.metrics,
            on_client=self._on_client,
            rng=rng,
            identity=identity,
            # Every client dialled encodes payloads with it (#22).
            data_converter=build_data_converter(payload_codec),
        )
        self.pool = WorkerPool(self.connection, workers, on_running=self.refresh_workers_gauge)
        self.log_fields = self.connection.log_fields
        self.refresh_workers_gauge()

    @property
    def worker_specs(self) -> tuple[WorkerSpec, ...]:
        return self.pool.specs

    def set_workers(self, workers: Sequence[WorkerSpec]) -> None:
        """Replace the worker set; only before start() (activities may need the
        objects that are built around the manager)."""
        if self.connection.started:
            raise RuntimeError("set_workers() after start()")
        self.pool.specs = tuple(workers)

    def start(self) -> None:
        """Start the background tasks. Never blocks on Temporal."""
        self.connection.start()

    async def stop(self) -> None:
        """Stop probing and dialling, then drain the workers within the grace."""
        await self.connection.stop()
        await self.pool.stop()
        self.connection.forget_client()
        self.refresh_workers_gauge()

    async def __aenter__(self) -> TemporalManager:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_client(self, client: Client) -> None:
        self.pool.install(client)

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def generation(self) -> int:
        """Increments each time a new client is installed."""
        return self.connection.generation

    def state(self) -> ConnectionState:
        return self.connection.state()

    def unavailable(self) -> TemporalUnavailable:
        return self.connection.unavailable()

    def client(self) -> Client:
        """The current client, or TemporalUnavailable at once while disconnected."""
        return self.connection.client()

    async def call(self, fn: Callable[[Client], Awaitable[T]], timeout: float | None = None) -> T:
        """``fn(client)`` with a real deadline; see :meth:`Connection.call`."""
        return await self.connection.call(fn, timeout)

    def report_failure(self, exc: BaseException | None = None) -> None:
        """Someone's RPC failed: probe now instead of at the next interval."""
        self.connection.report_failure(exc)

    def request_redial(self, reason: str) -> None:
        """Ask for a new client. Any number of concurrent requests make one re-dial."""
        self.connection.request_redial(reason)

    async def reconnect(self, reason: str) -> None:
        """Re-dial and wait until a new client is installed (one re-dial for all callers)."""
        await self.connection.reconnect(reason)

    async def wait_connected(self) -> None:
        await self.connection.wait_connected()

    async def wait_disconnected(self) -> None:
        await self.connection.wait_disconnected()

    def add_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Called with the new state on every change of (connected, reason)."""
        self.connection.add_listener(listener)

    def check_settings(self) -> None:
        """Pick up rotated TLS files (re-dial) or API key (set in place)."""
        self.connection.check_settings()

    @property
    def workers(self) -> tuple[SupervisedWorker, ...]:
        return self.pool.workers

    @property
    def workers_running(self) -> int:
        return self.pool.running

    @property
    def worker_restarts(self) -> int:
        return self.pool.restarts

    def refresh_workers_gauge(self) -> None:
        self.metrics.workers_running.labels(**self.connection.labels).set(self.pool.running)

    def stopped_loops(self) -> list[str]:
        """Background tasks that ended although the manager runs: the connection's
        loops and the worker supervisors (a bug that a restart cures: what a
        liveness probe should see)."""
        return sorted(self.connection.stopped_loops() + self.pool.stopped())

    def status(self) -> dict[str, Any]:
        """What /statusz shows."""
        data = self.connection.status()
        data.update(
            workers_running=self.workers_running,
            worker_task_queues=[w.task_queue for w in self.worker_specs],
        )
        return data
