"""A keyed work queue: one reconcile per key at a time, de-duplicated, with
per-key exponential backoff on errors.

The shape is client-go's ``workqueue`` as controller-runtime uses it: a key
added while it waits is not queued twice ("dirty"); a key added while it is
being processed is queued again when that run ends ("processing"); errors
re-add the key after a per-key delay that doubles, and success forgets it.
Triggers only ever call ``add``/``add_after``; the workers decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from agentexec.backoff import RECONCILE, Backoff

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("agentexec.workqueue")

# What a reconcile returns: seconds after which to look at the key again, or None.
Reconcile = Callable[[K], Awaitable[float | None]]


class TokenBucket:
    """At most ``rate`` acquisitions per second, with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def available(self) -> bool:
        """Whether an acquire now would not wait (nobody waiting, a token left)."""
        if self._lock.locked():
            return False
        now = time.monotonic()
        return min(self.burst, self._tokens + (now - self._stamp) * self.rate) >= 1

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        backoff: Backoff = RECONCILE,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = backoff
        self._rng = rng
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    # ----- triggers ---------------------------------------------------------------

    def add(self, key: K, first: bool = False) -> None:
        """Queue ``key`` once; ``first`` puts it ahead of the backlog (a new
        object must not wait behind a start-up resync of thousands)."""
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            if first:
                self._queue.appendleft(key)
            else:
                self._queue.append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending deadline wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= deadline:
                return
            pending[1].cancel()
        self._timers[key] = (deadline, loop.call_at(deadline, self._fire, key))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        """Add ``key`` after its own backoff (it failed); returns the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = self.backoff.delay(failures, self._rng())
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """Stop tracking ``key``'s failures (it succeeded)."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def remove(self, key: K) -> None:
        """The object is gone: drop every trace of its key."""
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()
        self._dirty.discard(key)  # a queued entry is skipped when it comes up

    # ----- workers ---------------------------------------------------------------

    async def get(self) -> K:
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            key = self._queue.popleft()
            if key not in self._dirty:
                continue  # removed while waiting
            self._dirty.discard(key)
            self._processing.add(key)
            return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def start(self, reconcile: Reconcile[K], workers: int) -> None:
        self._workers = [
            asyncio.create_task(self._worker(reconcile), name=f"reconcile-{n}")
            for n in range(workers)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    @property
    def running(self) -> bool:
        return bool(self._workers) and not any(t.done() for t in self._workers)

    async def _worker(self, reconcile: Reconcile[K]) -> None:
        while True:
            key = await self.get()
            try:
                again = await reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.add_rate_limited(key)
                log.warning(
                    "reconcile failed; retrying with backoff",
                    extra={
                        "key": "/".join(map(str, key)) if isinstance(key, tuple) else str(key),
                        "error": f"{type(exc).__name__}: {exc}"[:300],
                        "retry_in_seconds": round(delay, 2),
                        "failures": self.failures(key),
                    },
                )
            else:
                self.forget(key)
                if again is not None:
                    self.add_after(key, again)
            finally:
                self.done(key)

    # ----- introspection -----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._dirty)

    def tracked(self) -> int:
        """Keys held in any structure (a leak shows here)."""
        return len(set(self._dirty) | self._processing | set(self._failures) | set(self._timers))
