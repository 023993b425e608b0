"""Kubernetes Events on executions, aggregated as client-go's recorder does.

The first occurrence of a (object, type, reason) posts an Event; repeats
raise its ``count`` and ``lastTimestamp`` instead, at most once per
``update_interval``, so an execution that waits through a long outage shows
one Warning with a count, not hundreds. Failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentexec.kube import COMPONENT, GROUP, KIND, VERSION, Kube, KubeError

log = logging.getLogger("agentexec.events")


@dataclass
class _Aggregate:
    name: str
    count: int
    sent_count: int
    sent_at: float
    message: str


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, kube: Kube, update_interval: float = 10.0, timeout: float = 10.0) -> None:
        self.kube = kube
        self.update_interval = update_interval
        self.timeout = timeout
        self._seen: dict[tuple[str, str, str], _Aggregate] = {}

    async def record(
        self, body: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        meta = body.get("metadata", {})
        uid, namespace = str(meta.get("uid", "")), str(meta.get("namespace", ""))
        key = (uid, event_type, reason)
        agg = self._seen.get(key)
        message = message[:1024]
        try:
            if agg is None:
                name = await self._create(meta, event_type, reason, message)
                self._seen[key] = _Aggregate(name, 1, 1, time.monotonic(), message)
                return
            agg.count += 1
            agg.message = message
            if time.monotonic() - agg.sent_at < self.update_interval:
                return
            patch = {"count": agg.count, "lastTimestamp": _now(), "message": message}
            try:
                async with asyncio.timeout(self.timeout):
                    await self.kube.patch_event(namespace, agg.name, patch)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                # Events expire (an hour by default): start a new one.
                agg.name = await self._create(meta, event_type, reason, message, agg.count)
            agg.sent_count, agg.sent_at = agg.count, time.monotonic()
        except Exception as exc:
            log.warning(
                "could not post event",
                extra={"reason": reason, "object": meta.get("name"), "error": str(exc)[:200]},
            )

    def forget(self, uid: str) -> None:
        """The object finished or is gone: drop its aggregates."""
        for key in [k for k in self._seen if k[0] == uid]:
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)

    async def _create(
        self,
        meta: Mapping[str, Any],
        event_type: str,
        reason: str,
        message: str,
        count: int = 1,
    ) -> str:
        namespace = meta.get("namespace")
        now = _now()
        name = f"{str(meta.get('name', 'aex'))[:200]}.{uuid.uuid4().hex[:12]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
        }
        async with asyncio.timeout(self.timeout):
            await self.kube.create_event(str(namespace), event)
        return name
