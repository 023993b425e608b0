"""The execution cache: the latest view of every execution, slim. No I/O.

Filled by the watch (kopf's events) and by our own writes' responses, so the
next decision never starts from a stale view. Every lookup by key compares
uids where it matters: a name can be deleted and re-created, and events of
the old object may arrive late.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from agentexec.conditions import Body, parse_time, status_of
from agentexec.status import (
    FINALIZER,
    FORCE_DELETE,
    expiry_of,
    has_finalizer,
    is_terminal,
    meta_of,
    phase_of,
    recorded_workflow,
    uid_of,
)

Key = tuple[str, str]  # (namespace, name)
# How long the start second of a running execution is kept (enough for the
# workflow watch's look back, which is seconds).
FORGET_STARTS_AFTER = 300.0
Group = tuple[str, str]  # (Temporal namespace, task queue) of recorded workflows


def key_of(body: Body) -> Key | None:
    meta = meta_of(body)
    ns, name = meta.get("namespace"), meta.get("name")
    # One namespace string for all its objects, not one per parsed object.
    return (sys.intern(ns), name) if isinstance(ns, str) and isinstance(name, str) else None


def _rv(body: Body) -> int | None:
    try:
        return int(meta_of(body)["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def slim(body: Body) -> dict[str, Any]:
    """What reconcile needs of an object, and no more (memory per execution).

    A finished execution keeps its identity, finalizers, phase, completion
    time and TTL only (and its workflow while our finalizer is on it).
    """
    meta = meta_of(body)
    annotations = meta.get("annotations") or {}
    slim_meta = {
        k: meta[k]
        for k in (
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
            "finalizers",
            "creationTimestamp",
        )
        if k in meta
    }
    if isinstance(annotations, Mapping) and FORCE_DELETE in annotations:
        slim_meta["annotations"] = {FORCE_DELETE: annotations[FORCE_DELETE]}
    status = status_of(body)
    if is_terminal(body):
        spec = body.get("spec")
        ttl = spec.get("ttlSecondsAfterFinished") if isinstance(spec, Mapping) else None
        # lastApproval: an AgentApproval not yet said to have applied is
        # answered from it (approvals.plan_approvals).
        kept = (
            "phase",
            "completionTime",
            "lastApproval",
            *(("workflow",) if has_finalizer(body) else ()),
        )
        return {
            "metadata": slim_meta,
            "spec": {} if ttl is None else {"ttlSecondsAfterFinished": ttl},
            "status": {k: status[k] for k in kept if k in status},
        }
    return {"metadata": slim_meta, "spec": body.get("spec"), "status": dict(status)}


# A finished execution without our finalizer, deletion or annotation (most
# of a large population kept in the cluster), held as one tuple instead of
# three dicts: uid, resourceVersion, generation, creationTimestamp, phase,
# completionTime, ttlSecondsAfterFinished. ``_unpack`` gives back exactly
# what ``slim`` kept (name and namespace are the key's).
Packed = tuple[Any, Any, Any, Any, Any, Any, Any]
_PACKED_META = frozenset(
    {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"}
)


def _pack(kept: dict[str, Any]) -> Packed | None:
    meta, spec, status = kept["metadata"], kept["spec"], kept["status"]
    if not is_terminal(kept) or not meta.keys() <= _PACKED_META or "workflow" in status:
        return None
    phase = status.get("phase")
    return (
        meta.get("uid"),
        meta.get("resourceVersion"),
        meta.get("generation"),
        meta.get("creationTimestamp"),
        sys.intern(phase) if isinstance(phase, str) else phase,
        status.get("completionTime"),
        spec.get("ttlSecondsAfterFinished"),
    )


def _unpack(key: Key, packed: Packed) -> dict[str, Any]:
    uid, rv, generation, created, phase, completed, ttl = packed
    meta = {"name": key[1], "namespace": key[0], "uid": uid, "resourceVersion": rv}
    meta.update(generation=generation, creationTimestamp=created)
    status = {"phase": phase, "completionTime": completed}
    return {
        "metadata": {k: v for k, v in meta.items() if v is not None},
        "spec": {} if ttl is None else {"ttlSecondsAfterFinished": ttl},
        "status": {k: v for k, v in status.items() if v is not None},
    }


def running_group(body: Body) -> Group | None:
    """Where the execution's workflow runs, for an unfinished execution with one."""
    if is_terminal(body):
        return None
    workflow = recorded_workflow(body)
    if not workflow.get("id"):
        return None
    return str(workflow.get("namespace", "")), str(workflow.get("taskQueue", ""))


class ExecutionCache:
    """The latest view of every execution: the watch's, or our own write if newer."""

    def __init__(self) -> None:
        self._objects: dict[Key, dict[str, Any] | Packed] = {}
        self.phases: Counter[str] = Counter()
        # Unfinished executions with a recorded workflow, per group, and by the
        # second they started: compared with Temporal's count of running
        # workflows that started before a moment (workflow_watch.py).
        self.running: Counter[Group] = Counter()
        self._started: dict[Group, Counter[int]] = {}
        # Unfinished executions by namespace: what a namespace's quota is
        # counted over (tenancy.py) without walking every execution held.
        self._unfinished: dict[str, set[Key]] = {}

    def _count(self, body: Body, sign: int) -> None:
        self.phases[phase_of(body) or "Unknown"] += sign
        group = running_group(body)
        if group is None:
            return
        self.running[group] += sign
        started = parse_time(status_of(body).get("startTime"))
        if started is None:
            return
        second, seconds = int(started.timestamp()), self._started.setdefault(group, Counter())
        if sign > 0:
            seconds[second] += 1
        elif seconds.get(second):  # (a second long forgotten is not held)
            seconds[second] -= 1
            if not seconds[second]:
                del seconds[second]

    def started_since(self, group: Group, since: float) -> int:
        """Unfinished executions of ``group`` whose workflow started at or after
        ``since`` (epoch seconds); seconds long before it are forgotten."""
        seconds = self._started.get(group)
        if not seconds:
            return 0
        for second in [s for s in seconds if s < since - FORGET_STARTS_AFTER]:
            del seconds[second]
        return sum(n for second, n in seconds.items() if second >= since)

    def put(self, key: Key, body: Body) -> bool:
        """Keep ``body`` unless we hold it or a newer version already.

        Returns whether it was news: the watch echoing our own write (same
        resourceVersion), lagging behind it, or a late event of an older
        object of the same name (resourceVersions are etcd revisions: a
        re-created object's are higher) is not, and enqueues nothing.
        """
        old = self.get(key)
        if old is not None:
            old_rv, new_rv = _rv(old), _rv(body)
            if old_rv is not None and new_rv is not None and new_rv <= old_rv:
                return False
            self._count(old, -1)
        kept = slim(body)
        self._objects[key] = _pack(kept) or kept
        self._count(kept, +1)
        if is_terminal(kept):
            self._drop_unfinished(key)
        else:
            self._unfinished.setdefault(key[0], set()).add(key)
        return True

    def _drop_unfinished(self, key: Key) -> None:
        keys = self._unfinished.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._unfinished[key[0]]

    def unfinished(self, namespace: str) -> list[tuple[Key, dict[str, Any]]]:
        """The namespace's executions that have not finished."""
        # (never packed: only finished executions are)
        return [
            (k, obj)
            for k in self._unfinished.get(namespace, ())
            if isinstance(obj := self._objects[k], dict)
        ]

    def count_unfinished(self, namespace: str) -> int:
        return len(self._unfinished.get(namespace, ()))

    def replace(self, key: Key, body: Body) -> None:
        """Hold ``body`` whatever we held (a fresh read from the API server)."""
        self.remove(key)
        self.put(key, body)

    def remove(self, key: Key, uid: str | None = None) -> bool:
        """Forget the object under ``key``: only the one with ``uid`` when given
        (a late DELETED event of an older object must not drop a newer one)."""
        old = self.get(key)
        if old is None or (uid is not None and uid_of(old) != uid):
            return False
        del self._objects[key]
        self._count(old, -1)
        self._drop_unfinished(key)
        return True

    def get(self, key: Key) -> dict[str, Any] | None:
        held = self._objects.get(key)
        return _unpack(key, held) if isinstance(held, tuple) else held

    def items(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        """A snapshot as of the call (the cache may change while it is walked)."""
        held = list(self._objects.items())
        return ((k, _unpack(k, v) if isinstance(v, tuple) else v) for k, v in held)

    def active_items(self) -> Iterator[tuple[Key, dict[str, Any]]]:
        """Like ``items`` without the finished executions held packed (no
        finalizer, no deletion): every one a walk for unfinished executions,
        or for those that ``needs_attention``, must see. With 100 000
        finished executions kept, such a walk no longer unpacks them all."""
        return iter([(k, v) for k, v in self._objects.items() if not isinstance(v, tuple)])

    def __len__(self) -> int:
        return len(self._objects)


def needs_attention(body: Body) -> bool:
    """Whether reconcile has anything to do for this object (at start-up, on a
    connection change): not for finished executions without our finalizer."""
    if meta_of(body).get("deletionTimestamp") or is_terminal(body):
        return FINALIZER in (meta_of(body).get("finalizers") or [])
    return True


def waits_for_temporal(body: Body) -> bool:
    """Whether Temporal coming back is what this execution waits for: a start,
    or a cancel before its finalizer can go."""
    if meta_of(body).get("deletionTimestamp") or is_terminal(body):
        return has_finalizer(body)
    return not recorded_workflow(body).get("id")


def has_timer(body: Body, finished_ttl: float | None) -> bool:
    """A finished execution that its TTL will delete: reconcile sets its timer."""
    return not meta_of(body).get("deletionTimestamp") and expiry_of(body, finished_ttl) is not None
