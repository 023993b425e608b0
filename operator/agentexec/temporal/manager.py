"""The resilient Temporal manager: dial, detect, surface, supervise, re-dial.

One instance lives in the operator process. It owns the Temporal client and
the workers. Callers never hold a client of their own: they ask
:meth:`TemporalManager.client` (or go through :meth:`TemporalManager.call`) at
call time, so a re-dial can never leave anyone on a stale client.

What the SDK does by itself shapes what this does (docs/architecture.md):
a client that connected once reconnects by itself after an outage, and so do
its workers, so an outage alone never tears anything down. The manager dials
when there is no client, probes on a short interval (a cheap RPC with a hard
deadline), and re-dials only when the client itself is broken.

The probe asks about our namespace (DescribeNamespace), not the server-wide
health check: Temporal Cloud refuses that one to namespace-scoped API keys
(temporal-worker-controller issue #225), and it cannot tell that the
namespace is missing. "Connected" means the client works and the namespace
exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import NamespaceState
from temporalio.api.errordetails.v1 import NamespaceNotFoundFailure
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    DescribeWorkflowExecutionRequest,
)
from temporalio.client import Client, TLSConfig
from temporalio.converter import PayloadCodec
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from agentexec.backoff import WORKER_RESTART, Backoff
from agentexec.logs import RateLimiter, RateLimitFilter
from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.codec import build_data_converter
from agentexec.temporal.state import (
    CIRCUIT_OPEN,
    NAMESPACE_NOT_FOUND,
    TEMPORAL_UNAVAILABLE,
    ConnectionState,
    ConnectionTracker,
    Flip,
    Transition,
)

log = logging.getLogger("agentexec.temporal")
T = TypeVar("T")

# Failures that mean "Temporal is not answering", as opposed to an answer we
# did not like (already started, not found, invalid argument...).
_UNAVAILABLE_CODES = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.CANCELLED,
}
# Asked for while disconnected, to see the namespace as every other call will.
_PROBE_WORKFLOW_ID = "agentexec-namespace-probe"
# How a server that will not answer the health check to this caller says so
# (Temporal Cloud, namespace-scoped API key: "Request unauthorized").
_HEALTH_REFUSED_CODES = {
    RPCStatusCode.PERMISSION_DENIED,
    RPCStatusCode.UNAUTHENTICATED,
    RPCStatusCode.UNIMPLEMENTED,
}


class ProbeRefused(Exception):
    """The server answered the probe, and the answer says it is not usable."""


class TemporalUnavailable(Exception):
    """Temporal cannot be reached now. ``reason`` is a condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception from a Temporal call means the server did not answer."""
    if isinstance(exc, TemporalUnavailable | TimeoutError | asyncio.TimeoutError):
        return True
    if isinstance(exc, RPCError):
        return exc.status in _UNAVAILABLE_CODES
    # The SDK's dial failure is a plain RuntimeError ("Failed client connect").
    return type(exc) is RuntimeError


def is_namespace_not_found(exc: BaseException, namespace: str) -> bool:
    """Whether a call failed because ``namespace`` does not exist (for the frontend).

    Only that namespace: an execution may name another one, and that one
    missing is the execution's problem, not the connection's.
    """
    if not isinstance(exc, RPCError) or exc.status != RPCStatusCode.NOT_FOUND:
        return False
    for detail in exc.grpc_status.details:
        failure = NamespaceNotFoundFailure()
        if detail.Unpack(failure) and failure.namespace == namespace:
            return True
    return False


def describe_error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


# What the SDK's Rust core (rustls) says when a TLS handshake fails, and
# which setting to look at for each.
_TLS_HINTS = (
    ("UnknownIssuer", "the server's certificate is not signed by TEMPORAL_TLS_CA_FILE"),
    ("NotValidForName", "the server's certificate does not name TEMPORAL_TLS_SERVER_NAME"),
    ("Expired", "a certificate has expired"),
    ("certificate", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
    ("tls", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
    ("handshake", "check TEMPORAL_TLS_CA_FILE, TEMPORAL_TLS_CERT_FILE and _KEY_FILE"),
)


def describe_dial_error(exc: BaseException, uses_tls: bool) -> str:
    """A dial failure, with what to check when it is a TLS handshake failure."""
    text = describe_error(exc)
    if uses_tls:
        lowered = text.lower()
        for marker, hint in _TLS_HINTS:
            if marker.lower() in lowered:
                return f"TLS handshake failed ({hint}): {text}"[:500]
    return text


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


@functools.cache
def forwarding_runtime() -> Runtime:
    """An SDK runtime whose Rust-core logs go to Python logging, rate-limited.

    Without forwarding the core writes to stderr, once per poll retry during an
    outage.
    """
    core = logging.getLogger("temporalio.core")
    core.addFilter(RateLimitFilter(period=30.0))
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=core),
            )
        )
    )


def _read(path: Any) -> bytes | None:
    return path.read_bytes() if path is not None else None


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

    def __init__(self, manager: TemporalManager, spec: WorkerSpec, client: Client) -> None:
        self.manager = manager
        self.spec = spec
        self.client = client
        self._worker: Worker | None = None
        self._stopping = False
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self.restarts = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"worker:{self.spec.task_queue}")

    @property
    def running(self) -> bool:
        return self._running

    @property
    def worker(self) -> Worker | None:
        """The SDK Worker of the current run (a new one after each restart)."""
        return self._worker

    async def _loop(self) -> None:
        quick_failures = 0
        while not self._stopping:
            # Not before the probe says the client works and our namespace
            # exists: a worker started without it only fails (Worker.run()
            # validates the namespace first).
            await self.manager.wait_connected()
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
                    **self.manager.log_fields,
                    "task_queue": self.spec.task_queue,
                    "error": describe_error(error) if error else "run() returned",
                    "quick_failures": quick_failures,
                },
            )
            # Ask the probe what is wrong now rather than at its next tick.
            self.manager.report_failure(error)
            await asyncio.sleep(WORKER_RESTART.nominal(quick_failures))
            # A re-dial is for a client that is broken while the probe says
            # the server and the namespace are fine; a missing namespace or
            # a server that is down is waited out at the top of the loop.
            if quick_failures >= self.MAX_QUICK_FAILURES and self.manager.connected:
                self.manager.request_redial("worker cannot be restarted on the current client")
            self.restarts += 1
            if not self._stopping:
                log.info(
                    "workers restarted",
                    extra={**self.manager.log_fields, "task_queue": self.spec.task_queue},
                )

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
                        **self.manager.log_fields,
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
            graceful_shutdown_timeout=timedelta(seconds=self.manager.settings.worker_grace),
            **kwargs,
        )

    def _set_running(self, running: bool) -> None:
        if running != self._running:
            self._running = running
            self.manager.refresh_workers_gauge()

    async def stop(self) -> None:
        """Drain: in-flight activities get the grace period, then are cancelled."""
        self._stopping = True
        if self._worker is not None and self._running:
            with contextlib.suppress(Exception):
                await self._worker.shutdown()
        if self._task is not None:
            if not self._running:  # waiting to restart: nothing to drain
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


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
        # Every client this manager dials encodes payloads with it (#22).
        self.data_converter = build_data_converter(payload_codec)
        self.worker_specs = tuple(workers)
        self.metrics = metrics if metrics is not None else Metrics()
        self.identity = identity
        self.backoff = Backoff(
            base=settings.backoff_base, cap=settings.backoff_max, jitter=settings.backoff_jitter
        )
        self._rng = rng or random.Random()
        self._tracker = ConnectionTracker(
            circuit_threshold=settings.circuit_threshold,
            redial_after_failures=settings.redial_after_failures,
        )
        self._client: Client | None = None
        self._workers: list[SupervisedWorker] = []
        self._generation = 0
        self._redial_reason: str | None = None
        self._redial_wanted = asyncio.Event()
        self._reachable = False
        self._probe_now = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._installed = asyncio.Event()
        self._health_refused_by: Client | None = None
        self._namespace_doubted = False
        self._announced = (False, TEMPORAL_UNAVAILABLE)
        self._listeners: list[Callable[[ConnectionState], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._draining: set[asyncio.Task[None]] = set()
        self._limiter = RateLimiter(period=30.0)
        self._fingerprint = self._settings_fingerprint()
        host, _, port = settings.address.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._labels = {"host_port": settings.address, "namespace": settings.namespace}
        self.log_fields = {"address": settings.address, "namespace": settings.namespace}
        self.metrics.connection_status.labels(**self._labels).set(0)
        self.metrics.workers_running.labels(**self._labels).set(0)
        self.metrics.circuit_open.labels(**self._labels).set(0)
        # Labelled series exist from the start, so dashboards show zeros, not gaps.
        for family in (
            self.metrics.reconnection_attempts,
            self.metrics.connection_duration,
            self.metrics.probe_duration,
            self.metrics.probe_failures,
        ):
            family.labels(**self._labels)

    # ----- lifecycle -----------------------------------------------------------

    def set_workers(self, workers: Sequence[WorkerSpec]) -> None:
        """Replace the worker set; only before start() (activities may need the
        objects that are built around the manager)."""
        if self._tasks:
            raise RuntimeError("set_workers() after start()")
        self.worker_specs = tuple(workers)

    def start(self) -> None:
        """Start the background tasks. Never blocks on Temporal."""
        if self._tasks:
            return
        self._tracker.start(time.monotonic())
        self._tasks = [
            asyncio.create_task(self._connection_loop(), name="temporal-connection"),
            asyncio.create_task(self._probe_loop(), name="temporal-probe"),
            asyncio.create_task(self._settings_loop(), name="temporal-settings"),
        ]

    async def stop(self) -> None:
        """Stop probing and dialling, then drain the workers within the grace."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        workers, self._workers = self._workers, []
        # Bounded: the SDK's shutdown can wait on pollers of a server that is
        # gone; a stopping operator must not wait on a server it no longer needs.
        limit = self.settings.worker_grace + 10.0
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.stop() for w in workers), *self._draining), limit
            )
        except TimeoutError:
            log.warning(
                "workers did not stop within the grace period; leaving them",
                extra={**self.log_fields, "seconds": limit},
            )
        self._client = None
        self.refresh_workers_gauge()

    async def __aenter__(self) -> TemporalManager:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----- what the rest of the operator uses ----------------------------------

    @property
    def connected(self) -> bool:
        return self._tracker.connected and self._client is not None

    @property
    def generation(self) -> int:
        """Increments each time a new client is installed."""
        return self._generation

    def state(self) -> ConnectionState:
        return self._tracker.snapshot(time.monotonic())

    def unavailable(self) -> TemporalUnavailable:
        reason = self._tracker.reason
        s = self.settings
        if reason == NAMESPACE_NOT_FOUND:
            return TemporalUnavailable(
                reason,
                f"namespace {s.namespace} does not exist on Temporal at {s.address}; "
                "executions start once it is created",
            )
        error = self._tracker.last_error or "not connected yet"
        circuit = " and the circuit is open" if reason == CIRCUIT_OPEN else ""
        return TemporalUnavailable(
            CIRCUIT_OPEN if reason == CIRCUIT_OPEN else TEMPORAL_UNAVAILABLE,
            f"Temporal at {s.address} (namespace {s.namespace}) is unavailable{circuit}: {error}",
        )

    def client(self) -> Client:
        """The current client, or TemporalUnavailable at once while disconnected."""
        if self._client is None or not self._tracker.connected:
            raise self.unavailable()
        return self._client

    async def call(self, fn: Callable[[Client], Awaitable[T]], timeout: float | None = None) -> T:
        """Run ``fn(client)`` on the current client with a real overall deadline.

        Failures that mean Temporal did not answer trigger an immediate probe
        and come back as TemporalUnavailable; other errors pass through.
        """
        client = self.client()
        try:
            return await asyncio.wait_for(fn(client), timeout or self.settings.rpc_timeout)
        except Exception as exc:
            if is_namespace_not_found(exc, self.settings.namespace):
                # The next probe asks the way this call did (through the
                # frontend's namespace cache), so the state follows.
                self._namespace_doubted = True
                self.report_failure(exc)
                raise TemporalUnavailable(
                    NAMESPACE_NOT_FOUND,
                    f"namespace {self.settings.namespace} does not exist on Temporal at "
                    f"{self.settings.address}: {describe_error(exc)}",
                ) from exc
            if is_unavailable(exc):
                self.report_failure(exc)
                raise TemporalUnavailable(
                    "TemporalUnavailable",
                    f"Temporal at {self.settings.address} did not answer: {describe_error(exc)}",
                ) from exc
            raise

    def report_failure(self, exc: BaseException | None = None) -> None:
        """Someone's RPC failed: probe now instead of at the next interval."""
        self._probe_now.set()

    def request_redial(self, reason: str) -> None:
        """Ask for a new client. Any number of concurrent requests make one re-dial."""
        if self._redial_reason is None:
            self._redial_reason = reason
            log.warning(
                "connection unhealthy, reconnecting", extra={**self.log_fields, "reason": reason}
            )
        self._redial_wanted.set()

    async def reconnect(self, reason: str) -> None:
        """Re-dial and wait until a new client is installed.

        Concurrent callers share one re-dial: each waits for the next install.
        """
        generation = self._generation
        self.request_redial(reason)
        while self._generation == generation:
            await self._installed.wait()

    @property
    def workers(self) -> tuple[SupervisedWorker, ...]:
        return tuple(self._workers)

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    def add_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Called with the new state on every change of (connected, reason)."""
        self._listeners.append(listener)

    def refresh_workers_gauge(self) -> None:
        self.metrics.workers_running.labels(**self._labels).set(self.workers_running)

    def stopped_loops(self) -> list[str]:
        """Background tasks that ended although the manager runs (a bug that a
        restart cures: what a liveness probe should see)."""
        return [t.get_name() for t in self._tasks if t.done()]

    @property
    def workers_running(self) -> int:
        return sum(1 for w in self._workers if w.running)

    @property
    def worker_restarts(self) -> int:
        return sum(w.restarts for w in self._workers)

    def status(self) -> dict[str, Any]:
        """What /statusz shows."""
        now = time.monotonic()
        state = self._tracker.snapshot(now)
        data = state.as_dict()
        data["since_seconds_ago"] = None if state.since is None else round(now - state.since, 3)
        del data["since"]
        data.update(
            address=self.settings.address,
            namespace=self.settings.namespace,
            generation=self._generation,
            workers_running=self.workers_running,
            worker_task_queues=[w.task_queue for w in self.worker_specs],
            redial_pending=self._redial_reason,
        )
        return data

    # ----- dialling -------------------------------------------------------------

    async def _dial(self) -> Client:
        s = self.settings
        tls: bool | TLSConfig = False
        if s.uses_tls:
            tls = TLSConfig(
                server_root_ca_cert=_read(s.tls_ca_file),
                client_cert=_read(s.tls_cert_file),
                client_private_key=_read(s.tls_key_file),
                domain=s.tls_server_name,
            )
        api_key = _read(s.api_key_file)
        kwargs: dict[str, Any] = {}
        if self.identity:
            kwargs["identity"] = self.identity
        # connect_timeout alone does not bound a dial to a port that accepts
        # and never answers (measured: 30 s); wait_for does.
        return await asyncio.wait_for(
            Client.connect(
                s.address,
                namespace=s.namespace,
                tls=tls,
                api_key=api_key.decode().strip() if api_key else None,
                connect_timeout=timedelta(seconds=s.connect_timeout),
                runtime=forwarding_runtime(),
                data_converter=self.data_converter,
                **kwargs,
            ),
            s.connect_timeout,
        )

    async def _connection_loop(self) -> None:
        while True:
            if self._client is not None and self._redial_reason is None:
                self._redial_wanted.clear()
                await self._redial_wanted.wait()
                continue
            replacing = self._client is not None
            self._tracker.dial_started()
            attempt = self._tracker.dial_attempts
            if attempt > 1:
                self.metrics.reconnection_attempts.labels(**self._labels).inc()
            try:
                client = await self._dial()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._dial_failed(exc, replacing)
                continue
            await self._install(client)
            self._tracker.dial_succeeded(time.monotonic())
            self._set_circuit()
            self._redial_reason = None
            log.info(
                "reconnected"
                if (replacing or self._generation > 1)
                else "initial connection successful",
                extra={**self.log_fields, "attempt": attempt, "generation": self._generation},
            )
            # A dial proves the server answers, not that our namespace exists:
            # the probe decides, at once rather than at its next tick.
            await self._probe_once()

    async def _dial_failed(self, exc: Exception, replacing: bool) -> None:
        now = time.monotonic()
        error = describe_dial_error(exc, self.settings.uses_tls)
        flip = self._tracker.dial_failed(now, error, replacing)
        self._set_circuit()
        self._announce(flip)
        failures = self._tracker.consecutive_dial_failures
        policy = (
            self.backoff.capped(self.settings.circuit_backoff_max)
            if self._tracker.circuit_open
            else self.backoff
        )
        delay = policy.delay(failures, self._rng.random())
        first_connect = not self._tracker.ever_connected
        log.warning(
            (
                "initial connection failed, will retry"
                if first_connect
                else "reconnection failed, will retry"
            ),
            extra={
                **self.log_fields,
                "attempt": self._tracker.dial_attempts,
                "delay": round(delay, 2),
                "circuit_open": self._tracker.circuit_open,
                "error": error,
            },
        )
        # The probe keeps running meanwhile and cuts this wait short as soon as
        # the server answers a TCP dial again, so recovery is noticed within a
        # probe interval rather than one (possibly 5 min) backoff step.
        self._redial_wanted.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._redial_wanted.wait(), delay)

    async def _install(self, client: Client) -> None:
        """Workers move to the new client where they run, then the swap.

        Only a worker whose SDK Worker refuses the new client is replaced: a
        new one starts on the new client first, then the old one drains
        (in-flight activities get the grace period).
        """
        if not self._workers:
            fresh = [SupervisedWorker(self, spec, client) for spec in self.worker_specs]
            self._workers = fresh
            for worker in fresh:
                worker.start()
            if fresh:
                log.info(
                    "all workers started",
                    extra={**self.log_fields, "task_queues": [w.spec.task_queue for w in fresh]},
                )
        else:
            stuck = [w for w in self._workers if not w.replace_client(client)]
            for old in stuck:
                new = SupervisedWorker(self, old.spec, client)
                self._workers[self._workers.index(old)] = new
                new.start()
                log.info(
                    "replacing a worker; the old one drains",
                    extra={**self.log_fields, "task_queue": old.spec.task_queue},
                )
                drain = asyncio.create_task(old.stop())
                self._draining.add(drain)
                drain.add_done_callback(self._draining.discard)
            log.info(
                "new client under the running workers",
                extra={**self.log_fields, "replaced": len(stuck)},
            )
        # The swap: a single assignment, so every later client() call sees the
        # new client; the old one is dropped with its last reference.
        self._client = client
        self._generation += 1
        # Wake reconnect() waiters, then re-arm for the next install.
        self._installed.set()
        self._installed = asyncio.Event()

    # ----- probing --------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            self._probe_now.clear()
            await self._probe_once()
            interval = (
                self.settings.probe_interval
                if self._tracker.connected
                else min(self.settings.probe_interval, self.settings.probe_interval_disconnected)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._probe_now.wait(), interval)

    async def _tcp_reachable(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), self.settings.probe_timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        return True

    async def _probe_once(self) -> None:
        client = self._client
        if client is None:
            # No client to ask: a TCP dial tells whether dialling is worth it.
            reachable = await self._tcp_reachable()
            if reachable and not self._reachable:
                self._redial_wanted.set()  # cut the dial backoff short
            self._reachable = reachable
            return
        if not self._tracker.connected:
            # While down, each probe is what drives the SDK channel to reconnect.
            self.metrics.reconnection_attempts.labels(**self._labels).inc()
        started = time.monotonic()
        outcome: str | Exception
        try:
            outcome = await self._ask(client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = exc
        self._observe_probe(started)
        if client is not self._client:
            return  # a re-dial swapped clients meanwhile; this answer is about the old one
        if isinstance(outcome, Exception):
            await self._probe_failed(outcome)
        elif outcome == NAMESPACE_NOT_FOUND:
            self._limiter.reset("probe-failed")
            self._announce(
                self._tracker.namespace_not_found(
                    time.monotonic(),
                    f"namespace {self.settings.namespace} not found on {self.settings.address}",
                )
            )
        else:
            self._probe_succeeded()

    async def _ask(self, client: Client) -> str:
        """One probe: DescribeNamespace, and the health check where the server allows it.

        Returns "ok" or NAMESPACE_NOT_FOUND; raises what says the server is
        not usable. Both RPCs run at once under one hard deadline (the SDK's
        per-call timeout does not bound a frozen connection).
        """
        timeout = self.settings.probe_timeout
        per_call = timedelta(seconds=timeout)
        asks: list[Awaitable[Any]] = [
            client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=self.settings.namespace),
                retry=False,
                timeout=per_call,
            )
        ]
        # The health check adds what DescribeNamespace cannot see: a frontend
        # that is draining answers NOT_SERVING while it still serves calls.
        health_wanted = self._health_refused_by is not client
        if health_wanted:
            asks.append(client.service_client.check_health(timeout=per_call))
        described, *rest = await asyncio.wait_for(
            asyncio.gather(*asks, return_exceptions=True), timeout + 0.25
        )
        health = rest[0] if rest else True
        if isinstance(health, RPCError) and health.status in _HEALTH_REFUSED_CODES:
            self._health_refused_by = client
            log.info(
                "the server refuses the health check to this client; probing the namespace only",
                extra={**self.log_fields, "error": describe_error(health)},
            )
            health = True
        if isinstance(described, RPCError) and described.status == RPCStatusCode.NOT_FOUND:
            if health is True:
                return NAMESPACE_NOT_FOUND
        elif isinstance(described, BaseException):
            raise described
        elif described.namespace_info.state == NamespaceState.NAMESPACE_STATE_DELETED:
            return NAMESPACE_NOT_FOUND
        if isinstance(health, BaseException):
            raise health
        if health is not True:
            raise ProbeRefused("the frontend's health check answered NOT_SERVING")
        if not self._tracker.connected or self._namespace_doubted:
            self._namespace_doubted = False
            return await self._ask_through_namespace_cache(client)
        return "ok"

    async def _ask_through_namespace_cache(self, client: Client) -> str:
        """Whether calls other than DescribeNamespace see the namespace too.

        DescribeNamespace reads the database; every other call goes through
        the frontend's namespace cache, which learns of a new namespace up to
        its refresh interval later (measured ~1 s on the dev server; 10 s by
        default), answering NOT_FOUND meanwhile. So, before saying connected,
        one call through that cache: a workflow that does not exist.
        """
        timeout = self.settings.probe_timeout
        request = DescribeWorkflowExecutionRequest(
            namespace=self.settings.namespace,
            execution=WorkflowExecution(workflow_id=_PROBE_WORKFLOW_ID),
        )
        try:
            await asyncio.wait_for(
                client.workflow_service.describe_workflow_execution(
                    request, retry=False, timeout=timedelta(seconds=timeout)
                ),
                timeout + 0.25,
            )
        except RPCError as exc:
            if is_namespace_not_found(exc, self.settings.namespace):
                return NAMESPACE_NOT_FOUND
            if exc.status != RPCStatusCode.NOT_FOUND:  # NOT_FOUND: the workflow, as expected
                raise
        return "ok"

    def _probe_succeeded(self) -> None:
        flip = self._tracker.probe_succeeded(time.monotonic())
        self._limiter.reset("probe-failed")
        if self._redial_reason is not None and self._redial_reason.startswith("health probe"):
            log.info(
                "connection recovered before the re-dial; keeping the client", extra=self.log_fields
            )
            self._redial_reason = None
            self._redial_wanted.set()
        self._announce(flip)

    def _observe_probe(self, started: float) -> None:
        self.metrics.probe_duration.labels(**self._labels).observe(time.monotonic() - started)

    async def _probe_failed(self, exc: Exception) -> None:
        self.metrics.probe_failures.labels(**self._labels).inc()
        reachable = await self._tcp_reachable()
        self._reachable = reachable
        error = describe_error(exc)
        flip, redial = self._tracker.probe_failed(time.monotonic(), error, reachable)
        held = self._limiter.allow("probe-failed")
        if held is not None:
            log.warning(
                "health probe failed",
                extra={
                    **self.log_fields,
                    "error": error,
                    "reachable": reachable,
                    "consecutive_failures": self._tracker.consecutive_failures,
                    "suppressed_repeats": held,
                },
            )
        self._announce(flip)
        if redial:
            self.request_redial("health probe failing while the server answers TCP")

    # ----- settings that can change at runtime ----------------------------------

    def _settings_fingerprint(self) -> tuple[str, str]:
        s = self.settings
        tls = hashlib.sha256()
        for path in (s.tls_ca_file, s.tls_cert_file, s.tls_key_file):
            with contextlib.suppress(OSError):
                tls.update(_read(path) or b"-")
        key = b""
        with contextlib.suppress(OSError):
            key = _read(s.api_key_file) or b""
        return tls.hexdigest(), hashlib.sha256(key).hexdigest()

    async def _settings_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.settings_check_interval)
            self.check_settings()

    def check_settings(self) -> None:
        """Pick up rotated TLS files (re-dial) or API key (set in place)."""
        tls, key = self._settings_fingerprint()
        old_tls, old_key = self._fingerprint
        self._fingerprint = (tls, key)
        if key != old_key and self._client is not None and self.settings.api_key_file is not None:
            with contextlib.suppress(OSError):
                self._client.api_key = self.settings.api_key_file.read_text().strip() or None
                log.info("API key rotated in place", extra=self.log_fields)
        if tls != old_tls:
            self.request_redial("TLS files changed")

    # ----- transitions ----------------------------------------------------------

    def _set_circuit(self) -> None:
        self.metrics.circuit_open.labels(**self._labels).set(int(self._tracker.circuit_open))

    def _announce(self, flip: Flip | None) -> None:
        """Apply a transition, then tell listeners if (connected, reason) changed."""
        if flip is None:
            pass
        elif flip.to is Transition.CONNECTED:
            self.metrics.connection_status.labels(**self._labels).set(1)
            self._disconnected.clear()
            self._connected.set()
        else:
            self.metrics.connection_status.labels(**self._labels).set(0)
            self.metrics.connection_duration.labels(**self._labels).observe(flip.ended_spell)
            self._connected.clear()
            self._disconnected.set()
            log.warning(
                "connection lost",
                extra={
                    **self.log_fields,
                    "error": self._tracker.last_error,
                    "connected_for": round(flip.ended_spell, 3),
                },
            )
        state = self.state()
        key = (state.connected, state.reason)
        if key == self._announced:
            return
        self._announced = key
        if state.reason == NAMESPACE_NOT_FOUND:
            log.warning(
                "namespace not found; waiting for it to be created",
                extra={**self.log_fields, "reason": state.reason},
            )
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("connection listener failed")
