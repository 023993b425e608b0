"""The keyed work queue: de-duplication, one run per key, per-key backoff, no leaks."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from agentexec.backoff import Backoff
from agentexec.workqueue import DONE, GONE, Priority, RateLimiter, Turns, Verdict, WorkQueue


def test_reconcile_backoff_doubles_per_failure_up_to_a_minute() -> None:
    no_jitter = Backoff(base=0.1, cap=60, jitter=0)
    assert [no_jitter.delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.8]
    assert WorkQueue[str]().backoff.cap == 60


async def test_a_key_added_many_times_while_waiting_runs_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> Verdict:
        runs.append(key)
        return DONE

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

    async def reconcile(key: str) -> Verdict:
        nonlocal overlaps, runs
        if key in active:
            overlaps += 1
        active.add(key)
        runs += 1
        if runs == 1:
            await release.wait()
        active.discard(key)
        return DONE

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

    async def reconcile(key: str) -> Verdict:
        times.append(loop.time())
        if len(times) == 1:
            raise RuntimeError("not yet")
        if len(times) < 4:
            return Verdict(backoff="refused")  # a decision that backs off counts the same
        return DONE

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

    async def reconcile(key: str) -> Verdict:
        runs.append(key)
        return Verdict(after=3600.0) if key == "waiting" else DONE

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

    async def reconcile(key: str) -> Verdict:
        runs.append(key)
        return DONE

    queue.start(reconcile, workers=1)
    queue.add_after("a", 3600)
    queue.add_after("a", 0.01)
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs == ["a"]


async def test_finishing_work_goes_ahead_of_new_objects_and_new_ones_of_the_backlog() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []

    async def reconcile(key: str) -> Verdict:
        runs.append(key)
        return DONE

    for n in range(5):
        queue.add(f"old-{n}")
    queue.add("new", Priority.NEW)
    queue.add("old-3", Priority.FINISH)  # a report for a key already waiting: moved up
    queue.add("report", Priority.FINISH)
    queue.start(reconcile, workers=1)
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs[:3] == ["old-3", "report", "new"]
    assert sorted(runs) == sorted(["new", "report", *(f"old-{n}" for n in range(5))])


async def test_gone_forgets_the_key_but_not_an_add_made_meanwhile() -> None:
    queue: WorkQueue[str] = WorkQueue()
    runs: list[str] = []
    readded = asyncio.Event()

    async def reconcile(key: str) -> Verdict:
        runs.append(key)
        if len(runs) == 1:
            queue.add("a")  # a new object of that name, while the old one was found gone
            readded.set()
            return GONE
        return DONE

    queue.start(reconcile, workers=1)
    queue.add_after("a", 3600)
    queue.add("a")
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs == ["a", "a"]
    assert queue.tracked() == 0  # the old timer went with the gone object


async def test_clear_leaves_nothing_behind() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.add_after("b", 3600)
    queue.add_rate_limited("c")
    assert queue.tracked() == 3
    queue.clear()
    assert queue.tracked() == 0
    assert len(queue) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_rate_limiter_hands_out_turns_without_sleeping() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=2, clock=clock)
    assert [round(limiter.reserve(), 3) for _ in range(5)] == [0, 0, 0.1, 0.2, 0.3]
    clock.now += 1.0  # the backlog is paid off, the bucket refills up to its burst
    assert [round(limiter.reserve(), 3) for _ in range(3)] == [0, 0, 0.1]


def test_a_key_keeps_its_turn_when_it_comes_back() -> None:
    clock = Clock()
    turns: Turns[str] = Turns(RateLimiter(rate=10, burst=1, clock=clock), clock=clock)
    assert turns.take("a") == 0  # the burst
    assert turns.take("b") == pytest.approx(0.1)
    assert turns.take("c") == pytest.approx(0.2)
    clock.now += 0.05
    assert turns.take("b") == pytest.approx(0.05)  # still its own turn, not a new one
    clock.now += 0.05
    assert turns.take("b") == 0
    assert len(turns) == 1  # "c" still holds its turn
    turns.forget("c")
    assert len(turns) == 0


def test_fair_turns_serve_namespaces_in_rounds_not_in_arrival_order() -> None:
    """Issue #22: a namespace with 200 starts queued delays another's first
    start by about one turn, not by its backlog."""
    from agentexec.workqueue import FairTurns

    now = [0.0]
    turns: FairTurns[tuple[str, str]] = FairTurns(
        rate=10.0, burst=1, group=lambda key: key[0], clock=lambda: now[0]
    )
    busy = [("busy", f"e{n:03d}") for n in range(200)]
    assert turns.take(busy[0]) == 0.0  # the token there was
    waits = [turns.take(key) for key in busy[1:]]
    assert waits == sorted(waits)  # in the order they asked
    assert waits[-1] > 19  # 199 turns at 10 per second
    other = ("quiet", "first")
    assert turns.take(other) <= 0.2 + 1e-9  # second in line: one busy turn first
    now[0] += 0.1
    assert turns.take(busy[1]) == 0.0  # the busy head's turn
    assert turns.take(busy[2]) > 0  # not again: the quiet namespace is next
    now[0] += 0.1
    assert turns.take(other) == 0.0
    assert turns.take(busy[2]) > 0  # nothing left this instant
    now[0] += 0.1
    assert turns.take(busy[2]) == 0.0
    turns.forget(busy[3])
    assert len(turns) == 196  # busy[4:]


def test_fair_turns_with_tokens_to_spare_never_hold_anyone() -> None:
    from agentexec.workqueue import FairTurns

    turns: FairTurns[tuple[str, str]] = FairTurns(rate=100.0, burst=100, group=lambda k: k[0])
    assert all(turns.take(("ns", f"e{n}")) == 0.0 for n in range(50))
    assert len(turns) == 0
