"""The keyed work queue: de-duplication, one run per key, per-key backoff, no leaks."""

from __future__ import annotations

import asyncio
import itertools

from agentexec.backoff import Backoff
from agentexec.workqueue import TokenBucket, WorkQueue


def test_reconcile_backoff_doubles_per_failure_up_to_a_minute() -> None:
    no_jitter = Backoff(base=0.1, cap=60, jitter=0)
    assert [no_jitter.delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert WorkQueue[str]().backoff.cap == 60


async def test_a_key_added_many_times_while_waiting_runs_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> None:
        runs.append(key)

    for _ in range(10):
        queue.add("a")
    queue.add("b")
    queue.start(reconcile, workers=4)
    await asyncio.sleep(0.05)
    await queue.stop()
    assert sorted(runs) == ["a", "b"]


async def test_one_reconcile_per_key_at_a_time_and_an_add_meanwhile_runs_after() -> None:
    queue: WorkQueue[str] = WorkQueue()
    active: set[str] = set()
    overlaps = 0
    runs = 0
    release = asyncio.Event()

    async def reconcile(key: str) -> None:
        nonlocal overlaps, runs
        if key in active:
            overlaps += 1
        active.add(key)
        runs += 1
        if runs == 1:
            await release.wait()
        active.discard(key)

    queue.start(reconcile, workers=8)
    queue.add("a")
    await asyncio.sleep(0.01)
    for _ in range(5):
        queue.add("a")  # while "a" is being processed: dirty, not run concurrently
    await asyncio.sleep(0.01)
    assert runs == 1
    release.set()
    await asyncio.sleep(0.05)
    await queue.stop()
    assert overlaps == 0
    assert runs == 2  # the five adds collapsed into one more run


async def test_errors_back_off_per_key_and_success_forgets() -> None:
    queue: WorkQueue[str] = WorkQueue(backoff=Backoff(base=0.02, cap=1, jitter=0))
    times: list[float] = []
    loop = asyncio.get_running_loop()

    async def reconcile(key: str) -> None:
        times.append(loop.time())
        if len(times) < 4:
            raise RuntimeError("not yet")

    queue.start(reconcile, workers=1)
    queue.add("a")
    await asyncio.sleep(0.4)
    await queue.stop()
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    assert gaps[0] >= 0.02, gaps
    assert gaps[1] >= 0.04, gaps
    assert gaps[2] >= 0.08, gaps
    assert queue.failures("a") == 0
    assert queue.tracked() == 0


async def test_requeue_after_and_remove_leave_nothing_behind() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> float | None:
        runs.append(key)
        return 3600.0 if key == "waiting" else None

    queue.start(reconcile, workers=2)
    queue.add("waiting")
    queue.add("gone")
    await asyncio.sleep(0.02)
    assert queue.tracked() == 1  # the waiting key's timer
    queue.remove("waiting")
    queue.add("gone")
    queue.remove("gone")  # removed while queued: skipped
    await asyncio.sleep(0.02)
    await queue.stop()
    assert runs == ["waiting", "gone"]
    assert queue.tracked() == 0


async def test_an_earlier_deadline_wins() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> None:
        runs.append(key)

    queue.start(reconcile, workers=1)
    queue.add_after("a", 3600)
    queue.add_after("a", 0.01)
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs == ["a"]


async def test_token_bucket_bounds_the_rate() -> None:
    bucket = TokenBucket(rate=100, burst=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(11):
        await bucket.acquire()
    assert loop.time() - started >= 0.09


async def test_a_key_added_first_goes_ahead_of_the_backlog() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> None:
        runs.append(key)

    for n in range(5):
        queue.add(f"old-{n}")
    queue.add("new", first=True)
    queue.start(reconcile, workers=1)
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs[0] == "new"
    assert len(runs) == 6


async def test_a_token_bucket_says_when_an_acquire_would_wait() -> None:
    bucket = TokenBucket(rate=1000.0, burst=1)
    assert bucket.available()
    await bucket.acquire()
    assert not bucket.available()  # the one token is gone; the next needs 1 ms
    await asyncio.sleep(0.01)
    assert bucket.available()
