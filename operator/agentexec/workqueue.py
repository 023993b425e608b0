"""A keyed work queue: one reconcile per key at a time, de-duplicated, with
per-key exponential backoff on errors, priorities, and delayed adds.

The shape is client-go's ``workqueue`` as controller-runtime uses it: a key
added while it waits is not queued twice ("dirty"); a key added while it is
being processed is queued again when that run ends ("processing"); errors
re-add the key after a per-key delay that doubles, and success forgets it.
Reconcile returns a :class:`Verdict` (done, look again after, back off,
gone) and the queue acts on it. Triggers only ever call ``add``/``add_after``.

Rate limits are delays here too, never sleeps in a worker: a
:class:`RateLimiter` hands out turns (``reserve``) and a key whose turn is
later is added back after that delay (client-go's ``AddAfter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agentexec.backoff import RECONCILE, Backoff

K = TypeVar("K", bound=Hashable)
log = logging.getLogger("agentexec.workqueue")


class Priority(enum.IntEnum):
    """Which keys go first. Finishing work (a report from a workflow, a
    deletion, a cancel) is never queued behind new starts."""

    FINISH = 0
    NEW = 1  # a new object: its latency is what users see
    NORMAL = 2  # resyncs, timers, connection changes


@dataclass(frozen=True)
class Verdict:
    """What one reconcile tells the queue."""

    after: float | None = None  # look again after this many seconds (0: at once)
    backoff: str | None = None  # not done: retry after the key's own backoff (why)
    gone: bool = False  # the object no longer exists: forget the key's failures and timers


DONE = Verdict()
GONE = Verdict(gone=True)

# What a reconcile is: a key in, a verdict out.
Reconcile = Callable[[K], Awaitable[Verdict]]


class RateLimiter:
    """A token bucket that never sleeps: ``reserve()`` takes the next free turn
    and says how many seconds from now it is (golang.org/x/time/rate's
    ``Reserve``), so the caller can come back then instead of waiting."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1, burst)
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take a turn; 0 means now, otherwise that many seconds from now."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Turns(Generic[K]):
    """Per-key turns at one rate limiter: a key that was told "in 2 s" keeps
    that turn when it comes back, instead of queueing again at the end."""

    def __init__(self, limiter: RateLimiter, clock: Callable[[], float] = time.monotonic):
        self.limiter = limiter
        self._clock = clock
        self._turns: dict[K, float] = {}

    def take(self, key: K) -> float:
        """Seconds until ``key``'s turn (0: it is now, and the turn is used)."""
        now = self._clock()
        turn = self._turns.get(key)
        if turn is None:
            wait = self.limiter.reserve()
            if wait <= 0:
                return 0.0
            self._turns[key] = now + wait
            return wait
        if turn - now > 0.001:
            return turn - now
        del self._turns[key]
        return 0.0

    def forget(self, key: K) -> None:
        self._turns.pop(key, None)

    def clear(self) -> None:
        self._turns.clear()

    def __len__(self) -> int:
        return len(self._turns)


class FairTurns(Generic[K]):
    """Turns at one rate shared fairly among groups (issue #22: namespaces).

    A key asks ``take(key)`` as with Turns and is told "now" or "come back in
    so many seconds"; while turns are short, the keys waiting are served
    round-robin by group (each group in the order its keys asked), so one
    namespace with hundreds of starts queued delays another's first start by
    about one turn, not by its whole backlog. A key's place is recomputed
    each time it comes back; with tokens enough for everyone ahead of it, it
    goes at once.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        group: Callable[[K], str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.group = group
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        # group -> its waiting keys in the order they asked; groups in turn order.
        self._waiting: dict[str, dict[K, None]] = {}

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def _position(self, group: str, key: K) -> int:
        """Keys served before ``key`` when the groups take turns."""
        queue = list(self._waiting[group])
        index = queue.index(key)
        ahead = index  # its own group's, before it
        for other, keys in self._waiting.items():
            if other == group:
                continue
            ahead += min(len(keys), index)
        for other, keys in self._waiting.items():
            if other == group:
                break
            if len(keys) > index:
                ahead += 1  # groups before it in this round
        return ahead

    def take(self, key: K) -> float:
        """Seconds until ``key``'s turn (0: it is now, and the turn is used)."""
        self._refill()
        group = self.group(key)
        queue = self._waiting.get(group)
        if not self._waiting and self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        if queue is None:
            queue = self._waiting[group] = {}
        queue.setdefault(key, None)
        position = self._position(group, key)
        if self._tokens >= position + 1:
            self._tokens -= 1
            self._grant(group, key)
            return 0.0
        return max(0.001, (position + 1 - self._tokens) / self.rate)

    def _grant(self, group: str, key: K) -> None:
        queue = self._waiting.pop(group)
        del queue[key]
        if queue:
            self._waiting[group] = queue  # served: to the end of the round

    def forget(self, key: K) -> None:
        group = self.group(key)
        queue = self._waiting.get(group)
        if queue is not None and key in queue:
            del queue[key]
            if not queue:
                del self._waiting[group]

    def clear(self) -> None:
        self._waiting.clear()

    def __len__(self) -> int:
        return sum(len(q) for q in self._waiting.values())


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        backoff: Backoff = RECONCILE,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = backoff
        self._rng = rng
        self._queues: tuple[deque[K], ...] = tuple(deque() for _ in Priority)
        self._dirty: dict[K, Priority] = {}  # waiting keys, at their priority
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._ready = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    def add(self, key: K, priority: Priority = Priority.NORMAL) -> None:
        """Queue ``key`` once, at the highest priority it was added with."""
        held = self._dirty.get(key)
        if held is not None and held <= priority:
            return
        self._dirty[key] = priority
        if key not in self._processing:
            # A key moved up leaves a stale entry below; get() skips it.
            self._queues[priority].append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float, priority: Priority = Priority.NORMAL) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending deadline wins."""
        if delay <= 0:
            self.add(key, priority)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        pending = self._timers.get(key)
        if pending is not None:
            if pending[0] <= deadline:
                return
            pending[1].cancel()
        self._timers[key] = (deadline, loop.call_at(deadline, self._fire, key, priority))

    def _fire(self, key: K, priority: Priority) -> None:
        self._timers.pop(key, None)
        self.add(key, priority)

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

    def _drop_timer(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer[1].cancel()

    def remove(self, key: K) -> None:
        """The object is gone: drop every trace of its key."""
        self._failures.pop(key, None)
        self._drop_timer(key)
        self._dirty.pop(key, None)  # a queued entry is skipped when it comes up

    def clear(self) -> None:
        """Drop every key, timer and failure count (leadership lost: a standby
        holds nothing)."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._failures.clear()
        self._dirty.clear()
        for queue in self._queues:
            queue.clear()

    async def get(self) -> K:
        while True:
            for priority, queue in zip(Priority, self._queues, strict=True):
                while queue:
                    key = queue.popleft()
                    if self._dirty.get(key) != priority or key in self._processing:
                        continue  # removed, or moved up, while it waited
                    del self._dirty[key]
                    self._processing.add(key)
                    return key
            self._ready.clear()
            await self._ready.wait()

    def done(self, key: K) -> None:
        self._processing.discard(key)
        priority = self._dirty.get(key)
        if priority is not None:
            self._queues[priority].append(key)
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
                verdict = await reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._retry(key, f"{type(exc).__name__}: {exc}")
            else:
                self._act(key, verdict)
            finally:
                self.done(key)

    def _act(self, key: K, verdict: Verdict) -> None:
        if verdict.backoff is not None:
            self._retry(key, verdict.backoff)
            return
        self.forget(key)
        if verdict.gone:
            # Not the dirty mark: an add made meanwhile is about a new object.
            self._drop_timer(key)
        elif verdict.after is not None:
            self.add_after(key, verdict.after)

    def _retry(self, key: K, why: str) -> None:
        delay = self.add_rate_limited(key)
        log.warning(
            "reconcile failed; retrying with backoff",
            extra={
                "key": "/".join(map(str, key)) if isinstance(key, tuple) else str(key),
                "error": why[:300],
                "retry_in_seconds": round(delay, 2),
                "failures": self.failures(key),
            },
        )

    def __len__(self) -> int:
        return len(self._dirty)

    def tracked(self) -> int:
        """Keys held in any structure (a leak shows here)."""
        return len(set(self._dirty) | self._processing | set(self._failures) | set(self._timers))
