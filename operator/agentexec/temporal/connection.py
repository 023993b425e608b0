"""The connection to Temporal: dial, probe, re-dial, and what state it is in.

Owns the client. Callers never hold a client of their own: they ask
:meth:`Connection.client` (or go through :meth:`Connection.call`) at call
time, so a re-dial can never leave anyone on a stale client.

What the SDK does by itself shapes what this does (docs/architecture.md): a
client that connected once reconnects by itself after an outage, and so do
its workers, so an outage alone never tears anything down. This dials when
there is no client, probes on a short interval (a cheap RPC with a hard
deadline), and re-dials only when the client itself is broken.

How a client is made is temporal/dial.py's; what one probe asks is
temporal/probe.py's. "Connected" means the client works and the namespace
exists. Whether a run of failed probes means "down" is the state machine's
call (temporal/state.py): not one failed probe, a short window of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.converter import DataConverter

from agentexec.backoff import LOOP, Backoff
from agentexec.logs import RateLimiter
from agentexec.metrics import Metrics
from agentexec.settings import TemporalSettings
from agentexec.temporal.dial import dial, fingerprint
from agentexec.temporal.errors import (
    TemporalUnavailable,
    describe_dial_error,
    describe_error,
    is_namespace_not_found,
    is_unavailable,
)
from agentexec.temporal.probe import Probe
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


async def settle(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Wait for ``tasks`` to end, whatever they end with (a loop that died of a
    bug has already been reported by /healthz), and mark their errors seen.
    Cancelling the caller cancels them, as awaiting them would."""
    if not tasks:
        return
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    for task in tasks:
        if not task.cancelled():
            task.exception()


class Connection:
    """The client, its probe and its re-dials; see the module docstring.

    ``on_client`` is called with each new client just before it is swapped
    in (the workers move under it there).
    """

    def __init__(
        self,
        settings: TemporalSettings,
        metrics: Metrics,
        *,
        on_client: Callable[[Client], None] = lambda _client: None,
        rng: random.Random | None = None,
        identity: str | None = None,
        data_converter: DataConverter = DataConverter.default,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.identity = identity
        self.data_converter = data_converter
        self.log_fields = {"address": settings.address, "namespace": settings.namespace}
        self.on_client = on_client
        self.backoff = Backoff(
            base=settings.backoff_base, cap=settings.backoff_max, jitter=settings.backoff_jitter
        )
        self._rng = rng or random.Random()
        self._tracker = ConnectionTracker(
            circuit_threshold=settings.circuit_threshold,
            redial_after_failures=settings.redial_after_failures,
            down_after=settings.down_after,
        )
        self._client: Client | None = None
        self._generation = 0
        self.redial_reason: str | None = None
        self._redial_wanted = asyncio.Event()
        self._reachable = False
        self._probe_now = asyncio.Event()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._installed = asyncio.Event()
        self.probe = Probe(settings, self.log_fields)
        self._announced = (False, TEMPORAL_UNAVAILABLE)
        self._listeners: list[Callable[[ConnectionState], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._limiter = RateLimiter(period=30.0)
        self._fingerprint = fingerprint(settings)
        self.labels = {"host_port": settings.address, "namespace": settings.namespace}
        self.metrics.connection_status.labels(**self.labels).set(0)
        self.metrics.circuit_open.labels(**self.labels).set(0)
        # Labelled series exist from the start, so dashboards show zeros, not gaps.
        for family in (
            self.metrics.reconnection_attempts,
            self.metrics.connection_duration,
            self.metrics.probe_duration,
            self.metrics.probe_failures,
        ):
            family.labels(**self.labels)

    def start(self) -> None:
        """Start dialling, probing and watching the settings. Never blocks on Temporal."""
        if self._tasks:
            return
        self._tracker.start(time.monotonic())
        self._tasks = [
            self._spawn("temporal-connection", self._connection_loop),
            self._spawn("temporal-probe", self._probe_loop),
            self._spawn("temporal-settings", self._settings_loop),
        ]

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await settle(tasks)

    def forget_client(self) -> None:
        self._client = None

    def _spawn(
        self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """Run ``loop`` for good: an error is logged and the loop started again
        after a backoff; only cancellation (or a BaseException, a bug that
        /healthz then names) ends it."""

        async def forever() -> None:
            failures = 0
            while True:
                started = time.monotonic()
                try:
                    await loop()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    ran_long = time.monotonic() - started > LOOP.cap
                    failures = 1 if ran_long else failures + 1
                    delay = LOOP.delay(failures, self._rng.random())
                    log.exception(
                        "Temporal connection loop failed; restarting it",
                        extra={
                            **self.log_fields,
                            "loop": name,
                            "error": describe_error(exc),
                            "retry_in_seconds": round(delay, 2),
                        },
                    )
                    await asyncio.sleep(delay)

        return asyncio.create_task(forever(), name=name)

    def stopped_loops(self) -> list[str]:
        """Loops that ended although the connection runs (what liveness should see)."""
        return [t.get_name() for t in self._tasks if t.done()]

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
        Cancelling the caller cancels the call (``wait_for`` cancels what it
        waits on).
        """
        client = self.client()
        try:
            async with asyncio.timeout(timeout or self.settings.rpc_timeout):
                return await fn(client)
        except Exception as exc:
            if is_namespace_not_found(exc, self.settings.namespace):
                # The next probe asks the way this call did (through the
                # frontend's namespace cache), so the state follows.
                self.probe.doubt_namespace = True
                self.report_failure(exc)
                raise TemporalUnavailable(
                    NAMESPACE_NOT_FOUND,
                    f"namespace {self.settings.namespace} does not exist on Temporal at "
                    f"{self.settings.address}: {describe_error(exc)}",
                ) from exc
            if is_unavailable(exc):
                self.report_failure(exc)
                raise TemporalUnavailable(
                    TEMPORAL_UNAVAILABLE,
                    f"Temporal at {self.settings.address} did not answer: {describe_error(exc)}",
                ) from exc
            raise

    def report_failure(self, exc: BaseException | None = None) -> None:
        """Someone's RPC failed: probe now instead of at the next interval."""
        self._probe_now.set()

    def request_redial(self, reason: str) -> None:
        """Ask for a new client. Any number of concurrent requests make one re-dial."""
        if self.redial_reason is None:
            self.redial_reason = reason
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

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        await self._disconnected.wait()

    def add_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Called with the new state on every change of (connected, reason)."""
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """The connection's part of /statusz."""
        now = time.monotonic()
        state = self._tracker.snapshot(now)
        data = state.as_dict()
        data["since_seconds_ago"] = None if state.since is None else round(now - state.since, 3)
        del data["since"]
        data.update(
            address=self.settings.address,
            namespace=self.settings.namespace,
            generation=self._generation,
            redial_pending=self.redial_reason,
        )
        return data

    async def _dial(self) -> Client:
        return await dial(self.settings, self.identity, self.data_converter)

    async def _connection_loop(self) -> None:
        while True:
            if self._client is not None and self.redial_reason is None:
                self._redial_wanted.clear()
                await self._redial_wanted.wait()
                continue
            replacing = self._client is not None
            self._tracker.dial_started()
            attempt = self._tracker.dial_attempts
            if attempt > 1:
                self.metrics.reconnection_attempts.labels(**self.labels).inc()
            try:
                client = await self._dial()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._dial_failed(exc, replacing)
                continue
            self._install(client)
            self._tracker.dial_succeeded(time.monotonic())
            self._set_circuit()
            self.redial_reason = None
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
            async with asyncio.timeout(delay):
                await self._redial_wanted.wait()

    def _install(self, client: Client) -> None:
        """The workers move to the new client (``on_client``), then the swap."""
        self.on_client(client)
        # The swap: a single assignment, so every later client() call sees the
        # new client; the old one is dropped with its last reference.
        self._client = client
        self._generation += 1
        # Wake reconnect() waiters, then re-arm for the next install.
        self._installed.set()
        self._installed = asyncio.Event()

    async def _probe_loop(self) -> None:
        while True:
            self._probe_now.clear()
            await self._probe_once()
            # Down, or failing without being called down yet: probe fast, so
            # that recovery, or the end of the window, is seen within this.
            interval = (
                self.settings.probe_interval
                if self._tracker.connected and not self._tracker.failing
                else min(self.settings.probe_interval, self.settings.probe_interval_disconnected)
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._probe_now.wait()

    async def _probe_once(self) -> None:
        client = self._client
        if client is None:
            # No client to ask: a TCP dial tells whether dialling is worth it.
            reachable = await self.probe.tcp_reachable()
            if reachable and not self._reachable:
                self._redial_wanted.set()  # cut the dial backoff short
            self._reachable = reachable
            return
        if not self._tracker.connected:
            # While down, each probe is what drives the SDK channel to reconnect.
            self.metrics.reconnection_attempts.labels(**self.labels).inc()
        started = time.monotonic()
        outcome: str | Exception
        try:
            outcome = await self.probe.ask(client, through_cache=not self._tracker.connected)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = exc
        self.metrics.probe_duration.labels(**self.labels).observe(time.monotonic() - started)
        if client is not self._client:
            return  # a re-dial swapped clients meanwhile; this answer is about the old one
        if isinstance(outcome, Exception):
            await self._probe_failed(outcome, started)
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

    def _probe_succeeded(self) -> None:
        flip = self._tracker.probe_succeeded(time.monotonic())
        self._limiter.reset("probe-failed")
        if self.redial_reason is not None and self.redial_reason.startswith("health probe"):
            log.info(
                "connection recovered before the re-dial; keeping the client", extra=self.log_fields
            )
            self.redial_reason = None
            self._redial_wanted.set()
        self._announce(flip)

    async def _probe_failed(self, exc: Exception, started: float) -> None:
        self.metrics.probe_failures.labels(**self.labels).inc()
        error = describe_error(exc)
        flip = self._tracker.probe_failed(time.monotonic(), error, started=started)
        reachable = await self.probe.tcp_reachable() if self._tracker.redial_due else None
        held = self._limiter.allow("probe-failed")
        if held is not None:
            log.warning(
                "health probe failed",
                extra={
                    **self.log_fields,
                    "error": error,
                    "consecutive_failures": self._tracker.consecutive_failures,
                    "suppressed_repeats": held,
                    **({} if reachable is None else {"reachable": reachable}),
                },
            )
        self._announce(flip)
        if reachable:
            self.request_redial("health probe failing while the server answers TCP")

    async def _settings_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.settings_check_interval)
            self.check_settings()

    def check_settings(self) -> None:
        """Pick up rotated TLS files (re-dial) or API key (set in place)."""
        tls, key = fingerprint(self.settings)
        old_tls, old_key = self._fingerprint
        self._fingerprint = (tls, key)
        if key != old_key and self._client is not None and self.settings.api_key_file is not None:
            with contextlib.suppress(OSError):
                self._client.api_key = self.settings.api_key_file.read_text().strip() or None
                log.info("API key rotated in place", extra=self.log_fields)
        if tls != old_tls:
            self.request_redial("TLS files changed")

    def _set_circuit(self) -> None:
        self.metrics.circuit_open.labels(**self.labels).set(int(self._tracker.circuit_open))

    def _announce(self, flip: Flip | None) -> None:
        """Apply a transition, then tell listeners if (connected, reason) changed."""
        if flip is None:
            pass
        elif flip.to is Transition.CONNECTED:
            self.metrics.connection_status.labels(**self.labels).set(1)
            self._disconnected.clear()
            self._connected.set()
        else:
            self.metrics.connection_status.labels(**self.labels).set(0)
            self.metrics.connection_duration.labels(**self.labels).observe(flip.ended_spell)
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
