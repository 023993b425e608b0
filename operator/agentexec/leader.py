"""Leader election on a ``coordination.k8s.io`` Lease, as client-go's
``leaderelection`` does it: the holder renews every ``retry_period``; the
others take over once the record has not changed for ``lease_duration`` (by
their own clock, so clock skew between nodes does not matter); a holder that
cannot renew within ``renew_deadline`` stops leading before anyone else can
start; a graceful stop releases the Lease so a successor starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agentexec.kube import Kube, KubeError

log = logging.getLogger("agentexec.leader")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.leading = False
        self.holder: str | None = None
        self._observed: tuple[Any, Any] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0
        self._resource_version: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Campaign in the background until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="leader-election")

    async def stop(self) -> None:
        """Stop campaigning (leading ends, on_stopped runs); the Lease is kept
        until :meth:`release`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def stopped_loops(self) -> list[str]:
        """The campaign, if it ended although nobody stopped it (an error from
        on_started or on_stopped): a replica that can never lead again, which
        /healthz reports so the pod is restarted."""
        task = self._task
        return [task.get_name()] if task is not None and task.done() else []

    async def run(self) -> None:
        """Campaign, lead, and campaign again; never returns until cancelled."""
        try:
            while True:
                try:
                    async with asyncio.timeout(self.retry_period * 2):
                        acquired = await self._try_acquire_or_renew()
                except Exception as exc:
                    acquired = False
                    log.warning(
                        "lease request failed", extra={"lease": self.name, "error": str(exc)[:200]}
                    )
                now = time.monotonic()
                if acquired:
                    self._renewed_at = now
                    if not self.leading:
                        self.leading = True
                        log.info(
                            "became the leader: reconciling",
                            extra={"lease": self.name, "identity": self.identity},
                        )
                        await self.on_started()
                elif self.leading and now - self._renewed_at > self.renew_deadline:
                    self.leading = False
                    log.warning(
                        "lost the lease: standing by",
                        extra={
                            "lease": self.name,
                            "identity": self.identity,
                            "holder": self.holder,
                        },
                    )
                    await self.on_stopped()
                await asyncio.sleep(self.retry_period)
        finally:
            if self.leading:
                self.leading = False
                await self.on_stopped()

    async def release(self) -> None:
        """Give the Lease up (graceful shutdown), so a successor need not wait it out."""
        if self._resource_version is None or self.holder != self.identity:
            return
        body = self._lease(holder="", transitions=None, duration=1)
        body["metadata"]["resourceVersion"] = self._resource_version
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.kube.request("PUT", Kube.lease_path(self.namespace, self.name), body)
            log.info("released the lease", extra={"lease": self.name})

    def _lease(
        self, holder: str, transitions: int | None, duration: float | None = None
    ) -> dict[str, Any]:
        now = _micro_now()
        spec: dict[str, Any] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": int(duration or self.lease_duration),
            "renewTime": now,
        }
        if transitions is not None:
            spec["leaseTransitions"] = transitions
        if holder:
            spec["acquireTime"] = now
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }

    async def _try_acquire_or_renew(self) -> bool:
        path = Kube.lease_path(self.namespace, self.name)
        try:
            current = await self.kube.request("GET", path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            created = await self.kube.request(
                "POST", Kube.lease_path(self.namespace), self._lease(self.identity, 0)
            )
            self._remember(created)
            return True
        self._remember(current)
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        expired = time.monotonic() - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        body = self._lease(self.identity, transitions)
        if holder == self.identity and spec.get("acquireTime"):
            body["spec"]["acquireTime"] = spec["acquireTime"]
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            updated = await self.kube.request("PUT", path, body)
        except KubeError as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise
        self._remember(updated)
        return True

    def _remember(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()
        self.holder = spec.get("holderIdentity") or None
        self._resource_version = lease.get("metadata", {}).get("resourceVersion")
