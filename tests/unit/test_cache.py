"""The execution cache holds little per execution kept (issue #18: 100 000
finished executions under 300 MB), and gives back what reconcile needs."""

from __future__ import annotations

import copy
import json
import sys
import tracemalloc
from typing import Any

import kopf

from agentexec import handlers
from agentexec.cache import ExecutionCache, key_of, slim
from agentexec.status import FINALIZER
from tests.unit.fakes import execution


def finished(name: str, uid: str = "u1", **status: Any) -> dict[str, Any]:
    body = execution(name, uid=uid, ttlSecondsAfterFinished=60)
    body["metadata"]["generation"] = 1
    body["metadata"]["managedFields"] = [{"manager": "x", "fieldsV1": {"f:status": {}}}]
    body["status"] = {
        "phase": "Succeeded",
        "completionTime": "2026-12-01T00:01:00Z",
        "output": "x" * 4096,
        "conditions": [{"type": "Succeeded", "status": "True"}],
        **status,
    }
    return body


def test_a_finished_execution_reads_back_as_its_slim_view() -> None:
    cache = ExecutionCache()
    body = finished("a")
    key = key_of(body)
    assert key is not None
    assert cache.put(key, body)
    assert cache.get(key) == slim(body)
    assert dict(cache.items()) == {key: slim(body)}
    assert cache.phases["Succeeded"] == 1
    # An older version is no news; a newer one replaces it.
    stale = copy.deepcopy(body)
    stale["metadata"]["resourceVersion"] = "1"
    assert not cache.put(key, stale)
    # A late deletion of another object of the name leaves it; its own removes it.
    assert not cache.remove(key, "other-uid")
    assert cache.remove(key, "u1")
    assert cache.get(key) is None
    assert cache.phases["Succeeded"] == 0


def test_what_reconcile_still_needs_of_a_finished_one_is_kept() -> None:
    cache = ExecutionCache()
    for body in (
        finished("fin", workflow={"id": "w"}),  # with our finalizer: its workflow
        finished("del"),  # being deleted
    ):
        body["metadata"]["finalizers"] = [FINALIZER]
        if body["metadata"]["name"] == "del":
            body["metadata"]["deletionTimestamp"] = "2026-12-01T00:02:00Z"
        key = key_of(body)
        assert key is not None
        cache.put(key, body)
        assert cache.get(key) == slim(body)


def test_a_finished_execution_kept_costs_under_half_a_kilobyte() -> None:
    cache = ExecutionCache()
    bodies = [
        finished(f"kept-{n}", uid=f"{n:08d}-0000-0000-0000-000000000000") for n in range(2000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for body in bodies:
            key = key_of(body)
            assert key is not None
            cache.put(key, body)
        per = (tracemalloc.get_traced_memory()[0] - before) / len(bodies)
    finally:
        tracemalloc.stop()
    # The bodies' own strings (uid, name, times) are shared with the test's
    # copies here; the dicts of a slim view alone were ~1.4 KB.
    assert per < 512, per


async def test_kopf_keeps_no_memory_per_object() -> None:
    memories = handlers.Unremembered()
    memo = kopf.Memo(controller=None)
    for n in range(3):
        body: Any = {"metadata": {"uid": f"u{n}", "name": f"a{n}", "namespace": "ns"}}
        memory = await memories.recall(body, memobase=memo, noticed_by_listing=True)
        assert id(memory.memo) != id(memo)  # a fresh memo, as kopf gives one
    assert not memories._items


def test_one_namespace_string_serves_every_key() -> None:
    # Each parsed object brings its own copy of the namespace's name.
    body = finished("a")
    body["metadata"]["namespace"] = "team-" + "a"
    key = key_of(json.loads(json.dumps(body)))
    assert key is not None
    assert key[0] is sys.intern("team-a")


def test_walks_for_unfinished_executions_skip_the_packed_finished_ones() -> None:
    cache = ExecutionCache()
    done, running = finished("done"), execution("running", uid="u2")
    running["status"] = {"phase": "Running"}
    for body in (done, running):
        key = key_of(body)
        assert key is not None
        cache.put(key, body)
    assert [k for k, _ in cache.active_items()] == [("ns", "running")]
    assert sorted(k for k, _ in cache.items()) == [("ns", "done"), ("ns", "running")]
