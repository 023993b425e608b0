"""The background triggers: the condition pacer and the workflow watch, with plain fakes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import WorkflowExecutionStatus

from agentexec import conditions as c
from agentexec.cache import ExecutionCache, Key
from agentexec.loops import ConditionPacer
from agentexec.status import FINALIZER, Connection, build_conditions, connection_condition
from agentexec.temporal.gateway import ClosedWorkflow
from agentexec.workflow_watch import WorkflowWatch
from agentexec.workqueue import WorkQueue
from tests.unit.fakes import FakeVisibility, execution

UP = Connection(True, "Connected", "connected")
DOWN = Connection(False, "TemporalUnavailable", "down")
NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def running(
    name: str, conn: Connection = UP, started: datetime = NOW - timedelta(minutes=5)
) -> dict[str, Any]:
    body = execution(name, uid=f"u-{name}")
    body["metadata"]["finalizers"] = [FINALIZER]
    body["status"] = {
        "phase": "Running",
        "temporalConnection": conn.reason,
        "startTime": c.timestamp(started),
        "workflow": {
            "id": f"agentexec/ns/{name}/u-{name}",
            "runId": "r",
            "namespace": "default",
            "taskQueue": "q",
        },
        "conditions": build_conditions(body, [connection_condition(conn)], NOW),
    }
    return body


async def test_the_pacer_reaches_every_execution_at_a_bounded_rate() -> None:
    cache = ExecutionCache()
    for n in range(200):
        cache.put(("ns", f"e{n}"), running(f"e{n}"))
    cache.put(("ns", "right"), running("right", DOWN))  # already says so: left alone
    queue: WorkQueue[Key] = WorkQueue()
    conn = {"now": DOWN}
    pacer = ConditionPacer(cache, queue, lambda: conn["now"], rate=1000.0, settle=0.0)
    pacer.changed()
    began = time.monotonic()
    await pacer.step()
    took = time.monotonic() - began
    assert len(queue) == 200
    assert ("ns", "right") not in {k for k in queue._dirty}
    assert took >= 0.15, took  # 200 at 1000/s: paced, not at once


async def test_a_flip_back_starts_the_walk_over_for_the_new_state() -> None:
    cache = ExecutionCache()
    for n in range(100):
        cache.put(("ns", f"e{n}"), running(f"e{n}"))
    queue: WorkQueue[Key] = WorkQueue()
    conn = {"now": DOWN}
    pacer = ConditionPacer(cache, queue, lambda: conn["now"], rate=200.0, settle=0.0)
    pacer.changed()
    walk = asyncio.create_task(pacer.step())
    await asyncio.sleep(0.12)
    conn["now"] = UP  # back before the walk reached them all
    pacer.changed()
    await walk
    reached = len(queue)
    assert 0 < reached < 100
    await pacer.step()  # the new state: they all say Connected already
    assert len(queue) == reached


def closed(name: str, status: WorkflowExecutionStatus, at: datetime) -> ClosedWorkflow:
    return ClosedWorkflow(f"agentexec/ns/{name}/u-{name}", "r", status, at)


def watch_of(
    cache: ExecutionCache, gateway: FakeVisibility, clock: list[float] | None = None
) -> tuple[WorkflowWatch, list[Key]]:
    checked: list[Key] = []
    now = clock if clock is not None else [NOW.timestamp()]
    watch = WorkflowWatch(
        cache,
        gateway,  # type: ignore[arg-type]
        lambda: True,
        checked.append,
        interval=3.0,
        clock=lambda: now[0],
    )
    return watch, checked


async def test_the_watch_checks_executions_whose_workflow_closed_in_temporal() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    for name in ("a", "b", "c"):
        cache.put(("ns", name), running(name))
    gateway.running_ids = {"agentexec/ns/a/u-a", "agentexec/ns/c/u-c"}
    gateway.closed = [
        closed("b", WorkflowExecutionStatus.TERMINATED, NOW - timedelta(seconds=1)),
        closed("zz", WorkflowExecutionStatus.COMPLETED, NOW - timedelta(seconds=1)),  # not ours
    ]
    watch, checked = watch_of(cache, gateway)
    watch._everything = False
    await watch.step()
    assert checked == [("ns", "b")]
    kinds = [k for k, _ in gateway.calls]
    # One list of closings and one count: the counts agree (3 ours... 2 theirs
    # plus the closing one) only once b is written; here they disagree, and the
    # running ones are listed, finding b again (checked once more is harmless).
    assert kinds[:2] == ["list_closed", "count_running"]
    await watch.step()
    assert checked.count(("ns", "b")) >= 1
    assert ("ns", "a") not in checked


async def test_the_watch_costs_two_calls_while_the_counts_agree() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    for n in range(500):
        cache.put(("ns", f"e{n}"), running(f"e{n}"))
    gateway.running_ids = {f"agentexec/ns/e{n}/u-e{n}" for n in range(500)}
    watch, checked = watch_of(cache, gateway)
    await watch.step()  # the first look lists everything (what closed while nobody led)
    gateway.calls.clear()
    for _ in range(5):
        await watch.step()
    assert [k for k, _ in gateway.calls] == ["list_closed", "count_running"] * 5
    assert checked == []


async def test_a_deleted_workflow_is_found_by_the_count_and_one_listing() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    for n in range(10):
        cache.put(("ns", f"e{n}"), running(f"e{n}"))
    gateway.running_ids = {f"agentexec/ns/e{n}/u-e{n}" for n in range(10)}
    watch, checked = watch_of(cache, gateway)
    await watch.step()
    gateway.running_ids.discard("agentexec/ns/e4/u-e4")  # deleted in Temporal: never closed
    gateway.calls.clear()
    await watch.step()
    assert checked == [("ns", "e4")]
    assert [k for k, _ in gateway.calls] == ["list_closed", "count_running", "list_running"]


async def test_a_surplus_is_not_listed_again_at_every_look() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    cache.put(("ns", "a"), running("a"))
    # One of ours, and a workflow nobody records any more (force-deleted execution).
    gateway.running_ids = {"agentexec/ns/a/u-a", "agentexec/ns/orphan/u-o"}
    watch, checked = watch_of(cache, gateway)
    await watch.step()
    gateway.calls.clear()
    await watch.step()
    await watch.step()
    assert [k for k, _ in gateway.calls] == ["list_closed", "count_running"] * 2
    assert checked == []


async def test_a_workflow_just_started_is_not_taken_for_a_vanished_one() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    cache.put(("ns", "old"), running("old"))
    cache.put(("ns", "young"), running("young", started=NOW - timedelta(seconds=1)))
    gateway.running_ids = {"agentexec/ns/old/u-old"}  # "young" not counted yet (visibility lag)
    clock = [NOW.timestamp()]
    watch, checked = watch_of(cache, gateway, clock)
    watch._everything = False
    await watch.step()
    assert checked == []  # too young to be counted on either side: no listing
    assert [k for k, _ in gateway.calls] == ["list_closed", "count_running"]
    clock[0] += 10  # old enough now, and still not running in Temporal: checked
    await watch.step()
    assert checked == [("ns", "young")]


async def test_a_surplus_is_listed_at_most_every_half_minute() -> None:
    cache = ExecutionCache()
    gateway = FakeVisibility()
    cache.put(("ns", "a"), running("a"))
    cache.put(("ns", "b"), running("b"))
    gateway.running_ids = {"agentexec/ns/a/u-a", "agentexec/ns/b/u-b", "agentexec/ns/x/u-1"}
    clock = [NOW.timestamp()]
    watch, checked = watch_of(cache, gateway, clock)
    await watch.step()  # the first look lists; surplus 1 explained
    # b deleted in Temporal while another orphan appears: the surplus hides it.
    gateway.running_ids = {"agentexec/ns/a/u-a", "agentexec/ns/x/u-1", "agentexec/ns/x/u-2"}
    clock[0] += 3
    await watch.step()
    assert checked == []  # listed at most every 30 s while there is a surplus
    clock[0] += 30
    await watch.step()
    assert checked == [("ns", "b")]
